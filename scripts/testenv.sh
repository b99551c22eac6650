#!/usr/bin/env bash
# scripts/testenv.sh — the real test environment of popgate (docs/ARCHITECTURE.md §5).
#
#   scripts/testenv.sh up       install (apt-get, when root and something is missing) and start,
#                               on 127.0.0.1, a real Dovecot (POP3+STLS, POP3S, LMTP; passwd-file users,
#                               Maildir) and a real clamd (TCP + unix socket; a signature database
#                               written here that holds only the EICAR and clam.exe test signatures), a real
#                               redis-server (no persistence) for the shared message memory, and a
#                               real rspamd (normal worker and password-protected controller, its
#                               network checks failing fast on a dead DNS server, Bayes in that
#                               redis-server, db 3; started as root it drops to _rspamd). rspamd
#                               takes ~10-20 s to answer after a fresh start.
#   scripts/testenv.sh down     stop the daemons (idempotent; the state dir and its logs stay).
#   scripts/testenv.sh restart  down, then a fresh up.
#   scripts/testenv.sh envfile  print the path of the env file (bash `export` lines) to source.
#   scripts/testenv.sh status   say what runs (exit 0 when all daemons run, 1 otherwise).
#   scripts/testenv.sh demo-deps what `make demo` needs before `popgate demo`: clamd. When it is
#                               missing and this runs as root, says so and installs clamav-daemon
#                               (apt-get, as for up; POPGATE_DEMO_INSTALL=no skips it); otherwise
#                               says what is missing. Always exits 0: the demo runs without a scanner.
#
# State lives in ${POPGATE_TESTENV_DIR:-/tmp/popgate-testenv}. `up` when all daemons already run
# from this same version of the script REUSES them (same ports, users, mail) and only prints the
# summary; anything else (nothing running, half running, script changed) stops leftovers, wipes the
# state dir and starts fresh on newly chosen free ports. Use `restart` to force a fresh start.
# Runs of `make test` that overlap on one machine share (and the first `down` stops) the same
# environment: give each its own POPGATE_TESTENV_DIR to isolate them.
#
# Exported by the env file (see write_envfile):
#   POPGATE_TESTENV_DIR, POPGATE_TEST_POP3 (host:port, plain + STLS), POPGATE_TEST_POP3S (host:port,
#   implicit TLS), POPGATE_TEST_CA, POPGATE_TEST_CERT, POPGATE_TEST_KEY, POPGATE_TEST_PASSWD (the
#   shared passwd-file), POPGATE_TEST_USERS (dir of per-user passwd-files), POPGATE_TEST_MAILROOT, POPGATE_TEST_MAILUID, POPGATE_TEST_MAILGID, POPGATE_TEST_CLAMD
#   (tcp://127.0.0.1:port), POPGATE_TEST_CLAMD_UNIX (unix:///path), POPGATE_TEST_DOVECOT_CONF,
#   POPGATE_TEST_CLAMD_CONF, POPGATE_TEST_REDIS (127.0.0.1:port), POPGATE_TEST_LMTP (Dovecot's LMTP,
#   127.0.0.1:port), POPGATE_TEST_RSPAMD (rspamd's normal worker, 127.0.0.1:port: /checkv2),
#   POPGATE_TEST_RSPAMD_CONTROLLER (its controller, 127.0.0.1:port: /learnham, /learnspam, /stat),
#   POPGATE_TEST_RSPAMD_PASSWORD (the controller's password, also its enable_password; random per up).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
DIR=${POPGATE_TESTENV_DIR:-/tmp/popgate-testenv}
case $DIR in /*) ;; *) DIR=$PWD/$DIR ;; esac
DIR=${DIR%/}
if [ -z "$DIR" ] || [ "$DIR" = / ]; then echo "testenv: refusing POPGATE_TESTENV_DIR=/" >&2; exit 2; fi

ENVFILE=$DIR/env
MARKER=$DIR/.popgate-testenv
LOCKFILE=$DIR.lock
TLS=$DIR/tls
DOV=$DIR/dovecot
DOVCONF=$DOV/dovecot.conf
DOVPID=$DOV/run/master.pid
PASSWD=$DIR/passwd
USERS=$DIR/users
MAILROOT=$DIR/mail
CLAM=$DIR/clamd
CLAMCONF=$CLAM/clamd.conf
CLAMPID=$CLAM/clamd.pid
CLAMSOCK=$CLAM/clamd.sock
REDIS=$DIR/redis
REDISPID=$REDIS/redis.pid
RSPAMD=$DIR/rspamd
RSPAMDPID=$RSPAMD/run/rspamd.pid

# clamd's signature database: the project's own, shared with `popgate demo` (examples/examples.go
# ClamdSignatures; examples/clamd_test.go checks it): only the EICAR test file and ClamAV's own test
# file clam.exe (clamav-testfiles), which clamd finds inside every container and packer of those files.
SIGDIR=$(dirname "$SELF")/../examples/clamd
SIGFILES=("$SIGDIR/popgate-eicar.hdb" "$SIGDIR/popgate-eicar.ndb" "$SIGDIR/popgate-clamav-testfile.hdb")

PATH=$PATH:/usr/sbin:/sbin
log() { printf 'testenv: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- install

# missing_packages prints the Debian packages whose programs are absent.
missing_packages() {
	local -a miss=()
	[ -x /usr/sbin/dovecot ] || miss+=(dovecot-core)
	[ -x /usr/lib/dovecot/pop3 ] && [ -x /usr/lib/dovecot/pop3-login ] || miss+=(dovecot-pop3d)
	[ -x /usr/lib/dovecot/lmtp ] || miss+=(dovecot-lmtpd) # quarantine release delivers over LMTP
	[ -x /usr/sbin/clamd ] || miss+=(clamav-daemon)
	command -v clamdscan >/dev/null || miss+=(clamdscan) # a package of its own on Debian 12
	command -v openssl >/dev/null || miss+=(openssl)
	command -v curl >/dev/null || miss+=(curl)
	command -v fetchmail >/dev/null || miss+=(fetchmail)
	command -v mpop >/dev/null || miss+=(mpop)
	command -v getmail >/dev/null || miss+=(getmail6) # getmail6's command is getmail
	command -v flock >/dev/null || miss+=(util-linux)
	command -v ip >/dev/null || miss+=(iproute2)        # transparent-mode test: network namespace
	command -v iptables >/dev/null || miss+=(iptables) # and REDIRECT rules inside it
	python3 -c 'import sys' >/dev/null 2>&1 || miss+=(python3) # a client the tests use
	command -v haproxy >/dev/null || miss+=(haproxy)           # scale-out test: PROXY v2 in front of two popgates; haproxy -c of examples/haproxy.cfg
	command -v systemd-analyze >/dev/null || miss+=(systemd)   # systemd-analyze verify of examples/popgate.service
	[ -x /usr/sbin/nginx ] || miss+=(nginx)                      # benchmark peer: nginx's mail proxy
	[ -e /usr/lib/nginx/modules/ngx_mail_module.so ] || miss+=(libnginx-mod-mail)
	command -v gnuplot >/dev/null || miss+=(gnuplot-nox)       # benchmark chart (PNG)
	command -v redis-server >/dev/null || miss+=(redis-server) # shared message memory (filters/memory/redisstore)
	command -v rspamd >/dev/null || miss+=(rspamd)             # the spam scanner (filters/rspamd)
	# Containers the archive tests make with the real tools (internal/archive)
	command -v 7z >/dev/null || miss+=(p7zip-full)
	command -v genisoimage >/dev/null || miss+=(genisoimage)
	command -v xorriso >/dev/null || miss+=(xorriso)
	command -v mkudffs >/dev/null || miss+=(udftools)
	command -v gcab >/dev/null || miss+=(gcab)
	command -v cabextract >/dev/null || miss+=(cabextract)
	command -v cpio >/dev/null || miss+=(cpio)
	command -v arj >/dev/null || miss+=(arj)
	command -v tnef >/dev/null || miss+=(tnef)
	command -v uuencode >/dev/null || miss+=(sharutils)
	command -v zstd >/dev/null || miss+=(zstd)
	command -v xz >/dev/null || miss+=(xz-utils)
	command -v bzip2 >/dev/null || miss+=(bzip2)
	[ -d /usr/share/clamav-testfiles ] || miss+=(clamav-testfiles) # clamd's own test files, scanned inside messages
	if [ ${#miss[@]} -gt 0 ]; then printf '%s\n' "${miss[@]}"; fi
}

install_missing() {
	local -a pkgs
	mapfile -t pkgs < <(missing_packages)
	[ ${#pkgs[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		die "missing packages: ${pkgs[*]} — install them (apt-get install ${pkgs[*]}) or run this as root"
	fi
	log "installing: ${pkgs[*]}"
	apt_install "${pkgs[@]}"
	mapfile -t pkgs < <(missing_packages)
	[ ${#pkgs[@]} -eq 0 ] || die "still missing after install: ${pkgs[*]}"
}

# apt_install PKG...: apt-get install, as root, without starting the packaged services.
apt_install() {
	local -a pkgs=("$@")
	# A policy-rc.d that exits 101 keeps the packaged services (Dovecot on :110, freshclam, rspamd on
	# localhost:11333-11334) from starting during the install. Remove it afterwards only if we created it.
	local created_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		created_policy=1
	fi
	local rc=0
	{
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q &&
			DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
				--no-install-recommends "${pkgs[@]}"
	} </dev/null >"${TMPDIR:-/tmp}/popgate-testenv-apt.log" 2>&1 || rc=$?
	if [ $created_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
	if [ $rc -ne 0 ]; then
		tail -n 30 "${TMPDIR:-/tmp}/popgate-testenv-apt.log" >&2
		die "apt-get failed (log: ${TMPDIR:-/tmp}/popgate-testenv-apt.log)"
	fi
}

# do_demo_deps: `make demo`'s clamd (popgate demo starts its own from /usr/sbin/clamd).
do_demo_deps() {
	[ -x /usr/sbin/clamd ] && return 0
	if [ "${POPGATE_DEMO_INSTALL:-yes}" = no ]; then
		echo "demo: clamd is not installed and POPGATE_DEMO_INSTALL=no: the demo runs without virus scanning." >&2
		return 0
	fi
	if [ "$(id -u)" -ne 0 ]; then
		echo "demo: clamd is not installed (/usr/sbin/clamd, Debian package clamav-daemon) and this is not root," >&2
		echo "      so it is not installed now: the demo runs without virus scanning. To scan, run" >&2
		echo "      'sudo apt-get install clamav-daemon' (or 'make demo' as root) first." >&2
		return 0
	fi
	echo "demo: installing clamav-daemon (clamd) from Debian with apt-get for the demo's virus scanning," >&2
	echo "      without starting its services or downloading signatures (~30 s; log" >&2
	echo "      ${TMPDIR:-/tmp}/popgate-testenv-apt.log). To skip: make demo POPGATE_DEMO_INSTALL=no" >&2
	( apt_install clamav-daemon ) || {
		echo "demo: the install failed (see above): the demo runs without virus scanning." >&2
		return 0
	}
	[ -x /usr/sbin/clamd ] && echo "demo: installed $(/usr/sbin/clamd --version 2>/dev/null | cut -d/ -f1)." >&2
	return 0
}

# ---------------------------------------------------------------- processes

# live PID: the process exists and is not a zombie (init here may be slow to reap one).
live() { [ -d "/proc/$1" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }

pidof_file() { head -n1 "$1" 2>/dev/null | tr -dc 0-9; }

# alive PIDFILE NAME: the pid in PIDFILE runs and its command is NAME.
alive() {
	local pid
	pid=$(pidof_file "$1")
	[ -n "$pid" ] && live "$pid" || return 1
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# stop PIDFILE NAME [PIDFILE NAME ...]: TERM to all, bounded wait, then KILL.
stop() {
	local -a pids=() files=()
	local pid i
	while [ $# -ge 2 ]; do
		if alive "$1" "$2"; then
			pid=$(pidof_file "$1")
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
		fi
		files+=("$1")
		shift 2
	done
	for pid in "${pids[@]}"; do
		for i in $(seq 100); do
			live "$pid" || break
			sleep 0.05
		done
		if live "$pid"; then
			log "pid $pid ignored TERM for 5 s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	rm -f "${files[@]}" # after the daemons, which remove their own on a clean exit
}

# clamd_ping PORT: clamd answers PONG on 127.0.0.1:PORT.
clamd_ping() {
	local reply=""
	{
		exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
		printf 'zPING\0' >&3
		IFS= read -r -d '' -t 2 reply <&3 || true
		exec 3<&- 3>&-
	} 2>/dev/null
	[ "$reply" = PONG ]
}

# redis_ping PORT: redis-server answers +PONG on 127.0.0.1:PORT.
redis_ping() {
	local reply=""
	{
		exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
		printf 'PING\r\n' >&3
		IFS= read -r -t 2 reply <&3 || true
		exec 3<&- 3>&-
	} 2>/dev/null
	[ "${reply%$'\r'}" = +PONG ]
}

# rspamd_ping PORT: an rspamd worker answers "pong" to GET /ping on 127.0.0.1:PORT (the controller
# with a CRLF after it).
rspamd_ping() {
	local reply
	reply=$(curl -s -m 2 "http://127.0.0.1:$1/ping" 2>/dev/null) || return 1
	[ "${reply%$'\r'}" = pong ]
}

# pop3_greets PORT: something on 127.0.0.1:PORT sends a "+OK" greeting (plain POP3 only).
pop3_greets() {
	local line=""
	{
		exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
		IFS= read -r -t 2 line <&3 || true
		printf 'QUIT\r\n' >&3 || true
		exec 3<&- 3>&-
	} 2>/dev/null
	[ "${line:0:3}" = "+OK" ]
}

# free_ports N: N distinct TCP ports, below the ephemeral range, that no socket (listening or
# connected, IPv4 or IPv6) uses now.
free_ports() {
	local lo=20000 hi eph used p
	local -a got=()
	eph=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
	hi=$((eph - 1))
	[ "$hi" -gt $((lo + 1000)) ] || { lo=40000; hi=60999; }
	local _st _rq _sq local_addr _rest
	used=" "
	if command -v ss >/dev/null; then
		while read -r _st _rq _sq local_addr _rest; do
			used+="${local_addr##*:} "
		done < <(ss -Htan 2>/dev/null || true)
	else # reading /proc/net/tcp can take half a second
		while read -r _st local_addr _rest; do
			[[ $local_addr == *:* ]] || continue
			used+="$((16#${local_addr##*:})) "
		done < <(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -v local_address || true)
	fi
	while [ ${#got[@]} -lt "$1" ]; do
		p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
		case "$used ${got[*]} " in *" $p "*) continue ;; esac
		got+=("$p")
	done
	echo "${got[*]}"
}

script_hash() { cat "$SELF" "${SIGFILES[@]}" | sha256sum | cut -c1-16; }

# ---------------------------------------------------------------- setup

make_tls() {
	mkdir -p "$TLS"
	(
		cd "$TLS"
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
			-keyout ca.key -out ca.pem -days 3650 -subj "/CN=popgate test CA" \
			-addext basicConstraints=critical,CA:TRUE \
			-addext keyUsage=critical,keyCertSign,cRLSign
		openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
			-keyout server.key -out server.csr -subj "/CN=localhost"
		cat >server.ext <<-EOF
			basicConstraints = critical, CA:FALSE
			keyUsage = critical, digitalSignature, keyEncipherment
			extendedKeyUsage = serverAuth
			subjectAltName = DNS:localhost, IP:127.0.0.1
		EOF
		openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
			-days 3650 -extfile server.ext -out server.pem
		rm -f server.csr
		# A throwaway test key: readable by all so tests (and popgate under another uid) can use it.
		chmod 644 server.key server.pem ca.pem
		chmod 600 ca.key
	) >"$TLS/openssl.log" 2>&1 || { cat "$TLS/openssl.log" >&2; die "openssl failed"; }
}

# add_user NAME PASSWORD: passwd-file line plus a Maildir owned by the mail uid.
add_user() {
	local home=$MAILROOT/$1
	mkdir -p "$home/Maildir/new" "$home/Maildir/cur" "$home/Maildir/tmp"
	chmod -R 700 "$home"
	chown -R "$MAIL_UID:$MAIL_GID" "$home"
	printf '%s:{PLAIN}%s:%s:%s::%s::\n' "$1" "$2" "$MAIL_UID" "$MAIL_GID" "$home" >>"$PASSWD"
}

# add_sample NAME N SUBJECT: a small message file in cur/ (POP3 order follows the name).
add_sample() {
	local f=$MAILROOT/$1/Maildir/cur/$(($(date +%s) + $2)).M000000P$$Q$2.popgate-testenv:2,
	printf 'From: testenv <testenv@localhost>\nTo: %s@localhost\nSubject: %s\nDate: %s\nMessage-ID: <testenv-%s-%s@localhost>\n\nHello %s, this is a sample message of the popgate test environment.\n' \
		"$1" "$3" "$(date -R)" "$1" "$2" "$1" >"$f"
	chown "$MAIL_UID:$MAIL_GID" "$f"
	chmod 600 "$f"
}

write_dovecot_conf() {
	local pop3=$1 pop3s=$2 lmtp=$3 me rootless="" dh=""
	me=$(id -un)
	if [ "$(id -u)" -ne 0 ]; then
		# Rootless Dovecot: no privilege separation users, no chroots.
		rootless="default_internal_user = $me
default_internal_group = $(id -gn)
default_login_user = $me"
	fi
	[ -r /usr/share/dovecot/dh.pem ] && dh="ssl_dh = </usr/share/dovecot/dh.pem"
	cat >"$DOVCONF" <<EOF
# Generated by scripts/testenv.sh for popgate tests; rewritten on every fresh 'up'.
base_dir = $DOV/run
state_dir = $DOV/state
log_path = $DOV/dovecot.log
instance_name = popgate-testenv
protocols = pop3 lmtp
listen = 127.0.0.1
shutdown_clients = yes
$rootless

ssl = yes
ssl_cert = <$TLS/server.pem
ssl_key = <$TLS/server.key
$dh

disable_plaintext_auth = no
auth_mechanisms = plain login apop cram-md5
# Failed logins answer within ~0.5 s (Dovecot checks delayed failures every 500 ms).
auth_failure_delay = 0
auth_verbose = yes
# {PLAIN} passwords (APOP and CRAM-MD5 need the plaintext), in passwd-file format
# "name:{PLAIN}password:uid:gid::home::".
# 1. $USERS/<name>: one file per user, written (atomically) by internal/testenv.NewUser. Dovecot
#    opens a path it has not seen yet at the first lookup, so a new user can log in at once.
# 2. $PASSWD: alice, bob and whatever is appended by hand. Dovecot re-reads it when its mtime or
#    size changes, but checks at most once per second: a line appended in the same second as an
#    earlier lookup is seen only from the next second on. Hence (1) for tests.
passdb {
  driver = passwd-file
  args = scheme=PLAIN $USERS/%u
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN $PASSWD
}
userdb {
  driver = passwd-file
  args = $USERS/%u
}
userdb {
  driver = passwd-file
  args = $PASSWD
}
first_valid_uid = $MAIL_UID
first_valid_gid = 1
mail_location = maildir:~/Maildir
mail_max_userip_connections = 10000
pop3_uidl_format = %08Xu%08Xv
# Keep message file names stable (no \\Seen renames at QUIT) so tests can compare paths.
pop3_no_flag_updates = yes

default_process_limit = 1000
default_client_limit = 4000
service pop3-login {
  # Login processes serve many connections each (Dovecot's "high-performance
  # mode"): forking one per connection made greetings take 2-5 s when 200
  # sessions start at once (the soak), starving every other test's probe.
  service_count = 0
  process_min_avail = 2
  inet_listener pop3 {
    address = 127.0.0.1
    port = $pop3
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = $pop3s
    ssl = yes
  }
  $([ -n "$rootless" ] && echo "chroot =")
}
service pop3 {
  process_limit = 1000
}
# LMTP: where popgate's quarantine release delivers. RCPT TO:<alice@any.domain> finds the
# passwd-file user alice; delivery adds Return-Path, Delivered-To and Received on top.
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $lmtp
  }
}
protocol lmtp {
  auth_username_format = %n
}
# Failed logins: no growing per-IP penalty (2 s, 4 s, ... 15 s for everyone on 127.0.0.1). Mode 0
# disables this listener; the auth process then finds no socket and skips penalties silently.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
  $([ -n "$rootless" ] && echo "chroot =")
}
service stats {
  unix_listener stats-writer {
    mode = 0666
  }
}
EOF
}

write_clamd_conf() {
	local port=$1
	mkdir -p "$CLAM/db" "$CLAM/tmp"
	# An .hdb line MD5:SIZE:NAME for the exact 68-byte file and, since clamd's MIME decoders hand
	# text parts over with a trailing newline, an .ndb body signature (Name:TargetType:Offset:Hex,
	# 0 = any file, * = anywhere) that catches the string inline too, as the official database
	# does. clamd reports custom signatures with ".UNOFFICIAL" appended:
	# "stream: Eicar-Test-Signature.UNOFFICIAL FOUND". An .hdb line for ClamAV's clam.exe
	# ("ClamAV-Test-File", as in ClamAV's own unit tests) finds the clamav-testfiles.
	cp "${SIGFILES[@]}" "$CLAM/db/"
	cat >"$CLAMCONF" <<EOF
# Generated by scripts/testenv.sh for popgate tests; rewritten on every fresh 'up'.
Foreground no
PidFile $CLAMPID
LogFile $CLAM/clamd.log
LogTime yes
DatabaseDirectory $CLAM/db
TemporaryDirectory $CLAM/tmp
LocalSocket $CLAMSOCK
LocalSocketMode 666
TCPSocket $port
TCPAddr 127.0.0.1
StreamMaxLength 25M
MaxThreads 20
MaxConnectionQueueLength 200
ReadTimeout 60
CommandReadTimeout 10
SelfCheck 3600
EOF
}

# write_rspamd_conf NORMAL CONTROLLER REDIS PASSWORD: local overrides of Debian's
# /etc/rspamd/rspamd.conf, which rspamd reads with LOCAL_CONFDIR=$RSPAMD (local.d/ merges into a
# section, override.d/ replaces the keys it names).
write_rspamd_conf() {
	mkdir -p "$RSPAMD/local.d" "$RSPAMD/override.d" "$RSPAMD/db" "$RSPAMD/run"
	cat >"$RSPAMD/local.d/worker-normal.inc" <<-EOF
		bind_socket = "127.0.0.1:$1";
		count = 1;
	EOF
	cat >"$RSPAMD/local.d/worker-controller.inc" <<-EOF
		bind_socket = "127.0.0.1:$2";
		count = 1;
		password = "$4";
		enable_password = "$4";
	EOF
	# Debian's controller lets 127.0.0.1 in without a password (secure_ip): trust only an address
	# nobody has (TEST-NET-1), so that learning through the controller needs the password.
	echo 'secure_ip = "192.0.2.1";' >"$RSPAMD/override.d/worker-controller.inc"
	echo 'enabled = false;' >"$RSPAMD/local.d/worker-proxy.inc"
	echo 'enabled = false;' >"$RSPAMD/local.d/worker-fuzzy.inc"
	# No internet: DNS goes to a port where nothing answers and gives up fast, so RBL, SPF, DKIM
	# key and map lookups fail in a fraction of a second instead of timing out the scan.
	cat >"$RSPAMD/local.d/options.inc" <<-EOF
		dns {
		  nameserver = ["127.0.0.1:5353"];
		  timeout = 0.2s;
		  retransmits = 1;
		}
	EOF
	cat >"$RSPAMD/local.d/logging.inc" <<-EOF
		type = "file";
		filename = "$RSPAMD/rspamd.log";
		level = "info";
	EOF
	# Bayes (learnham/learnspam), history and the like live in the environment's redis-server, in a
	# database of their own.
	cat >"$RSPAMD/local.d/redis.conf" <<-EOF
		servers = "127.0.0.1:$3";
		db = "3";
	EOF
	# Greylisting answers "soft reject" to the first sight of any message that is not from an
	# authenticated user or a local address: it is for SMTP, and a POP3 gateway sees mail that was
	# delivered long ago.
	echo 'enabled = false;' >"$RSPAMD/local.d/greylist.conf"
	# The milter block of /checkv2 answers: Authentication-Results added (with DKIM/SPF/DMARC
	# results where rspamd has them, "none" otherwise) and upstream ones removed.
	echo 'use = ["authentication-results"];' >"$RSPAMD/local.d/milter_headers.conf"
	if [ "$(id -u)" -eq 0 ]; then
		chown -R _rspamd:_rspamd "$RSPAMD"
		chmod 750 "$RSPAMD/local.d" "$RSPAMD/override.d" # the password is in there
	fi
}

write_envfile() {
	{
		echo "# Generated by scripts/testenv.sh; source it: . \"\$(scripts/testenv.sh envfile)\""
		printf 'export POPGATE_TESTENV_DIR=%q\n' "$DIR"
		printf 'export POPGATE_TEST_POP3=%q\n' "127.0.0.1:$1"
		printf 'export POPGATE_TEST_POP3S=%q\n' "127.0.0.1:$2"
		printf 'export POPGATE_TEST_CA=%q\n' "$TLS/ca.pem"
		printf 'export POPGATE_TEST_CERT=%q\n' "$TLS/server.pem"
		printf 'export POPGATE_TEST_KEY=%q\n' "$TLS/server.key"
		printf 'export POPGATE_TEST_PASSWD=%q\n' "$PASSWD"
		printf 'export POPGATE_TEST_USERS=%q\n' "$USERS"
		printf 'export POPGATE_TEST_MAILROOT=%q\n' "$MAILROOT"
		printf 'export POPGATE_TEST_MAILUID=%q\n' "$MAIL_UID"
		printf 'export POPGATE_TEST_MAILGID=%q\n' "$MAIL_GID"
		printf 'export POPGATE_TEST_CLAMD=%q\n' "tcp://127.0.0.1:$3"
		printf 'export POPGATE_TEST_CLAMD_UNIX=%q\n' "unix://$CLAMSOCK"
		printf 'export POPGATE_TEST_DOVECOT_CONF=%q\n' "$DOVCONF"
		printf 'export POPGATE_TEST_CLAMD_CONF=%q\n' "$CLAMCONF"
		printf 'export POPGATE_TEST_REDIS=%q\n' "127.0.0.1:$4"
		printf 'export POPGATE_TEST_LMTP=%q\n' "127.0.0.1:$5"
		printf 'export POPGATE_TEST_RSPAMD=%q\n' "127.0.0.1:$6"
		printf 'export POPGATE_TEST_RSPAMD_CONTROLLER=%q\n' "127.0.0.1:$7"
		printf 'export POPGATE_TEST_RSPAMD_PASSWORD=%q\n' "$8"
	} >"$ENVFILE.tmp"
	mv "$ENVFILE.tmp" "$ENVFILE"
}

summary() {
	(
		# shellcheck source=/dev/null
		. "$ENVFILE"
		cat <<EOF
popgate test environment ($1) in $DIR
  Dovecot $(dovecot --version 2>/dev/null | cut -d' ' -f1) pid $(pidof_file "$DOVPID"): POP3+STLS $POPGATE_TEST_POP3, POP3S $POPGATE_TEST_POP3S, LMTP $POPGATE_TEST_LMTP
  clamd $(clamd --version 2>/dev/null | cut -d/ -f1 | sed 's/^ClamAV //') pid $(pidof_file "$CLAMPID"): $POPGATE_TEST_CLAMD, $POPGATE_TEST_CLAMD_UNIX (EICAR and ClamAV-Test-File only)
  users: alice/alice-secret-pw, bob/bob-secret-pw (passwd-file $POPGATE_TEST_PASSWD);
         per-user passwd-files of test users in $POPGATE_TEST_USERS
  mail:  $POPGATE_TEST_MAILROOT/<user>/Maildir, uid:gid $POPGATE_TEST_MAILUID:$POPGATE_TEST_MAILGID
  CA:    $POPGATE_TEST_CA (server cert for localhost and 127.0.0.1: $POPGATE_TEST_CERT)
  redis $(redis-server --version 2>/dev/null | sed -n 's/.* v=\([^ ]*\).*/\1/p') pid $(pidof_file "$REDISPID"): $POPGATE_TEST_REDIS (no persistence)
  rspamd $(rspamd --version 2>/dev/null | sed -n 's/.*version //p') pid $(pidof_file "$RSPAMDPID"): $POPGATE_TEST_RSPAMD (/checkv2), controller $POPGATE_TEST_RSPAMD_CONTROLLER (password in the env file)
  logs:  $DOV/dovecot.log $CLAM/clamd.log $REDIS/redis.log $RSPAMD/rspamd.log
  env:   . $ENVFILE
  try:   curl --ssl-reqd --cacert $POPGATE_TEST_CA -u alice:alice-secret-pw pop3://$POPGATE_TEST_POP3/1
EOF
	)
}

running() {
	alive "$DOVPID" dovecot && alive "$CLAMPID" clamd && alive "$REDISPID" redis-server && alive "$RSPAMDPID" rspamd
}

do_down() {
	stop "$DOVPID" dovecot "$CLAMPID" clamd "$RSPAMDPID" rspamd "$REDISPID" redis-server
	rm -f "$ENVFILE" "$DIR/script.hash"
}

# start_once: one attempt on fresh ports; returns 1 when a port was taken in between.
start_once() {
	local ports pop3 pop3s clamport redisport lmtpport rspamdport rspamdctl rspamdpw i
	ports=$(free_ports 7)
	read -r pop3 pop3s clamport redisport lmtpport rspamdport rspamdctl <<<"$ports"

	write_dovecot_conf "$pop3" "$pop3s" "$lmtpport"
	write_clamd_conf "$clamport"

	if ! dovecot -c "$DOVCONF" </dev/null >>"$DOV/dovecot.out" 2>&1 9>&-; then
		log "dovecot did not start:"
		tail -n 5 "$DOV/dovecot.out" "$DOV/dovecot.log" >&2 2>/dev/null || true
		grep -q 'Address already in use' "$DOV/dovecot.out" "$DOV/dovecot.log" 2>/dev/null && return 1
		die "dovecot failed to start (config $DOVCONF)"
	fi
	clamd -c "$CLAMCONF" </dev/null >>"$CLAM/clamd.out" 2>&1 9>&- &
	local clampid_launcher=$!

	# Bounded waits: Dovecot starts in well under a second, clamd with this tiny database in ~1 s.
	for i in $(seq 100); do
		pop3_greets "$pop3" && break
		sleep 0.1
	done
	pop3_greets "$pop3" || { tail -n 20 "$DOV/dovecot.log" >&2 || true; die "dovecot does not answer on 127.0.0.1:$pop3"; }
	for i in $(seq 300); do
		clamd_ping "$clamport" && break
		if ! alive "$CLAMPID" clamd && ! [ -d "/proc/$clampid_launcher" ] && [ "$i" -gt 20 ]; then break; fi
		sleep 0.1
	done
	wait "$clampid_launcher" 2>/dev/null || true
	if ! clamd_ping "$clamport"; then
		tail -n 20 "$CLAM/clamd.out" "$CLAM/clamd.log" >&2 2>/dev/null || true
		if grep -qi 'already in use' "$CLAM/clamd.log" "$CLAM/clamd.out" 2>/dev/null; then
			stop "$DOVPID" dovecot
			return 1
		fi
		die "clamd does not answer PING on 127.0.0.1:$clamport"
	fi
	[ -S "$CLAMSOCK" ] || die "clamd did not create $CLAMSOCK"

	# redis-server: in memory only (no RDB, no AOF), its files in $REDIS. With --daemonize the
	# launcher exits before the server binds: a taken port shows in its log.
	mkdir -p "$REDIS"
	: >"$REDIS/redis.log"
	if ! redis-server --bind 127.0.0.1 --port "$redisport" --save "" --appendonly no \
		--daemonize yes --pidfile "$REDISPID" --dir "$REDIS" --logfile "$REDIS/redis.log" \
		</dev/null >>"$REDIS/redis.out" 2>&1 9>&-; then
		tail -n 5 "$REDIS/redis.out" "$REDIS/redis.log" >&2 2>/dev/null || true
		die "redis-server failed to start"
	fi
	for i in $(seq 100); do
		redis_ping "$redisport" && break
		grep -q 'Address already in use' "$REDIS/redis.log" 2>/dev/null && break
		sleep 0.05
	done
	if ! redis_ping "$redisport"; then
		tail -n 20 "$REDIS/redis.log" >&2 2>/dev/null || true
		if grep -q 'Address already in use' "$REDIS/redis.log" 2>/dev/null; then
			stop "$DOVPID" dovecot "$CLAMPID" clamd "$REDISPID" redis-server
			return 1
		fi
		die "redis-server does not answer PING on 127.0.0.1:$redisport"
	fi

	# rspamd, after redis (its Bayes store). The launcher loads the whole configuration before it
	# forks (~10-20 s on a fresh DBDIR; less once its caches exist), then the workers bind. Started
	# as root, the workers drop to _rspamd (-u/-g; --insecure would keep them root).
	rspamdpw=$(openssl rand -hex 12)
	write_rspamd_conf "$rspamdport" "$rspamdctl" "$redisport" "$rspamdpw"
	local -a rspamd_user=()
	[ "$(id -u)" -eq 0 ] && rspamd_user=(-u _rspamd -g _rspamd)
	if ! (cd "$RSPAMD" && rspamd "${rspamd_user[@]}" -c /etc/rspamd/rspamd.conf \
		LOCAL_CONFDIR="$RSPAMD" DBDIR="$RSPAMD/db" RUNDIR="$RSPAMD/run" LOGDIR="$RSPAMD" \
		</dev/null >>"$RSPAMD/rspamd.out" 2>&1 9>&-); then
		tail -n 20 "$RSPAMD/rspamd.out" "$RSPAMD/rspamd.log" >&2 2>/dev/null || true
		die "rspamd failed to start (config in $RSPAMD)"
	fi
	for i in $(seq 120); do
		rspamd_ping "$rspamdport" && rspamd_ping "$rspamdctl" && break
		alive "$RSPAMDPID" rspamd || [ "$i" -lt 10 ] || break
		grep -q 'Address already in use' "$RSPAMD/rspamd.log" 2>/dev/null && break
		sleep 0.5
	done
	if ! rspamd_ping "$rspamdport" || ! rspamd_ping "$rspamdctl"; then
		tail -n 20 "$RSPAMD/rspamd.out" "$RSPAMD/rspamd.log" >&2 2>/dev/null || true
		if grep -q 'Address already in use' "$RSPAMD/rspamd.log" 2>/dev/null; then
			stop "$DOVPID" dovecot "$CLAMPID" clamd "$RSPAMDPID" rspamd "$REDISPID" redis-server
			return 1
		fi
		die "rspamd does not answer /ping on 127.0.0.1:$rspamdport and :$rspamdctl"
	fi
	write_envfile "$pop3" "$pop3s" "$clamport" "$redisport" "$lmtpport" "$rspamdport" "$rspamdctl" "$rspamdpw"
}

do_up() {
	install_missing

	if running && [ -s "$ENVFILE" ] && [ "$(cat "$DIR/script.hash" 2>/dev/null)" = "$(script_hash)" ]; then
		local ports
		ports=$(
			# shellcheck source=/dev/null
			. "$ENVFILE"
			echo "${POPGATE_TEST_POP3##*:} ${POPGATE_TEST_CLAMD##*:} ${POPGATE_TEST_REDIS##*:} ${POPGATE_TEST_RSPAMD##*:} ${POPGATE_TEST_RSPAMD_CONTROLLER##*:}"
		)
		local p_pop3 p_clamd p_redis p_rspamd p_rspamdctl
		read -r p_pop3 p_clamd p_redis p_rspamd p_rspamdctl <<<"$ports"
		if pop3_greets "$p_pop3" && clamd_ping "$p_clamd" && redis_ping "$p_redis" &&
			rspamd_ping "$p_rspamd" && rspamd_ping "$p_rspamdctl"; then
			summary "already running: reused; 'restart' starts afresh"
			return 0
		fi
	fi

	do_down
	if [ -e "$DIR" ]; then
		if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
			die "$DIR exists, is not empty and is not a popgate test environment; not touching it"
		fi
		rm -rf "$DIR"
	fi
	mkdir -p "$DIR"
	chmod 755 "$DIR"
	: >"$MARKER"
	mkdir -p "$DOV/run" "$DOV/state" "$MAILROOT" "$USERS" "$CLAM"
	chmod 755 "$DOV" "$MAILROOT" "$USERS"

	if [ "$(id -u)" -eq 0 ]; then
		MAIL_UID=$(id -u nobody 2>/dev/null || echo 65534)
		MAIL_GID=$(getent group nogroup | cut -d: -f3)
		MAIL_GID=${MAIL_GID:-65534}
	else
		MAIL_UID=$(id -u)
		MAIL_GID=$(id -g)
	fi

	local f
	for f in "${SIGFILES[@]}"; do [ -s "$f" ] || die "no signature file $f"; done

	make_tls
	: >"$PASSWD"
	chmod 644 "$PASSWD"
	add_user alice alice-secret-pw
	add_user bob bob-secret-pw
	add_sample alice 1 "Welcome to the popgate test environment"
	add_sample alice 2 "A second sample message"

	# On failure, leave nothing running behind.
	trap 'rc=$?; if [ $rc -ne 0 ]; then do_down; fi; exit $rc' EXIT
	local attempt
	for attempt in 1 2 3 4 5; do
		if start_once; then break; fi
		[ "$attempt" -lt 5 ] || die "could not find free ports after $attempt attempts"
		log "port taken meanwhile; retrying with other ports"
		stop "$CLAMPID" clamd "$RSPAMDPID" rspamd "$REDISPID" redis-server
	done
	script_hash >"$DIR/script.hash"
	trap - EXIT
	summary "started"
}

do_status() {
	local rc=0
	if alive "$DOVPID" dovecot; then
		echo "dovecot: running, pid $(pidof_file "$DOVPID")"
	else
		echo "dovecot: not running"
		rc=1
	fi
	if alive "$CLAMPID" clamd; then
		echo "clamd: running, pid $(pidof_file "$CLAMPID")"
	else
		echo "clamd: not running"
		rc=1
	fi
	if alive "$REDISPID" redis-server; then
		echo "redis-server: running, pid $(pidof_file "$REDISPID")"
	else
		echo "redis-server: not running"
		rc=1
	fi
	if alive "$RSPAMDPID" rspamd; then
		echo "rspamd: running, pid $(pidof_file "$RSPAMDPID")"
	else
		echo "rspamd: not running"
		rc=1
	fi
	if [ -s "$ENVFILE" ]; then
		grep '^export' "$ENVFILE" | sed 's/^export /  /'
	fi
	return $rc
}

with_lock() {
	mkdir -p "$(dirname "$LOCKFILE")"
	exec 9>>"$LOCKFILE"
	flock -w 120 9 || die "could not lock $LOCKFILE"
	"$@"
}

case ${1:-} in
up) with_lock do_up ;;
down) with_lock do_down ;;
restart) with_lock do_down && with_lock do_up ;;
status) do_status ;;
demo-deps) do_demo_deps ;;
envfile)
	echo "$ENVFILE"
	[ -s "$ENVFILE" ] || { log "no env file yet: run '$0 up' first"; exit 1; }
	;;
*)
	sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac

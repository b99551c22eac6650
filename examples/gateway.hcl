# gateway.hcl — an office mail gateway with strict virus scanning.
#
# The firewall redirects every POP3 connection from the office network to
# popgate (transparent interception on port 110), and the company's own
# mailbox server is offered as POP3S on port 995. Every message is scanned by
# the company's clamd pair, dangerous attachments are stripped or the message
# is withheld, originals are quarantined, and each delivered message says what
# was done to it. When popgate cannot decide (clamd down, message too large
# to scan) the message is NOT delivered: the client gets -ERR [SYS/TEMP],
# keeps it on the server and retries later.
#
# popgate checks at load time that the certificate, key and CA files exist and
# are valid. Their paths come from environment variables, with the usual
# locations as defaults, so one file serves every machine (the same variables
# as examples/tls.hcl):
#   POPGATE_TLS_CERT  PEM certificate chain popgate shows to clients
#   POPGATE_TLS_KEY   PEM private key of that certificate
#   POPGATE_CA_FILE   PEM roots that signed the mailbox server's certificate
# On a machine without these files `popgate check` reports "File not found"
# for them; point the variables at real files (or create the defaults).

# --- Listeners ----------------------------------------------------------------

# Transparent interception: the firewall sends office POP3 traffic here, e.g.
#   iptables -t nat -A PREROUTING -i lan0 -p tcp --dport 110 -j REDIRECT --to-ports 110
# popgate reads each connection's original destination (SO_ORIGINAL_DST) and
# connects there; it refuses connections whose destination is popgate itself.
listener "intercept" {
  address     = "0.0.0.0:110"
  transparent = true
  # With transparent = true the address of this upstream block is not used:
  # it only supplies TLS mode and timeouts for original destinations that no
  # destination route (below) claims.
  upstream = "internet"
  tls {
    # Offers STLS to clients. Clients that use it see popgate's certificate,
    # not the server's: they must trust the CA that issued it.
    cert_file = env("POPGATE_TLS_CERT", "/etc/popgate/cert.pem")
    key_file  = env("POPGATE_TLS_KEY", "/etc/popgate/key.pem")
  }
  max_connections        = 2000
  max_connections_per_ip = 20 # a desktop client rarely needs more than a few
}

# POP3S for the company mailbox server: clients configured with
# pop.example.com:995 reach popgate (DNS or the firewall points them here).
listener "pop3s" {
  address  = "0.0.0.0:995"
  upstream = "mailstore"
  tls {
    cert_file = env("POPGATE_TLS_CERT", "/etc/popgate/cert.pem")
    key_file  = env("POPGATE_TLS_KEY", "/etc/popgate/key.pem")
    implicit  = true # TLS handshake first, then the POP3 greeting (POP3S)
  }
  login_timeout = "30s" # idle time allowed before the login completes
  idle_timeout  = "10m" # after login; RFC 1939 §3 asks for at least 10 minutes
}

# --- Upstreams ----------------------------------------------------------------

# The company mailbox server, POP3S on both sides: popgate checks its
# certificate against the internal CA and the name below.
upstream "mailstore" {
  address         = "mail.internal.example.com:995"
  tls             = "implicit"
  ca_file         = env("POPGATE_CA_FILE", "/etc/popgate/internal-ca.pem")
  server_name     = "pop.example.com" # the name in the server's certificate
  connect_timeout = "5s"              # dialing and the TLS handshake
  timeout         = "2m"              # waiting for each server response
  release {
    via       = "mailstore-lmtp"     # the delivery block below
    recipient = "%n@example.com"     # login "alice" → alice@example.com
  }
}

# Settings for intercepted connections to the same server's plain POP3 port
# (picked by the destination route below): upgrade to TLS with STLS and
# verify the certificate, so that passwords never cross the backbone in clear.
upstream "mailstore-stls" {
  address     = "mail.internal.example.com:110" # not dialled: the original destination is
  tls         = "starttls"
  ca_file     = env("POPGATE_CA_FILE", "/etc/popgate/internal-ca.pem")
  server_name = "pop.example.com" # the destination is an IP address; check this name instead
}

# Settings for every other intercepted destination (outside mail providers):
# relayed as the client spoke it.
upstream "internet" {
  address = "pop.provider.example:110" # not dialled: the original destination is
  tls     = "none"
  timeout = "90s"
}

# Intercepted connections to the company server's address use the STLS
# settings above instead of "internet". Only the TLS mode, certificate check
# and timeouts change: popgate still connects to the original destination.
route {
  destinations = ["192.0.2.10"] # the address of mail.internal.example.com
  listeners    = ["intercept"]
  upstream     = "mailstore-stls"
}

# --- Scanning -----------------------------------------------------------------

# The company's clamd pair. Scans are spread round-robin over the healthy
# addresses; a clamd that fails is skipped until it answers PING again, and a
# scan whose connection breaks is retried on the other one.
scanner "clamav" "farm" {
  addresses       = ["tcp://10.0.0.21:3310", "tcp://10.0.0.22:3310"]
  timeout         = "2m"   # ceiling of one scan (5s + 1s per MB below it)
  max_size        = "50MB" # keep at or below StreamMaxLength in both clamd.conf
  max_concurrent  = 32     # scans in flight from this popgate
  health_interval = "5s"   # PING period
}

filter "clamav" "av" {
  scanner  = "farm"
  scan     = "both"     # the whole message (clamd's mail signatures), then each decoded part
                        # (archives nested too deep for clamd given the whole message)
  oversize = "tempfail" # not scanned in full (over max_size, or clamd's limits exceeded with
                        # AlertExceedsMax yes): never called clean; the client retries later
}

# --- Attachments --------------------------------------------------------------

filter "strip" "attachments" {
  # Programs and scripts: the part is cut out and replaced by a short text
  # notice; the rest of the message stays byte for byte as it was.
  rule "executables" {
    extensions     = ["exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "hta", "msi", "lnk", "ps1"]
    detected_types = ["application/x-msdownload"] # a PE program under any name
  }

  # Office documents with macros.
  rule "macros" {
    extensions = ["docm", "xlsm", "pptm", "dotm", "xltm"]
  }

  # Names built to deceive (right-to-left override, invisible characters),
  # and "invoice.pdf.exe"-style double extensions: withhold the whole message.
  rule "disguised" {
    suspicious_names = true
    filenames        = ["*.pdf.*", "*.doc.*", "*.jpg.*"]
    action           = "quarantine" # the message is replaced by a notice
  }

  # Programs inside zip files (and zips inside those, archive_depth levels),
  # and encrypted zips that no scanner can look into.
  rule "archives" {
    archive_filenames  = ["*.exe", "*.scr", "*.js", "*.vbs", "*.lnk"]
    encrypted_archives = true
    action             = "quarantine"
  }

  on_limit            = "reject" # MIME nesting/parts beyond the caps: withhold
  on_archive_limit    = "reject" # zip bombs, too many members: withhold
  archive_depth       = 3        # zips in zips: levels looked into
  archive_max_entries = 10000    # members of all listed archives together
  archive_max_size    = "512MiB" # uncompressed bytes, all levels together
  archive_max_ratio   = 100      # compression ratio of a member over 1 MiB
}

# --- Tagging ------------------------------------------------------------------

filter "tag" "stamp" {
  headers  = { "X-Scanned-By" = "popgate at example.com" }
  verdicts = true # X-Popgate-Verdict: av=pass (clean); attachments=replace (…)
  version  = true # X-Popgate-Version: popgate VERSION
}

# --- Quarantine ---------------------------------------------------------------

# Originals of stripped or withheld messages are written here and fsynced
# before anything else reaches the client (created, mode 0700, if missing).
# Browse with `popgate quarantine list`, give back with `popgate quarantine
# release ID` (docs/DEPLOYMENT.md, "Handling the quarantine").
quarantine {
  dir         = "/var/lib/popgate/quarantine"
  notice_from = "IT Security <it-security@example.com>" # sender of withheld-message notices
  retention   = "30d"                                    # purged after a month
  release {
    # Notices of what users may release themselves (stripped attachments;
    # viruses are the administrator's) carry a link to this address, which
    # an HTTPS reverse proxy forwards to the metrics listener's /release/.
    link_url = "https://mailgw.example.com"
    link_ttl = "7d"
  }
}

# Released originals go back into the mailbox over the mail server's LMTP
# service; digests go out through the company relay.
delivery "mailstore-lmtp" {
  address  = "mail.internal.example.com:24"
  protocol = "lmtp"
  tls      = "starttls"
  ca_file  = env("POPGATE_CA_FILE", "/etc/popgate/internal-ca.pem")
}

delivery "relay" {
  address = "smtp.internal.example.com:25"
  tls     = "starttls"
  ca_file = env("POPGATE_CA_FILE", "/etc/popgate/internal-ca.pem")
}

# The administrators hear of held mail (one digest per burst, at most one an
# hour); each user gets a daily list of what was held for them.
notify {
  via            = "relay"
  admin          = ["it-security@example.com"]
  admin_interval = "1h"
  user_digest    = "24h"
}

# --- Policy -------------------------------------------------------------------

# One policy for everybody: no match block, so it is the default.
policy "strict" {
  chain    = ["av", "attachments", "stamp"] # scan first, then strip, then stamp
  on_error = "tempfail"                     # a filter that cannot decide: -ERR [SYS/TEMP]
  top      = "filter"                       # TOP shows the start of the filtered message
  rejected = "notice"                       # a withheld message becomes a notice with its quarantine id
  # Big messages take long to scan; some clients give up after 60 seconds of
  # silence. keepalive answers +OK early and trickles header lines while the
  # chain runs. The price: once +OK is sent, a message that then must be
  # withheld can only be refused by closing the connection (no notice); the
  # client keeps it on the server and retries.
  keepalive = "20s"
}

# --- Operations ---------------------------------------------------------------

log {
  level  = "info"
  format = "json" # one JSON object per line, with a session id on each
}

spool {
  memory_limit = "4MB" # bodies above this go to a temp file (dir defaults to the system temp dir)
}

shutdown_timeout = "60s" # on SIGTERM, sessions get this long to finish

# Prometheus metrics (examples/grafana/popgate.json graphs them), /healthz
# and /readyz, on loopback for a local agent to scrape.
metrics {
  address = "127.0.0.1:9110"
}

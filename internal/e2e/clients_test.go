package e2e

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// checkLogin checks a login event: the user popgate learned, the listener and
// whether the client side was TLS-protected.
func checkLogin(t *testing.T, e logEvent, user, listener string, tls bool) {
	t.Helper()
	if user != "" && e.str("user") != user {
		t.Errorf("login logged for user %q, want %q: %s", e.str("user"), user, e)
	}
	if e.str("listener") != listener {
		t.Errorf("login logged on listener %q, want %q: %s", e.str("listener"), listener, e)
	}
	if got, _ := e["tls"].(bool); got != tls {
		t.Errorf("login logged with tls=%v, want %v: %s", got, tls, e)
	}
}

// nthLogin waits until the n-th session to log in has also logged its end,
// and returns its login event. (Sessions without a login, such as the
// readiness probes of startPopgate, do not count.)
func (p *popgateProc) nthLogin(n int) logEvent {
	p.t.Helper()
	var login logEvent
	p.waitEvents(fmt.Sprintf("the end of the session of login %d", n), func(evs []logEvent) bool {
		ls := logins(evs)
		if len(ls) < n {
			return false
		}
		login = ls[n-1]
		return slices.ContainsFunc(evs, func(e logEvent) bool {
			return e.str("message") == "session end" && e.str("session") == login.str("session")
		})
	})
	return login
}

// curl: LIST, RETR on plain POP3, RETR after STLS, RETR over POP3S, UIDL,
// DELE; each checked against the Maildir.
func TestCurl(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	curl := testenv.LookPath(t, "curl")
	msgs := corpus("curl")
	u, paths := newMailbox(t, d, msgs)
	p := startPopgate(t, dovecotConfig(d, configOpts{}), "", "plain", "pop3s")

	curlDo := curlRunner(t, curl, u, nil)
	plain, pop3s := "pop3://"+p.addr("plain"), "pop3s://"+p.addr("pop3s")
	sessions := 0
	login := func(listener string, tls bool) {
		t.Helper()
		sessions++
		// curl logs in with AUTH CRAM-MD5 (Dovecot offers it), from which
		// popgate does not learn the user name: the user is not checked.
		checkLogin(t, p.nthLogin(sessions), "", listener, tls)
	}

	var list strings.Builder
	for i, m := range msgs {
		fmt.Fprintf(&list, "%d %d\r\n", i+1, len(crlf(m)))
	}
	if got := string(curlDo(plain + "/")); got != list.String() {
		t.Fatalf("LIST through popgate:\n%q\nwant\n%q", got, list.String())
	}
	login("plain", false)

	for i, m := range msgs {
		got := curlDo(fmt.Sprintf("%s/%d", plain, i+1))
		if !bytes.Equal(got, crlf(m)) {
			t.Fatalf("RETR %d: curl got %d bytes, the Maildir file is %d bytes in CRLF form; first line %q",
				i+1, len(got), len(crlf(m)), firstLine(got))
		}
		login("plain", false)
	}

	if got, want := string(curlDo("-X", "UIDL", plain+"/")), directUIDL(t, d, u); got != want {
		t.Fatalf("UIDL through popgate %q, Dovecot says %q", got, want)
	}
	login("plain", false)

	t.Run("STLS", func(t *testing.T) {
		got := curlDo("--ssl-reqd", "--cacert", d.CAFile, plain+"/2")
		if !bytes.Equal(got, crlf(msgs[1])) {
			t.Fatalf("RETR 2 after STLS: %q", got)
		}
		login("plain", true)
	})
	t.Run("POP3S", func(t *testing.T) {
		got := curlDo("--cacert", d.CAFile, pop3s+"/5")
		if !bytes.Equal(got, crlf(msgs[4])) {
			t.Fatalf("RETR 5 over POP3S: %d bytes, want %d", len(got), len(crlf(msgs[4])))
		}
		login("pop3s", true)
	})
	t.Run("DELE", func(t *testing.T) {
		// -I: DELE has a single-line answer; curl sends QUIT afterwards.
		curlDo("-X", "DELE 1", "-I", plain+"/")
		login("plain", false)
		var list strings.Builder
		for i, m := range msgs[1:] {
			fmt.Fprintf(&list, "%d %d\r\n", i+1, len(crlf(m)))
		}
		if got := string(curlDo(plain + "/")); got != list.String() {
			t.Fatalf("LIST after DELE 1: %q, want %q", got, list.String())
		}
		login("plain", false)
		if got := curlDo(plain + "/1"); !bytes.Equal(got, crlf(msgs[1])) {
			t.Fatalf("RETR 1 after DELE 1 is not the former message 2: %q", firstLine(got))
		}
		login("plain", false)
		if got := u.Files(t); !slices.Equal(got, paths[1:]) {
			t.Fatalf("Maildir after DELE 1 + QUIT: %v, want %v", got, paths[1:])
		}
	})
}

// curlRunner returns a function that runs curl with u's credentials (in a
// config file, not on the command line) and returns its stdout; stderr, if
// not nil, collects what curl printed there.
func curlRunner(t *testing.T, curl string, u *testenv.User, stderr *bytes.Buffer) func(args ...string) []byte {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "curlrc")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("user = %q\n", u.Name+":"+u.Password)), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(args ...string) []byte {
		t.Helper()
		out, errOut := runClientBoth(t, 30*time.Second, nil, curl, append([]string{"-sS", "--max-time", "25", "-K", cfg}, args...)...)
		if stderr != nil {
			stderr.Write(errOut)
		}
		return out
	}
}

// pythonPOP is a poplib client; POP_MODE picks how it connects and logs in.
// Parameters come from the environment, never the command line. It prints
// one JSON object with what it saw. With POP_DELE=1 it deletes every
// message before QUIT.
const pythonPOP = `
import base64, json, os, poplib, ssl, sys
poplib._MAXLINE = 1 << 20
env = os.environ
mode, user, pw = env["POP_MODE"], env["POP_USER"], env["POP_PASS"]
host, port = env["POP_HOST"], int(env["POP_PORT"])
b64 = lambda b: base64.b64encode(b).decode()
ctx = ssl.create_default_context(cafile=env["POP_CA"])
out = {}
if mode == "pop3s":
    p = poplib.POP3_SSL(host, port, context=ctx, timeout=30)
else:
    p = poplib.POP3(host, port, timeout=30)
out["welcome"] = p.getwelcome().decode("latin-1")
if mode == "stls":
    out["capa_before"] = sorted(p.capa())
    out["stls"] = p.stls(ctx).decode()
    out["capa_after"] = sorted(p.capa())
out["tls"] = isinstance(p.sock, ssl.SSLSocket)
plain = b64(b"\0" + user.encode() + b"\0" + pw.encode())
if mode in ("user", "stls", "pop3s"):
    p.user(user)
    out["auth"] = p.pass_(pw).decode()
elif mode == "apop":
    out["auth"] = p.apop(user, pw).decode()
elif mode == "auth-plain":
    out["auth"] = p._shortcmd("AUTH PLAIN " + plain).decode()
elif mode == "auth-plain-continue":
    p._putcmd("AUTH PLAIN")
    out["challenge"] = p._getline()[0].decode()
    p._putcmd(plain)
    out["auth"] = p._getresp().decode()
elif mode == "auth-login":
    p._putcmd("AUTH LOGIN")
    out["challenge"] = p._getline()[0].decode()
    p._putcmd(b64(user.encode()))
    p._getline()
    p._putcmd(b64(pw.encode()))
    out["auth"] = p._getresp().decode()
else:
    sys.exit("unknown mode " + mode)
out["stat"] = list(p.stat())
out["list"] = [l.decode() for l in p.list()[1]]
out["uidl"] = [l.decode() for l in p.uidl()[1]]
out["retr"], out["top"] = [], []
for i in range(1, out["stat"][0] + 1):
    resp, lines, octets = p.retr(i)
    out["retr"].append({"resp": resp.decode(), "data": b64(b"".join(l + b"\r\n" for l in lines)), "octets": octets})
    resp, lines, octets = p.top(i, 2)
    out["top"].append({"resp": resp.decode(), "data": b64(b"".join(l + b"\r\n" for l in lines)), "octets": octets})
if env.get("POP_DELE") == "1":
    out["dele"] = [p.dele(i).decode() for i in range(1, out["stat"][0] + 1)]
out["quit"] = p.quit().decode()
print(json.dumps(out))
`

type pyMessage struct {
	Resp   string `json:"resp"`
	Data   []byte `json:"data"`
	Octets int    `json:"octets"`
}

type pyResult struct {
	Welcome    string      `json:"welcome"`
	CapaBefore []string    `json:"capa_before"`
	STLS       string      `json:"stls"`
	CapaAfter  []string    `json:"capa_after"`
	TLS        bool        `json:"tls"`
	Challenge  string      `json:"challenge"`
	Auth       string      `json:"auth"`
	Stat       []int       `json:"stat"`
	List       []string    `json:"list"`
	UIDL       []string    `json:"uidl"`
	Retr       []pyMessage `json:"retr"`
	Top        []pyMessage `json:"top"`
	Dele       []string    `json:"dele"`
	Quit       string      `json:"quit"`
}

// Python poplib: USER/PASS, APOP, AUTH PLAIN (initial response and
// continuation), AUTH LOGIN, STLS and POP3S; STAT, LIST, UIDL, RETR and TOP
// of every message checked against the Maildir files and Dovecot itself.
func TestPythonPoplib(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	python := testenv.LookPath(t, "python3")
	msgs := corpus("python")
	u, paths := newMailbox(t, d, msgs)
	p := startPopgate(t, dovecotConfig(d, configOpts{}), "", "plain", "pop3s")
	wantUIDL := strings.Split(strings.TrimSuffix(directUIDL(t, d, u), "\r\n"), "\r\n")
	total := 0
	var wantList []string
	for i, m := range msgs {
		total += len(crlf(m))
		wantList = append(wantList, fmt.Sprintf("%d %d", i+1, len(crlf(m))))
	}

	for n, mode := range []string{"user", "apop", "auth-plain", "auth-plain-continue", "auth-login", "stls", "pop3s"} {
		t.Run(mode, func(t *testing.T) {
			listener := "plain"
			if mode == "pop3s" {
				listener = "pop3s"
			}
			host, port, _ := net.SplitHostPort(p.addr(listener))
			out := runClient(t, 60*time.Second, []string{
				"POP_MODE=" + mode, "POP_HOST=" + host, "POP_PORT=" + port,
				"POP_USER=" + u.Name, "POP_PASS=" + u.Password, "POP_CA=" + d.CAFile,
			}, python, "-c", pythonPOP)
			var r pyResult
			if err := json.Unmarshal(out, &r); err != nil {
				t.Fatalf("python output: %v\n%s", err, out)
			}

			// The greeting must arrive unchanged, APOP timestamp included.
			ts := apopStamp.FindString(r.Welcome)
			if ts == "" {
				t.Fatalf("greeting through popgate has no APOP timestamp: %q", r.Welcome)
			}
			sum := md5.Sum([]byte(ts + u.Password))
			addSecret("APOP digest of "+u.Name, hex.EncodeToString(sum[:]))

			if !strings.HasPrefix(r.Auth, "+OK") {
				t.Fatalf("login answer %q", r.Auth)
			}
			switch mode {
			case "auth-plain-continue":
				if r.Challenge != "+ " && r.Challenge != "+" {
					t.Errorf("AUTH PLAIN challenge %q, want an empty continuation", r.Challenge)
				}
			case "auth-login":
				if d, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(r.Challenge, "+ ")); !strings.HasPrefix(string(d), "Username") {
					t.Errorf("AUTH LOGIN challenge %q", r.Challenge)
				}
			case "stls":
				if !slices.Contains(r.CapaBefore, "STLS") {
					t.Errorf("CAPA before STLS does not offer STLS: %v", r.CapaBefore)
				}
				if slices.Contains(r.CapaAfter, "STLS") {
					t.Errorf("CAPA inside TLS still offers STLS: %v", r.CapaAfter)
				}
				if !slices.Contains(r.CapaAfter, "UIDL") || !slices.Contains(r.CapaAfter, "TOP") {
					t.Errorf("CAPA inside TLS lost Dovecot's capabilities: %v", r.CapaAfter)
				}
			}
			if want := mode == "stls" || mode == "pop3s"; r.TLS != want {
				t.Errorf("poplib socket TLS=%v, want %v", r.TLS, want)
			}
			if len(r.Stat) != 2 || r.Stat[0] != len(msgs) || r.Stat[1] != total {
				t.Errorf("STAT %v, want [%d %d]", r.Stat, len(msgs), total)
			}
			if !slices.Equal(r.List, wantList) {
				t.Errorf("LIST %q, want %q", r.List, wantList)
			}
			if !slices.Equal(r.UIDL, wantUIDL) {
				t.Errorf("UIDL through popgate %q, Dovecot directly %q", r.UIDL, wantUIDL)
			}
			if len(r.Retr) != len(msgs) || len(r.Top) != len(msgs) {
				t.Fatalf("%d RETR and %d TOP results for %d messages", len(r.Retr), len(r.Top), len(msgs))
			}
			for i, m := range msgs {
				want := crlf(m)
				if got := r.Retr[i]; !bytes.Equal(got.Data, want) || got.Octets != len(want) {
					t.Errorf("RETR %d (%s): %d bytes (%d octets), want %d bytes; first line %q", i+1, got.Resp,
						len(got.Data), got.Octets, len(want), firstLine(got.Data))
				}
				if got, want := r.Top[i].Data, topOf(m, 2); !bytes.Equal(got, want) {
					t.Errorf("TOP %d 2: %q, want %q", i+1, got, want)
				}
			}
			if !strings.HasPrefix(r.Quit, "+OK") {
				t.Errorf("QUIT: %q", r.Quit)
			}
			checkLogin(t, p.nthLogin(n+1), u.Name, listener, mode == "stls" || mode == "pop3s")
		})
	}
	if got := u.Files(t); !slices.Equal(got, paths) {
		t.Errorf("Maildir changed by sessions that deleted nothing: %v, want %v", got, paths)
	}
}

// fetchmail downloads a mailbox through popgate, on plain POP3 (where it
// picks AUTH CRAM-MD5) and after STLS (with USER/PASS), delivering through
// an MDA; every delivered message must be the stored one (in LF form, as
// fetchmail delivers), and with `keep` the mailbox stays whole.
func TestFetchmail(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	fetchmail := testenv.LookPath(t, "fetchmail")
	// This popgate logs to a file (log { file = … }), not to stderr.
	logFile := filepath.Join(t.TempDir(), "popgate.log")
	p := startPopgate(t, dovecotConfig(d, configOpts{logFile: logFile}), logFile, "plain")
	host, port, _ := net.SplitHostPort(p.addr("plain"))
	for n, tc := range []struct {
		name string
		tls  bool
	}{{"plain", false}, {"STLS", true}} {
		t.Run(tc.name, func(t *testing.T) {
			msgs := corpus("fetchmail-" + tc.name)
			u, paths := newMailbox(t, d, msgs)
			home, outDir := t.TempDir(), t.TempDir()
			opts := "sslproto ''" // no TLS at all (fetchmail warns that STLS was offered)
			auth := ""            // fetchmail picks AUTH CRAM-MD5
			if tc.tls {
				opts = fmt.Sprintf("sslproto 'tls1.2+' sslcertck sslcertfile %s sslcommonname localhost", strconv.Quote(d.CAFile))
				auth = "auth password" // USER/PASS
			}
			rcFile := writeFetchmailRC(t, home, host, port, u, auth, "keep fetchall", opts, outDir)
			runClient(t, 60*time.Second, []string{"FETCHMAILHOME=" + home}, fetchmail, "-f", rcFile, "--nodetach")

			checkKeptDownload(t, "fetchmail with keep", readDir(t, outDir), msgs, u, paths)
			user := ""
			if tc.tls {
				user = u.Name // USER/PASS; the plain run uses CRAM-MD5
			}
			checkLogin(t, p.nthLogin(n+1), user, "plain", tc.tls)
			checkUpstreamTLS(t, d, u, 1, true) // popgate to Dovecot: STLS
		})
	}
}

// writeFetchmailRC writes a fetchmailrc into home for polling u at
// host:port: auth is empty (fetchmail picks AUTH CRAM-MD5) or an auth
// option, keep the keep and fetchall options, opts the TLS options; an MDA
// delivers each message to a file of its own in outDir.
func writeFetchmailRC(t *testing.T, home, host, port string, u *testenv.User, auth, keep, opts, outDir string) string {
	t.Helper()
	mda := fmt.Sprintf(`/bin/sh -c 'cat > %s/msg.$$'`, outDir)
	rc := fmt.Sprintf(`set no bouncemail
set invisible
set no syslog
poll %s port %s proto pop3 timeout 30 %s
  user %s password %s
  %s no rewrite %s
  mda %s
`, host, port, auth, strconv.Quote(u.Name), strconv.Quote(u.Password), keep, opts, strconv.Quote(mda))
	rcFile := filepath.Join(home, "fetchmailrc")
	if err := os.WriteFile(rcFile, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	return rcFile
}

// readDir returns the contents of the files in dir.
func readDir(t *testing.T, dir string) [][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// newMaildir makes an empty Maildir dir/Maildir for a client to deliver
// to.
func newMaildir(t *testing.T, dir string) string {
	t.Helper()
	maildir := filepath.Join(dir, "Maildir")
	for _, sub := range []string{"", "cur", "new", "tmp"} {
		if err := os.Mkdir(filepath.Join(maildir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return maildir
}

// readMaildir returns the messages delivered to a Maildir (new and cur).
func readMaildir(t *testing.T, maildir string) [][]byte {
	t.Helper()
	return append(readDir(t, filepath.Join(maildir, "new")), readDir(t, filepath.Join(maildir, "cur"))...)
}

// mpopArgs are the arguments for mpop to download u's mailbox from
// host:port into maildir, keeping the messages on the server or deleting
// them, with its state (password file, UIDLs) in dir; no Received header.
func mpopArgs(t *testing.T, host, port string, u *testenv.User, dir, maildir string, keep bool) []string {
	t.Helper()
	pwFile := filepath.Join(dir, "password")
	if err := os.WriteFile(pwFile, []byte(u.Password), 0o600); err != nil {
		t.Fatal(err)
	}
	k := "--keep=off"
	if keep {
		k = "--keep=on"
	}
	return []string{
		"--host=" + host, "--port=" + port, "--user=" + u.Name,
		"--passwordeval=cat '" + pwFile + "'",
		k, "--only-new=off", "--received-header=off", "--timeout=30",
		"--delivery=maildir," + maildir, "--uidls-file=" + filepath.Join(dir, "uidls"),
	}
}

// mpop downloads a mailbox through popgate into a Maildir: plain POP3 with
// USER/PASS, STLS and POP3S (where it picks AUTH PLAIN); popgate reaches
// Dovecot over implicit TLS here.
func TestMpop(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	mpop := testenv.LookPath(t, "mpop")
	p := startPopgate(t, dovecotConfig(d, configOpts{upstreamTLS: "implicit"}), "", "plain", "pop3s")
	for n, tc := range []struct {
		name, listener string
		args           []string
	}{
		{"plain", "plain", []string{"--auth=user", "--tls=off"}},
		{"STLS", "plain", []string{"--tls=on", "--tls-starttls=on", "--tls-trust-file=" + d.CAFile}},
		{"POP3S", "pop3s", []string{"--tls=on", "--tls-starttls=off", "--tls-trust-file=" + d.CAFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs := corpus("mpop-" + tc.name)
			u, paths := newMailbox(t, d, msgs)
			dir := t.TempDir()
			maildir := newMaildir(t, dir)
			host, port, _ := net.SplitHostPort(p.addr(tc.listener))
			args := append(mpopArgs(t, host, port, u, dir, maildir, true), "-Q")
			runClient(t, 60*time.Second, nil, mpop, append(args, tc.args...)...)

			checkKeptDownload(t, "mpop --keep", readMaildir(t, maildir), msgs, u, paths)
			checkLogin(t, p.nthLogin(n+1), u.Name, tc.listener, tc.name != "plain")
			checkUpstreamTLS(t, d, u, 1, true) // popgate to Dovecot: implicit TLS
		})
	}
}

// checkKeptDownload checks what a client that keeps mail on the server
// stored (got, in LF form): every message of msgs once, and the user's
// Maildir on Dovecot still holding every file.
func checkKeptDownload(t *testing.T, client string, got, msgs [][]byte, u *testenv.User, paths []string) {
	t.Helper()
	var want [][]byte
	for _, m := range msgs {
		want = append(want, lf(m))
	}
	if err := sameSet(got, want); err != nil {
		t.Fatal(err)
	}
	if files := u.Files(t); !slices.Equal(files, paths) {
		t.Errorf("Maildir after %s: %v, want %v", client, files, paths)
	}
}

package e2e

// The message memory (issue 11) with the real clients: each downloads a
// mailbox through a filtering policy twice, leaving the mail on the server
// the first time and deleting it the second. The second download is served
// from the memory: the same filtered forms, byte for byte as the client
// stores them, LIST sizes that are what RETR sends, no new quarantine
// record.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// twiceMailbox is a clean message with lines that need dot-stuffing, one
// with the EICAR file, one with an .exe attachment (strip removes it), and
// a second clean one; tag makes the Message-IDs unique per client.
func twiceMailbox(tag string) [][]byte {
	return [][]byte{
		cleanMsg(tag + "-1"),
		multipartMsg(tag+"-eicar", "the test file", textPart("see attached\n"),
			attachment("application/octet-stream", "eicar.com", []byte(testenv.EICAR))),
		multipartMsg(tag+"-exe", "your invoice", textPart("invoice attached\n"),
			attachment("application/octet-stream", "invoice.pdf.exe", []byte(fakeEXE))),
		cleanMsg(tag + "-2"),
	}
}

// twice is what a client's download function gets: the mailbox behind a
// popgate of its own, and a directory for the client's state that both runs
// share.
type twice struct {
	d          *testenv.DovecotEnv
	u          *testenv.User
	p          *popgateProc
	host, port string // popgate's plain listener
	dir        string
	msgs       [][]byte // as stored on the server
}

// download is one run of a client: keep leaves the mail on the server. It
// returns the messages as the client stored them, in the order it stored
// them where it has one, and everything the client printed (stdout and
// stderr, verbose where that is how the client reports trouble).
type download func(t *testing.T, s *twice, keep bool) (got [][]byte, output []byte)

// sizeWarning matches what the clients print when a message is not the
// size LIST said: fetchmail's "message u@host:1 was not the expected length
// (812 actual != 788 expected)", and anything else about a size mismatch.
var sizeWarning = regexp.MustCompile(`(?i)not the expected length|size mismatch|mismatch|differs|expected \d+|(warn|error)[^\n]*(size|octets|length)`)

func TestClientsDownloadTwice(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	clamd := testenv.Clamd(t)
	for _, c := range []struct {
		name, prog string
		run        download
	}{
		{"curl", "curl", curlTwice},
		{"poplib", "python3", poplibTwice},
		{"fetchmail", "fetchmail", fetchmailTwice},
		{"mpop", "mpop", mpopTwice},
		{"getmail6", "getmail", getmailTwice},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			testenv.LookPath(t, c.prog)
			qdir := filepath.Join(t.TempDir(), "quarantine")
			// The memory is on by default: embedded in the quarantine
			// directory.
			cfg := avConfig(t, d, avOpts{quarantine: qdir, clamd: clamd.TCP})
			msgs := twiceMailbox("twice-" + c.name)
			u, _ := newMailbox(t, d, msgs)
			p := startPopgate(t, cfg, "", "plain")
			host, port, _ := net.SplitHostPort(p.addr("plain"))
			s := &twice{d: d, u: u, p: p, host: host, port: port, dir: t.TempDir(), msgs: msgs}

			first, out1 := c.run(t, s, true)
			t.Logf("run 1 (keep) output:\n%s", out1)
			checkFiltered(t, "run 1", first, msgs)
			if m := sizeWarning.Find(out1); m != nil {
				t.Errorf("run 1: %s warned about a size: %q", c.name, m)
			}
			if got := u.Files(t); len(got) != len(msgs) {
				t.Fatalf("Maildir after run 1, which keeps the mail: %d files, want %d", len(got), len(msgs))
			}
			if n := metaFiles(t, qdir); n != 2 {
				t.Errorf("%d quarantine records after run 1, want 2 (the virus and the stripped attachment's original)", n)
			}
			// popgate remembers after answering: let the writes land.
			time.Sleep(500 * time.Millisecond)
			filtered := countEvents(p, "message filtered")

			second, out2 := c.run(t, s, false)
			t.Logf("run 2 (delete) output:\n%s", out2)
			checkFiltered(t, "run 2", second, msgs)
			if m := sizeWarning.Find(out2); m != nil {
				t.Errorf("run 2: %s warned about a size: %q", c.name, m)
			}
			if err := sameSet(second, first); err != nil {
				t.Errorf("run 2 did not store what run 1 did: %v", err)
				for i := range min(len(first), len(second)) {
					if !bytes.Equal(first[i], second[i]) {
						t.Logf("message %d:\n--- run 1\n%s\n--- run 2\n%s", i+1, first[i], second[i])
					}
				}
			}
			if n := countEvents(p, "message filtered") - filtered; n != 0 {
				t.Errorf("run 2 filtered %d messages again, want every one served from memory", n)
			}
			if n := countEvents(p, "message served from memory"); n < len(msgs) {
				t.Errorf("%d messages served from memory, want at least %d", n, len(msgs))
			}
			if n := metaFiles(t, qdir); n != 2 {
				t.Errorf("%d quarantine records after run 2, want still 2: the second download is served from memory", n)
			}
			waitEmpty(t, u)
		})
	}
}

// checkFiltered checks the messages a client stored against the filtered
// forms of msgs (twiceMailbox): the clean ones stamped and otherwise
// unchanged, the EICAR one a notice, the .exe attachment stripped.
func checkFiltered(t *testing.T, run string, got, msgs [][]byte) {
	t.Helper()
	if len(got) != len(msgs) {
		t.Errorf("%s: %d messages stored, want %d", run, len(got), len(msgs))
	}
	want := map[string]bool{}
	for _, m := range []int{0, 3} {
		want[string(lf(append([]byte(stampHeader), msgs[m]...)))] = true
	}
	var clean, notices, stripped int
	exe := []byte(b64Lines([]byte(fakeEXE))[:40])
	for i, g := range got {
		g = lf(stripClientHeaders(g))
		switch {
		case want[string(g)]:
			clean++
		case bytes.Contains(g, []byte("X-Popgate-Quarantine-ID:")):
			if _, ok := isNotice(g); !ok {
				t.Errorf("%s: message %d names a quarantine id but is not a notice:\n%s", run, i+1, g)
			}
			notices++
		case bytes.Contains(g, []byte("invoice attached")):
			if bytes.Contains(g, exe) || !bytes.Contains(g, []byte(stampHeader[:len(stampHeader)-2])) {
				t.Errorf("%s: message %d still holds the .exe attachment or is not stamped:\n%s", run, i+1, g)
			}
			stripped++
		default:
			t.Errorf("%s: message %d is none of the filtered forms:\n%s", run, i+1, g)
		}
		if containsEICAR(g) {
			t.Errorf("%s: message %d holds the EICAR file", run, i+1)
		}
	}
	if clean != 2 || notices != 1 || stripped != 1 {
		t.Errorf("%s: %d clean (stamped, unchanged), %d notices, %d stripped; want 2, 1, 1", run, clean, notices, stripped)
	}
}

// clientAdded are the header fields the clients put in front of a message
// they deliver: getmail's Return-Path (always), Delivered-To and Received
// (off here), fetchmail's and mpop's Received (off here).
var clientAdded = []string{"return-path", "delivered-to", "received", "x-getmail-retrieved-from-mailbox"}

// stripClientHeaders removes the fields in clientAdded from the top of a
// stored message, with their continuation lines.
func stripClientHeaders(msg []byte) []byte {
	for {
		name, _, ok := bytes.Cut(msg, []byte(":"))
		if !ok || !slices.Contains(clientAdded, strings.ToLower(string(name))) {
			return msg
		}
		for {
			i := bytes.IndexByte(msg, '\n')
			if i < 0 {
				return nil
			}
			msg = msg[i+1:]
			if len(msg) == 0 || (msg[0] != ' ' && msg[0] != '\t') {
				break
			}
		}
	}
}

// metaFiles counts the quarantine's records.
func metaFiles(t *testing.T, qdir string) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(qdir, "meta"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(ents)
}

func countEvents(p *popgateProc, message string) int {
	n := 0
	for _, e := range p.events() {
		if e.str("message") == message {
			n++
		}
	}
	return n
}

// waitEmpty waits until u's Maildir on the server is empty: the client's
// QUIT committed its deletions.
func waitEmpty(t *testing.T, u *testenv.User) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := u.Files(t)
		if len(got) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("Maildir on the server after run 2, which deletes: %d files left: %v", len(got), got)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkListed checks that the sizes LIST gave are those of the messages
// RETR sent (in CRLF form, un-dot-stuffed). Before the first download the
// memory knows nothing, and LIST gives the upstream's sizes, which is
// logged.
func checkListed(t *testing.T, keep bool, listed []int, got [][]byte) {
	t.Helper()
	if len(listed) != len(got) {
		t.Errorf("LIST gave %d messages, RETR %d", len(listed), len(got))
		return
	}
	for i, g := range got {
		if listed[i] == len(g) {
			continue
		}
		if keep {
			t.Logf("run 1: LIST %d says %d octets, RETR gave %d (the memory knows nothing yet)", i+1, listed[i], len(g))
		} else {
			t.Errorf("run 2: LIST %d says %d octets, RETR gave %d", i+1, listed[i], len(g))
		}
	}
}

// curl: LIST, then one session per message; deleting, a session with
// DELE 1 per message afterwards (each QUIT renumbers the rest).
func curlTwice(t *testing.T, s *twice, keep bool) ([][]byte, []byte) {
	var stderr bytes.Buffer
	curl := curlRunner(t, testenv.LookPath(t, "curl"), s.u, &stderr)
	url := "pop3://" + net.JoinHostPort(s.host, s.port)
	var listed []int
	for l := range strings.Lines(string(curl(url + "/"))) {
		f := strings.Fields(l)
		n, _ := strconv.Atoi(f[1])
		listed = append(listed, n)
	}
	var got [][]byte
	for i := range listed {
		got = append(got, curl(fmt.Sprintf("%s/%d", url, i+1)))
	}
	checkListed(t, keep, listed, got)
	if !keep {
		for range listed {
			curl("-X", "DELE 1", "-I", url+"/")
		}
	}
	return got, stderr.Bytes()
}

// poplib: pythonPOP (USER/PASS; STAT, LIST, UIDL, RETR and TOP of each),
// with DELE of each before QUIT when deleting.
func poplibTwice(t *testing.T, s *twice, keep bool) ([][]byte, []byte) {
	dele := "0"
	if !keep {
		dele = "1"
	}
	out, errOut := runClientBoth(t, 60*time.Second, []string{
		"POP_MODE=user", "POP_HOST=" + s.host, "POP_PORT=" + s.port, "POP_DELE=" + dele,
		"POP_USER=" + s.u.Name, "POP_PASS=" + s.u.Password, "POP_CA=" + s.d.CAFile,
	}, testenv.LookPath(t, "python3"), "-c", pythonPOP)
	var r pyResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("python output: %v\n%s", err, out)
	}
	var listed []int
	for _, l := range r.List {
		n, _ := strconv.Atoi(strings.Fields(l)[1])
		listed = append(listed, n)
	}
	var got [][]byte
	total := 0
	for i, m := range r.Retr {
		got = append(got, m.Data)
		total += len(m.Data)
		if m.Octets != len(m.Data) {
			t.Errorf("RETR %d: poplib counted %d octets for %d bytes", i+1, m.Octets, len(m.Data))
		}
		if i < len(r.Top) && !bytes.Equal(r.Top[i].Data, topOf(m.Data, 2)) {
			t.Errorf("TOP %d 2 is not the start of what RETR %d gave:\n%q\nwant\n%q", i+1, i+1, r.Top[i].Data, topOf(m.Data, 2))
		}
	}
	checkListed(t, keep, listed, got)
	if !keep && (len(r.Stat) != 2 || r.Stat[1] != total) {
		t.Errorf("run 2: STAT %v, RETR gave %d octets in all", r.Stat, total)
	}
	if !keep && len(r.Dele) != len(got) {
		t.Errorf("run 2: %d DELE answers for %d messages: %q", len(r.Dele), len(got), r.Dele)
	}
	return got, errOut
}

// fetchmail: verbose, through an MDA; `keep fetchall` the first time,
// `fetchall` (deleting) the second. fetchmail compares each message with
// the size LIST gave and says so when they differ.
func fetchmailTwice(t *testing.T, s *twice, keep bool) ([][]byte, []byte) {
	home, outDir := filepath.Join(s.dir, "fetchmail"), t.TempDir()
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	k := "fetchall"
	if keep {
		k = "keep fetchall"
	}
	rc := writeFetchmailRC(t, home, s.host, s.port, s.u, "auth password", k, "sslproto ''", outDir)
	out, errOut := runClientBoth(t, 60*time.Second, []string{"FETCHMAILHOME=" + home},
		testenv.LookPath(t, "fetchmail"), "-v", "-f", rc, "--nodetach")
	// -v shows the protocol: "POP3< +OK 1 268" answers LIST 1, "POP3< +OK
	// 292 octets" RETR 1.
	var listed, sent []int
	for _, m := range fetchmailList.FindAllStringSubmatch(string(out), -1) {
		n, _ := strconv.Atoi(m[1])
		listed = append(listed, n)
	}
	for _, m := range fetchmailRetr.FindAllStringSubmatch(string(out), -1) {
		n, _ := strconv.Atoi(m[1])
		sent = append(sent, n)
	}
	checkSizes(t, keep, listed, sent)
	return readDir(t, outDir), append(out, errOut...)
}

var (
	fetchmailList = regexp.MustCompile(`POP3> LIST \d+\n.*POP3< \+OK \d+ (\d+)`)
	fetchmailRetr = regexp.MustCompile(`POP3> RETR \d+\n.*POP3< \+OK (\d+) octets`)
)

// checkSizes checks that LIST gave the sizes the messages had as sent (in
// CRLF form), as a multiset: listed and sent need not be in the same order.
// The first time, the memory knows nothing yet and LIST gives the
// upstream's sizes: that is logged.
func checkSizes(t *testing.T, keep bool, listed, sent []int) {
	t.Helper()
	l, s := slices.Sorted(slices.Values(listed)), slices.Sorted(slices.Values(sent))
	switch {
	case len(l) != len(s) || len(l) == 0:
		t.Errorf("sizes listed %v, messages sent %v", listed, sent)
	case slices.Equal(l, s):
	case keep:
		t.Logf("run 1: sizes listed %v, messages sent %v (the memory knows nothing yet)", listed, sent)
	default:
		t.Errorf("run 2: sizes listed %v, messages sent %v", listed, sent)
	}
}

// mpop: into a Maildir, --keep=on then --keep=off, no Received header, not
// quiet (mpop reports trouble on stderr).
func mpopTwice(t *testing.T, s *twice, keep bool) ([][]byte, []byte) {
	dir := filepath.Join(s.dir, "mpop")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	maildir := newMaildir(t, t.TempDir())
	out, errOut := runClientBoth(t, 60*time.Second, nil, testenv.LookPath(t, "mpop"),
		append(mpopArgs(t, s.host, s.port, s.u, dir, maildir, keep), "--auth=user", "--tls=off")...)
	got := readMaildir(t, maildir)
	// "retrieving message 1 of 4 (263 bytes)": the size LIST gave. mpop
	// stores the message as sent, in LF form, and adds nothing here.
	var listed, sent []int
	for _, g := range got {
		sent = append(sent, len(crlf(g)))
	}
	for i, m := range mpopSizes.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		n := int(v)
		if m[2] == "KiB" {
			// mpop prints sizes from 1024 bytes on as KiB with two
			// decimals: equal to what was sent within that rounding.
			n = int(v*1024 + 0.5)
			if i < len(sent) && n-sent[i] <= 6 && sent[i]-n <= 6 {
				n = sent[i]
			}
		}
		listed = append(listed, n)
	}
	checkSizes(t, keep, listed, sent)
	return got, append(out, errOut...)
}

var mpopSizes = regexp.MustCompile(`retrieving message \d+ of \d+ \(([\d.]+) (bytes|KiB)\)`)

// getmail6: SimplePOP3Retriever, verbose, read_all, no Delivered-To or
// Received header (it adds Return-Path whatever it is told); delete =
// false, then true. It delivers through an MDA as fetchmail does: its
// Maildir destination refuses to deliver as root, as the tests may run.
func getmailTwice(t *testing.T, s *twice, keep bool) ([][]byte, []byte) {
	home, outDir := filepath.Join(s.dir, "getmail"), t.TempDir()
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	rc := fmt.Sprintf(`[retriever]
type = SimplePOP3Retriever
server = %s
port = %s
username = %s
password = %s

[destination]
type = MDA_external
path = /bin/sh
arguments = ("-c", "cat > %s/msg.$$")
allow_root_commands = true

[options]
verbose = 2
read_all = true
delete = %t
delivered_to = false
received = false
message_log = %s
`, s.host, s.port, s.u.Name, s.u.Password, outDir, !keep, filepath.Join(home, "log"))
	if err := os.WriteFile(filepath.Join(home, "getmailrc"), []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut := runClientBoth(t, 60*time.Second, nil, testenv.LookPath(t, "getmail"),
		"--getmaildir", home, "--rcfile", "getmailrc")
	return readDir(t, outDir), append(out, errOut...)
}

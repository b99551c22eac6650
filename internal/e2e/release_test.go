package e2e

// Quarantine release (issue 12) end to end: the real binary, Dovecot (POP3
// and LMTP) and clamd. Messages are downloaded through popgate and deleted,
// released with `popgate quarantine release`, a release link or the admin
// API, and downloaded again through popgate.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/quotedprintable"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/filters/quarantine/release"
	"github.com/popgate/popgate/internal/testenv"
)

// releaseMailbox: the EICAR file (held by "av", the administrator's to
// release), an .exe attachment ("dangerous" strips it; the user's to
// release) and a clean message.
func releaseMailbox() [][]byte {
	return [][]byte{
		multipartMsg("rel-eicar", "the test file", textPart("see attached\n"),
			attachment("text/plain", "test-file.txt", []byte(testenv.EICAR))),
		multipartMsg("rel-exe", "your invoice", textPart("invoice attached\n"),
			attachment("application/octet-stream", "invoice.pdf.exe", []byte(fakeEXE))),
		cleanMsg("rel-clean"),
	}
}

// releaseSetup is a popgate in front of the test Dovecot whose upstream
// releases through lmtp (an address: Dovecot's LMTP, or a fault relay in
// front of it), with its configuration also in a file for the commands.
type releaseSetup struct {
	d       *testenv.DovecotEnv
	qdir    string
	cfg     string
	cfgPath string
}

func newReleaseSetup(t *testing.T, d *testenv.DovecotEnv, qdir, lmtp, extra string, quarantineExtra string) *releaseSetup {
	t.Helper()
	up := "  release {\n    via       = \"mailbox\"\n    recipient = \"%n@example.com\"\n  }\n"
	cfg := avConfig(t, d, avOpts{quarantine: qdir, upstreamExtra: up, quarantineExtra: quarantineExtra}) +
		fmt.Sprintf("delivery \"mailbox\" {\n  address  = %s\n  protocol = \"lmtp\"\n  timeout  = \"3s\"\n}\n", hclString(lmtp)) + extra
	path := filepath.Join(t.TempDir(), "popgate.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return &releaseSetup{d: d, qdir: qdir, cfg: cfg, cfgPath: path}
}

// heldRecord is what the tests read of a quarantine record.
type heldRecord struct {
	ID   string   `json:"id"`
	User string   `json:"user"`
	Held []string `json:"held"`
}

// records reads the quarantine's records by the filter that held them.
func (s *releaseSetup) records(t *testing.T) map[string]heldRecord {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(s.qdir, "meta", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]heldRecord{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var r heldRecord
		if err := json.Unmarshal(b, &r); err != nil || len(r.Held) != 1 {
			t.Fatalf("record %s: %v (%s)", f, err, b)
		}
		out[r.Held[0]] = r
	}
	return out
}

// original exports a quarantined original.
func (s *releaseSetup) original(t *testing.T, id string) []byte {
	t.Helper()
	out, errOut, code := runPopgate(t, "quarantine", "export", "-c", s.cfgPath, id)
	if code != 0 {
		t.Fatalf("export %s: exit %d: %s", id, code, errOut)
	}
	return []byte(out)
}

// mailboxFiles counts the messages in u's Maildir.
func mailboxFiles(t *testing.T, u *testenv.User) int {
	t.Helper()
	return len(u.Files(t))
}

// checkReleased checks a message downloaded after a release: it ends with
// the quarantined original, byte for byte, right below the release mark,
// and the filters that did not hold it still ran (the stamp).
func checkReleased(t *testing.T, got, original []byte, id string) {
	t.Helper()
	mark := regexp.MustCompile(`(?m)^X-Popgate-Released: id=` + regexp.QuoteMeta(id) + `; filters=[a-z]+; mac=[A-Za-z0-9_-]+\r\n\z`)
	head, ok := bytes.CutSuffix(got, original)
	switch {
	case !ok:
		t.Errorf("released %s: the download does not end with the quarantined original:\n%s", id, got)
	case !mark.Match(head):
		t.Errorf("released %s: no release mark right above the original:\n%s", id, head)
	case !bytes.HasPrefix(got, []byte(stampHeader)):
		t.Errorf("released %s: the filters that did not hold it did not run (no stamp):\n%s", id, head)
	}
}

// The acceptance flow: EICAR and a banned attachment downloaded (notice,
// stripped form) and deleted, released from the command line, downloaded
// again intact and not held again; a second release delivers nothing; a
// forged copy is caught.
func TestReleaseEndToEnd(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	s := newReleaseSetup(t, d, filepath.Join(t.TempDir(), "quarantine"), d.LMTP, "", "")
	u, _ := newMailbox(t, d, releaseMailbox())
	p := startPopgate(t, s.cfg, "", "plain")

	first := downloadAndDelete(t, p.addr("plain"), u)
	if _, ok := isNotice(first[0]); !ok {
		t.Fatalf("message 1 is not a notice:\n%s", first[0])
	}
	if bytes.Contains(first[1], []byte(b64Lines([]byte(fakeEXE))[:40])) {
		t.Fatalf("message 2 kept its .exe:\n%s", first[1])
	}
	waitDovecotIdle(t, d, u)
	if n := mailboxFiles(t, u); n != 0 {
		t.Fatalf("%d messages left after DELE and QUIT", n)
	}
	recs := s.records(t)
	if len(recs) != 2 || recs["av"].ID == "" || recs["dangerous"].ID == "" {
		t.Fatalf("quarantine records: %+v", recs)
	}

	for _, filter := range []string{"av", "dangerous"} {
		id := recs[filter].ID
		out, errOut, code := runPopgate(t, "quarantine", "release", "-c", s.cfgPath, id)
		if want := fmt.Sprintf("released %s to %s@example.com\n", id, u.Name); code != 0 || out != want {
			t.Fatalf("release %s: exit %d, %q %s; want %q", id, code, out, errOut, want)
		}
	}
	out, _, code := runPopgate(t, "quarantine", "release", "-c", s.cfgPath, recs["av"].ID)
	if code != 0 || !strings.Contains(out, "was released before") || !strings.Contains(out, "nothing delivered") {
		t.Errorf("a second release: exit %d, %q", code, out)
	}
	if n := mailboxFiles(t, u); n != 2 {
		t.Fatalf("%d messages in the mailbox after releasing two (one of them twice), want 2", n)
	}

	second := downloadAndDelete(t, p.addr("plain"), u)
	if len(second) != 2 {
		t.Fatalf("%d messages after the release, want 2", len(second))
	}
	originals := map[string][]byte{}
	for _, filter := range []string{"av", "dangerous"} {
		id := recs[filter].ID
		originals[filter] = s.original(t, id)
		found := false
		for _, got := range second {
			if bytes.Contains(got, []byte("X-Popgate-Released: id="+id)) {
				found = true
				checkReleased(t, got, originals[filter], id)
			}
		}
		if !found {
			t.Errorf("released %s (%s) did not come back", id, filter)
		}
	}
	if !containsEICAR(bytes.Join(second, nil)) {
		t.Error("the released EICAR message came back without the file")
	}
	if n := quarantineRecords(t, s.qdir); n != 2 {
		t.Errorf("%d quarantine records after downloading the released copies, want still 2", n)
	}

	// A forged copy: the mark of the released EICAR message over other
	// content (another subject, the same file) comes from outside.
	var mark []byte
	for _, got := range second {
		if i := bytes.Index(got, []byte("X-Popgate-Released: id="+recs["av"].ID)); i >= 0 {
			mark = got[i : i+bytes.Index(got[i:], []byte("\r\n"))+2]
		}
	}
	forged := append(append([]byte{}, mark...), bytes.Replace(originals["av"], []byte("the test file"), []byte("the test file!"), 1)...)
	u.AddMessages(t, forged)
	third := downloadAndDelete(t, p.addr("plain"), u)
	if len(third) != 1 {
		t.Fatalf("%d messages, want the forged one", len(third))
	}
	if _, ok := isNotice(third[0]); !ok {
		t.Errorf("a forged release mark let the EICAR file through:\n%s", third[0])
	}
	if n := quarantineRecords(t, s.qdir); n != 3 {
		t.Errorf("%d quarantine records after the forged copy, want 3", n)
	}
}

// freePort returns a loopback port nobody listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// noticeText is the decoded text of a notice (quoted-printable).
func noticeText(t *testing.T, notice []byte) string {
	t.Helper()
	_, body, ok := bytes.Cut(notice, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("no body in the notice:\n%s", notice)
	}
	b, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The release link of a stripped attachment (the user's to release; the
// virus's notice carries no link: only an administrator releases viruses):
// GET shows a page and releases nothing, POST releases, a second POST
// delivers nothing, an altered or expired link is refused, a link for the
// virus is refused. Then the admin API, with curl.
func TestReleaseLinkAndAPI(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	httpAddr := freePort(t)
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	const token = "0123456789abcdef0123456789abcdef"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	metrics := fmt.Sprintf("metrics {\n  address = %s\n  admin_token_file = %s\n}\n", hclString(httpAddr), hclString(tokenFile))
	link := fmt.Sprintf("  release {\n    link_url = %s\n    link_ttl = \"1h\"\n  }\n", hclString("http://"+httpAddr))
	s := newReleaseSetup(t, d, filepath.Join(t.TempDir(), "quarantine"), d.LMTP, metrics, link)
	u, _ := newMailbox(t, d, releaseMailbox())
	p := startPopgate(t, s.cfg, "", "plain")

	first := downloadAndDelete(t, p.addr("plain"), u)
	waitDovecotIdle(t, d, u)
	if strings.Contains(noticeText(t, first[0]), "/release/") {
		t.Errorf("the virus's notice offers the user a release link:\n%s", noticeText(t, first[0]))
	}
	// A stripped message is delivered, not replaced by a notice: its link
	// reaches the user in the digest (notify). Mint it as the digest does.
	recs := s.records(t)
	keys, err := release.LoadKeys(filepath.Join(s.qdir, "release.key"))
	if err != nil {
		t.Fatal(err)
	}
	pageURL := "http://" + httpAddr + "/release/" + keys.Link(recs["dangerous"].ID, time.Now().Add(time.Hour))

	client := &http.Client{Timeout: 10 * time.Second}
	get := func(u string) (int, string) {
		t.Helper()
		resp, err := client.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	post := func(u string) (int, string) {
		t.Helper()
		resp, err := client.PostForm(u, url.Values{})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(pageURL); code != http.StatusOK || !strings.Contains(body, "<form") || !strings.Contains(body, `method="post"`) {
		t.Fatalf("GET of the release link: %d\n%s", code, body)
	}
	if n := mailboxFiles(t, u); n != 0 {
		t.Fatalf("a GET released the message (%d in the mailbox)", n)
	}
	if code, body := post(pageURL); code != http.StatusOK {
		t.Fatalf("POST of the release link: %d\n%s", code, body)
	}
	if n := mailboxFiles(t, u); n != 1 {
		t.Fatalf("%d messages after the POST, want 1", n)
	}
	if code, body := post(pageURL); code != http.StatusOK || !strings.Contains(strings.ToLower(body), "already") {
		t.Errorf("a second POST: %d\n%s", code, body)
	}
	if n := mailboxFiles(t, u); n != 1 {
		t.Errorf("%d messages after a second POST, want still 1", n)
	}
	altered := []byte(pageURL)
	altered[len(altered)-5] ^= 0x01
	if code, _ := get(string(altered)); code != http.StatusForbidden && code != http.StatusNotFound {
		t.Errorf("an altered link: %d, want 403 or 404", code)
	}
	expired := "http://" + httpAddr + "/release/" + keys.Link(recs["dangerous"].ID, time.Now().Add(-time.Minute))
	if code, _ := post(expired); code != http.StatusGone {
		t.Errorf("an expired link: %d, want 410", code)
	}
	virusLink := "http://" + httpAddr + "/release/" + keys.Link(recs["av"].ID, time.Now().Add(time.Hour))
	if code, _ := post(virusLink); code != http.StatusForbidden {
		t.Errorf("a user link for the virus: %d, want 403", code)
	}

	// The admin API, with curl as the client.
	api := "http://" + httpAddr + "/api/v1/quarantine"
	if out, _, _ := runClientErr(t, 20*time.Second, nil, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", api); string(out) != "401" {
		t.Errorf("the admin API without a token: %s, want 401", out)
	}
	auth := "Authorization: Bearer " + token
	out, _, err := runClientErr(t, 20*time.Second, nil, "curl", "-sf", "-H", auth, api+"?user="+u.Name)
	if err != nil || !bytes.Contains(out, []byte(recs["av"].ID)) {
		t.Fatalf("admin list: %v\n%s", err, out)
	}
	out, _, err = runClientErr(t, 20*time.Second, nil, "curl", "-sf", "-X", "POST", "-H", auth, api+"/"+recs["av"].ID+"/release")
	if err != nil || mailboxFiles(t, u) != 2 {
		t.Fatalf("admin release: %v\n%s", err, out)
	}
	if _, _, err = runClientErr(t, 20*time.Second, nil, "curl", "-sf", "-X", "DELETE", "-H", auth, api+"/"+recs["dangerous"].ID); err != nil {
		t.Fatalf("admin delete: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.qdir, "meta", recs["dangerous"].ID+".json")); !os.IsNotExist(err) {
		t.Errorf("the deleted record is still there: %v", err)
	}
	// The process's profiles, behind the same token, for go tool pprof.
	profiles := "http://" + httpAddr + "/api/v1/debug/pprof/"
	if out, _, _ := runClientErr(t, 20*time.Second, nil, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", profiles+"heap"); string(out) != "401" {
		t.Errorf("a heap profile without the token: %s, want 401", out)
	}
	for _, p := range []string{"heap", "profile?seconds=1"} {
		out, _, err := runClientErr(t, 20*time.Second, nil, "curl", "-sf", "-H", auth, profiles+p)
		if err != nil || !bytes.HasPrefix(out, []byte{0x1f, 0x8b}) {
			t.Errorf("%s with the token: %v, %d bytes that are not a pprof profile", p, err, len(out))
		}
	}
	// The access log names no user, no token, no subject.
	logs := p.output()
	for _, secret := range []string{strings.TrimPrefix(pageURL, "http://"+httpAddr+"/release/"), "your invoice", token} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log holds %q", secret)
		}
	}
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"route"`) && strings.Contains(l, u.Name) {
			t.Errorf("an access log line names the user: %s", l)
		}
	}
}

// Faults of the delivery: the LMTP server down, refusing the recipient,
// the connection lost mid-DATA, or the server taking the message and never
// answering. The record stays held, the command says why, and nothing is
// delivered twice.
func TestReleaseFaults(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	qdir := filepath.Join(t.TempDir(), "quarantine")
	base := newReleaseSetup(t, d, qdir, d.LMTP, "", "")
	virus := func(tag string) []byte {
		return multipartMsg(tag, "the test file", textPart("see attached\n"),
			attachment("text/plain", "test-file.txt", []byte(testenv.EICAR)))
	}
	u, _ := newMailbox(t, d, [][]byte{virus("rel-fault-1"), virus("rel-fault-2")})
	p := startPopgate(t, base.cfg, "", "plain")
	downloadAndDelete(t, p.addr("plain"), u)
	waitDovecotIdle(t, d, u)
	metas, err := filepath.Glob(filepath.Join(qdir, "meta", "*.json"))
	if err != nil || len(metas) != 2 {
		t.Fatalf("quarantine records: %v, %v", metas, err)
	}
	id1 := strings.TrimSuffix(filepath.Base(metas[0]), ".json")
	id2 := strings.TrimSuffix(filepath.Base(metas[1]), ".json")
	releaseVia := func(lmtp, id string, args ...string) (string, int) {
		t.Helper()
		s := newReleaseSetup(t, d, qdir, lmtp, "", "")
		out, errOut, code := runPopgate(t, append([]string{"quarantine", "release", "-c", s.cfgPath}, append(args, id)...)...)
		return out + errOut, code
	}
	state := func(id string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(qdir, "release", id+".json"))
		if os.IsNotExist(err) {
			return "none"
		}
		var st struct{ State string }
		if err != nil || json.Unmarshal(b, &st) != nil {
			t.Fatalf("release state of %s: %v %s", id, err, b)
		}
		return st.State
	}
	check := func(what, id, wantState string, wantCopies int) {
		t.Helper()
		if got := state(id); got != wantState {
			t.Errorf("%s: release state %s, want %s", what, got, wantState)
		}
		if n := mailboxFiles(t, u); n != wantCopies {
			t.Errorf("%s: %d messages in the mailbox, want %d", what, n, wantCopies)
		}
	}

	// Down: nothing listens.
	out, code := releaseVia(freePort(t), id1)
	if code != 1 || !strings.Contains(out, "connect") {
		t.Errorf("LMTP down: exit %d, %q", code, out)
	}
	check("LMTP down", id1, "none", 0)

	// The recipient refused: the mapping names a user Dovecot does not have.
	s := newReleaseSetup(t, d, qdir, d.LMTP, "", "")
	badRcpt := strings.Replace(s.cfg, `recipient = "%n@example.com"`, `recipient = "%n-nobody@example.com"`, 1)
	if err := os.WriteFile(s.cfgPath, []byte(badRcpt), 0o600); err != nil {
		t.Fatal(err)
	}
	o, e, code := runPopgate(t, "quarantine", "release", "-c", s.cfgPath, id1)
	if code != 1 || !strings.Contains(o+e, "550") {
		t.Errorf("recipient refused: exit %d, %q", code, o+e)
	}
	check("recipient refused", id1, "none", 0)

	// The connection lost mid-DATA. popgate cannot know whether the server
	// got the final dot before the loss (here it did not), so the release
	// is uncertain: kept held, and a plain retry delivers nothing. (A
	// server that stops reading mid-DATA, so that the dot is never
	// written, is a certain failure: internal/mailer's test.)
	relay := testenv.NewRelay(t, d.LMTP)
	relay.SetFaults(testenv.Fault{Dir: testenv.ToTarget, After: "DATA\r\n", Offset: 200, Action: testenv.Cut})
	out, code = releaseVia(relay.Addr(), id1)
	if code != 1 || relay.Fired() == 0 || !strings.Contains(out, "--force") {
		t.Errorf("cut mid-DATA: exit %d, fired %d, %q", code, relay.Fired(), out)
	}
	check("cut mid-DATA", id1, "uncertain", 0)
	relay.SetFaults()
	if out, code = releaseVia(relay.Addr(), id1); code != 1 || !strings.Contains(out, "uncertain") {
		t.Errorf("a retry after an uncertain delivery: exit %d, %q", code, out)
	}
	check("retry after cut mid-DATA", id1, "uncertain", 0)
	// The administrator looked at the mailbox: it did not arrive.
	if out, code = releaseVia(d.LMTP, id1, "--force"); code != 0 {
		t.Errorf("release --force: exit %d, %q", code, out)
	}
	check("release --force", id1, "released", 1)
	if out, code = releaseVia(d.LMTP, id1); code != 0 || !strings.Contains(out, "released before") {
		t.Errorf("a release after --force: exit %d, %q", code, out)
	}
	check("release after --force", id1, "released", 1)

	// The server takes the whole message (it is delivered) and never
	// answers: uncertain, and a plain retry must not deliver it again.
	relay.SetFaults(testenv.Fault{Dir: testenv.ToClient, After: "354 ", Offset: int64(len("354 OK\r\n")), Action: testenv.Stall})
	out, code = releaseVia(relay.Addr(), id2)
	if code != 1 || !strings.Contains(out, "--force") {
		t.Errorf("no answer after the message: exit %d, %q", code, out)
	}
	waitFor(t, "the delivery to land", func() bool { return mailboxFiles(t, u) == 2 })
	relay.SetFaults()
	if out, code = releaseVia(relay.Addr(), id2); code != 1 || !strings.Contains(out, "uncertain") {
		t.Errorf("a retry after the unanswered delivery: exit %d, %q", code, out)
	}
	check("retry after no answer", id2, "uncertain", 2)
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// readMailbox returns the messages in u's Maildir.
func readMailbox(t *testing.T, u *testenv.User) []string {
	t.Helper()
	var out []string
	for _, f := range u.Files(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// Notifications through the real LMTP: the administrator gets one digest
// for a burst of held messages, the user a digest of what was held for
// them (with a release link for the stripped attachment, none for the
// virus); a purged original still gets its notice on the next download,
// from the message memory.
func TestNotifyAndRetention(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	admin := d.NewUser(t)
	registerUser(admin)
	httpAddr := freePort(t)
	extra := fmt.Sprintf(`notify {
  via            = "mailbox"
  admin          = [%s]
  admin_delay    = "1s"
  admin_interval = "1h"
  user_digest    = "3s"
}
metrics {
  address = %s
}
`, hclString(admin.Name+"@example.com"), hclString(httpAddr))
	link := fmt.Sprintf("  release {\n    link_url = %s\n  }\n", hclString("http://"+httpAddr))
	qdir := filepath.Join(t.TempDir(), "quarantine")
	s := newReleaseSetup(t, d, qdir, d.LMTP, extra, link)
	msgs := releaseMailbox()
	for i := range 4 { // a burst: five viruses in all
		msgs = append(msgs, multipartMsg(fmt.Sprintf("burst-%d", i), "burst", textPart("x\n"),
			attachment("text/plain", "test-file.txt", []byte(testenv.EICAR))))
	}
	u, _ := newMailbox(t, d, msgs)
	p := startPopgate(t, s.cfg, "", "plain")
	downloadAndDelete(t, p.addr("plain"), u)
	waitDovecotIdle(t, d, u)

	waitFor(t, "the admin digest", func() bool { return len(admin.Files(t)) > 0 })
	time.Sleep(2 * time.Second) // no second admin mail within the interval
	adminMail := readMailbox(t, admin)
	if len(adminMail) != 1 || !strings.Contains(adminMail[0], "[popgate] 6 message(s) held") {
		t.Errorf("admin digests: %d, want one for the six held messages:\n%s", len(adminMail), strings.Join(adminMail, "\n---\n"))
	}
	waitFor(t, "the user digest", func() bool { return len(u.Files(t)) > 0 })
	userMail := readMailbox(t, u)
	if len(userMail) != 1 || !strings.Contains(userMail[0], "held for you") {
		t.Fatalf("user digests: %d:\n%s", len(userMail), strings.Join(userMail, "\n---\n"))
	}
	text := noticeText(t, []byte(strings.ReplaceAll(userMail[0], "\n", "\r\n")))
	if !strings.Contains(text, "your invoice") || !strings.Contains(text, "invoice.pdf.exe") || !strings.Contains(text, "http://"+httpAddr+"/release/") {
		t.Errorf("the user digest lacks the stripped message or its link:\n%s", text)
	}
	if strings.Count(text, "/release/") != 1 {
		t.Errorf("the user digest offers links for what only an administrator releases:\n%s", text)
	}

	// Retention: purge everything, then download the virus again (it was
	// deleted: put it back as the same message under a new name keeps no
	// UIDL, so use a leave-on-server mailbox instead).
	v := d.NewUser(t)
	registerUser(v)
	v.AddMessages(t, msgs[0])
	_, before := downloadAll(t, p.addr("plain"), v, false)
	time.Sleep(1100 * time.Millisecond)
	if out, errOut, code := runPopgate(t, "quarantine", "purge", "-c", s.cfgPath, "--older-than", "1s"); code != 0 {
		t.Fatalf("purge: exit %d: %s %s", code, out, errOut)
	}
	if n := quarantineRecords(t, qdir); n != 0 {
		t.Fatalf("%d records after purging everything", n)
	}
	_, after := downloadAll(t, p.addr("plain"), v, false)
	if _, ok := isNotice(after[0]); !ok || !bytes.Equal(before[0], after[0]) {
		t.Errorf("a purged message's next download: not its notice:\n%s", after[0])
	}
	if n := quarantineRecords(t, qdir); n != 0 {
		t.Errorf("the download after the purge quarantined again (%d records)", n)
	}
}

// Two instances sharing the quarantine directory: a message held through
// one is released by links opened on both at once (one delivery), its
// released copy passes through the other, and the other's admin API
// deletes what the first held.
func TestReleaseTwoInstances(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	qdir := filepath.Join(t.TempDir(), "quarantine")
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	const token = "fedcba9876543210fedcba9876543210"
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	// Instances that share a quarantine share the memory through Redis
	// (the embedded one is a file only one process opens).
	memoryBlock := fmt.Sprintf("memory {\n  store = \"redis\"\n  redis {\n    address = %s\n  }\n}\n", hclString(testenv.Redis(t)))
	instance := func() (*popgateProc, string) {
		addr := freePort(t)
		extra := fmt.Sprintf("metrics {\n  address = %s\n  admin_token_file = %s\n}\n", hclString(addr), hclString(tokenFile)) + memoryBlock
		s := newReleaseSetup(t, d, qdir, d.LMTP, extra, "")
		return startPopgate(t, s.cfg, "", "plain"), addr
	}
	a, aHTTP := instance()
	b, bHTTP := instance()
	u, _ := newMailbox(t, d, releaseMailbox())
	downloadAndDelete(t, a.addr("plain"), u)
	waitDovecotIdle(t, d, u)
	s := &releaseSetup{qdir: qdir}
	recs := s.records(t)
	keys, err := release.LoadKeys(filepath.Join(qdir, "release.key"))
	if err != nil {
		t.Fatal(err)
	}
	token1 := keys.Link(recs["dangerous"].ID, time.Now().Add(time.Hour))
	codes := make(chan int, 2)
	for _, addr := range []string{aHTTP, bHTTP} {
		go func() {
			resp, err := http.PostForm("http://"+addr+"/release/"+token1, url.Values{})
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	got := []int{<-codes, <-codes}
	// One delivers; the other finds it released (200) or in progress (409).
	for _, c := range got {
		if c != http.StatusOK && c != http.StatusConflict {
			t.Errorf("link POSTs on both instances: %v", got)
		}
	}
	waitFor(t, "the release", func() bool { return mailboxFiles(t, u) >= 1 })
	time.Sleep(500 * time.Millisecond)
	if n := mailboxFiles(t, u); n != 1 {
		t.Fatalf("%d copies after releasing through both instances at once, want 1", n)
	}
	back := downloadAndDelete(t, b.addr("plain"), u)
	if len(back) != 1 || !bytes.Contains(back[0], []byte(b64Lines([]byte(fakeEXE))[:40])) {
		t.Errorf("the released copy through the other instance lost its attachment:\n%s", back)
	}
	req, _ := http.NewRequest(http.MethodDelete, "http://"+bHTTP+"/api/v1/quarantine/"+recs["av"].ID, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || quarantineRecords(t, qdir) != 1 {
		t.Errorf("delete through the other instance: %d, %d records left", resp.StatusCode, quarantineRecords(t, qdir))
	}
}

// A message held as spam and released is learned as ham by rspamd: the
// administrator said it was not spam. (rspamd answers "already learned"
// when it is taught the same message again.)
func TestReleaseLearnsHam(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	r := testenv.Rspamd(t)
	qdir := filepath.Join(t.TempDir(), "quarantine")
	up := "  release {\n    via       = \"mailbox\"\n    recipient = \"%n@example.com\"\n  }\n"
	cfg := dovecotConfig(d, configOpts{upstreamTLS: "none", upstreamExtra: up}) + fmt.Sprintf(`scanner "rspamd" "rspamd" {
  addresses           = [%s]
  controller          = %s
  controller_password = %s
}
filter "spam" "spam" {
  scanner          = "rspamd"
  tag_above        = 1
  quarantine_above = 2 # the test rspamd gives every message 2.5 (no sender address): all are held
}
policy "default" {
  chain = ["spam"]
}
quarantine {
  dir = %s
}
delivery "mailbox" {
  address  = %s
  protocol = "lmtp"
}
`, hclString("http://"+r.Addr), hclString("http://"+r.Controller), hclString(r.Password), hclString(qdir), hclString(d.LMTP))
	path := filepath.Join(t.TempDir(), "popgate.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf("Dear colleague, the quarterly planning meeting moves to Thursday afternoon in the large conference room; please bring the budget figures and the staffing proposal (%d).\n", time.Now().UnixNano())
	u, _ := newMailbox(t, d, [][]byte{multipartMsg("learn-ham", "planning meeting", textPart(text))})
	p := startPopgate(t, cfg, "", "plain")
	got := downloadAndDelete(t, p.addr("plain"), u)
	if _, ok := isNotice(got[0]); !ok {
		t.Fatalf("the message was not held as spam:\n%s", got[0])
	}
	waitDovecotIdle(t, d, u)
	metas, _ := filepath.Glob(filepath.Join(qdir, "meta", "*.json"))
	if len(metas) != 1 {
		t.Fatalf("%d quarantine records", len(metas))
	}
	id := strings.TrimSuffix(filepath.Base(metas[0]), ".json")
	if out, errOut, code := runPopgate(t, "quarantine", "release", "-c", path, id); code != 0 {
		t.Fatalf("release: exit %d: %s %s", code, out, errOut)
	}
	original, err := os.ReadFile(filepath.Join(qdir, "msg", id+".eml"))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+r.Controller+"/learnham", bytes.NewReader(original))
	req.Header.Set("Password", r.Password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAlreadyReported {
		t.Errorf("teaching the released message as ham again: %d %s; want 208 (the release learned it)", resp.StatusCode, body)
	}
}

package e2e

// The harness of the end-to-end tests (see doc.go): building the popgate
// binary, starting and stopping popgate processes, reading their JSON logs,
// the configuration template in front of the test Dovecot, and the secrets
// scan over every log line any popgate process wrote in the run.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// popgateBin is the popgate binary built by TestMain (with -race when the
// tests run with -race, so that data races inside the subprocesses are found
// too).
var popgateBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "popgate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	popgateBin = filepath.Join(dir, "popgate")
	if err := buildPopgate(popgateBin); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building popgate:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		code = finalSecretsScan(os.Stdout)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildPopgate(out string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return err
	}
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	// By import path: the test runs in internal/e2e, inside the module.
	args = append(args, "github.com/popgate/popgate/cmd/popgate")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Secrets: every password a test uses (and the encoded forms that cross the
// wire) is registered here; every byte any popgate process wrote is
// collected. Each process is checked when it stops, and TestMain checks all
// of them against all secrets once every test has run.

type secret struct{ what, value string }

type collectedOutput struct {
	test string
	name string // "stderr", "stdout", "log file"
	data []byte
}

var registry struct {
	sync.Mutex
	secrets []secret
	outputs []collectedOutput
	procs   int
}

func addSecret(what, value string) {
	if len(value) < 6 {
		panic("e2e: secret too short to scan for: " + what)
	}
	registry.Lock()
	defer registry.Unlock()
	registry.secrets = append(registry.secrets, secret{what, value})
}

// registerUser records a Dovecot user's password and its encodings on the
// wire (base64 as in AUTH LOGIN, AUTH PLAIN with and without an
// authorization identity).
func registerUser(u *testenv.User) {
	b64 := base64.StdEncoding.EncodeToString
	addSecret("password of "+u.Name, u.Password)
	addSecret("base64 password of "+u.Name, b64([]byte(u.Password)))
	addSecret("AUTH PLAIN of "+u.Name, b64([]byte("\x00"+u.Name+"\x00"+u.Password)))
	addSecret("AUTH PLAIN (authzid) of "+u.Name, b64([]byte(u.Name+"\x00"+u.Name+"\x00"+u.Password)))
}

func secretsSnapshot() []secret {
	registry.Lock()
	defer registry.Unlock()
	return append([]secret(nil), registry.secrets...)
}

func findSecrets(data []byte, secrets []secret) []string {
	var found []string
	for _, s := range secrets {
		if bytes.Contains(data, []byte(s.value)) {
			found = append(found, s.what)
		}
	}
	return found
}

// finalSecretsScan checks every output of every popgate process of the run
// against every secret of the run; it returns the exit code.
func finalSecretsScan(w io.Writer) int {
	registry.Lock()
	defer registry.Unlock()
	var total, logins int
	bad := 0
	for _, o := range registry.outputs {
		total += len(o.data)
		logins += bytes.Count(o.data, []byte(`"message":"login"`))
		if found := findSecrets(o.data, registry.secrets); len(found) > 0 {
			fmt.Fprintf(w, "--- FAIL: secrets scan: %s of the popgate process of %s contains: %s\n",
				o.name, o.test, strings.Join(found, ", "))
			bad++
		}
	}
	if len(registry.secrets) > 0 && logins == 0 {
		fmt.Fprintf(w, "--- FAIL: secrets scan: %d secrets registered but no login was logged by any popgate process: the scan saw no session logs\n",
			len(registry.secrets))
		bad++
	}
	if bad > 0 {
		return 1
	}
	fmt.Fprintf(w, "e2e secrets scan: %d popgate processes, %d bytes of output, %d logins, %d secrets: none logged\n",
		registry.procs, total, logins, len(registry.secrets))
	return 0
}

// ---------------------------------------------------------------------------
// popgate processes

// syncBuffer is a bytes.Buffer safe for concurrent Write (from exec's copy
// goroutine) and reads (from the test).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf.Bytes()...)
}

func (b *syncBuffer) String() string { return string(b.Bytes()) }

// outFile is a file a subprocess writes its stdout or stderr to.
type outFile struct {
	t *testing.T
	f *os.File
}

func newOutFile(t *testing.T, path string) *outFile {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &outFile{t, f}
}

func (o *outFile) Bytes() []byte {
	b, err := os.ReadFile(o.f.Name())
	if err != nil {
		o.t.Errorf("reading popgate output: %v", err)
	}
	return b
}

func (o *outFile) String() string { return string(o.Bytes()) }

type popgateProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	stdout  *outFile
	stderr  *outFile
	logFile string // "" when logging to stderr
	addrs   map[string]string
	exited  chan struct{} // closed when the process has exited
	waitErr error
	endedAt time.Time // when the process exited
	checked bool
}

// logEvent is one decoded JSON log line.
type logEvent map[string]any

func (e logEvent) str(k string) string {
	s, _ := e[k].(string)
	return s
}

func (e logEvent) String() string {
	b, _ := json.Marshal(map[string]any(e))
	return string(b)
}

// hclString quotes s as an HCL string literal (no interpolation).
func hclString(s string) string {
	q := strconv.Quote(s)
	q = strings.ReplaceAll(q, "${", "$${")
	return strings.ReplaceAll(q, "%{", "%%{")
}

// configOpts chooses the parts of a generated configuration.
type configOpts struct {
	upstreamTLS     string // "none", "starttls" (default) or "implicit"
	logFile         string // log to this file instead of stderr
	shutdownTimeout string // default "3s"
	// trustedProxies, when set, makes both listeners take PROXY headers
	// from these addresses.
	trustedProxies []string
	// upstreamExtra goes inside the upstream block (a release block),
	// listenerExtra inside each listener block.
	upstreamExtra, listenerExtra string
}

// dovecotConfig is a configuration with two listeners in front of the test
// Dovecot, both on free loopback ports (port 0; popgate logs the address it
// bound): "plain" (plain POP3 offering STLS) and "pop3s" (implicit TLS),
// both with the test environment's certificate. The upstream "dovecot" is
// reached over STLS (default) or implicit TLS and verified against the test
// CA.
func dovecotConfig(d *testenv.DovecotEnv, o configOpts) string {
	var b strings.Builder
	for _, l := range []struct {
		name     string
		implicit bool
	}{{"plain", false}, {"pop3s", true}} {
		fmt.Fprintf(&b, `listener %s {
  address       = "127.0.0.1:0"
  upstream      = "dovecot"
  login_timeout = "30s"
  tls {
    cert_file = %s
    key_file  = %s
    implicit  = %t
  }
`, hclString(l.name), hclString(d.CertFile), hclString(d.KeyFile), l.implicit)
		if len(o.trustedProxies) > 0 {
			quoted := make([]string, len(o.trustedProxies))
			for i, p := range o.trustedProxies {
				quoted[i] = hclString(p)
			}
			fmt.Fprintf(&b, "  proxy_protocol {\n    trusted = [%s]\n  }\n", strings.Join(quoted, ", "))
		}
		b.WriteString(o.listenerExtra + "}\n")
	}
	switch o.upstreamTLS {
	case "none":
		fmt.Fprintf(&b, "upstream \"dovecot\" {\n  address = %s\n  tls     = \"none\"\n", hclString(d.Addr))
	case "implicit":
		fmt.Fprintf(&b, "upstream \"dovecot\" {\n  address = %s\n  tls     = \"implicit\"\n  ca_file = %s\n  server_name = \"localhost\"\n",
			hclString(d.TLSAddr), hclString(d.CAFile))
	case "", "starttls":
		// No server_name: the certificate's IP SAN 127.0.0.1 must verify.
		fmt.Fprintf(&b, "upstream \"dovecot\" {\n  address = %s\n  tls     = \"starttls\"\n  ca_file = %s\n",
			hclString(d.Addr), hclString(d.CAFile))
	default:
		panic("upstreamTLS " + o.upstreamTLS)
	}
	b.WriteString("  connect_timeout = \"10s\"\n  timeout = \"30s\"\n" + o.upstreamExtra + "}\n")
	b.WriteString("log {\n  level  = \"debug\"\n  format = \"json\"\n")
	if o.logFile != "" {
		fmt.Fprintf(&b, "  file   = %s\n", hclString(o.logFile))
	}
	b.WriteString("}\n")
	fmt.Fprintf(&b, "shutdown_timeout = %s\n", hclString(cmp.Or(o.shutdownTimeout, "3s")))
	return b.String()
}

// startPopgate writes cfg to a temporary file, runs `popgate run -c FILE`,
// and waits until every listener has logged the address it bound and
// accepts connections. logFile is the log block's file, if any. The process
// is stopped with SIGTERM when the test ends (see stop) and its output
// checked (see checkOutput).
func startPopgate(t *testing.T, cfg, logFile string, listeners ...string) *popgateProc {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "popgate.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return launchPopgate(t, exec.Command(popgateBin, "run", "-c", path), dir, logFile, true, listeners...)
}

// launchPopgate starts cmd (popgate run, possibly wrapped, e.g. by `ip netns
// exec`), with its stdout and stderr in files in dir, and waits as
// startPopgate does. dial says whether the listeners can be reached from
// the test (not when popgate runs in another network namespace).
func launchPopgate(t *testing.T, cmd *exec.Cmd, dir, logFile string, dial bool, listeners ...string) *popgateProc {
	t.Helper()
	p := &popgateProc{
		t:       t,
		cmd:     cmd,
		stdout:  newOutFile(t, filepath.Join(dir, "stdout")),
		stderr:  newOutFile(t, filepath.Join(dir, "stderr")),
		logFile: logFile,
		exited:  make(chan struct{}),
	}
	// Files, not pipes: Wait returns when the process exits, and endedAt
	// is when it did.
	p.cmd.Stdout, p.cmd.Stderr = p.stdout.f, p.stderr.f
	// A -race binary sleeps 1 s before exiting by default; 100 ms is
	// enough for late race reports here.
	p.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=100")
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		p.endedAt = time.Now()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		p.checkOutput()
	})

	// The listeners use port 0: the bound addresses come from the log.
	deadline := time.Now().Add(20 * time.Second)
	for {
		p.addrs = map[string]string{}
		for _, e := range p.events() {
			if e.str("message") == "listening" {
				p.addrs[e.str("listener")] = e.str("address")
			}
		}
		ready := true
		for _, l := range listeners {
			if p.addrs[l] == "" {
				ready = false
			}
		}
		if ready {
			break
		}
		select {
		case <-p.exited:
			t.Fatalf("popgate exited before listening (%v); stderr:\n%s", p.waitErr, p.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("popgate did not log its listeners %v within 20s; output:\n%s", listeners, p.output())
		}
	}
	for _, l := range listeners {
		if !dial {
			break
		}
		c, err := net.DialTimeout("tcp", p.addrs[l], 5*time.Second)
		if err != nil {
			t.Fatalf("listener %s at %s does not accept: %v", l, p.addrs[l], err)
		}
		c.Close()
	}
	return p
}

// addr returns the bound address of a listener.
func (p *popgateProc) addr(listener string) string {
	a := p.addrs[listener]
	if a == "" {
		p.t.Fatalf("no listener %q", listener)
	}
	return a
}

// logBytes is everything popgate logged so far: the log file, or stderr.
func (p *popgateProc) logBytes() []byte {
	if p.logFile == "" {
		return p.stderr.Bytes()
	}
	b, err := os.ReadFile(p.logFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		p.t.Errorf("reading log file: %v", err)
	}
	return b
}

func (p *popgateProc) output() string {
	s := "stderr:\n" + p.stderr.String()
	if p.logFile != "" {
		s += "\nlog file:\n" + string(p.logBytes())
	}
	return s
}

// events decodes the complete JSON lines logged so far; lines that are not
// JSON are skipped here (checkOutput reports them).
func (p *popgateProc) events() []logEvent {
	data := p.logBytes()
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1]
	} else {
		data = nil
	}
	var out []logEvent
	for line := range bytes.Lines(data) {
		var e logEvent
		if json.Unmarshal(line, &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// waitEvents waits until popgate has logged events for which cond is true,
// and returns them.
func (p *popgateProc) waitEvents(what string, cond func([]logEvent) bool) []logEvent {
	p.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		evs := p.events()
		if cond(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("popgate did not log %s within 15s; output:\n%s", what, p.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logins returns the login events in evs, in order.
func logins(evs []logEvent) []logEvent {
	var out []logEvent
	for _, e := range evs {
		if e.str("message") == "login" {
			out = append(out, e)
		}
	}
	return out
}

// signal sends sig to popgate.
func (p *popgateProc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// stop sends SIGTERM and waits for the exit; popgate must exit 0 within
// limit (the configured shutdown timeout plus slack). A process that does
// not is killed and the test fails.
func (p *popgateProc) stop(limit time.Duration) {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(limit):
			_ = p.cmd.Process.Kill()
			<-p.exited
			p.t.Errorf("popgate did not exit within %v of SIGTERM; killed it", limit)
		}
	}
	if p.waitErr != nil {
		p.t.Errorf("popgate exited with %v, want status 0", p.waitErr)
	}
}

// sessionMessages are log messages about one session; sessionFields are
// fields only a line about a session carries. Such a line must name its
// session. Lines about the process (started, listening, draining, …) need
// not.
var (
	sessionMessages = []string{"session start", "session end", "login", "command", "upstream connected",
		"upstream unavailable", "message filtered", "filter step"}
	sessionFields = []string{"user", "client", "command", "msg", "tls"}
)

// concernsSession tells whether a log line is about a session. "connection
// refused" is logged for a connection refused before it became a session.
func concernsSession(e logEvent) bool {
	msg := e.str("message")
	if msg == "connection refused" {
		return false
	}
	if slices.Contains(sessionMessages, msg) {
		return true
	}
	for _, f := range sessionFields {
		if _, ok := e[f]; ok {
			return true
		}
	}
	return false
}

// checkOutput runs when the process has exited: it collects the output for
// the final secrets scan, and checks it now for secrets, data races, lines
// that are not JSON, session lines without a session id, and sessions
// without exactly one end line.
func (p *popgateProc) checkOutput() {
	t := p.t
	if p.checked {
		return
	}
	p.checked = true
	outs := []collectedOutput{
		{t.Name(), "stderr", p.stderr.Bytes()},
		{t.Name(), "stdout", p.stdout.Bytes()},
	}
	if p.logFile != "" {
		outs = append(outs, collectedOutput{t.Name(), "log file", p.logBytes()})
	}
	registry.Lock()
	registry.outputs = append(registry.outputs, outs...)
	registry.procs++
	registry.Unlock()

	secrets := secretsSnapshot()
	for _, o := range outs {
		if found := findSecrets(o.data, secrets); len(found) > 0 {
			t.Errorf("popgate's %s contains secrets: %s", o.name, strings.Join(found, ", "))
		}
		if bytes.Contains(o.data, []byte("DATA RACE")) {
			t.Errorf("data race in the popgate process (%s):\n%s", o.name, o.data)
		}
	}
	if len(p.stdout.Bytes()) > 0 {
		t.Errorf("popgate run wrote to stdout: %q", p.stdout.Bytes())
	}
	if p.logFile != "" && len(p.stderr.Bytes()) > 0 {
		t.Errorf("popgate logs to a file but wrote to stderr: %q", p.stderr.Bytes())
	}
	log := p.logBytes()
	if len(log) == 0 {
		t.Errorf("popgate logged nothing")
	}
	ends := map[string]int{}
	for i, line := range bytes.Split(bytes.TrimSuffix(log, []byte("\n")), []byte("\n")) {
		var e logEvent
		if err := json.Unmarshal(line, &e); err != nil {
			t.Errorf("log line %d is not JSON (%v): %q", i+1, err, line)
			continue
		}
		if e.str("level") == "" || e.str("time") == "" || e.str("message") == "" {
			t.Errorf("log line %d lacks level, time or message: %s", i+1, line)
		}
		sess := e.str("session")
		if sess == "" && concernsSession(e) {
			t.Errorf("log line %d concerns a session but has no \"session\" field: %s", i+1, line)
		}
		if sess != "" {
			ends[sess] += 0
		}
		if e.str("message") == "session end" {
			ends[sess]++
		}
	}
	// Every session popgate logged about has exactly one end line, also
	// the ones a shutdown cut.
	for id, n := range ends {
		if n != 1 {
			t.Errorf("session %q logged %d \"session end\" lines, want 1", id, n)
		}
	}
}

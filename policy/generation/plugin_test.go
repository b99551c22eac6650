package generation

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/pop3server"
	"github.com/popgate/popgate/policy"
)

// The kinds below exist only in this file. They plug in by registering
// their decode and build steps, and nothing else: the decoder, the
// generation, the metrics, /readyz and Explain see them as they see the
// built-in kinds.

// wordScanner is a scanner kind: it "finds" a word in a message, and its
// one backend is up or down as the test says.
type wordScanner struct {
	word   string
	up     *atomic.Bool
	closed atomic.Bool
}

type wordScannerSettings struct {
	Word string `hcl:"word"`
}

func (s *wordScanner) Scan(_ context.Context, body filters.Body) (filters.ScanResult, error) {
	if !s.up.Load() {
		return filters.ScanResult{}, errors.New("word scanner down")
	}
	rc, err := body.Open()
	if err != nil {
		return filters.ScanResult{}, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return filters.ScanResult{}, err
	}
	if strings.Contains(string(b), s.word) {
		return filters.ScanResult{Found: "Word." + s.word, Backend: "mem:0"}, nil
	}
	return filters.ScanResult{Backend: "mem:0"}, nil
}

func (s *wordScanner) Backends() []filters.Backend {
	return []filters.Backend{{Address: "mem:0", Up: s.up.Load()}}
}

func (s *wordScanner) Check(context.Context) error {
	if !s.up.Load() {
		return errors.New("down")
	}
	return nil
}

func (s *wordScanner) Close() error { s.closed.Store(true); return nil }

func (s *wordScanner) Version() string { return "words-" + s.word }

var _ filters.Scanner = (*wordScanner)(nil)

// wordFilter withholds what its scanner finds and stamps the rest.
type wordFilter struct {
	name    string
	scanner filters.Scanner
	stamp   string
}

type wordFilterSettings struct {
	Scanner string
	Stamp   string
}

func (f *wordFilter) Name() string { return f.name }

func (f *wordFilter) Filter(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
	res, err := f.scanner.Scan(ctx, body)
	switch {
	case err != nil:
		return filters.Verdict{}, err
	case res.Found != "":
		return filters.Verdict{Action: filters.Reject, Reason: "found " + res.Found}, nil
	}
	return filters.Verdict{
		Action:        filters.Replace,
		Body:          filters.PrependHeader(body, "X-Word-Stamp: "+f.stamp),
		KeepsOriginal: true,
	}, nil
}

// testScanners hands the tests the scanners the generation builds.
var testScanners = map[string]*wordScanner{}

func init() {
	filters.RegisterScanner("wordscan", filters.ScannerKind[wordScannerSettings]{
		Decode: func(_ string, body hcl.Body, dc *filters.DecodeContext) (wordScannerSettings, hcl.Diagnostics) {
			var s wordScannerSettings
			return s, gohcl.DecodeBody(body, dc.Eval, &s)
		},
		Build: func(name string, s wordScannerSettings, _ *filters.BuildContext) (filters.Scanner, error) {
			sc := &wordScanner{word: s.Word, up: new(atomic.Bool)}
			sc.up.Store(true)
			testScanners[name] = sc
			return sc, nil
		},
	})
	filters.RegisterFilter("wordfilter", filters.FilterKind[wordFilterSettings]{
		Decode: func(_ string, body hcl.Body, dc *filters.DecodeContext) (wordFilterSettings, hcl.Diagnostics) {
			var blk struct {
				Scanner *hcl.Attribute `hcl:"scanner"`
			}
			diags := gohcl.DecodeBody(body, dc.Eval, &blk)
			if diags.HasErrors() {
				return wordFilterSettings{}, diags
			}
			v, vd := blk.Scanner.Expr.Value(dc.Eval)
			diags = append(diags, vd...)
			if vd.HasErrors() {
				return wordFilterSettings{}, diags
			}
			_, sd := dc.Scanner(v.AsString(), "wordscan", blk.Scanner.Expr.Range())
			return wordFilterSettings{Scanner: v.AsString()}, append(diags, sd...)
		},
		Build: func(name string, s wordFilterSettings, bc *filters.BuildContext) (filters.Filter, error) {
			return &wordFilter{name: name, scanner: bc.Scanners[s.Scanner], stamp: bc.Version}, nil
		},
	})
}

func TestNewKindPlugsIn(t *testing.T) {
	mail := pop3server.New(pop3server.Config{
		Users: map[string]string{"ann": "pw"},
		Mailboxes: map[string][]pop3server.Message{"ann": {
			{UIDL: "a", Data: []byte("Subject: fine\r\n\r\nhello\r\n")},
			{UIDL: "b", Data: []byte("Subject: bad\r\n\r\nsome FORBIDDEN text\r\n")},
		}},
	})
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = mail.Serve(mln) }()
	defer mail.Close()

	src := fmt.Sprintf(`
listener "pop3" {
  address  = "127.0.0.1:0"
  upstream = "mail"
}
upstream "mail" { address = %q }
scanner "wordscan" "words" { word = "FORBIDDEN" }
filter "wordfilter" "censor" { scanner = "words" }
quarantine { dir = %q }
policy "all" { chain = ["censor"] }
metrics { address = "127.0.0.1:0" }
`, mln.Addr().String(), t.TempDir())
	cfg, diags := policy.LoadBytes("plugin.hcl", []byte(src))
	if diags.HasErrors() {
		t.Fatal(diags)
	}

	ex, err := cfg.Explain(policy.Who{User: "ann"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if c := ex.Policy.Chain; len(c) != 1 || c[0].Type != "wordfilter" || len(c[0].Scanners) != 1 || c[0].Scanners[0] != (policy.ScannerEntry{Name: "words", Type: "wordscan"}) {
		t.Errorf("explain: chain %+v", ex.Policy.Chain)
	}

	svc, err := Start(cfg, "", Options{Log: zerolog.Nop(), Version: "v9.9.9"})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- svc.Serve() }()
	scanner := testScanners["words"]

	c, err := net.Dial("tcp", svc.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	say := func(cmd, want string) string {
		t.Helper()
		if cmd != "" {
			fmt.Fprintf(c, "%s\r\n", cmd)
		}
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, want) {
			t.Fatalf("%s: got %q (%v), want %s", cmd, line, err, want)
		}
		if !strings.HasPrefix(cmd, "RETR") || !strings.HasPrefix(line, "+OK") {
			return line
		}
		var msg strings.Builder
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if l == ".\r\n" {
				return msg.String()
			}
			msg.WriteString(l)
		}
	}
	say("", "+OK")
	say("USER ann", "+OK")
	say("PASS pw", "+OK")
	if got := say("RETR 1", "+OK"); got != "X-Word-Stamp: v9.9.9\r\nSubject: fine\r\n\r\nhello\r\n" {
		t.Errorf("message 1 through the new kind: %q", got)
	}
	if got := say("RETR 2", "+OK"); !strings.Contains(got, "found Word.FORBIDDEN") {
		t.Errorf("message 2 is not replaced by a notice naming the find: %q", got)
	}

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + svc.MetricsAddr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if _, page := get("/metrics"); !strings.Contains(page, `popgate_scanner_backend_up{address="mem:0",kind="wordscan",scanner="words"} 1`) {
		t.Errorf("metrics do not report the new scanner kind")
	}
	scanner.up.Store(false)
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, `scanner "words" (wordscan): no backend answers`) {
		t.Errorf("/readyz with the scanner down: %d %q", code, body)
	}
	say("RETR 1", "-ERR [SYS/TEMP]") // on_error: the default tempfail, never a silent pass
	say("QUIT", "+OK")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := svc.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if !scanner.closed.Load() {
		t.Error("shutting down did not close the generation's scanner")
	}
}

// A reload builds the next generation from the file: new sessions get it,
// the previous one is closed once its sessions are gone, a broken file is
// refused with the running generation kept, and shutdown_timeout follows.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/popgate.hcl"
	write := func(word, extra string) {
		t.Helper()
		src := fmt.Sprintf(`
listener "pop3" {
  address  = "127.0.0.1:0"
  upstream = "mail"
}
upstream "mail" { address = "127.0.0.1:9" }
scanner "wordscan" "words" { word = %q }
filter "wordfilter" "censor" { scanner = "words" }
policy "all" { chain = ["censor"] }
%s
`, word, extra)
		if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("one", "")
	cfg, diags := policy.Load(path)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	logs := &syncWriter{w: &strings.Builder{}}
	svc, err := Start(cfg, path, Options{Log: zerolog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Shutdown(context.Background())
	first := testScanners["words"]

	write("two", `shutdown_timeout = "7s"
log { level = "debug" }`)
	if err := svc.Reload(); err != nil {
		t.Fatal(err)
	}
	second := testScanners["words"]
	if second == first || second.word != "two" || svc.ShutdownTimeout() != 7*time.Second {
		t.Errorf("reload did not make the new file current (timeout %v)", svc.ShutdownTimeout())
	}
	if !first.closed.Load() {
		t.Error("the first generation, with no session left, was not closed")
	}
	if !strings.Contains(logs.String(), `"changed":"log"`) {
		t.Errorf("no restart warning for the log block:\n%s", logs.String())
	}

	write("three", `policy "all" { chain = ["missing"] }`)
	if err := svc.Reload(); err == nil {
		t.Error("a configuration with errors was accepted")
	}
	if testScanners["words"] != second || second.closed.Load() {
		t.Error("a refused reload replaced or closed the running generation")
	}
}

// syncWriter serialises writes to a strings.Builder.
type syncWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

package strip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mimetree"
)

// deepMessage nests depth multipart/mixed levels, with an .exe at the bottom.
func deepMessage(depth int) []byte {
	var b bytes.Buffer
	b.WriteString("From: a@example.org\r\nSubject: deep\r\nMIME-Version: 1.0\r\n")
	for i := range depth {
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n", i, i)
	}
	b.WriteString("Content-Type: application/octet-stream; name=\"deep.exe\"\r\n\r\nMZ\r\n")
	for i := depth - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "--b%d--\r\n", i)
	}
	return b.Bytes()
}

// wideMessage has n parts in one multipart/mixed, the last an .exe.
func wideMessage(n int) []byte {
	var b bytes.Buffer
	b.WriteString("From: a@example.org\r\nSubject: wide\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"w\"\r\n\r\n")
	for i := range n - 1 {
		fmt.Fprintf(&b, "--w\r\nContent-Type: text/plain\r\n\r\npart %d\r\n", i)
	}
	b.WriteString("--w\r\nContent-Type: application/octet-stream; name=\"wide.exe\"\r\n\r\nMZ\r\n--w--\r\n")
	return b.Bytes()
}

// bigHeaderMessage has a part whose header is size bytes.
func bigHeaderMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"h\"\r\n\r\n--h\r\nContent-Type: text/plain\r\n")
	line := "X-Filler: " + strings.Repeat("x", 990) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	b.WriteString("\r\nbody\r\n--h\r\nContent-Type: application/octet-stream; name=\"late.exe\"\r\n\r\nMZ\r\n--h--\r\n")
	return b.Bytes()
}

// measure runs fn and returns its duration and the bytes it allocated.
func measure(fn func()) (time.Duration, uint64) {
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	start := time.Now()
	fn()
	d := time.Since(start)
	runtime.ReadMemStats(&m1)
	return d, m1.TotalAlloc - m0.TotalAlloc
}

// A bound generous enough for a slow, busy machine; the measured figures
// (see the report in the test log) are far below.
const hostileBudget = raceSlowdown * 3 * time.Second

func TestHostileMIME(t *testing.T) {
	ext := mustFilter(t, `filter "strip" "x" { extensions = ["exe"] }`)
	cases := []struct {
		name  string
		msg   []byte
		limit string
	}{
		{"10000-deep", deepMessage(10000), "depth"},
		{"100000-parts", wideMessage(100000), "parts"},
		{"10MB-header", bigHeaderMessage(10 << 20), "header"},
		{"10MB-header-line", []byte("Subject: x\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\nX-Long: " + strings.Repeat("y", 10<<20) + "\r\n\r\nbody\r\n--q--\r\n"), "header"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var v filters.Verdict
			var out []byte
			d, alloc := measure(func() { v, out = run(t, ext, tc.msg) })
			t.Logf("%s (%d bytes): %v, %.1f MB allocated: %v %q", tc.name, len(tc.msg), d, float64(alloc)/1e6, v.Action, v.Reason)
			if v.Action != filters.Reject || out != nil {
				t.Errorf("verdict %v, want reject", v.Action)
			}
			if !strings.Contains(v.Reason, "rejected: ") || !strings.Contains(v.Reason, map[string]string{"depth": "nested deeper than 50", "parts": "more than 10000 MIME parts", "header": "header larger than 262144 bytes"}[tc.limit]) {
				t.Errorf("reason %q", v.Reason)
			}
			if d > hostileBudget {
				t.Errorf("took %v", d)
			}
			if alloc > 32<<20 {
				t.Errorf("allocated %d bytes", alloc)
			}
			_, err := parseMIME(bytes.NewReader(tc.msg), int64(len(tc.msg)), mimetree.Limits{})
			var le *mimetree.LimitError
			if !errors.As(err, &le) || le.Limit != tc.limit {
				t.Errorf("Parse: %v, want a %s LimitError", err, tc.limit)
			}
		})
	}
}

// TestHostileMIMEUncapped raises the caps: the scanner itself stays linear
// (10,000 levels, 100,000 parts), and the .exe at the bottom is found and
// stripped.
func TestHostileMIMEUncapped(t *testing.T) {
	f, err := New("x", Config{
		Rules:  []Rule{{Name: "x", Extensions: []string{"exe"}}},
		Limits: mimetree.Limits{MaxDepth: 20000, MaxParts: 200000},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		msg  []byte
		want string
	}{
		{"10000-deep", deepMessage(10000), "deep.exe"},
		{"100000-parts", wideMessage(100000), "wide.exe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var root *mimetree.Part
			var perr error
			dp, alloc := measure(func() { root, perr = parseMIME(bytes.NewReader(tc.msg), int64(len(tc.msg)), f.lim) })
			if perr != nil {
				t.Fatal(perr)
			}
			n := countParts(root)
			t.Logf("Parse %s (%d bytes, %d parts): %v, %.1f MB allocated", tc.name, len(tc.msg), n, dp, float64(alloc)/1e6)
			var v filters.Verdict
			var out []byte
			d, alloc := measure(func() { v, out = run(t, f, tc.msg) })
			t.Logf("Filter %s: %v, %.1f MB allocated: %v %q", tc.name, d, float64(alloc)/1e6, v.Action, v.Reason)
			if v.Action != filters.Replace || !strings.Contains(v.Reason, tc.want) {
				t.Fatalf("verdict %v %q", v.Action, v.Reason)
			}
			if dp > hostileBudget || d > hostileBudget {
				t.Errorf("too slow: parse %v, filter %v", dp, d)
			}
			if alloc > 256<<20 {
				t.Errorf("allocated %d bytes", alloc)
			}
			if len(out) == 0 {
				t.Fatal("no output")
			}
			root2, err := parseMIME(bytes.NewReader(out), int64(len(out)), f.lim)
			if err != nil || countParts(root2) != n {
				t.Errorf("result: %v, %d parts (want %d)", err, countParts(root2), n)
			}
		})
	}
}

// TestHostileOnLimit: the configured action applies beyond a cap.
func TestHostileOnLimit(t *testing.T) {
	msg := deepMessage(100)
	for _, tc := range []struct {
		onLimit string
		want    filters.Action
		reason  string
	}{
		{"reject", filters.Reject, "rejected: MIME structure nested deeper than 50 levels"},
		{"tempfail", filters.Retry, "deferred: MIME structure nested deeper than 50 levels"},
		{"pass", filters.Pass, "not examined: MIME structure nested deeper than 50 levels"},
	} {
		f := mustFilter(t, `filter "strip" "x" {
  extensions = ["exe"]
  on_limit   = "`+tc.onLimit+`"
}`)
		v, out := run(t, f, msg)
		if v.Action != tc.want || out != nil || !strings.HasPrefix(v.Reason, tc.reason) {
			t.Errorf("on_limit %s: %v %q", tc.onLimit, v.Action, v.Reason)
		}
	}
	// max_depth raises the cap.
	f := mustFilter(t, `filter "strip" "x" {
  extensions = ["exe"]
  max_depth  = 200
}`)
	if v, _ := run(t, f, msg); v.Action != filters.Replace {
		t.Errorf("max_depth 200: %v %q", v.Action, v.Reason)
	}
}

// TestEncodedMessageLimits: base64-encoded message/rfc822 parts nested in
// each other count against the same depth cap.
func TestEncodedMessageLimits(t *testing.T) {
	msg := []byte("Content-Type: application/octet-stream; name=\"x.exe\"\r\n\r\nMZ\r\n")
	for range 25 {
		enc := b64(msg)
		msg = []byte("Subject: fwd\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" + enc + "\r\n")
	}
	f := mustFilter(t, `filter "strip" "x" {
  extensions = ["exe"]
  max_depth  = 20
}`)
	v, _ := run(t, f, msg)
	if v.Action != filters.Reject || !strings.Contains(v.Reason, "nested deeper than 20") {
		t.Errorf("%v %q", v.Action, v.Reason)
	}
	f = mustFilter(t, `filter "strip" "x" {
  extensions = ["exe"]
  max_depth  = 30
}`)
	v, _ = run(t, f, msg)
	if v.Action != filters.Replace || v.Reason != "stripped: part 0 (message/rfc822) (rule x: attached message holds x.exe (extension exe))" {
		t.Errorf("%v %q", v.Action, v.Reason)
	}
}

func TestContextCanceled(t *testing.T) {
	f := mustFilter(t, `filter "strip" "x" { detected_types = ["image/png"] }`)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	msg := wideMessage(5000)
	_, err := f.Filter(ctx, nil, filters.BytesBody(msg))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled", err)
	}
}

// TestLargeMessage: a message of tens of MB is read a bounded number of
// times, with memory far below its size (the test's own copy aside).
func TestLargeMessage(t *testing.T) {
	big := make([]byte, 24<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>9)
	}
	var b bytes.Buffer
	b.WriteString("From: a@example.org\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"big\"\r\n\r\n")
	b.WriteString("--big\r\nContent-Type: text/plain\r\n\r\nhello\r\n")
	b.WriteString("--big\r\nContent-Type: video/mp4; name=\"holiday.mp4\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	b.WriteString(b64(big))
	b.WriteString("\r\n--big\r\nContent-Type: application/octet-stream; name=\"small.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAA==\r\n--big--\r\n")
	msg := b.Bytes()
	big = nil
	f := mustFilter(t, corpusPolicy[:strings.LastIndex(corpusPolicy, "}")]+`
  rule "huge" {
    min_size = "20MB"
  }
}`)
	var v filters.Verdict
	var out []byte
	d, alloc := measure(func() { v, out = run(t, f, msg) })
	t.Logf("%d MB message: %v, %.1f MB allocated (the result copy included): %v %q", len(msg)>>20, d, float64(alloc)/1e6, v.Action, v.Reason)
	if v.Action != filters.Replace || v.Reason != "stripped: holiday.mp4 (rule huge: size 25165824 bytes), small.exe (rule dangerous: extension exe)" {
		t.Fatalf("%v %q", v.Action, v.Reason)
	}
	if len(out) > 4096 {
		t.Errorf("result of %d bytes", len(out))
	}
	if alloc > 24<<20 {
		t.Errorf("allocated %.1f MB", float64(alloc)/1e6)
	}
	if d > 10*time.Second {
		t.Errorf("took %v", d)
	}
}

package clamav

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
)

// mimeMsg is a multipart/mixed message with a text part and the given
// attachments (name, transfer encoding, content encoded accordingly).
func mimeMsg(atts ...[3]string) []byte {
	var b strings.Builder
	b.WriteString("From: a@example.com\r\nTo: b@example.com\r\nSubject: parts\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"BB\"\r\n\r\npreamble\r\n--BB\r\nContent-Type: text/plain\r\n\r\nhello\r\n")
	for _, a := range atts {
		fmt.Fprintf(&b, "--BB\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"%s\"\r\n", a[0])
		if a[1] != "" {
			fmt.Fprintf(&b, "Content-Transfer-Encoding: %s\r\n", a[1])
		}
		fmt.Fprintf(&b, "\r\n%s\r\n", a[2])
	}
	b.WriteString("--BB--\r\n")
	return []byte(b.String())
}

// qpAll is s quoted-printable with every byte escaped: no EICAR bytes in
// the raw message.
func qpAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "=%02X", s[i])
	}
	return b.String()
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func scanFilter(s *Scanner, m ScanMode, o Oversize) *Filter {
	f := NewFilter("av", s, o)
	f.scan = m
	return f
}

// The fake clamd does not decode MIME: it finds EICAR only in the bytes it
// is sent, so what it finds shows what each mode sends.
func TestFilterScanModes(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	s := newTestScanner(t, testConfig(f.url))
	ctx := context.Background()
	clean := mimeMsg([3]string{"a.bin", "base64", b64("nothing here")})
	inB64 := mimeMsg([3]string{"a.bin", "base64", b64("nothing here")}, [3]string{"eicar.com", "base64", b64(eicar)})
	inQP := mimeMsg([3]string{"eicar.com", "quoted-printable", qpAll(eicar)})
	in7bit := mimeMsg([3]string{"eicar.com", "", eicar})
	inHeader := []byte("Subject: " + eicar + "\r\n\r\nbody\r\n")
	single := []byte("Subject: one\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(eicar) + "\r\n")
	for _, c := range []struct {
		name    string
		msg     []byte
		mode    ScanMode
		found   bool
		where   string
		streams int64
	}{
		{"clean/message", clean, ScanMessage, false, "", 1},
		{"clean/parts", clean, ScanParts, false, "", 3}, // header, text, attachment
		{"clean/both", clean, ScanBoth, false, "", 4},
		{"base64/message", inB64, ScanMessage, false, "", 1},
		{"base64/parts", inB64, ScanParts, true, "part 3 (application/octet-stream, eicar.com)", 4},
		{"base64/both", inB64, ScanBoth, true, "part 3 (application/octet-stream, eicar.com)", 5},
		{"qp/parts", inQP, ScanParts, true, "part 2 (application/octet-stream, eicar.com)", 3},
		{"7bit/message", in7bit, ScanMessage, true, "", 1},
		{"7bit/parts", in7bit, ScanParts, true, "part 2 (application/octet-stream, eicar.com)", 3},
		{"7bit/both", in7bit, ScanBoth, true, "", 1}, // found whole: the parts are not sent
		{"header/parts", inHeader, ScanParts, true, "the header", 1},
		{"single-part/parts", single, ScanParts, true, "part 0 (text/plain)", 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := f.streams.Load()
			v, err := scanFilter(s, c.mode, OversizeTempFail).Filter(ctx, &filters.Envelope{}, filters.BytesBody(c.msg))
			if err != nil {
				t.Fatal(err)
			}
			if got := f.streams.Load() - before; got != c.streams {
				t.Errorf("%d streams, want %d", got, c.streams)
			}
			if !c.found {
				if v.Action != filters.Pass || v.Reason != "clean" {
					t.Errorf("%+v, want clean", v)
				}
				return
			}
			if v.Action != filters.Reject || v.Reason != "virus: "+fakeSig || v.Scan == nil || v.Scan.Found != fakeSig || v.Scan.Where != c.where || v.Scan.Backend != f.url {
				t.Errorf("%+v %+v, want found in %q", v, v.Scan, c.where)
			}
		})
	}
}

// forwardOnly hides the io.ReaderAt of its body's readers.
type forwardOnly struct{ filters.Body }

func (b forwardOnly) Open() (io.ReadCloser, error) {
	rc, err := b.Body.Open()
	if err != nil {
		return nil, err
	}
	return struct{ io.ReadCloser }{rc}, nil
}

// A body without io.ReaderAt (read forward: a body of another kind than
// the spool's) is read forward, with the same results.
func TestFilterPartsForwardBody(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	s := newTestScanner(t, testConfig(f.url))
	msg := filters.BytesBody(mimeMsg([3]string{"a.bin", "base64", b64("nothing")}, [3]string{"eicar.com", "base64", b64(eicar)}))
	body := forwardOnly{filters.SplicedBody(msg, filters.HeaderPieces(msg, "X-Tag: yes"))}
	rc, _ := body.Open()
	if _, ok := rc.(readerAtCloser); ok {
		t.Fatal("the test needs a body without io.ReaderAt")
	}
	rc.Close()
	v, err := scanFilter(s, ScanParts, OversizeTempFail).Filter(context.Background(), &filters.Envelope{}, body)
	if err != nil || v.Action != filters.Reject || v.Scan.Where != "part 3 (application/octet-stream, eicar.com)" {
		t.Errorf("%+v %+v, %v", v, v.Scan, err)
	}
}

// A part over max_size, or one clamd says it did not scan in full, is not
// scanned: the oversize action decides, unless another part is infected.
func TestFilterPartsUnscannable(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	cfg := testConfig(f.url)
	cfg.MaxSize = 1000
	s := newTestScanner(t, cfg)
	ctx := context.Background()
	big := strings.Repeat("x", 1200)
	bigB64 := mimeMsg([3]string{"big.bin", "base64", b64(big)})
	bigRaw := mimeMsg([3]string{"big.bin", "", big})
	bigThenVirus := mimeMsg([3]string{"big.bin", "base64", b64(big)}, [3]string{"eicar.com", "base64", b64(eicar)})

	for _, c := range []struct {
		name   string
		msg    []byte
		o      Oversize
		action filters.Action
		reason string
	}{
		{"base64/tempfail", bigB64, OversizeTempFail, filters.Retry, "too large to scan"},
		{"base64/reject", bigB64, OversizeReject, filters.Reject, "too large to scan (part 2 (application/octet-stream, big.bin): more than max_size 1000 bytes)"},
		{"identity/reject", bigRaw, OversizeReject, filters.Reject, "too large to scan (part 2 (application/octet-stream, big.bin): more than max_size 1000 bytes)"},
		{"then-virus/tempfail", bigThenVirus, OversizeTempFail, filters.Reject, "virus: " + fakeSig},
	} {
		v, err := scanFilter(s, ScanParts, c.o).Filter(ctx, &filters.Envelope{}, filters.BytesBody(c.msg))
		if err != nil || v.Action != c.action || v.Reason != c.reason {
			t.Errorf("%s: %+v, %v; want %v %q", c.name, v, err, c.action, c.reason)
		}
	}
	// An identity part over max_size is not sent at all.
	before := f.streams.Load()
	if _, err := scanFilter(s, ScanParts, OversizeTempFail).Filter(ctx, &filters.Envelope{}, filters.BytesBody(bigRaw)); err != nil {
		t.Fatal(err)
	}
	if n := f.streams.Load() - before; n != 2 {
		t.Errorf("%d streams for the header, the text and an oversize identity part; want 2", n)
	}

	// pass-with-tag names the part in the warning.
	v, err := scanFilter(s, ScanParts, OversizePassWithTag).Filter(ctx, &filters.Envelope{}, filters.BytesBody(bigB64))
	if err != nil || v.Action != filters.Replace {
		t.Fatalf("%+v, %v", v, err)
	}
	if got := readBody(t, v.Body); !strings.HasPrefix(got, "X-Popgate-Warning: not scanned: too large (part 2 (application/octet-stream, big.bin): more than max_size 1000 bytes)\r\nFrom: ") {
		t.Errorf("tagged %.200q", got)
	}
	v.Body.Remove()

	// clamd with AlertExceedsMax: not infected, not clean, in every mode.
	f.set(fakeMode{reply: "stream: Heuristics.Limits.Exceeded.MaxRecursion FOUND\x00"})
	defer f.set(fakeMode{})
	small := mimeMsg([3]string{"a.zip", "base64", b64("zip")})
	for _, m := range []ScanMode{ScanMessage, ScanParts, ScanBoth} {
		v, err := scanFilter(s, m, OversizeReject).Filter(ctx, &filters.Envelope{}, filters.BytesBody(small))
		want := "beyond clamd's scan limits (Heuristics.Limits.Exceeded.MaxRecursion)"
		if m == ScanParts {
			want = "beyond clamd's scan limits (Heuristics.Limits.Exceeded.MaxRecursion in the header)"
		}
		if err != nil || v.Action != filters.Reject || v.Reason != want {
			t.Errorf("%v: %+v, %v; want %q", m, v, err, want)
		}
	}
	res, err := s.ScanReader(ctx, strings.NewReader("x"), 1)
	var le *LimitsError
	if !errors.As(err, &le) || le.Signature != "Heuristics.Limits.Exceeded.MaxRecursion" || res.Infected {
		t.Errorf("ScanReader: %+v, %v", res, err)
	}
}

// A MIME structure beyond mimetree's limits is scanned whole, once.
func TestFilterPartsBeyondMIMELimits(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	s := newTestScanner(t, testConfig(f.url))
	var b strings.Builder
	b.WriteString("Subject: deep\r\n")
	for i := range 60 {
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n", i, i)
	}
	b.WriteString("Content-Type: text/plain\r\n\r\n" + eicar + "\r\n")
	for _, m := range []ScanMode{ScanParts, ScanBoth} {
		before := f.streams.Load()
		v, err := scanFilter(s, m, OversizeTempFail).Filter(context.Background(), &filters.Envelope{}, filters.BytesBody([]byte(b.String())))
		if err != nil || v.Action != filters.Reject || v.Scan.Where != "" {
			t.Errorf("%v: %+v, %v", m, v, err)
		}
		if n := f.streams.Load() - before; n != 1 {
			t.Errorf("%v: %d streams, want the raw message once", m, n)
		}
	}
}

// clamd failing in the middle of a message scanned by parts: no verdict
// (an error: on_error), never clean; with another backend, failover gives
// the verdict.
func TestFilterPartsClamdFailsMidMessage(t *testing.T) {
	leakCheck(t)
	msg := filters.BytesBody(mimeMsg([3]string{"a.bin", "base64", b64(strings.Repeat("data ", 200))}, [3]string{"eicar.com", "base64", b64(eicar)}))
	for _, c := range []struct {
		name string
		then fakeMode
	}{
		{"closes mid-part", fakeMode{closeAfter: 100}},
		{"closes at once", fakeMode{closeAfter: 1}},
		{"garbage reply", fakeMode{reply: "stream: maybe\x00"}},
		{"ERROR reply", fakeMode{reply: "MaxFiles exceeded. ERROR\x00"}},
		{"hangs", fakeMode{hangAfter: 10}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFake(t, "tcp")
			f.set(fakeMode{after: 2, then: &c.then}) // the header and the text are scanned
			s := newTestScanner(t, testConfig(f.url))
			v, err := scanFilter(s, ScanParts, OversizeTempFail).Filter(context.Background(), &filters.Envelope{}, msg)
			if err == nil || v.Action != filters.Pass || v.Reason != "" {
				t.Fatalf("%+v, %v; want an error", v, err)
			}
			if !strings.Contains(err.Error(), "part 2 (application/octet-stream, a.bin)") {
				t.Errorf("the error does not name the part: %v", err)
			}
			if f.streams.Load() != 3 {
				t.Errorf("%d streams, want 3 (no part after the failure)", f.streams.Load())
			}
		})
	}
	t.Run("failover", func(t *testing.T) {
		bad, good := newFake(t, "tcp"), newFake(t, "tcp")
		bad.set(fakeMode{after: 2, then: &fakeMode{closeAfter: 100}})
		s := newTestScanner(t, testConfig(bad.url, good.url))
		var v filters.Verdict
		var err error
		for range 2 { // round-robin: one of the runs starts on bad
			if v, err = scanFilter(s, ScanParts, OversizeTempFail).Filter(context.Background(), &filters.Envelope{}, msg); err != nil || v.Action != filters.Reject {
				t.Fatalf("%+v, %v", v, err)
			}
		}
		if bad.streams.Load() < 3 {
			t.Errorf("the failing backend got %d streams", bad.streams.Load())
		}
	})
}

func TestParseScanMode(t *testing.T) {
	for _, s := range []string{"message", "parts", "both"} {
		if m, err := ParseScanMode(s); err != nil || m.String() != s {
			t.Errorf("ParseScanMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseScanMode("mime"); err == nil {
		t.Error(`ParseScanMode("mime") accepted`)
	}
}

// The StreamMaxLength probe: a clamd that takes max_size bytes, one whose
// limit is below (found within probePrecision, in the log and the
// backend's Problem), and no probe without ProbeStreamMax. No stream is
// ever scanned: the probe never sends the end marker.
func TestProbeStreamMax(t *testing.T) {
	leakCheck(t)
	cfg := func(url string) Config {
		c := testConfig(url)
		c.HealthInterval = 50 * time.Millisecond
		c.ProbeStreamMax = true
		c.MaxSize = 2 << 20
		c.Timeout = 20 * time.Second
		return c
	}
	ok := newFake(t, "tcp")
	s := newTestScanner(t, cfg(ok.url))
	waitFor(t, 20*time.Second, "the probe", func() bool { return s.pool.Members()[0].probe.Load() == probeDone })
	if p := s.Backends()[0].Problem; p != "" || ok.ended.Load() != 0 || ok.streams.Load() != 1 {
		t.Errorf("problem %q, %d streams, %d ended; want one stream, never ended", p, ok.streams.Load(), ok.ended.Load())
	}

	small := newFake(t, "unix")
	small.set(fakeMode{sizeLimit: 256 << 10})
	s = newTestScanner(t, cfg(small.url))
	waitFor(t, 20*time.Second, "the probe", func() bool { return s.pool.Members()[0].probe.Load() == probeDone })
	p := s.Backends()[0].Problem
	var lo, hi, max int64
	if _, err := fmt.Sscanf(p, "clamd's StreamMaxLength (%d to %d bytes) is below max_size (%d bytes)", &lo, &hi, &max); err != nil ||
		lo > 256<<10 || hi < 256<<10 || hi-lo >= probePrecision || max != 2<<20 {
		t.Errorf("problem %q (%v)", p, err)
	}
	if small.ended.Load() != 0 {
		t.Errorf("a probe stream was scanned")
	}

	off := newFake(t, "tcp")
	c := cfg(off.url)
	c.ProbeStreamMax = false
	s = newTestScanner(t, c)
	waitFor(t, 5*time.Second, "health checks", func() bool { return off.pings.Load() >= 2 })
	if off.streams.Load() != 0 {
		t.Errorf("probed although ProbeStreamMax is off")
	}

	// Close ends a probe stuck on a clamd that stops reading.
	hung := newFake(t, "tcp")
	hung.set(fakeMode{hangAfter: 100})
	c = cfg(hung.url)
	s = newTestScanner(t, c)
	waitFor(t, 5*time.Second, "the probe", func() bool { return hung.streams.Load() == 1 })
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for a hung probe")
	}
}

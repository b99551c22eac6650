package clamav

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
)

func readBody(t *testing.T, b filters.Body) string {
	t.Helper()
	rc, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestFilterVerdicts(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	s := newTestScanner(t, testConfig(f.url))
	av := NewFilter("av", s, OversizeTempFail)
	if av.Name() != "av" || av.Scanner() != s {
		t.Fatal("Name/Scanner")
	}
	ctx := context.Background()

	v, err := av.Filter(ctx, &filters.Envelope{}, filters.BytesBody([]byte("Subject: hi\r\n\r\nhello\r\n")))
	if err != nil || v.Action != filters.Pass || v.Reason != "clean" || v.Body != nil {
		t.Errorf("clean: %+v, %v", v, err)
	}
	v, err = av.Filter(ctx, &filters.Envelope{}, filters.BytesBody(virusAtEnd(100_000)))
	if err != nil || v.Action != filters.Reject || v.Reason != "virus: "+fakeSig {
		t.Errorf("infected: %+v, %v", v, err)
	}

	// A file-backed spool body, read again on the second backend after the
	// first one drops the connection.
	g := newFake(t, "unix")
	f.set(fakeMode{closeAfter: 50_000})
	s2 := newTestScanner(t, testConfig(f.url, g.url))
	sp := &filters.Spool{Dir: t.TempDir(), MemoryLimit: -1}
	w := sp.NewWriter()
	w.Write(virusAtEnd(1 << 20))
	body, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	defer body.Remove()
	v, err = NewFilter("av2", s2, OversizeTempFail).Filter(ctx, &filters.Envelope{}, body)
	if err != nil || v.Action != filters.Reject {
		t.Errorf("failover with a spool body: %+v, %v", v, err)
	}
	if f.streams.Load() == 0 || g.streams.Load() != 1 {
		t.Errorf("streams: %d on the failing backend, %d on the other", f.streams.Load(), g.streams.Load())
	}

	// No verdict: an error, never Pass.
	f.set(fakeMode{reply: "stream: Can't allocate memory ERROR\x00"})
	v, err = av.Filter(ctx, &filters.Envelope{}, filters.BytesBody([]byte("hello")))
	if err == nil || v.Action != filters.Pass || v.Body != nil || v.Reason != "" {
		t.Errorf("clamd error: %+v, %v", v, err)
	}
	f.set(fakeMode{})
}

func TestFilterOversize(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	cfg := testConfig(f.url)
	cfg.MaxSize = 1000
	s := newTestScanner(t, cfg)
	big := filters.BytesBody(append([]byte("Subject: big\r\n\r\n"), bytes.Repeat([]byte("x"), 2000)...))
	ctx := context.Background()

	for _, c := range []struct {
		o      Oversize
		action filters.Action
		reason string
	}{
		{OversizeTempFail, filters.Retry, "too large to scan"},
		{OversizeReject, filters.Reject, "too large to scan (2016 bytes > max_size 1000)"},
		{OversizeQuarantine, filters.Reject, "too large to scan (2016 bytes > max_size 1000)"},
		{OversizePassWithTag, filters.Replace, "too large to scan, passed with a warning"},
	} {
		v, err := NewFilter("av", s, c.o).Filter(ctx, &filters.Envelope{}, big)
		if err != nil || v.Action != c.action || v.Reason != c.reason {
			t.Errorf("%v: %+v, %v", c.o, v, err)
			continue
		}
		if c.o == OversizePassWithTag {
			want := "X-Popgate-Warning: not scanned: too large (2016 bytes > max_size 1000)\r\n" + readBody(t, big)
			if got := readBody(t, v.Body); got != want || !v.KeepsOriginal {
				t.Errorf("tagged body %.100q, KeepsOriginal %v", got, v.KeepsOriginal)
			}
			// The warning is an edit the chain can remember: the field,
			// then all of the message.
			if len(v.Edits) != 2 || v.Edits[1].Data != nil || v.Edits[1].Off != 0 || v.Edits[1].Len != big.Size() {
				t.Errorf("Edits %v", v.Edits)
			} else if got := readBody(t, filters.SplicedBody(big, v.Edits)); got != want {
				t.Errorf("Edits read %.100q", got)
			}
			v.Body.Remove()
		} else if v.Body != nil {
			t.Errorf("%v: a Body on %v", c.o, v.Action)
		}
	}
	if f.streams.Load() != 0 {
		t.Errorf("an oversize message reached clamd")
	}
	for _, s := range []string{"tempfail", "pass-with-tag", "reject", "quarantine"} {
		o, err := ParseOversize(s)
		if err != nil || o.String() != s {
			t.Errorf("ParseOversize(%q) = %v, %v", s, o, err)
		}
	}
	if _, err := ParseOversize("pass"); err == nil {
		t.Error(`ParseOversize("pass") accepted`)
	}
}

// The chain never delivers a message the scanner could not decide on.
func TestFilterInChain(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	s := newTestScanner(t, testConfig(f.url))
	chain := &filters.Chain{Filters: []filters.Filter{NewFilter("av", s, OversizeTempFail)}}
	msg := filters.BytesBody([]byte("Subject: x\r\n\r\n" + eicar + "\r\n"))
	ctx := context.Background()

	res := chain.Run(ctx, &filters.Envelope{}, msg)
	if res.Outcome != filters.Refuse || !strings.Contains(res.Reason, fakeSig) {
		t.Errorf("infected: %v %q", res.Outcome, res.Reason)
	}
	res.Release()

	for name, m := range map[string]fakeMode{
		"hung":         {hangAfterAccept: true},
		"closes":       {closeAfter: 5},
		"size-limit":   {sizeLimit: 10},
		"garbage":      {reply: "stream: OK"},
		"early-reply":  {earlyReply: "stream: OK\x00", replyDelay: 100e6},
		"ping-refused": {pingClose: true, closeAfter: 1},
	} {
		f.set(m)
		res := chain.Run(ctx, &filters.Envelope{}, msg)
		if res.Outcome != filters.Defer {
			t.Errorf("%s: outcome %v (%q), want defer", name, res.Outcome, res.Reason)
		}
		t.Logf("%s: %v: %s", name, res.Outcome, res.Reason)
		res.Release()
	}
	f.set(fakeMode{})

	// clamd gone altogether.
	f.stop()
	res = chain.Run(ctx, &filters.Envelope{}, msg)
	if res.Outcome != filters.Defer {
		t.Errorf("clamd down: %v", res.Outcome)
	}
	res.Release()
	if _, err := s.ScanReader(ctx, strings.NewReader(""), 0); err == nil || errors.Is(err, ErrOversize) {
		t.Errorf("clamd down: %v", err)
	}
}

// A scan started on the message as it arrives (Chain.Start) gives the
// verdict: clamd got the stream while it was being written, and the
// filter does not scan again. A message cut short ends that stream
// without its end marker: no verdict from it, ever.
func TestFilterStarted(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	s := newTestScanner(t, testConfig(f.url))
	chain := &filters.Chain{Filters: []filters.Filter{NewFilter("av", s, OversizeTempFail)}, Spool: &filters.Spool{Dir: t.TempDir(), MemoryLimit: 64 << 10}}
	ctx := context.Background()
	receive := func(msg []byte, abort bool) (filters.Body, *filters.Started) {
		w := chain.Spool.NewWriter()
		st := chain.Start(ctx, w)
		for off := 0; off < len(msg); off += 10_000 {
			w.Write(msg[off:min(off+10_000, len(msg))])
			time.Sleep(time.Millisecond) // arriving, not all at once
		}
		if abort {
			w.Abort()
			return nil, st
		}
		b, err := w.Finish()
		if err != nil {
			t.Fatal(err)
		}
		return b, st
	}
	for _, tc := range []struct {
		name string
		msg  []byte
		want filters.Outcome
	}{
		{"infected", virusAtEnd(300_000), filters.Refuse},
		{"clean", []byte("Subject: x\r\n\r\n" + strings.Repeat("hello\r\n", 50_000)), filters.Deliver},
	} {
		before := f.streams.Load()
		in, st := receive(tc.msg, false)
		res := chain.Run(ctx, filters.WithStarted(&filters.Envelope{}, st), in)
		if res.Outcome != tc.want {
			t.Errorf("%s: outcome %v (%q), want %v", tc.name, res.Outcome, res.Reason, tc.want)
		}
		if n := f.streams.Load() - before; n != 1 || f.lastStream.Load() != int64(len(tc.msg)) {
			t.Errorf("%s: %d streams (want 1, the started one), the last of %d bytes (want %d)", tc.name, n, f.lastStream.Load(), len(tc.msg))
		}
		res.Release()
		in.Remove()
	}

	// clamd fails once it has the whole stream: that is the scan's
	// outcome (on_error), not a reason to scan again.
	f.set(fakeMode{reply: "stream: Can't allocate memory ERROR\x00"})
	before := f.streams.Load()
	in, st := receive(virusAtEnd(100_000), false)
	res := chain.Run(ctx, filters.WithStarted(&filters.Envelope{}, st), in)
	if res.Outcome != filters.Defer || f.streams.Load()-before != 1 {
		t.Errorf("clamd error: %v (%q), %d streams, want defer after 1", res.Outcome, res.Reason, f.streams.Load()-before)
	}
	res.Release()
	in.Remove()
	f.set(fakeMode{})

	// Cut short: the started stream ends without its marker and gives no
	// verdict.
	ended := f.ended.Load()
	_, _ = receive(virusAtEnd(300_000), true)
	waitFor(t, 5*time.Second, "the started stream to be dropped", func() bool { return f.inflight.Load() == 0 })
	if f.ended.Load() != ended {
		t.Errorf("a stream of a message cut short got its end marker")
	}

	// A scan started on another message (of the same length) is not
	// taken: the filter scans what it is given.
	clean := []byte("Subject: x\r\n\r\n" + strings.Repeat("a", 300_000-14))
	other, st := receive(clean, false)
	defer other.Remove()
	in, _ = receive(virusAtEnd(300_000), false)
	before = f.streams.Load()
	res = chain.Run(ctx, filters.WithStarted(&filters.Envelope{}, st), in)
	if res.Outcome != filters.Refuse || f.streams.Load()-before != 1 {
		t.Errorf("another body: %v (%q), %d streams", res.Outcome, res.Reason, f.streams.Load()-before)
	}
	res.Release()
	in.Remove()
}

// The scan Start began sends what has arrived without waiting for a full
// 64 KiB chunk: clamd holds the first bytes of a message while the rest is
// still on its way, and only the last piece is left to send when the
// message ends.
func TestFilterStartedSendsAsItArrives(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	var got atomic.Int64
	f.set(fakeMode{onBytes: func(n int64) { got.Store(n) }})
	s := newTestScanner(t, testConfig(f.url))
	chain := &filters.Chain{Filters: []filters.Filter{NewFilter("av", s, OversizeTempFail)}, Spool: &filters.Spool{Dir: t.TempDir()}}
	ctx := context.Background()
	msg := virusAtEnd(100_000)
	w := chain.Spool.NewWriter()
	st := chain.Start(ctx, w)
	w.Write(msg[:10_000])
	waitFor(t, 5*time.Second, "clamd to get the first 10,000 bytes before the message is whole", func() bool { return got.Load() >= 10_000 })
	w.Write(msg[10_000:])
	in, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Remove()
	res := chain.Run(ctx, filters.WithStarted(&filters.Envelope{}, st), in)
	defer res.Release()
	if res.Outcome != filters.Refuse || got.Load() != int64(len(msg)) {
		t.Errorf("outcome %v (%q), clamd got %d bytes; want refuse after all %d", res.Outcome, res.Reason, got.Load(), len(msg))
	}
}

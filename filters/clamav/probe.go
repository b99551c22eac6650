package clamav

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
)

// The StreamMaxLength probe. clamd has no command that tells its
// StreamMaxLength, but it refuses a stream that passes it ("INSTREAM size
// limit exceeded. ERROR") as soon as it does, and it drops a stream whose
// connection is half-closed before the end marker without scanning it and
// without a reply (ClamAV 1.4: ~70 ms for 25 MB of zeros on loopback, no
// scan). So max_size bytes of zeros, then a half-close, tell whether
// clamd takes a stream of max_size: a refusal means messages between the
// two limits would all get ErrSizeLimit.

// Probe states of a backend.
const (
	probeNone    int32 = iota // not probed (or the probe was inconclusive: tried again)
	probeRunning              // a probe runs
	probeDone                 // the answer is known
)

// probePrecision is how closely a probe that found StreamMaxLength below
// max_size narrows clamd's value down, in bytes.
const probePrecision = 1024

// startProbe probes b's StreamMaxLength in the background, once per
// backend, after b answered a health check: it never delays the start, and
// Close ends it.
func (s *Scanner) startProbe(b *backend) {
	if !s.cfg.ProbeStreamMax || s.ctx.Err() != nil || !b.probe.CompareAndSwap(probeNone, probeRunning) {
		return
	}
	s.probes.Go(func() { s.probeStreamMax(s.ctx, b) })
}

// probeKey names what a probe finds out: one clamd and one max_size.
type probeKey struct {
	network, address string
	max              int64
}

// probeEntry is the process's answer for one probeKey: scanners of the
// same clamd (a reload's new generation, the scanners of several blocks)
// share it, so each clamd is probed once per process and max_size, one
// probe at a time (sem). A clamd given another StreamMaxLength is probed
// again when popgate restarts.
type probeEntry struct {
	sem     chan struct{} // held while the probe runs
	done    bool
	problem string
}

var probes sync.Map // probeKey → *probeEntry

// probeStreamMax finds out whether b takes a stream of MaxSize bytes and,
// when it does not, how large its StreamMaxLength is (within
// probePrecision): an error in the log naming both values, and the
// backend's Problem (filters.Backend; a metric).
func (s *Scanner) probeStreamMax(ctx context.Context, b *backend) {
	max := s.cfg.MaxSize
	v, _ := probes.LoadOrStore(probeKey{b.network, b.address, max}, &probeEntry{sem: make(chan struct{}, 1)})
	e := v.(*probeEntry)
	select {
	case e.sem <- struct{}{}:
		defer func() { <-e.sem }()
	case <-ctx.Done():
		b.probe.Store(probeNone)
		return
	}
	if !e.done {
		e.problem, e.done = s.probe(ctx, b, max)
	}
	if !e.done {
		b.probe.Store(probeNone) // inconclusive: again after the next good health check
		return
	}
	if e.problem != "" {
		b.problem.Store(&e.problem)
		s.log().Error().Str("backend", b.Addr).Str("problem", e.problem).
			Msg("clamd's StreamMaxLength is below the scanner's max_size: raise StreamMaxLength in clamd.conf to at least max_size, or lower max_size")
	}
	b.probe.Store(probeDone)
}

// probe runs the probe of b for max: the problem found ("" when none),
// and whether the answer is known.
func (s *Scanner) probe(ctx context.Context, b *backend, max int64) (problem string, known bool) {
	fits, err := s.streamFits(ctx, b, max)
	if err != nil {
		s.log().Debug().Str("backend", b.Addr).Err(err).Msg("clamd StreamMaxLength probe inconclusive")
		return "", false
	}
	if fits {
		s.log().Debug().Str("backend", b.Addr).Int64("max_size", max).Msg("clamd takes streams of max_size")
		return "", true
	}
	// Refused: narrow clamd's limit down (lo fits, hi does not). A refused
	// stream ends at clamd's limit, so no probe sends much more than it.
	lo, hi := int64(0), max
	for hi-lo > probePrecision && err == nil {
		mid := lo + (hi-lo)/2
		if fits, err = s.streamFits(ctx, b, mid); fits {
			lo = mid
		} else {
			hi = mid
		}
	}
	if ctx.Err() != nil {
		return "", false
	}
	return fmt.Sprintf("clamd's StreamMaxLength (%d to %d bytes) is below max_size (%d bytes): messages between the two are refused and never scanned", lo, hi-1, max), true
}

// streamFits sends n zero bytes to b as an INSTREAM stream, then
// half-closes the connection without the end marker: true when clamd
// took all of them and dropped the stream silently, false when it refused
// them with its size-limit reply. Anything else is an error.
func (s *Scanner) streamFits(ctx context.Context, b *backend, n int64) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, scanTimeout(s.cfg, n))
	defer cancel()
	conn, err := s.dial(ctx, b)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	hc, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		return false, errors.New("the connection cannot be half-closed")
	}
	var final atomic.Bool
	final.Store(true) // the reply may come at any time
	replies := make(chan reply, 1)
	go func() { replies <- readReply(conn, &final, true) }()
	refused := func(rp reply) (bool, error) {
		if rp.ok && strings.Contains(rp.line, "size limit exceeded") {
			return false, nil
		}
		if rp.ok {
			return false, fmt.Errorf("unexpected reply %q", rp.line)
		}
		return false, connClosed(rp.err)
	}

	buf := make([]byte, 4+chunkSize) // zeros after the length
	_, werr := conn.Write(cmdInstream)
	for sent := int64(0); sent < n && werr == nil; {
		select {
		case rp := <-replies:
			return refused(rp)
		default:
		}
		k := min(int64(chunkSize), n-sent)
		binary.BigEndian.PutUint32(buf[:4], uint32(k))
		_, werr = conn.Write(buf[:4+k])
		sent += k
	}
	if werr == nil {
		werr = hc.CloseWrite()
	}
	rp := <-replies
	switch {
	case ctx.Err() != nil:
		return false, fmt.Errorf("no answer within %v: %w", scanTimeout(s.cfg, n), ctx.Err())
	case werr == nil && !rp.ok && rp.line == "" && (rp.err == nil || errors.Is(rp.err, io.EOF)):
		return true, nil
	}
	return refused(rp)
}

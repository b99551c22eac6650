package clamav

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/popgate/popgate/filters"
)

// Oversize is filters.Oversize under the names clamav's settings and
// callers have always used.
type Oversize = filters.Oversize

// The oversize actions (filters.Oversize).
const (
	OversizeTempFail    = filters.OversizeTempFail
	OversizePassWithTag = filters.OversizePassWithTag
	OversizeReject      = filters.OversizeReject
	OversizeQuarantine  = filters.OversizeQuarantine
)

// ParseOversize is filters.ParseOversize.
func ParseOversize(s string) (Oversize, error) { return filters.ParseOversize(s) }

// WarningHeader is the header field that OversizePassWithTag prepends.
const WarningHeader = "X-Popgate-Warning"

// Filter is the "clamav" filter: it scans each message with a Scanner.
type Filter struct {
	name     string
	scanner  *Scanner
	oversize Oversize
}

// NewFilter returns the filter called name that scans with s.
func NewFilter(name string, s *Scanner, oversize Oversize) *Filter {
	return &Filter{name: name, scanner: s, oversize: oversize}
}

// Name is the filter's block name.
func (f *Filter) Name() string { return f.name }

// Scanner is the scanner the filter uses.
func (f *Filter) Scanner() *Scanner { return f.scanner }

// Filter scans body. Clean: Pass "clean". Infected: Reject "virus: NAME".
// Larger than max_size: the oversize action. Anything else (clamd down,
// timeout, size limit refused by clamd, ERROR reply, …): an error, so that
// the chain applies on_error; never Pass.
func (f *Filter) Filter(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
	size := body.Size()
	if size > f.scanner.MaxSize() {
		return f.tooLarge(body, size), nil
	}
	if v, ok, err := f.started(ctx, env, body); ok {
		return v, err
	}
	res, err := f.scanner.scan(ctx, &bodySource{body: body}, size)
	switch {
	case errors.Is(err, ErrOversize):
		return f.tooLarge(body, size), nil
	case err != nil:
		return filters.Verdict{}, err
	}
	return scanVerdict(res), nil
}

// scanVerdict is the verdict on clamd's answer.
func scanVerdict(res Result) filters.Verdict {
	if res.Infected {
		return filters.Verdict{Action: filters.Reject, Reason: "virus: " + res.Signature}
	}
	return filters.Verdict{Action: filters.Pass, Reason: "clean"}
}

// tooLarge is the verdict for a message over max_size.
func (f *Filter) tooLarge(body filters.Body, size int64) filters.Verdict {
	max := f.scanner.MaxSize()
	switch f.oversize {
	case OversizePassWithTag:
		edits := filters.HeaderPieces(body, fmt.Sprintf("%s: not scanned: too large (%d bytes > max_size %d)", WarningHeader, size, max))
		return filters.Verdict{
			Action:        filters.Replace,
			Body:          filters.SplicedBody(body, edits), // PrependHeader's body
			Reason:        "too large to scan, passed with a warning",
			KeepsOriginal: true,
			Edits:         edits,
		}
	case OversizeReject, OversizeQuarantine:
		return filters.Verdict{Action: filters.Reject, Reason: fmt.Sprintf("too large to scan (%d bytes > max_size %d)", size, max)}
	}
	return filters.Verdict{Action: filters.Retry, Reason: "too large to scan"}
}

// Scan scans a message body (filters.Scanner): Found is the signature of
// what clamd found. A body over MaxSize gives ErrOversize.
func (s *Scanner) Scan(ctx context.Context, body filters.Body) (filters.ScanResult, error) {
	res, err := s.scan(ctx, &bodySource{body: body}, body.Size()) // scan closes the source
	return filters.ScanResult{Found: res.Signature, Backend: res.Backend, Took: res.Duration}, err
}

// bodySource opens the Body afresh for each attempt of a scan.
type bodySource struct {
	body filters.Body
	rc   io.ReadCloser
}

func (bs *bodySource) open(int) (io.Reader, bool, error) {
	bs.close()
	rc, err := bs.body.Open()
	if err != nil {
		return nil, false, fmt.Errorf("opening the message: %w", err)
	}
	bs.rc = rc
	return rc, true, nil
}

func (bs *bodySource) close() {
	if bs.rc != nil {
		_ = bs.rc.Close()
		bs.rc = nil
	}
}

package clamav

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
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
	scan     ScanMode // ScanMessage unless the policy's scan setting says otherwise
}

// NewFilter returns the filter called name that scans with s, the whole
// message at a time (ScanMessage).
func NewFilter(name string, s *Scanner, oversize Oversize) *Filter {
	return &Filter{name: name, scanner: s, oversize: oversize}
}

// Name is the filter's block name.
func (f *Filter) Name() string { return f.name }

// Scanner is the scanner the filter uses.
func (f *Filter) Scanner() *Scanner { return f.scanner }

// Filter scans body as its scan mode says. Clean: Pass "clean". Infected:
// Reject "virus: NAME". Not scanned in full (larger than max_size, or
// clamd's own limits exceeded): the oversize action. Anything else (clamd
// down, timeout, size limit refused by clamd, ERROR reply, …): an error,
// so that the chain applies on_error; never Pass.
func (f *Filter) Filter(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
	start := time.Now()
	var o outcome
	var err error
	if f.scan != ScanParts {
		o, err = f.scanMessage(ctx, env, body)
	}
	if err == nil && o.found == "" && f.scan != ScanMessage {
		var po outcome
		po, err = f.scanParts(ctx, env, body, f.scan == ScanBoth)
		o = o.add(po)
	}
	switch {
	case err != nil:
		return filters.Verdict{}, err
	case o.found != "":
		return filters.Verdict{Action: filters.Reject, Reason: "virus: " + o.found,
			Scan: &filters.ScanResult{Found: o.found, Where: o.where, Backend: o.backend, Took: time.Since(start)}}, nil
	case o.unscanned != nil:
		return f.notScanned(body, o.unscanned), nil
	}
	return filters.Verdict{Action: filters.Pass, Reason: "clean"}, nil
}

// scanMessage scans body as one stream, or takes the outcome of the scan
// Start began on it while it arrived.
func (f *Filter) scanMessage(ctx context.Context, env *filters.Envelope, body filters.Body) (outcome, error) {
	size, max := body.Size(), f.scanner.MaxSize()
	if size > max {
		return outcome{unscanned: &unscanned{what: "too large to scan", tag: "too large", detail: fmt.Sprintf("%d bytes > max_size %d", size, max)}}, nil
	}
	res, ok, err := f.started(ctx, env, body)
	if !ok {
		res, err = f.scanner.scan(ctx, &bodySource{body: body}, size)
	}
	return scanError(res, err, "", max)
}

// notScanned is the oversize action for a message not scanned in full.
func (f *Filter) notScanned(body filters.Body, u *unscanned) filters.Verdict {
	switch f.oversize {
	case OversizePassWithTag:
		edits := filters.HeaderPieces(body, fmt.Sprintf("%s: not scanned: %s (%s)", WarningHeader, u.tag, mailtext.Visible(u.detail, maxReplyText)))
		return filters.Verdict{
			Action:        filters.Replace,
			Body:          filters.SplicedBody(body, edits), // PrependHeader's body
			Reason:        u.what + ", passed with a warning",
			KeepsOriginal: true,
			Edits:         edits,
		}
	case OversizeReject, OversizeQuarantine:
		return filters.Verdict{Action: filters.Reject, Reason: fmt.Sprintf("%s (%s)", u.what, u.detail)}
	}
	return filters.Verdict{Action: filters.Retry, Reason: u.what}
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

package clamav

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
	"github.com/popgate/popgate/internal/mimetree"
)

// ScanMode is what the clamav filter sends to clamd: its scan setting.
type ScanMode int

const (
	// ScanMessage sends the raw message as one stream; clamd decodes the
	// MIME structure itself. It is the default: clamd's signatures for
	// mail (target type 4 of the official database, phishing checks) see
	// the message as a message only this way.
	ScanMessage ScanMode = iota
	// ScanParts sends the message's header section once, then each leaf
	// part, decoded, as a stream of its own: clamd's recursion and size
	// limits are spent on the content, not on MIME and base64 layers.
	ScanParts
	// ScanBoth does ScanMessage, then ScanParts (unless the message is
	// already found infected): the detections of both, at twice the cost.
	ScanBoth
)

// ParseScanMode parses a scan setting: "message", "parts" or "both".
func ParseScanMode(s string) (ScanMode, error) {
	for m := ScanMessage; m <= ScanBoth; m++ {
		if m.String() == s {
			return m, nil
		}
	}
	return ScanMessage, fmt.Errorf("invalid scan %q: want \"message\", \"parts\" or \"both\"", s)
}

func (m ScanMode) String() string {
	switch m {
	case ScanMessage:
		return "message"
	case ScanParts:
		return "parts"
	case ScanBoth:
		return "both"
	}
	return fmt.Sprintf("ScanMode(%d)", int(m))
}

// outcome is what the filter's scans of one message found.
type outcome struct {
	found   string // the signature of the first thing found; "" when none
	where   string // the part it was found in ("" for the whole message)
	backend string
	// unscanned, when set, says why the message, or a part of it, was not
	// scanned in full. It counts only when nothing was found.
	unscanned *unscanned
}

// unscanned is why (part of) a message was not scanned: the oversize
// setting decides what happens to it.
type unscanned struct {
	what   string // the verdict's reason: "too large to scan"
	tag    string // for the warning field: "too large"
	detail string // "2016 bytes > max_size 1000"
}

// add merges o2, found after o, into o: the first signature found wins,
// and so does the first reason for not scanning.
func (o outcome) add(o2 outcome) outcome {
	if o.found == "" {
		o.found, o.where, o.backend = o2.found, o2.where, o2.backend
	}
	if o.unscanned == nil {
		o.unscanned = o2.unscanned
	}
	return o
}

// scanError turns what scan returned for a stream (the whole message or a
// part, described by where) into an outcome: a verdict, a stream that was
// not scanned (over max_size, or clamd's limits exceeded), or an error.
func scanError(res Result, err error, where string, max int64) (outcome, error) {
	var le *LimitsError
	switch {
	case errors.Is(err, ErrOversize):
		d := fmt.Sprintf("more than max_size %d bytes", max)
		if where != "" {
			d = where + ": " + d
		}
		return outcome{unscanned: &unscanned{what: "too large to scan", tag: "too large", detail: d}}, nil
	case errors.As(err, &le):
		d := le.Signature
		if where != "" {
			d += " in " + where
		}
		return outcome{unscanned: &unscanned{what: "beyond clamd's scan limits", tag: "beyond clamd's scan limits", detail: d}}, nil
	case err != nil:
		if where != "" {
			return outcome{}, fmt.Errorf("%s: %w", where, err)
		}
		return outcome{}, err
	case res.Infected:
		return outcome{found: res.Signature, where: where, backend: res.Backend}, nil
	}
	return outcome{}, nil
}

// scanParts sends the header section of body once, then each leaf part,
// decoded (Part.Content), as its own stream, in document order, one after
// the other (each within the scanner's max_concurrent and deadlines). It
// stops at the first part found infected; a part it could not scan does
// not stop it, since a later one may be infected. Parts are read from the
// spooled body as they are sent: nothing is copied.
//
// A MIME structure beyond mimetree's limits cannot be split into parts:
// the raw message is scanned instead (unless done is set: ScanBoth has
// scanned it already), and the log says so. Parts are never skipped.
func (f *Filter) scanParts(ctx context.Context, env *filters.Envelope, body filters.Body, done bool) (outcome, error) {
	root, err := env.MIME(ctx, body)
	var le *mimetree.LimitError
	if errors.As(err, &le) {
		f.scanner.log().Warn().Str("filter", f.name).Err(err).Bool("scanned_whole", done).
			Msg("clamav: the MIME structure is beyond the parser's limits: the raw message is scanned instead of its parts")
		if done {
			return outcome{}, nil
		}
		return f.scanMessage(ctx, env, body)
	}
	if err != nil {
		return outcome{}, fmt.Errorf("clamav: reading the MIME structure: %w", err)
	}
	ra, err := openReaderAt(body)
	if err != nil {
		return outcome{}, err
	}
	defer ra.Close()
	r := mailtext.NewReaderAt(ctx, ra)

	max := f.scanner.MaxSize()
	hsize := root.BodyStart - root.HeaderStart
	res, err := f.scanner.ScanReader(ctx, io.NewSectionReader(r, root.HeaderStart, hsize), hsize)
	o, err := scanError(res, err, "the header", max)
	if err != nil || o.found != "" {
		return o, err
	}
	var leaves []*mimetree.Part
	root.Walk(func(p *mimetree.Part) bool {
		if p.Kind == mimetree.Leaf && p.BodyEnd > p.BodyStart {
			leaves = append(leaves, p)
		}
		return true
	})
	for _, p := range leaves {
		where := describePart(p)
		src := &partSource{part: p, r: r, size: -1}
		if mimetree.IdentityEncoding(p.Encoding) {
			src.size = p.BodyEnd - p.BodyStart // sent as it is: its size is known
		}
		res, err := f.scanner.scan(ctx, src, src.size)
		po, err := scanError(res, err, where, max)
		if err != nil {
			return outcome{}, err
		}
		if po.found != "" {
			f.scanner.log().Info().Str("filter", f.name).Str("part", where).Str("signature", po.found).Msg("clamav: found in a part")
		}
		if o = o.add(po); o.found != "" {
			return o, nil
		}
	}
	return o, nil
}

// describePart names a part for logs and results: "part 3 (application/zip,
// clam.zip)".
func describePart(p *mimetree.Part) string {
	s := fmt.Sprintf("part %d (%s", p.Index, p.ContentType)
	if p.Filename != "" {
		s += ", " + mailtext.Visible(p.Filename, 100)
	}
	return s + ")"
}

// partSource gives a part's decoded content to each attempt of its scan,
// decoded afresh from the message each time.
type partSource struct {
	part *mimetree.Part
	r    io.ReaderAt
	size int64 // the decoded size when known (identity encodings), else -1
}

func (ps *partSource) open(int) (io.Reader, bool, error) { return ps.part.Content(ps.r), true, nil }

func (ps *partSource) close() {}

// sizeHint is the encoded size: the decoded content is not larger, so the
// deadline it gives is long enough.
func (ps *partSource) sizeHint() int64 { return ps.part.BodyEnd - ps.part.BodyStart }

// readerAtCloser is a body's random access, closed when done.
type readerAtCloser interface {
	io.ReaderAt
	io.Closer
}

// openReaderAt opens body for random access: its own reader when it has
// io.ReaderAt (a spooled body), else a forwardReaderAt.
func openReaderAt(body filters.Body) (readerAtCloser, error) {
	rc, err := body.Open()
	if err != nil {
		return nil, fmt.Errorf("clamav: opening the message: %w", err)
	}
	if ra, ok := rc.(readerAtCloser); ok {
		return ra, nil
	}
	return &forwardReaderAt{body: body, rc: rc}, nil
}

// forwardReaderAt serves ReadAt from a body without io.ReaderAt (a
// SplicedBody, an earlier filter's change): reads at increasing offsets
// continue on one reader, a read further back opens the body again. Parts
// are read in document order, so the body is read once (plus once per
// retry of a scan).
type forwardReaderAt struct {
	body filters.Body
	mu   sync.Mutex
	rc   io.ReadCloser
	pos  int64
}

func (f *forwardReaderAt) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rc == nil || off < f.pos {
		if f.rc != nil {
			_ = f.rc.Close()
			f.rc = nil
		}
		rc, err := f.body.Open()
		if err != nil {
			return 0, err
		}
		f.rc, f.pos = rc, 0
	}
	if off > f.pos {
		n, err := io.CopyN(io.Discard, f.rc, off-f.pos)
		f.pos += n
		if err != nil {
			return 0, err
		}
	}
	n, err := io.ReadFull(f.rc, p)
	f.pos += int64(n)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return n, err
}

func (f *forwardReaderAt) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rc == nil {
		return nil
	}
	err := f.rc.Close()
	f.rc = nil
	return err
}

// Package mimetree reads the MIME structure of a message: its tree of
// parts with their byte offsets, content types, names and encodings, in one
// bounded, streaming pass. The strip filter decides on it which parts to
// remove; the chain's signature detection (internal/mailsig) finds signed
// and encrypted parts with it. It never decodes a body: a caller that wants
// a part's content reads its range.
package mimetree

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Default caps of Limits.
const (
	DefaultMaxDepth       = 50
	DefaultMaxParts       = 10000
	DefaultMaxHeaderBytes = 256 << 10
)

// lineBufSize is the read buffer of the scanner. A line longer than this is
// still read in full, but only its first lineBufSize bytes can make it a
// boundary delimiter (with nothing but white space after them).
const lineBufSize = 64 << 10

// lineBufs are the parser's line buffers, reused across messages: many
// concurrent sessions would otherwise churn 64 KiB per message.
var lineBufs = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, lineBufSize) }}

// Limits caps what Parse accepts. A zero or negative field means its default.
type Limits struct {
	// MaxDepth is the deepest nesting allowed: the message itself is depth
	// 0, each multipart child and each message/rfc822 body one level more.
	MaxDepth int
	// MaxParts is the largest number of parts, the message itself included.
	MaxParts int
	// MaxHeaderBytes caps the header section of every part (and of the
	// message itself), line breaks included.
	MaxHeaderBytes int
}

func (l Limits) WithDefaults() Limits {
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxParts <= 0 {
		l.MaxParts = DefaultMaxParts
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	return l
}

// LimitError is what Parse returns when a message exceeds one of its
// Limits. Parse stops at the first byte beyond the cap, so a hostile message
// costs at most the cap.
type LimitError struct {
	Limit  string // "depth", "parts" or "header"
	Max    int    // the cap that was exceeded
	Offset int64  // where in the message it was exceeded
}

func (e *LimitError) Error() string {
	switch e.Limit {
	case "depth":
		return fmt.Sprintf("MIME structure nested deeper than %d levels (at byte %d)", e.Max, e.Offset)
	case "parts":
		return fmt.Sprintf("more than %d MIME parts (at byte %d)", e.Max, e.Offset)
	case "header":
		return fmt.Sprintf("a MIME part header larger than %d bytes (at byte %d)", e.Max, e.Offset)
	}
	return fmt.Sprintf("MIME %s limit %d exceeded (at byte %d)", e.Limit, e.Max, e.Offset)
}

// Kind says how Parse treated a part.
type Kind int

const (
	// Leaf is a part with no structure Parse looked into.
	Leaf Kind = iota
	// Multipart is a multipart/* part with a boundary; its Children are its
	// body parts.
	Multipart
	// Message is a message/rfc822 (or message/global) part in an identity
	// transfer encoding; its only Child is the embedded message.
	Message
)

func (k Kind) String() string {
	switch k {
	case Leaf:
		return "leaf"
	case Multipart:
		return "multipart"
	case Message:
		return "message"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Part is one entity of a message: the message itself, a body part of a
// multipart, or a message embedded in a message/rfc822 part. All offsets are
// byte offsets into the input of Parse.
//
// The header section is [HeaderStart, HeaderEnd): its field lines with their
// line breaks, without the empty line that ends it. The body is
// [BodyStart, BodyEnd). For a body part of a multipart, BodyEnd stops before
// the line break that precedes the next boundary delimiter (RFC 2046: that
// line break belongs to the delimiter), so [HeaderStart, BodyEnd) is exactly
// what can be replaced by another entity.
type Part struct {
	HeaderStart, HeaderEnd int64
	BodyStart, BodyEnd     int64

	Kind  Kind
	Depth int // 0 for the message itself
	Index int // position in document order; 0 for the message itself

	Parent   *Part
	Children []*Part

	// ContentType is the media type of the first Content-Type field,
	// lower-cased, without parameters; the RFC 2045 default (text/plain, or
	// message/rfc822 in a multipart/digest) when there is none or it is
	// unusable. Params are its parameters (names lower-cased, values decoded).
	ContentType string
	Params      map[string]string
	// Disposition is the lower-cased disposition type of the first
	// Content-Disposition field ("attachment", "inline", …; "" if none);
	// DispParams its parameters.
	Disposition string
	DispParams  map[string]string
	// Filename is the name a mail client shows: the filename parameter of
	// Content-Disposition, else the name parameter of Content-Type, decoded
	// (RFC 2231 with continuations and charsets, RFC 2047 encoded words).
	Filename string
	// Names holds every distinct decoded name found in the part's
	// Content-Type and Content-Disposition fields (all fields, duplicates
	// included): clients disagree on which one wins, so policies check all.
	Names []string
	// Encoding is the lower-cased Content-Transfer-Encoding ("" if none).
	Encoding string
	// Boundary is the boundary parameter of a Multipart part.
	Boundary string
	// Unterminated is set on a Multipart part whose close delimiter never
	// came (the message or an enclosing part ended first).
	Unterminated bool
	// LF is set when the part's lines end in a bare LF rather than CRLF
	// (judged by the line that starts it).
	LF bool
	// Fields counts the Content-Type and Content-Disposition fields; more
	// than one of either makes the part ambiguous between mail clients.
	ContentTypeFields, DispositionFields int
}

// Range is [HeaderStart, BodyEnd): the whole part.
func (p *Part) Range() (start, end int64) { return p.HeaderStart, p.BodyEnd }

// IsEntity reports whether the part is a message root (the message itself or
// the body of a message/rfc822 part) rather than a body part of a multipart.
func (p *Part) IsEntity() bool { return p.Parent == nil || p.Parent.Kind == Message }

// Walk calls fn for p and every part below it in document order, without
// recursion (so any depth is fine). When fn returns false for a part, its
// children are skipped.
func (p *Part) Walk(fn func(*Part) bool) {
	stack := []*Part{p}
	for len(stack) > 0 {
		q := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !fn(q) {
			continue
		}
		for i := len(q.Children) - 1; i >= 0; i-- {
			stack = append(stack, q.Children[i])
		}
	}
}

// Hooks let a caller see what Parse reads as it reads it, so that one pass
// serves both. The byte slices they get are Parse's buffers: valid only
// during the call, and not to be modified.
type Hooks struct {
	// Header, when set, sees the header section of each part once Parse has
	// read and interpreted it (the part's type, parameters and encoding are
	// set; its body and children are still to come): its field lines with
	// their line breaks, and the empty line that ends it when there is one
	// (at most Limits.MaxHeaderBytes).
	Header func(p *Part, raw []byte)
	// Line, when set, sees each line of the body of each leaf part, without
	// its line break (of a line longer than 64 KiB, its start only).
	Line func(p *Part, line []byte)
	// Lines, when set, says (once, when a leaf's body begins) whether Line
	// wants all of that leaf's lines; of a leaf it declines, Line sees only
	// the lines that start with '-' (which the parser reads anyway, since
	// only they can be boundaries): the others are skipped at memory speed.
	Lines func(p *Part) bool
}

// Parse scans the message of size bytes in r and returns its part tree. It
// reads the message once, sequentially, keeping no more than one header
// section (at most lim.MaxHeaderBytes) and a line buffer in memory, and takes
// time linear in size and in the number of parts, whatever the nesting.
// hooks may be nil.
//
// Parse never fails on malformed MIME: it accepts CRLF and bare LF lines,
// missing close delimiters, preambles and epilogues, 8-bit and non-UTF-8
// bytes, and treats what it cannot interpret as a leaf. It fails only when
// reading fails, or with a *LimitError when a cap of lim is exceeded.
func Parse(r io.Reader, size int64, lim Limits, hooks *Hooks) (*Part, error) {
	br := lineBufs.Get().(*bufio.Reader)
	br.Reset(io.LimitReader(r, size))
	defer func() { br.Reset(nil); lineBufs.Put(br) }()
	p := &parser{
		lim:   lim.WithDefaults(),
		br:    br,
		size:  size,
		bmap:  make(map[string][]int),
		first: true,
	}
	if hooks != nil {
		p.hooks = *hooks
	}
	defer p.releaseHdrs()
	return p.run()
}

// hdrBufs carries header buffers from one parse to the next: every
// message has at least one header section to collect.
var hdrBufs = sync.Pool{New: func() any { return new([]byte) }}

// releaseHdrs gives the parser's header buffers to the next parse.
func (p *parser) releaseHdrs() {
	for _, b := range p.hdrPool {
		hdrBufs.Put(&b)
	}
	p.hdrPool = nil
}

const (
	stHeader   = iota // reading the header section
	stBody            // in a leaf body, or a container whose child is open
	stPreamble        // multipart before its first delimiter
	stEpilogue        // multipart after its close delimiter
)

type frame struct {
	p     *Part
	state int
	// hdr collects the header section while state is stHeader.
	hdr      []byte
	overflow bool
	// boundary is set while the frame's boundary is active.
	active bool
	// lines: the hooks want the lines of this leaf's body.
	lines bool
}

type parser struct {
	lim   Limits
	hooks Hooks
	br    *bufio.Reader
	size  int64
	off   int64

	stack   []*frame
	bmap    map[string][]int // active boundary → stack indices, innermost last
	nparts  int
	first   bool
	scratch []byte
	hdrPool [][]byte
}

// line is one input line as the parser sees it.
type line struct {
	start int64
	n     int64  // length including the line break
	head  []byte // the line without its break (for long lines, the first chunk)
	long  bool   // the line is longer than head
	// tailWS is set when everything after head (excluding the line break)
	// is white space; always true for lines that are not long.
	tailWS bool
	brk    int // length of the line break: 0 (EOF), 1 (LF) or 2 (CRLF)
}

func (p *parser) run() (*Part, error) {
	root := &Part{}
	p.nparts = 1
	p.stack = append(p.stack, &frame{p: root, state: stHeader, hdr: p.getHdr()})
	prevBrk := 0
	for {
		if top := p.stack[len(p.stack)-1]; top.state == stBody && top.p.Kind == Leaf && !top.lines && !p.first {
			p.skipLines(&prevBrk)
		}
		ln, err := p.readLine()
		if err != nil {
			return nil, err
		}
		if ln.n == 0 {
			break
		}
		if p.first {
			root.LF = ln.brk == 1
			p.first = false
		}
		if j, closing, ok := p.matchBoundary(&ln); ok {
			end := ln.start - int64(prevBrk)
			p.closeAbove(j, end)
			fr := p.stack[j]
			if closing {
				p.deactivate(j)
				fr.state = stEpilogue
			} else {
				if err := p.push(fr, ln.start+ln.n, ln.brk == 1); err != nil {
					return nil, err
				}
			}
			prevBrk = ln.brk
			continue
		}
		top := p.stack[len(p.stack)-1]
		if top.state == stBody && top.p.Kind == Leaf && p.hooks.Line != nil && (top.lines || bytes.HasPrefix(ln.head, dash)) {
			p.hooks.Line(top.p, ln.head)
		}
		if top.state == stHeader {
			if !ln.long && len(ln.head) == 0 {
				top.p.HeaderEnd = ln.start
				top.p.BodyStart = ln.start + ln.n
				if err := p.endHeader(top, true); err != nil {
					return nil, err
				}
			} else if top.overflow {
				return nil, &LimitError{Limit: "header", Max: p.lim.MaxHeaderBytes, Offset: ln.start}
			}
		}
		prevBrk = ln.brk
	}
	p.closeAbove(-1, p.size)
	return root, nil
}

// skipLines moves over the lines ahead that cannot be boundaries (they do
// not start with '-') as far as the buffer reaches, without looking at
// them one by one; *prevBrk becomes the line break of the last one.
func (p *parser) skipLines(prevBrk *int) {
	for {
		buf, _ := p.br.Peek(max(p.br.Buffered(), 1))
		if len(buf) == 0 || buf[0] == '-' {
			return
		}
		m := indexLineDash(buf) + 1
		dash := m > 0
		if !dash {
			m = bytes.LastIndexByte(buf, '\n') + 1
		}
		if m == 0 {
			return // a line longer than the buffer: readLine's
		}
		*prevBrk = 1
		if m >= 2 && buf[m-2] == '\r' {
			*prevBrk = 2
		}
		n, _ := p.br.Discard(m)
		p.off += int64(n)
		if dash {
			return
		}
	}
}

var dash = []byte("-")

// indexLineDash is bytes.Index(buf, "\n-"), found by its '-': base64 has
// none, so a base64 body is crossed in one vectorized search, where
// searching for '\n' stopped at every line.
func indexLineDash(buf []byte) int {
	for i := 1; i < len(buf); {
		k := bytes.IndexByte(buf[i:], '-')
		if k < 0 {
			return -1
		}
		if i += k; buf[i-1] == '\n' {
			return i - 1
		}
		i++
	}
	return -1
}

// readLine reads the next line; n == 0 at the end of the input. Lines read
// while the top frame collects a header are appended to its header buffer
// (in full, up to the cap).
func (p *parser) readLine() (line, error) {
	ln := line{start: p.off, tailWS: true}
	top := p.stack[len(p.stack)-1]
	collect := top.state == stHeader
	chunk, err := p.br.ReadSlice('\n')
	p.off += int64(len(chunk))
	ln.n += int64(len(chunk))
	if collect {
		p.collect(top, chunk)
	}
	switch err {
	case nil:
		ln.head, ln.brk = trimBreak(chunk)
		return ln, nil
	case io.EOF:
		ln.head = chunk
		return ln, nil
	case bufio.ErrBufferFull:
	default:
		return ln, err
	}
	// A long line: keep a copy of its first chunk, read the rest.
	ln.long = true
	p.scratch = append(p.scratch[:0], chunk...)
	ln.head = p.scratch
	lastCR := len(chunk) > 0 && chunk[len(chunk)-1] == '\r'
	for {
		chunk, err = p.br.ReadSlice('\n')
		p.off += int64(len(chunk))
		ln.n += int64(len(chunk))
		if collect {
			p.collect(top, chunk)
		}
		body := chunk
		if err == nil {
			body, ln.brk = trimBreak(chunk)
			if ln.brk == 1 && len(body) == 0 && lastCR {
				// "\r" ended the previous chunk and "\n" begins this one.
				ln.brk = 2
				if len(ln.head) > 0 && ln.head[len(ln.head)-1] == '\r' && ln.n == int64(len(ln.head))+1 {
					ln.head = ln.head[:len(ln.head)-1]
				}
			}
		}
		if ln.tailWS && !allWS(body) {
			ln.tailWS = false
		}
		if len(chunk) > 0 {
			lastCR = chunk[len(chunk)-1] == '\r'
		}
		switch err {
		case nil, io.EOF:
			return ln, nil
		case bufio.ErrBufferFull:
			continue
		default:
			return ln, err
		}
	}
}

func (p *parser) collect(f *frame, chunk []byte) {
	if f.overflow {
		return
	}
	if len(f.hdr)+len(chunk) > p.lim.MaxHeaderBytes {
		f.overflow = true
		return
	}
	f.hdr = append(f.hdr, chunk...)
}

func trimBreak(b []byte) ([]byte, int) {
	n := len(b)
	if n > 0 && b[n-1] == '\n' {
		if n > 1 && b[n-2] == '\r' {
			return b[:n-2], 2
		}
		return b[:n-1], 1
	}
	return b, 0
}

func isWS(c byte) bool { return c == ' ' || c == '\t' || c == '\r' }

func allWS(b []byte) bool {
	for _, c := range b {
		if !isWS(c) {
			return false
		}
	}
	return true
}

// matchBoundary reports whether ln is a delimiter (or, closing, a close
// delimiter) of an active boundary, and the stack index of the innermost
// multipart it belongs to.
func (p *parser) matchBoundary(ln *line) (j int, closing, ok bool) {
	if len(p.bmap) == 0 || !ln.tailWS {
		return 0, false, false
	}
	h := ln.head
	if len(h) < 3 || h[0] != '-' || h[1] != '-' {
		return 0, false, false
	}
	h = h[2:]
	for len(h) > 0 && isWS(h[len(h)-1]) {
		h = h[:len(h)-1]
	}
	if idx := p.bmap[string(h)]; len(idx) > 0 {
		return idx[len(idx)-1], false, true
	}
	if n := len(h); n > 2 && h[n-1] == '-' && h[n-2] == '-' {
		if idx := p.bmap[string(h[:n-2])]; len(idx) > 0 {
			return idx[len(idx)-1], true, true
		}
	}
	return 0, false, false
}

// closeAbove ends every frame above stack index j at offset end (-1: all).
func (p *parser) closeAbove(j int, end int64) {
	for len(p.stack)-1 > j {
		i := len(p.stack) - 1
		f := p.stack[i]
		part := f.p
		if f.state == stHeader {
			e := max(end, part.HeaderStart)
			part.HeaderEnd, part.BodyStart = e, e
			// A header cut short by a delimiter or the end of the input:
			// its fields still count. (Overflow here can only come from the
			// delimiter line itself, which is not part of the header; any
			// earlier line past the cap has already failed the parse.)
			_ = p.endHeader(f, false)
		}
		part.BodyEnd = max(end, part.BodyStart)
		if n := len(part.Children); n > 0 {
			// An empty last child sits at the start of the delimiter line
			// that ends it; the parent must still contain it.
			part.BodyEnd = max(part.BodyEnd, part.Children[n-1].BodyEnd)
		}
		if f.active {
			p.deactivate(i)
			part.Unterminated = true
		}
		p.putHdr(f.hdr)
		f.hdr = nil
		p.stack = p.stack[:i]
	}
}

func (p *parser) deactivate(i int) {
	f := p.stack[i]
	if !f.active {
		return
	}
	f.active = false
	b := f.p.Boundary
	idx := p.bmap[b]
	if n := len(idx); n > 0 && idx[n-1] == i {
		idx = idx[:n-1]
	} else {
		for k, v := range idx {
			if v == i {
				idx = append(idx[:k], idx[k+1:]...)
				break
			}
		}
	}
	if len(idx) == 0 {
		delete(p.bmap, b)
	} else {
		p.bmap[b] = idx
	}
}

// push starts a new child of container frame parent at offset start.
func (p *parser) push(parent *frame, start int64, lf bool) error {
	pp := parent.p
	if pp.Depth+1 > p.lim.MaxDepth {
		return &LimitError{Limit: "depth", Max: p.lim.MaxDepth, Offset: start}
	}
	if p.nparts+1 > p.lim.MaxParts {
		return &LimitError{Limit: "parts", Max: p.lim.MaxParts, Offset: start}
	}
	child := &Part{
		HeaderStart: start,
		Depth:       pp.Depth + 1,
		Index:       p.nparts,
		Parent:      pp,
		LF:          lf,
	}
	p.nparts++
	pp.Children = append(pp.Children, child)
	if parent.state == stPreamble {
		parent.state = stBody
	}
	p.stack = append(p.stack, &frame{p: child, state: stHeader, hdr: p.getHdr()})
	return nil
}

func (p *parser) getHdr() []byte {
	if n := len(p.hdrPool); n > 0 {
		b := p.hdrPool[n-1]
		p.hdrPool = p.hdrPool[:n-1]
		return b[:0]
	}
	return (*hdrBufs.Get().(*[]byte))[:0]
}

func (p *parser) putHdr(b []byte) {
	if b != nil && cap(b) <= 64<<10 && len(p.hdrPool) < 64 {
		p.hdrPool = append(p.hdrPool, b)
	}
}

// endHeader interprets the collected header of f; body tells whether a body
// follows (the header ended with an empty line).
func (p *parser) endHeader(f *frame, body bool) error {
	part := f.p
	var h header
	parseHeader(f.hdr, &h)
	applyHeader(part, &h)
	if p.hooks.Header != nil {
		p.hooks.Header(part, f.hdr)
	}
	p.putHdr(f.hdr)
	f.hdr = nil
	f.state = stBody
	f.lines = p.hooks.Line != nil && (p.hooks.Lines == nil || p.hooks.Lines(part))
	if !body {
		if part.Kind == Message {
			part.Kind = Leaf
		}
		return nil
	}
	switch part.Kind {
	case Multipart:
		f.state = stPreamble
		f.active = true
		i := len(p.stack) - 1
		p.bmap[part.Boundary] = append(p.bmap[part.Boundary], i)
	case Message:
		// The embedded message starts right here, with its own header.
		if err := p.push(f, part.BodyStart, part.LF); err != nil {
			return err
		}
	}
	return nil
}

// header holds the fields of one header section that Parse interprets.
type header struct {
	ct, cd, cte []string
}

// parseHeader splits a raw header section into unfolded fields and keeps
// Content-Type, Content-Disposition and Content-Transfer-Encoding. Lines that
// are neither fields nor continuations are ignored.
func parseHeader(b []byte, h *header) {
	var cur *[]string
	var val []byte
	flush := func() {
		if cur != nil {
			*cur = append(*cur, string(val))
		}
		cur, val = nil, val[:0]
	}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		var ln []byte
		if i < 0 {
			ln, b = b, nil
		} else {
			ln, b = b[:i], b[i+1:]
		}
		ln = bytes.TrimSuffix(ln, []byte{'\r'})
		if len(ln) > 0 && (ln[0] == ' ' || ln[0] == '\t') {
			if cur != nil {
				val = append(val, ln...)
			}
			continue
		}
		flush()
		c := bytes.IndexByte(ln, ':')
		if c <= 0 {
			continue
		}
		name := bytes.TrimRight(ln[:c], " \t")
		switch {
		case asciiEqualFold(name, "content-type"):
			cur = &h.ct
		case asciiEqualFold(name, "content-disposition"):
			cur = &h.cd
		case asciiEqualFold(name, "content-transfer-encoding"):
			cur = &h.cte
		default:
			continue
		}
		val = append(val[:0], ln[c+1:]...)
	}
	flush()
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// applyHeader sets the content fields of part from h.
func applyHeader(part *Part, h *header) {
	part.ContentTypeFields = len(h.ct)
	part.DispositionFields = len(h.cd)
	part.ContentType = ""
	var names []string
	for i, v := range h.ct {
		mt, params := parseParams(v)
		if i == 0 {
			if strings.Count(mt, "/") == 1 && !strings.HasPrefix(mt, "/") && !strings.HasSuffix(mt, "/") {
				part.ContentType = mt
			}
			part.Params = params.values
		}
		names = append(names, params.names("name")...)
	}
	if part.ContentType == "" {
		part.ContentType = "text/plain"
		if pp := part.Parent; pp != nil && pp.Kind == Multipart && pp.ContentType == "multipart/digest" {
			part.ContentType = "message/rfc822"
		}
	}
	var dispNames []string
	for i, v := range h.cd {
		d, params := parseParams(v)
		if i == 0 {
			part.Disposition = d
			part.DispParams = params.values
		}
		dispNames = append(dispNames, params.names("filename")...)
	}
	if len(h.cte) > 0 {
		part.Encoding = strings.ToLower(strings.TrimSpace(stripComments(h.cte[0])))
	}
	switch {
	case len(dispNames) > 0:
		part.Filename = dispNames[0]
	case len(names) > 0:
		part.Filename = names[0]
	}
	all := append(dispNames, names...)
	for _, n := range all {
		if n != "" && !contains(part.Names, n) {
			part.Names = append(part.Names, n)
		}
	}
	part.Kind = Leaf
	switch {
	case strings.HasPrefix(part.ContentType, "multipart/"):
		if b := part.Params["boundary"]; b != "" {
			part.Kind = Multipart
			part.Boundary = b
		}
	case part.ContentType == "message/rfc822" || part.ContentType == "message/global":
		if IdentityEncoding(part.Encoding) {
			part.Kind = Message
		}
	}
}

func IdentityEncoding(e string) bool {
	return e == "" || e == "7bit" || e == "8bit" || e == "binary"
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

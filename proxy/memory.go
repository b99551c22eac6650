package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/proxy/pop3"
)

// Memory is a policy's message memory: what its chain decided for each
// message, kept in a store shared by sessions, restarts and (on Redis)
// instances. A remembered message is served again without a scan and
// without a new quarantine record, byte for byte as the first time; LIST
// and STAT report the size the client will receive. A store that fails or
// is slow is a miss: the message is scanned, never passed unscanned.
type Memory struct {
	Store memory.Store
	// Fingerprint identifies the policy and its chain; a record made under
	// another is not used.
	Fingerprint string
	// Signatures returns the signature versions of the chain's scanners
	// now, "" while any is unknown (nil: the chain has no scanner).
	Signatures func() string
	// Rescan says when a message remembered as deliverable is scanned again.
	Rescan Rescan
	// Timeout bounds each lookup (default 250ms).
	Timeout time.Duration

	pending sync.WaitGroup // writes and deletes still running
}

// Rescan says when a remembered "deliver" verdict is not trusted any more.
// Withheld messages stay withheld: their originals are in quarantine.
type Rescan struct {
	// OnSignatureChange rescans when the scanners' signatures are not those
	// the message was scanned under (a message left on the server is caught
	// by tomorrow's signatures).
	OnSignatureChange bool
	// After, when positive, rescans a message scanned longer ago than this.
	After time.Duration
}

// Wait waits for the writes and deletes still running (a generation waits
// before it closes the store).
func (m *Memory) Wait() { m.pending.Wait() }

func (m *Memory) timeout() time.Duration {
	if m.Timeout > 0 {
		return m.Timeout
	}
	return 250 * time.Millisecond
}

const (
	// memoryWriteTimeout bounds a write or delete, which runs after the
	// client has its answer.
	memoryWriteTimeout = 5 * time.Second
	// maxRememberedNotice bounds the notice a record keeps; a larger one
	// (a custom template) is not remembered.
	maxRememberedNotice = 256 << 10
)

// memory returns the session's message memory, nil when its policy has
// none.
func (s *session) memory() *Memory {
	if s.policy == nil || s.policy.Chain.Empty() {
		return nil
	}
	return s.policy.Memory
}

func (s *session) memKey(uidl string) memory.Key {
	return memory.Key{Upstream: s.upAddr, Mailbox: s.user, UIDL: uidl}
}

// judge says whether rec stands for a message the upstream lists with
// listSize, under the session's chain, now: MemoryHit, or why not.
func (m *Memory) judge(rec *memory.Record, listSize int64) string {
	switch {
	case rec == nil || rec.ListSize != listSize || rec.Fingerprint != m.Fingerprint:
		return MemoryMiss
	case rec.Outcome != memory.Deliver:
		return MemoryHit
	case m.Rescan.After > 0 && time.Since(rec.Created) > m.Rescan.After:
		return MemoryRescan
	case m.Rescan.OnSignatureChange && m.Signatures != nil:
		// Unknown now (no scanner has answered yet): no change is known, and
		// a scan could not be done anyway.
		if now := m.Signatures(); now != "" && rec.Signatures != now {
			return MemoryRescan
		}
	}
	return MemoryHit
}

// recall looks a message up. It returns the record when it may serve the
// message (still to be checked against the message's bytes for RETR), and
// the lookup's result and duration for the observer.
func (s *session) recall(m *Memory, uidl string, listSize int64) (*memory.Record, string, time.Duration) {
	ctx, cancel := context.WithTimeout(s.ctx, m.timeout())
	defer cancel()
	start := time.Now()
	rec, err := m.Store.Get(ctx, s.memKey(uidl))
	took := time.Since(start)
	if err != nil {
		s.log.Warn().Err(err).Msg("message memory lookup failed: scanning")
		return nil, MemoryError, took
	}
	r := m.judge(rec, listSize)
	if r != MemoryHit {
		return nil, r, took
	}
	return rec, r, took
}

// served rebuilds, from the original in, what rec says the client gets.
func served(rec *memory.Record, in filters.Body) *filters.Result {
	res := &filters.Result{QuarantineID: rec.QuarantineID, Reason: rec.Reason}
	switch rec.Outcome {
	case memory.Deliver:
		res.Outcome, res.Body = filters.Deliver, in
		if rec.Pieces != nil {
			res.Body = filters.SplicedBody(in, rec.Pieces)
		}
	case memory.Notice:
		res.Outcome, res.Withheld = filters.Deliver, true
		res.Body = filters.SplicedBody(filters.BytesBody(nil), rec.Pieces)
	default:
		res.Outcome = filters.Refuse
	}
	return res
}

// record makes what is remembered of a chain's result; nil when it cannot
// be remembered (deferred, failed open, a form that cannot be rebuilt).
func (s *session) record(m *Memory, listSize int64, in filters.Body, sum []byte, res *filters.Result) *memory.Record {
	if res.FailedOpen || res.Outcome == filters.Defer {
		return nil
	}
	rec := &memory.Record{
		ListSize: listSize, Size: in.Size(), QuarantineID: res.QuarantineID, Reason: res.Reason,
		Fingerprint: m.Fingerprint, Created: time.Now().UTC().Truncate(time.Second),
	}
	copy(rec.SHA256[:], sum)
	if m.Signatures != nil {
		rec.Signatures = m.Signatures()
	}
	switch {
	case res.Outcome == filters.Refuse:
		rec.Outcome = memory.Refuse
	case res.Withheld:
		notice, err := readSmall(res.Body, maxRememberedNotice)
		if err != nil {
			return nil
		}
		rec.Outcome, rec.Pieces, rec.DeliveredSize = memory.Notice, []filters.Piece{{Data: notice}}, int64(len(notice))
	case res.Body == in:
		rec.Outcome, rec.DeliveredSize = memory.Deliver, in.Size()
	case res.Reproducible:
		rec.Outcome, rec.Pieces, rec.DeliveredSize = memory.Deliver, res.Pieces, res.Body.Size()
	default:
		return nil
	}
	return rec
}

func readSmall(b filters.Body, max int64) ([]byte, error) {
	if b.Size() > max {
		return nil, errors.New("too large to remember")
	}
	rc, err := b.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err == nil && int64(len(data)) != b.Size() {
		err = errors.New("body size changed while reading")
	}
	if data == nil {
		data = []byte{}
	}
	return data, err
}

// remember stores rec in the background: the client has its answer
// already, and a failed write only costs a rescan.
func (s *session) remember(m *Memory, k memory.Key, rec *memory.Record) {
	s.inBackground(m, MemoryWrite, func(ctx context.Context) error { return m.Store.Put(ctx, k, rec) })
}

// forget removes records in the background.
func (s *session) forget(m *Memory, ks ...memory.Key) {
	if len(ks) > 0 {
		s.inBackground(m, MemoryDelete, func(ctx context.Context) error { return m.Store.Delete(ctx, ks...) })
	}
}

// inBackground runs a store write of op, bounded by memoryWriteTimeout,
// counted in m.pending, observed and logged.
func (s *session) inBackground(m *Memory, op string, write func(context.Context) error) {
	m.pending.Add(1)
	go func() {
		defer m.pending.Done()
		ctx, cancel := context.WithTimeout(context.Background(), memoryWriteTimeout)
		defer cancel()
		start := time.Now()
		err := write(ctx)
		s.obs.Memory(op, okOrError(err), time.Since(start))
		if err != nil {
			s.log.Warn().Err(err).Str("op", op).Msg("message memory write failed: the message will be scanned again")
		}
	}()
}

func okOrError(err error) string {
	if err != nil {
		return MemoryError
	}
	return MemoryOK
}

// hashingWriter feeds a hash as the message is spooled.
type hashingWriter struct {
	w io.Writer
	h hash.Hash
}

func (hw hashingWriter) Write(p []byte) (int, error) {
	hw.h.Write(p)
	return hw.w.Write(p)
}

// listing fetches a multi-line listing ("LIST" or "UIDL") and returns its
// "msg value" lines as a map; ok is false on an -ERR.
func (s *session) listing(cmd string) (map[string]string, []byte, bool, error) {
	status, st, err := s.exchange([]byte(cmd))
	// status is a view of the read buffer: the next exchange overwrites it.
	status = bytes.Clone(status)
	if err != nil || !st.OK {
		return nil, status, false, err
	}
	data, err := io.ReadAll(io.LimitReader(pop3.NewDotReader(s.up.r), maxUIDLListing+1))
	if err != nil {
		return nil, nil, false, upstreamErr(err)
	}
	if len(data) > maxUIDLListing {
		return nil, nil, false, fmt.Errorf("%w: %s listing over %d octets", errUpstreamProtocol, cmd, maxUIDLListing)
	}
	return parseListing(data), status, true, nil
}

// parseListing returns the "msg value" lines of a decoded listing as a map.
func parseListing(data []byte) map[string]string {
	m := map[string]string{}
	for l := range strings.Lines(string(data)) {
		if f := strings.Fields(l); len(f) == 2 {
			m[f[0]] = f[1]
		}
	}
	return m
}

// listSizes fetches the upstream's LIST and returns each message's size;
// ok is false on an -ERR (status holds it).
func (s *session) listSizes() (sizes map[string]int64, status []byte, ok bool, err error) {
	listed, status, ok, err := s.listing("LIST")
	if err != nil || !ok {
		return nil, status, ok, err
	}
	sizes = make(map[string]int64, len(listed))
	for msg, v := range listed {
		n, err1 := strconv.ParseInt(v, 10, 64)
		num, err2 := strconv.Atoi(msg)
		if err1 == nil && err2 == nil && n >= 0 && num > 0 {
			sizes[msg] = n
		}
	}
	return sizes, status, true, nil
}

// listSize returns a message's size as the upstream's LIST gives it
// (fetched once per session: sizes do not change within a session), -1 if
// unknown.
func (s *session) listSize(msg string) (int64, error) {
	if s.sizes == nil {
		sizes, _, _, err := s.listSizes()
		if err != nil {
			return -1, err
		}
		s.sizes = sizes
		if s.sizes == nil {
			s.sizes = map[string]int64{}
		}
	}
	if n, ok := s.sizes[msg]; ok {
		return n, nil
	}
	return -1, nil
}

// delivered returns, for each message of a LIST listing, the size the
// client will receive where the memory knows it, else the listed size.
func (s *session) delivered(m *Memory, sizes map[string]int64) (map[string]int64, error) {
	out := make(map[string]int64, len(sizes))
	var msgs []string
	var keys []memory.Key
	for msg, size := range sizes {
		out[msg] = size
		uidl, err := s.uidl(msg)
		if err != nil {
			return nil, err
		}
		if uidl != "" {
			msgs = append(msgs, msg)
			keys = append(keys, s.memKey(uidl))
		}
	}
	if len(keys) == 0 {
		return out, nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, m.timeout())
	defer cancel()
	start := time.Now()
	recs, err := m.Store.GetMany(ctx, keys)
	if err != nil {
		s.obs.Memory(MemoryLookup, MemoryError, time.Since(start))
		s.log.Warn().Err(err).Msg("message memory lookup failed: listing the upstream's sizes")
		return out, nil
	}
	for i, rec := range recs {
		if i < len(msgs) && rec != nil && rec.Outcome != memory.Refuse && m.judge(rec, sizes[msgs[i]]) == MemoryHit {
			out[msgs[i]] = rec.DeliveredSize
		}
	}
	return out, nil
}

// list answers LIST under a memory: the sizes the client will receive
// (RFC 1939 §5: LIST gives the exact size of what RETR sends).
func (s *session) list(m *Memory, cmd pop3.Command, line []byte) error {
	if len(cmd.Args) == 1 {
		status, st, err := s.exchange(line)
		if err != nil || !st.OK {
			s.writeLine(status)
			return err
		}
		f := strings.Fields(st.Text)
		if len(f) < 2 {
			s.writeLine(status)
			return nil
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			s.writeLine(status)
			return nil
		}
		sizes, err := s.delivered(m, map[string]int64{f[0]: size})
		if err != nil {
			return err
		}
		s.cw.WriteString("+OK " + f[0] + " " + strconv.FormatInt(sizes[f[0]], 10) + "\r\n")
		return nil
	}
	sizes, status, ok, err := s.listSizes()
	if err != nil || !ok {
		s.writeLine(status)
		return err
	}
	order := make([]int, 0, len(sizes))
	for msg := range sizes {
		num, _ := strconv.Atoi(msg) // listSizes kept numbers only
		order = append(order, num)
	}
	out, err := s.delivered(m, sizes)
	if err != nil {
		return err
	}
	slices.Sort(order)
	s.responding = true
	s.writeLine(status)
	for _, num := range order {
		msg := strconv.Itoa(num)
		s.cw.WriteString(msg + " " + strconv.FormatInt(out[msg], 10) + "\r\n")
	}
	_, err = s.cw.WriteString(".\r\n")
	return err
}

// stat answers STAT under a memory: the total the client will receive.
func (s *session) stat(m *Memory, line []byte) error {
	status, st, err := s.exchange(line)
	status = bytes.Clone(status) // the LIST and UIDL exchanges reuse the buffer
	if err != nil || !st.OK {
		s.writeLine(status)
		return err
	}
	f := strings.Fields(st.Text)
	if len(f) < 2 || f[0] == "0" {
		s.writeLine(status)
		return nil
	}
	sizes, _, ok, err := s.listSizes()
	if err != nil {
		return err
	}
	if !ok {
		s.writeLine(status)
		return nil
	}
	var total int64
	out, err := s.delivered(m, sizes)
	if err != nil {
		return err
	}
	for _, n := range out {
		total += n
	}
	s.cw.WriteString("+OK " + strconv.Itoa(len(out)) + " " + strconv.FormatInt(total, 10) + "\r\n")
	return nil
}

// topFromMemory answers TOP of a remembered message without fetching the
// whole of it: the upstream's TOP plus the recorded pieces. handled is
// false when the pieces need more of the message than TOP returned (a
// shortened part); the caller then fetches it whole.
func (s *session) topFromMemory(rec *memory.Record, msg string, lines int) (handled bool, err error) {
	switch rec.Outcome {
	case memory.Refuse:
		s.replyErr("SYS/PERM", "message refused by policy")
		return true, nil
	case memory.Notice:
		s.cw.WriteString("+OK top of message follows\r\n")
		return true, s.sendBody(served(rec, nil).Body, lines)
	}
	if rec.Pieces == nil {
		return true, s.relayMulti([]byte("TOP " + msg + " " + strconv.Itoa(lines)))
	}
	status, st, err := s.exchange([]byte("TOP " + msg + " " + strconv.Itoa(lines)))
	if err != nil {
		return true, err
	}
	if !st.OK {
		s.writeLine(status)
		return true, nil
	}
	var part bytes.Buffer
	if _, err := pop3.NewDotReader(s.up.r).WriteTo(&part); err != nil {
		return true, upstreamErr(err)
	}
	var top bytes.Buffer
	whole := int64(part.Len()) == rec.Size
	pieces := rec.Pieces
	if !whole {
		pieces = clipPieces(rec.Pieces, int64(part.Len()))
	}
	rc, err := filters.SplicedBody(filters.BytesBody(part.Bytes()), pieces).Open()
	if err != nil {
		return true, err
	}
	defer rc.Close()
	tr := &topReader{r: bufio.NewReader(rc), lines: lines}
	if _, err := io.Copy(&top, tr); err != nil {
		return true, err
	}
	if !whole && !(tr.inBody && tr.lines == 0) {
		return false, nil // the clipped form ran out before the lines TOP asks for
	}
	s.cw.WriteString("+OK top of message follows\r\n")
	return true, s.sendBody(filters.BytesBody(top.Bytes()), -1)
}

// clipPieces keeps the pieces up to the first that needs original bytes at
// or beyond n.
func clipPieces(pieces []filters.Piece, n int64) []filters.Piece {
	var out []filters.Piece
	for _, p := range pieces {
		if p.Data == nil && p.Off+p.Len > n {
			if p.Off < n {
				out = append(out, filters.Piece{Off: p.Off, Len: n - p.Off})
			}
			break
		}
		out = append(out, p)
	}
	if out == nil {
		out = []filters.Piece{}
	}
	return out
}

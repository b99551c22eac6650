package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/internal/iobuf"
	"github.com/popgate/popgate/internal/mailtext"
	"github.com/popgate/popgate/proxy/pop3"
)

// errWithheldAfterKeepAlive ends a session whose client was already sent
// +OK and keep-alive header lines when the chain withheld the message: the
// only safe answer left is to close without a terminator.
var errWithheldAfterKeepAlive = errors.New("message withheld after keep-alive lines were sent: closing without terminator")

func (s *session) chain() *filters.Chain {
	if s.policy == nil {
		return nil
	}
	return s.policy.Chain
}

// retrieve handles RETR and TOP: the interception point. Without filters the
// response streams through untouched; with filters the message is decoded
// into a spool, the chain runs, and its result is sent. Either way the
// client sees a terminating "." only after the whole message was received
// and passed.
func (s *session) retrieve(cmd pop3.Command, line []byte) error {
	chain := s.chain()
	top := cmd.Name == "TOP"
	if chain.Empty() || top && !s.policy.FilterTOP {
		return s.relayMulti(line)
	}
	if len(cmd.Args) != 1+btoi(top) {
		// Malformed: let the server word the error.
		_, err := s.relaySingle(line)
		return err
	}
	msgNum, err := strconv.Atoi(cmd.Args[0])
	if err != nil || msgNum <= 0 {
		_, err := s.relaySingle(line)
		return err
	}
	lines := -1
	if top {
		if lines, err = strconv.Atoi(cmd.Args[1]); err != nil || lines < 0 {
			_, err := s.relaySingle(line)
			return err
		}
	}
	if f := s.cache.get(cmd.Args[0]); f != nil {
		if !top && f.res.QuarantineID == "" {
			// The client has the whole message now: it is not TOPped again.
			defer s.cache.drop(cmd.Args[0])
		}
		return s.deliver(f.res, f.in, lines)
	}

	// The UIDL goes into quarantine records and logs, so an admin can find
	// the message on the server; with the size LIST gives, it names the
	// message in the memory.
	uidl, err := s.uidl(cmd.Args[0])
	if err != nil {
		return err
	}
	mem, listSize := s.memory(), int64(-1)
	if uidl == "" {
		mem = nil
	}
	var rec *memory.Record
	var lookup string
	var lookupTook time.Duration // the store's answer alone, not the fetch
	if mem != nil {
		if listSize, err = s.listSize(cmd.Args[0]); err != nil {
			return err
		}
		rec, lookup, lookupTook = s.recall(mem, uidl, listSize)
		if top && rec != nil {
			handled, err := s.topFromMemory(rec, cmd.Args[0], lines)
			if handled {
				s.obs.Memory(MemoryLookup, MemoryHit, lookupTook)
				return err
			}
		}
	}
	// TOP under a filtering policy fetches the whole message: filters see
	// what RETR would give, and TOP shows the start of that result.
	upCmd := line
	if top {
		upCmd = []byte("RETR " + cmd.Args[0])
	}
	sw := chain.Spool.NewWriter() // a nil Spool has the defaults
	var started *filters.Started
	if rec == nil {
		// A scanner first in the chain starts on the message as it
		// arrives (clamd scans while the rest is read); not for a message
		// the memory is likely to serve unscanned. It starts before the
		// command goes upstream: connecting to clamd (about 0.1-0.3 ms
		// on loopback) then overlaps the server's answer instead of
		// delaying the end of the stream past the message's last byte.
		// A -ERR, or a read cut short, aborts sw, which ends that scan
		// without a verdict.
		started = chain.Start(s.ctx, sw)
	}
	sent := time.Now()
	status, st, err := s.exchange(upCmd)
	if err != nil {
		sw.Abort()
		return err
	}
	if !st.OK {
		sw.Abort()
		s.writeLine(status)
		return nil
	}
	s.messages++
	answered := time.Now()
	// A spool that fails (disk full) must not stop the read half way: the
	// rest of the message would stay unread upstream and end the session.
	// Finish reports the failure.
	var dst io.Writer = &stickyWriter{w: sw}
	var sum hash.Hash
	if mem != nil {
		sum = sha256.New()
		dst = hashingWriter{w: dst, h: sum}
	}
	if _, err := pop3.NewDotReader(s.up.r).WriteTo(dst); err != nil {
		sw.Abort()
		return upstreamErr(fmt.Errorf("%s %d: %w", cmd.Name, msgNum, err))
	}
	in, err := sw.Finish()
	spooled := time.Now()
	if err != nil {
		s.log.Error().Err(err).Int("msg", msgNum).Msg("spool failed")
		s.replyErr("SYS/TEMP", "message could not be checked, try again later")
		return nil
	}
	var digest []byte
	if sum != nil {
		digest = sum.Sum(nil)
	}

	env := filters.WithStarted(&filters.Envelope{
		SessionID: s.id, User: s.user, Client: s.client, Listener: s.cfg.Name,
		Upstream: s.upName, Command: cmd.Name, MsgNum: msgNum, UIDL: uidl,
	}, started)
	var res *filters.Result
	switch {
	case rec != nil && rec.Size == in.Size() && bytes.Equal(rec.SHA256[:], digest):
		// Remembered: served as the first time, no scan, no new quarantine
		// record.
		res = served(rec, in)
		s.obs.Memory(MemoryLookup, MemoryHit, lookupTook)
		s.obs.Message(s.policy.Name, res)
		s.log.Info().Str("command", env.Command).Int("msg", env.MsgNum).Str("uidl", mailtext.Visible(uidl, 200)).
			Str("outcome", res.Outcome.String()).Str("quarantine_id", rec.QuarantineID).Msg("message served from memory")
	default:
		if rec != nil {
			lookup = MemoryChanged // recycled UIDL: the message is scanned, its record replaced
		}
		if mem != nil {
			s.obs.Memory(MemoryLookup, lookup, lookupTook)
		}
		if res, err = s.runChain(chain, env, in); err != nil {
			return err
		}
		if mem != nil {
			// One write per key: a delete and a put of the same key in
			// flight together could land in either order.
			if r := s.record(mem, listSize, in, digest, res); r != nil {
				s.remember(mem, s.memKey(uidl), r)
			} else if rec != nil {
				s.forget(mem, s.memKey(uidl))
			}
		}
	}
	if res.Outcome == filters.Deliver && (top || res.QuarantineID != "") {
		// Keep it: a client that TOPs a message usually RETRs it next; and
		// filtering a quarantined message again (a notice, a stripped
		// message) for a later TOP or RETR would quarantine its original a
		// second time and show a different notice. Not every RETR: kept
		// for every download, the cache held 16 filtered messages per
		// session, 3 MB of 100 KB mail.
		s.cache.put(cmd.Args[0], &filtered{res: res, in: in}, s.policy.TOPCacheSize)
	} else {
		defer in.Remove()
		defer res.Release()
	}
	decided := time.Now()
	if err := s.deliver(res, in, lines); err != nil {
		return err
	}
	if s.cr.Buffered() == 0 {
		// The flush next would make, made here so that Delivery counts it.
		if err := s.cw.Flush(); err != nil {
			return err
		}
	}
	s.obs.Download(s.policy.Name, DownloadTimes{
		UpstreamWait: answered.Sub(sent),
		UpstreamRead: spooled.Sub(answered),
		Filtering:    decided.Sub(spooled),
		Delivery:     time.Since(decided),
	})
	return nil
}

// stickyWriter passes writes on until one fails, then drops the rest
// without an error; w keeps (and reports) its own failure.
type stickyWriter struct {
	w      io.Writer
	failed bool
}

func (sw *stickyWriter) Write(p []byte) (int, error) {
	if !sw.failed {
		if _, err := sw.w.Write(p); err != nil {
			sw.failed = true
		}
	}
	return len(p), nil
}

// uidl returns a message's unique id (RFC 1939 UIDL), "" if the server has
// none to give.
// The whole listing is fetched once per session (message numbers do not
// change within a session, RFC 1939 §5), not a round trip per message; a
// listing the client asked for is used instead when there was one.
func (s *session) uidl(msg string) (string, error) {
	if s.uidls == nil && s.relayedUIDLs != nil {
		data, err := io.ReadAll(pop3.NewDotReader(bufio.NewReader(bytes.NewReader(s.relayedUIDLs))))
		s.relayedUIDLs = nil
		if err == nil {
			s.uidls = parseListing(data)
		}
	}
	if s.uidls == nil {
		m, _, _, err := s.listing("UIDL")
		if err != nil {
			return "", err
		}
		if m == nil {
			m = map[string]string{}
		}
		s.uidls = m
	}
	return s.uidls[msg], nil
}

// maxUIDLListing bounds the UIDL listing popgate keeps (about 16 MB is a
// mailbox of several hundred thousand messages).
const maxUIDLListing = 16 << 20

// runChain runs the chain, sending keep-alive lines to the client while a
// slow chain works if the policy asks for them.
func (s *session) runChain(chain *filters.Chain, env *filters.Envelope, in filters.Body) (*filters.Result, error) {
	start := time.Now()
	every := s.policy.KeepAlive
	if every <= 0 {
		res := chain.Run(s.ctx, env, in)
		s.logResult(env, in, res, time.Since(start))
		return res, nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	done := make(chan *filters.Result, 1)
	go func() { done <- chain.Run(ctx, env, in) }()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case res := <-done:
			s.logResult(env, in, res, time.Since(start))
			return res, nil
		case <-tick.C:
			if !s.responding {
				// From here on the message is committed to +OK: a
				// withheld message can only end in a closed connection.
				s.responding = true
				s.cw.WriteString("+OK message follows\r\n")
			}
			s.cw.WriteString("X-Popgate-Keepalive: filtering, " + strconv.Itoa(int(time.Since(start).Seconds())) + "s\r\n")
			if err := s.cw.Flush(); err != nil {
				cancel()
				res := <-done
				_ = res.Release()
				_ = in.Remove()
				return nil, clientErr(err)
			}
		}
	}
}

// deliver sends the chain's result: the message (or its first lines for
// TOP), or the error that says why not. lines < 0 means the whole message.
func (s *session) deliver(res *filters.Result, in filters.Body, lines int) error {
	if res.Outcome != filters.Deliver {
		if s.responding {
			return errWithheldAfterKeepAlive
		}
		if res.Outcome == filters.Refuse {
			s.replyErr("SYS/PERM", "message refused by policy")
		} else {
			s.replyErr("SYS/TEMP", "message could not be checked, try again later")
		}
		return nil
	}
	if !s.responding {
		switch {
		case lines >= 0:
			s.cw.WriteString("+OK top of message follows\r\n")
		case res.Body == in:
			s.cw.WriteString("+OK " + strconv.FormatInt(in.Size(), 10) + " octets\r\n")
		default:
			s.cw.WriteString("+OK " + strconv.FormatInt(res.Body.Size(), 10) + " octets\r\n")
		}
	}
	return s.sendBody(res.Body, lines)
}

// sendBody dot-encodes a spooled message (its header and first lines body
// lines when lines >= 0) to the client. A failure part way closes the
// session without a terminator, so the client never takes a cut message
// for a whole one.
func (s *session) sendBody(b filters.Body, lines int) error {
	s.responding = true
	rc, err := b.Open()
	if err != nil {
		return fmt.Errorf("opening filtered message: %w", err)
	}
	defer rc.Close()
	var r io.Reader = rc
	if lines >= 0 {
		r = &topReader{r: bufio.NewReader(rc), lines: lines}
	}
	dw := pop3.NewDotWriter(s.cw)
	if _, err := iobuf.Copy(dw, r); err != nil {
		return fmt.Errorf("sending filtered message: %w", err)
	}
	return dw.Close()
}

// topReader yields a message's header, the blank line after it, and the
// first lines lines of its body (RFC 1939 TOP); all of a shorter message.
type topReader struct {
	r      *bufio.Reader
	lines  int
	inBody bool
	done   bool
}

func (t *topReader) Read(p []byte) (int, error) {
	if t.done || (t.inBody && t.lines == 0) {
		return 0, io.EOF
	}
	line, err := t.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		err = nil // a long line: pass this piece, the rest follows
	} else if len(line) > 0 && line[len(line)-1] == '\n' {
		if t.inBody {
			t.lines--
		} else if len(line) <= 2 && (line[0] == '\n' || line[0] == '\r') {
			t.inBody = true
		}
	}
	n := copy(p, line)
	if n < len(line) {
		// p is short: hand back the rest of this line on the next Read.
		return n, fmt.Errorf("topReader: read buffer of %d bytes too small", len(p))
	}
	if errors.Is(err, io.EOF) {
		t.done = true
		if n > 0 {
			err = nil
		}
	}
	return n, err
}

func (s *session) logResult(env *filters.Envelope, in filters.Body, res *filters.Result, d time.Duration) {
	s.obs.Message(s.policy.Name, res)
	ev := s.log.Info().Str("command", env.Command).Int("msg", env.MsgNum).Str("uidl", logText(env.UIDL)).Int64("size", in.Size()).
		Str("outcome", res.Outcome.String()).Dur("filter_time", d)
	if res.Reason != "" {
		ev = ev.Str("reason", logText(res.Reason))
	}
	if res.FailedOpen {
		ev = ev.Bool("failed_open", true)
	}
	if res.QuarantineID != "" {
		ev = ev.Str("quarantine_id", res.QuarantineID)
	}
	if res.Withheld {
		ev = ev.Bool("notice", true)
	}
	for _, st := range res.Steps {
		e := s.log.Debug().Str("filter", st.Filter).Str("action", st.Action.String()).Dur("took", st.Duration)
		if st.Err != nil {
			e = e.AnErr("filter_error", st.Err)
		}
		e.Int("msg", env.MsgNum).Msg("filter step")
	}
	ev.Msg("message filtered")
}

func firstArg(cmd pop3.Command) string {
	if len(cmd.Args) == 0 {
		return ""
	}
	return cmd.Args[0]
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// filtered is a chain result kept for TOP: the session owns both bodies.
type filtered struct {
	res *filters.Result
	in  filters.Body
}

// topCache keeps the last few filtered messages of a session by message
// number, so TOP then RETR of one message runs the chain once.
type topCache struct {
	keys []string
	m    map[string]*filtered
}

func (c *topCache) get(key string) *filtered { return c.m[key] }

func (c *topCache) put(key string, f *filtered, limit int) {
	if limit <= 0 {
		limit = 16
	}
	if c.m == nil {
		c.m = map[string]*filtered{}
	}
	c.drop(key)
	for len(c.keys) >= limit {
		c.drop(c.keys[0])
	}
	c.keys = append(c.keys, key)
	c.m[key] = f
}

// drop forgets a message (evicted, or deleted: RETR must then go upstream
// and get the server's -ERR).
func (c *topCache) drop(key string) {
	f, ok := c.m[key]
	if !ok {
		return
	}
	delete(c.m, key)
	for i, k := range c.keys {
		if k == key {
			c.keys = append(c.keys[:i], c.keys[i+1:]...)
			break
		}
	}
	_ = f.res.Release()
	_ = f.in.Remove()
}

func (c *topCache) clear() {
	for len(c.keys) > 0 {
		c.drop(c.keys[0])
	}
}

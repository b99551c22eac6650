package clamav

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/popgate/popgate/internal/mailtext"
)

// The clamd protocol, as far as this package speaks it (clamd(8)):
//
//	→ "zINSTREAM\x00"
//	→ chunks: a 4-byte big-endian length, then that many bytes
//	→ the end of the stream: a zero length (00 00 00 00)
//	← one reply, NUL-terminated: "stream: OK", "stream: NAME FOUND",
//	  "… ERROR" ("INSTREAM size limit exceeded. ERROR" when the stream passes
//	  clamd's StreamMaxLength; clamd then closes the connection)
//
// and for health checks "zPING\x00" ← "PONG\x00". The "z" prefix makes clamd
// terminate its reply with NUL; clamd closes the connection after it.
const (
	chunkSize = 64 << 10 // bytes of message per chunk
	maxReply  = 4096     // longest reply line accepted
)

var (
	cmdInstream = []byte("zINSTREAM\x00")
	// cmdSessionInstream opens a clamd session with the first INSTREAM.
	cmdSessionInstream = append(append([]byte(nil), cmdIDSession...), cmdInstream...)
	cmdPing            = []byte("zPING\x00")
	cmdVersion         = []byte("zVERSION\x00")
	endOfStream        = []byte{0, 0, 0, 0}
)

// chunkBufs holds chunk buffers: room for the longest command, then the
// 4-byte length and the data.
var chunkBufs = sync.Pool{New: func() any { b := make([]byte, len(cmdSessionInstream)+4+chunkSize); return &b }}

// connError is a failure of the connection to a backend before it gave an
// answer (cannot connect, connection reset or closed): the only kind of
// error a scan is retried on, on another backend.
type connError struct {
	backend string
	op      string
	err     error
	reused  bool // an idle connection of a clamd session found closed before its first use
}

func (e *connError) Error() string {
	return fmt.Sprintf("clamav: %s: %s: %v", e.backend, e.op, e.err)
}
func (e *connError) Unwrap() error { return e.err }

// ReplyError is a reply from clamd that is not a verdict: an ERROR reply, a
// reply that came before the end of the stream, or one that does not parse.
type ReplyError struct {
	Backend string
	Reply   string // as received, without the NUL; cut and made visible (mailtext.Visible)
	Problem string
	Err     error // ErrSizeLimit for clamd's size-limit refusal, else nil
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("clamav: %s: %s: %q", e.Backend, e.Problem, e.Reply)
}

func (e *ReplyError) Unwrap() error { return e.Err }

// verdict is a parsed "stream: …" reply.
type verdict struct {
	infected  bool
	signature string
}

// reply is what the reply reader got.
type reply struct {
	line  string // without the NUL
	ok    bool   // a complete, NUL-terminated line was read
	early bool   // it arrived before the end of the stream was being sent
	extra bool   // more bytes followed it
	err   error  // why there is no complete line; with ok: how reading on failed
}

// scanOne runs one INSTREAM scan of r (size bytes; negative: unknown, up to
// MaxSize) on b, reading each chunk with read (fill, or readSome for a
// message still arriving). ctx carries the scan's deadline; cancelling it
// closes the connection.
func (s *Scanner) scanOne(ctx context.Context, b *backend, r io.Reader, size int64, timeout time.Duration, read func(io.Reader, []byte) (int, error)) (verdict, error) {
	sess, inSession, err := s.connect(ctx, b)
	if err != nil {
		if ctx.Err() != nil {
			return verdict{}, s.ctxError(ctx, b, "connecting", timeout)
		}
		return verdict{}, &connError{backend: b.Addr, op: "connecting", err: err}
	}
	conn := sess.conn
	cmd := cmdInstream
	if inSession && sess.sent == 0 {
		cmd = cmdSessionInstream
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })

	// The reply is read concurrently with the writes: clamd answers early
	// ("INSTREAM size limit exceeded") and closes, and that answer must be
	// read before a write fails and the connection is torn down. The
	// reader starts with the first write (begin): until then, a
	// connection of a clamd session taken idle is looked at once more,
	// since clamd may have closed it meanwhile (a restart, its timeout;
	// the scan may have waited for the message's first bytes).
	var final atomic.Bool // the end-of-stream marker is being sent
	replies := make(chan reply, 1)
	reading := false
	begin := func() error {
		if sess.sent > 0 && !quiet(conn) {
			return &connError{backend: b.Addr, op: "reusing an idle connection", err: errors.New("clamd closed it"), reused: true}
		}
		reading = true
		go func() { replies <- readReply(conn, &final, !inSession) }()
		return nil
	}
	var rp reply
	got := false
	wait := func() reply {
		if !got && reading {
			rp, got = <-replies, true
		}
		return rp
	}
	keep := false // a verdict in a session: the connection serves another scan
	defer func() {
		if stop() && keep && conn.SetDeadline(time.Time{}) == nil {
			b.sessions.put(sess, s.cfg.MaxConcurrent, time.Now())
			return
		}
		if got {
			// The reader is done (clamd closed the connection after its
			// reply, or reading failed): nothing uses conn any more.
			// Closing it takes 30-60 µs on the test machine, which the
			// verdict need not wait for.
			go conn.Close()
			return
		}
		_ = conn.Close()
		wait() // the reader, if it started, ends once the connection is closed
	}()

	// failed turns a write error into the scan's error, using the reply
	// clamd may have sent before it closed the connection.
	failed := func(op string, werr error) error {
		if ctx.Err() != nil {
			return s.ctxError(ctx, b, op, timeout)
		}
		if rp := wait(); rp.ok {
			return replyProblem(b, rp, "reply before the end of the stream")
		}
		if isTimeout(werr) {
			return s.ctxError(ctx, b, op, timeout)
		}
		return &connError{backend: b.Addr, op: op, err: werr}
	}

	// The command goes out in one write with the first chunk (or with the
	// end of an empty stream): a write, and a segment clamd wakes up for,
	// fewer per scan; and a scan that ends before the message's first
	// byte (Start's, on a RETR that got -ERR) leaves clamd a connection
	// without a command rather than an abandoned stream.
	bufp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bufp)
	cmdLen := len(cmdSessionInstream) // the data's chunk header follows
	buf := *bufp
	start := cmdLen - len(cmd)
	copy(buf[start:], cmd)
	from := start // where the next write starts in buf: start while the command is unsent
	limit := size
	if size < 0 {
		limit = s.cfg.MaxSize
	}
	var sent int64
	for {
		select {
		case rp, got = <-replies:
			if rp.ok {
				return verdict{}, replyProblem(b, rp, "reply before the end of the stream")
			}
			if ctx.Err() != nil {
				return verdict{}, s.ctxError(ctx, b, "sending the message", timeout)
			}
			return verdict{}, &connError{backend: b.Addr, op: "sending the message", err: connClosed(rp.err)}
		default:
		}
		want := int64(chunkSize)
		if rest := limit - sent; rest < want {
			want = rest
		}
		if want == 0 {
			// All the bytes there may be are sent: the message must end here.
			more, err := hasMore(r)
			if err != nil {
				return verdict{}, fmt.Errorf("clamav: reading the message: %w", err)
			}
			if more && size < 0 {
				return verdict{}, fmt.Errorf("%w (the stream is longer than max_size %d)", ErrOversize, s.cfg.MaxSize)
			}
			if more {
				return verdict{}, fmt.Errorf("clamav: the message is longer than its size, %d bytes: not scanned", size)
			}
			break
		}
		n, rerr := read(r, buf[cmdLen+4:cmdLen+4+int(want)])
		if n > 0 {
			if from == start {
				if err := begin(); err != nil {
					return verdict{}, err
				}
			}
			binary.BigEndian.PutUint32(buf[cmdLen:cmdLen+4], uint32(n))
			if _, err := conn.Write(buf[from : cmdLen+4+n]); err != nil {
				return verdict{}, failed("sending the message", err)
			}
			from = cmdLen
			sent += int64(n)
		}
		if rerr == io.EOF {
			if size >= 0 && sent < size {
				return verdict{}, fmt.Errorf("clamav: the message ended after %d of its %d bytes: not scanned", sent, size)
			}
			break
		}
		if rerr != nil {
			return verdict{}, fmt.Errorf("clamav: reading the message: %w", rerr)
		}
	}
	if from == start { // an empty message: the command has not gone out yet
		if err := begin(); err != nil {
			return verdict{}, err
		}
		if _, err := conn.Write(cmd); err != nil {
			return verdict{}, failed("sending INSTREAM", err)
		}
	}
	final.Store(true)
	if _, err := conn.Write(endOfStream); err != nil {
		return verdict{}, failed("ending the stream", err)
	}
	sess.sent++

	res := wait()
	if inSession && res.ok {
		line, ok := numbered(res.line, sess.sent)
		if !ok {
			return verdict{}, replyProblem(b, res, fmt.Sprintf("reply not numbered %d, for the command sent in the clamd session", sess.sent))
		}
		res.line = line
	}
	if !res.ok {
		if ctx.Err() != nil || isTimeout(res.err) {
			return verdict{}, s.ctxError(ctx, b, "waiting for the verdict", timeout)
		}
		if res.line != "" {
			return verdict{}, &ReplyError{Backend: b.Addr, Reply: mailtext.Visible(res.line, maxReplyText), Problem: "reply cut short: " + res.err.Error()}
		}
		return verdict{}, &connError{backend: b.Addr, op: "waiting for the verdict", err: connClosed(res.err)}
	}
	switch {
	case res.early:
		return verdict{}, replyProblem(b, res, "reply before the end of the stream")
	case res.extra:
		return verdict{}, replyProblem(b, res, "more data after the reply")
	case res.err != nil && (ctx.Err() != nil || isTimeout(res.err)):
		return verdict{}, replyProblem(b, res, "clamd did not close the connection after its reply")
	case res.err != nil:
		return verdict{}, replyProblem(b, res, "connection failed after the reply: "+res.err.Error())
	}
	v, err := parseReply(b, res)
	keep = inSession && err == nil
	return v, err
}

// connect returns a connection to b and whether the scan runs in a clamd
// session: when connections are reused and b keeps sessions, an idle one
// if there is one, else a new one.
func (s *Scanner) connect(ctx context.Context, b *backend) (*session, bool, error) {
	inSession := s.cfg.ReuseConnections && b.sessions.known.Load() == sessionsYes
	if inSession {
		if sess := b.sessions.take(time.Now()); sess != nil {
			return sess, true, nil
		}
	}
	conn, err := s.dial(ctx, b)
	if err != nil {
		return nil, false, err
	}
	return &session{conn: conn}, inSession, nil
}

// dial connects to b within the dial timeout and ctx. TCP keep-alive is
// off: a connection lives for one command, under a deadline that ends it
// sooner than a keep-alive probe would (the first after 15 s idle), and
// Go's default cost four setsockopt calls per scan.
func (s *Scanner) dial(ctx context.Context, b *backend) (net.Conn, error) {
	d := net.Dialer{Timeout: s.cfg.DialTimeout, KeepAlive: -1}
	return d.DialContext(ctx, b.network, b.address)
}

// ctxError is the error of a scan whose context ended: its own deadline
// (a timeout) or the caller's cancellation.
func (s *Scanner) ctxError(ctx context.Context, b *backend, op string, timeout time.Duration) error {
	err := ctx.Err()
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("clamav: %s: no verdict before the deadline (scan timeout %v; %s): %w", b.Addr, timeout.Round(time.Millisecond), op, context.DeadlineExceeded)
	}
	return fmt.Errorf("clamav: %s: %s: %w", b.Addr, op, err)
}

// readReply reads one NUL-terminated reply of at most maxReply bytes; with
// toEOF it goes on reading until clamd closes the connection (which clamd
// does right after its reply), so that anything after the reply is seen.
// early records whether the reply was complete before final was set.
func readReply(conn net.Conn, final *atomic.Bool, toEOF bool) reply {
	var data []byte
	buf := make([]byte, 512)
	nul, early := -1, false
	for {
		n, err := conn.Read(buf)
		data = append(data, buf[:n]...)
		if nul < 0 {
			if nul = bytes.IndexByte(data, 0); nul >= 0 {
				early = !final.Load()
			}
		}
		if len(data) > maxReply {
			if nul < 0 {
				return reply{line: string(data[:maxReply]), err: errors.New("reply too long")}
			}
			return reply{line: string(data[:nul]), ok: true, early: early, extra: true}
		}
		if nul >= 0 && (err != nil || !toEOF) {
			rp := reply{line: string(data[:nul]), ok: true, early: early, extra: len(data) > nul+1}
			if err != nil && err != io.EOF {
				rp.err = err
			}
			return rp
		}
		if err != nil {
			return reply{line: string(data), err: err}
		}
	}
}

// parseReply turns a complete reply into a verdict, or an error for
// anything else.
func parseReply(b *backend, rp reply) (verdict, error) {
	line := rp.line
	const prefix, found = "stream: ", " FOUND"
	switch {
	case line == "stream: OK":
		return verdict{}, nil
	case strings.HasPrefix(line, prefix) && strings.HasSuffix(line, found) && len(line) >= len(prefix)+len(found):
		sig := strings.TrimSpace(line[len(prefix) : len(line)-len(found)])
		if sig = mailtext.Visible(sig, maxReplyText); sig == "" {
			sig = "unnamed"
		}
		return verdict{infected: true, signature: sig}, nil
	}
	return verdict{}, replyProblem(b, rp, "")
}

// replyProblem is the error for a reply that is not a verdict.
func replyProblem(b *backend, rp reply, problem string) error {
	line := rp.line
	if strings.Contains(line, "size limit exceeded") {
		return &ReplyError{Backend: b.Addr, Reply: mailtext.Visible(line, maxReplyText), Problem: "clamd refused the stream: its StreamMaxLength is below max_size", Err: ErrSizeLimit}
	}
	if problem == "" {
		problem = "no verdict in the reply"
		if strings.HasSuffix(line, " ERROR") {
			problem = "clamd error"
		}
	}
	return &ReplyError{Backend: b.Addr, Reply: mailtext.Visible(line, maxReplyText), Problem: problem}
}

// maxReplyText bounds the text of a clamd reply kept for errors, logs and
// reasons.
const maxReplyText = 200

// fill reads into p until it is full, r ends (io.EOF, also when some bytes
// were read) or fails. A reader that keeps returning nothing is an error.
func fill(r io.Reader, p []byte) (int, error) {
	n, empty := 0, 0
	for n < len(p) {
		m, err := r.Read(p[n:])
		if m < 0 || m > len(p)-n {
			return n, errors.New("the reader returned an invalid count")
		}
		n += m
		if err != nil {
			return n, err
		}
		if m == 0 {
			if empty++; empty >= 100 {
				return n, io.ErrNoProgress
			}
		}
	}
	return n, nil
}

// readSome reads into p what r has now, waiting only while it has nothing:
// one Read that returns bytes, an error or io.EOF. For a message that is
// still arriving (Start) each chunk then goes out as soon as the proxy
// received it, so that when the last byte arrives only that last piece and
// the end of the stream are left to send. fill would hold a 100 KB message
// back until it is almost whole: its first read leaves the first chunk
// short of 64 KiB by the status line, and the rest comes at the end.
func readSome(r io.Reader, p []byte) (int, error) {
	for empty := 0; ; {
		n, err := r.Read(p)
		if n < 0 || n > len(p) {
			return 0, errors.New("the reader returned an invalid count")
		}
		if n > 0 || err != nil {
			return n, err
		}
		if empty++; empty >= 100 {
			return 0, io.ErrNoProgress
		}
	}
}

// hasMore reports whether r yields another byte (consuming it).
func hasMore(r io.Reader) (bool, error) {
	var one [1]byte
	n, err := fill(r, one[:])
	if n > 0 {
		return true, nil
	}
	if err == io.EOF {
		return false, nil
	}
	return false, err
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// connClosed names a read that ended without a reply.
func connClosed(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return errors.New("connection closed without a reply")
	}
	return err
}

// ping sends PING to b and expects PONG, within PingTimeout.
func (s *Scanner) ping(ctx context.Context, b *backend) error {
	line, err := s.command(ctx, b, cmdPing, "PING")
	if err == nil && line != "PONG" {
		err = fmt.Errorf("clamav: %s: PING: unexpected reply %q", b.Addr, mailtext.Visible(line, maxReplyText))
	}
	return err
}

// version asks b for its VERSION: "ClamAV 1.4.6/27433/Thu Dec  4 09:24:02
// 2026", engine, signature database version and date.
func (s *Scanner) version(ctx context.Context, b *backend) (string, error) {
	line, err := s.command(ctx, b, cmdVersion, "VERSION")
	if err == nil && !strings.HasPrefix(line, "ClamAV ") {
		err = fmt.Errorf("clamav: %s: VERSION: unexpected reply %q", b.Addr, mailtext.Visible(line, maxReplyText))
	}
	return line, err
}

// command sends a one-line command to b and returns its one-line reply,
// within PingTimeout.
func (s *Scanner) command(ctx context.Context, b *backend, cmd []byte, name string) (string, error) {
	rp, err := s.exchange(ctx, b, cmd, name)
	if err != nil {
		return "", err
	}
	switch {
	case !rp.ok && (ctx.Err() != nil || isTimeout(rp.err)):
		return "", fmt.Errorf("clamav: %s: %s: no answer within %v", b.Addr, name, s.cfg.PingTimeout)
	case !rp.ok:
		return "", fmt.Errorf("clamav: %s: %s: %w", b.Addr, name, connClosed(rp.err))
	}
	return rp.line, nil
}

// exchange sends cmd to b on a new connection and reads what comes back,
// up to a NUL, within PingTimeout; err is a failure to connect or send.
func (s *Scanner) exchange(ctx context.Context, b *backend, cmd []byte, name string) (reply, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.PingTimeout)
	defer cancel()
	d := net.Dialer{Timeout: s.cfg.PingTimeout, KeepAlive: -1} // as dial
	conn, err := d.DialContext(ctx, b.network, b.address)
	if err != nil {
		return reply{}, fmt.Errorf("clamav: %s: %s: %w", b.Addr, name, err)
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	if _, err := conn.Write(cmd); err != nil {
		return reply{}, fmt.Errorf("clamav: %s: %s: %w", b.Addr, name, err)
	}
	var final atomic.Bool
	final.Store(true)
	rp := readReply(conn, &final, false)
	if !rp.ok && ctx.Err() != nil {
		rp.err = ctx.Err() // the deadline, or the caller's cancellation
	}
	return rp, nil
}

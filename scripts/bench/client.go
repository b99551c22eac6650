package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// pop3Client is a minimal POP3 client for the benchmark: one bufio.Reader
// over the connection (TCP_NODELAY is Go's default), commands written in one
// write each, multi-line responses scanned chunk by chunk.
type pop3Client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	body []byte // the last RETR body, dot-unstuffed
}

const sessionDeadline = 10 * time.Minute // a hung server fails the run instead of hanging it

func dialPOP3(ctx context.Context, addr string) (*pop3Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if quickAck(ctx) {
		if conn, err = newQuickAckConn(conn); err != nil {
			return nil, err
		}
	}
	_ = conn.SetDeadline(time.Now().Add(sessionDeadline))
	c := &pop3Client{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), w: bufio.NewWriterSize(conn, 512)}
	if _, err := c.status(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	return c, nil
}

func (c *pop3Client) close() error { return c.conn.Close() }

// status reads one status line and requires +OK.
func (c *pop3Client) status() ([]byte, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(line, []byte("+OK")) {
		return nil, fmt.Errorf("server said %q", bytes.TrimRight(line, "\r\n"))
	}
	return line, nil
}

// command sends one command line and reads its status line.
func (c *pop3Client) command(format string, args ...any) error {
	fmt.Fprintf(c.w, format, args...)
	c.w.WriteString("\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	_, err := c.status()
	return err
}

// retr downloads message n into c.body and returns the time from writing the
// command to reading the terminator.
func (c *pop3Client) retr(n int) (time.Duration, error) {
	c.w.WriteString("RETR ")
	c.w.WriteString(strconv.Itoa(n))
	c.w.WriteString("\r\n")
	start := time.Now()
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	if _, err := c.status(); err != nil {
		return 0, fmt.Errorf("RETR %d: %w", n, err)
	}
	body, err := readMultiline(c.r, c.body[:0])
	c.body = body
	if err != nil {
		return 0, fmt.Errorf("RETR %d body: %w", n, err)
	}
	return time.Since(start), nil
}

var lineDot = []byte("\n.")

// readMultiline reads the rest of a multi-line response up to and including
// its ".\r\n" terminator, appending the dot-unstuffed data to dst. It works on
// the reader's buffer in chunks and looks only for lines that start with "."
// (base64 has none), so it costs little CPU next to the servers it measures.
func readMultiline(r *bufio.Reader, dst []byte) ([]byte, error) {
	lineStart := true // the first body byte starts a line
	for {
		if r.Buffered() == 0 {
			if _, err := r.Peek(1); err != nil {
				return dst, err
			}
		}
		b, _ := r.Peek(r.Buffered())
		if lineStart && b[0] == '.' {
			p, err := r.Peek(3)
			if len(p) < 3 {
				return dst, err
			}
			if p[1] == '\r' && p[2] == '\n' {
				_, _ = r.Discard(3)
				return dst, nil
			}
			_, _ = r.Discard(1) // a stuffed dot
			lineStart = false
			continue
		}
		n := len(b)
		if i := bytes.Index(b, lineDot); i >= 0 {
			n = i + 1 // up to and including the LF
		}
		dst = append(dst, b[:n]...)
		lineStart = b[n-1] == '\n'
		_, _ = r.Discard(n)
	}
}

// sessionResult is what the sessions of one client worker measured.
type sessionResult struct {
	setup   []time.Duration // per session: connect until PASS answered +OK
	retr    []time.Duration // one per RETR
	retrEnd []time.Time     // when each RETR ended
	retrLen []int64         // bytes of each RETR (of the original message)
	bytes   int64           // message bytes received (dot-unstuffed; of the originals through filters)
	msgs    int64           // messages received
	err     error
}

// exactSession downloads messages 1..len(want), checking each against want
// byte for byte.
func exactSession(want [][]byte) sessionFunc {
	return filteredSession(1, want, func(k int, body []byte) error {
		if len(body) != len(want[k]) {
			return fmt.Errorf("got %d bytes, want %d", len(body), len(want[k]))
		}
		if !bytes.Equal(body, want[k]) {
			return fmt.Errorf("%d bytes as expected but the content differs", len(want[k]))
		}
		return nil
	})
}

// filteredSession is one session: it logs in, downloads messages first..
// first+len(want)-1 (fewer when the run's clock says it is over; a nil clock:
// all)
// checking each with check, and quits. It never sends DELE. The bytes
// counted are those of the originals.
func filteredSession(first int, want [][]byte, check func(k int, body []byte) error) sessionFunc {
	return func(ctx context.Context, addr string, u benchUser, clock *runClock, res *sessionResult) {
		start := time.Now()
		c, err := dialPOP3(ctx, addr)
		if err != nil {
			res.err = err
			return
		}
		defer c.close()
		stop := context.AfterFunc(ctx, func() { c.close() })
		defer stop()
		if err := c.command("USER %s", u.name); err != nil {
			res.err = fmt.Errorf("USER: %w", err)
			return
		}
		if err := c.command("PASS %s", u.password); err != nil {
			res.err = fmt.Errorf("PASS: %w", err)
			return
		}
		res.setup = append(res.setup, time.Since(start))
		if err := clock.loggedIn(ctx, len(res.setup) == 1); err != nil {
			res.err = err
			return
		}
		if c.body == nil {
			c.body = make([]byte, 0, len(want[0])+4096)
		}
		for k := range want {
			if clock.over() {
				break
			}
			d, err := c.retr(first + k)
			if err != nil {
				res.err = err
				return
			}
			if err := check(k, c.body); err != nil {
				res.err = fmt.Errorf("RETR %d: %w", first+k, err)
				return
			}
			res.retr = append(res.retr, d)
			res.retrEnd = append(res.retrEnd, time.Now())
			res.retrLen = append(res.retrLen, int64(len(want[k])))
			res.bytes += int64(len(want[k]))
			res.msgs++
		}
		if err := c.command("QUIT"); err != nil {
			res.err = fmt.Errorf("QUIT: %w", err)
		}
	}
}

// quickAckKey marks a context whose sessions set TCP_QUICKACK.
type quickAckKey struct{}

func withQuickAck(ctx context.Context, on bool) context.Context {
	return context.WithValue(ctx, quickAckKey{}, on)
}

func quickAck(ctx context.Context) bool { on, _ := ctx.Value(quickAckKey{}).(bool); return on }

// quickAckConn turns the client's delayed ACKs off: Linux clears
// TCP_QUICKACK again by itself (it is not a permanent mode), so it is set
// after connect and re-armed after every read.
type quickAckConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

func newQuickAckConn(c net.Conn) (net.Conn, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	q := &quickAckConn{TCPConn: tc, rc: rc}
	if err := q.arm(); err != nil {
		c.Close()
		return nil, fmt.Errorf("TCP_QUICKACK: %w", err)
	}
	return q, nil
}

func (q *quickAckConn) arm() error {
	var serr error
	err := q.rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

func (q *quickAckConn) Read(b []byte) (int, error) {
	n, err := q.TCPConn.Read(b)
	_ = q.arm()
	return n, err
}

// runClock times a run. The ramp-up is not measured: each worker's first
// session logs in and waits until every worker has (a barrier), so that N
// sessions really download at once, and the window of d starts then; the
// run ends with it. Without the barrier, at 256 sessions started at once
// the first sessions download at full speed while Dovecot forks hundreds
// of login and pop3 processes for the others, and logins take tens of
// seconds. A nil clock never ends (one session per worker).
type runClock struct {
	pending atomic.Int64 // workers yet to log in once
	d       time.Duration
	start   atomic.Int64 // window start, Unix ns; 0 until all workers logged in
	ready   chan struct{}
}

func newRunClock(workers int, d time.Duration) *runClock {
	if d <= 0 {
		return nil
	}
	c := &runClock{d: d, ready: make(chan struct{})}
	c.pending.Store(int64(workers))
	return c
}

// loggedIn is called after each login; after a worker's first it waits for
// the others.
func (c *runClock) loggedIn(ctx context.Context, first bool) error {
	if c == nil || !first {
		return nil
	}
	if c.pending.Add(-1) == 0 {
		c.start.Store(time.Now().UnixNano())
		close(c.ready)
	}
	select {
	case <-c.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// window is the measured window; ok is false before it started.
func (c *runClock) window() (from, to time.Time, ok bool) {
	s := c.start.Load()
	if s == 0 {
		return time.Time{}, time.Time{}, false
	}
	from = time.Unix(0, s)
	return from, from.Add(c.d), true
}

func (c *runClock) over() bool {
	if c == nil {
		return false
	}
	_, to, ok := c.window()
	return ok && time.Now().After(to)
}

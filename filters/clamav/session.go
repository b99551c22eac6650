package clamav

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/popgate/popgate/internal/mailtext"
)

// Connections kept between scans (Config.ReuseConnections). Without them
// every scan connects to clamd and clamd closes the connection after its
// reply: on loopback the connect and close were a sixth of popgate's CPU
// on the clamd path, and clamd accepts and tears down a connection per
// message too. In a clamd session (clamd(8), IDSESSION) the connection
// stays open and each reply carries the number of its command ("2: stream:
// OK"). A connection goes back to its backend's idle list only after a
// complete, well-formed verdict for exactly the command it was sent, with
// nothing after it; anything else (an error reply, a cut stream, a
// deadline, a cancelled scan) closes it, so a reused connection never
// holds the rest of another scan's exchange.

// maxSessionIdle is how long an idle connection is kept: well below
// clamd's ReadTimeout (default 120 s), after which clamd ends an idle
// session, and short enough not to hold clamd's connections long after
// the mail stops.
const maxSessionIdle = 20 * time.Second

var (
	cmdIDSession = []byte("zIDSESSION\x00")
	// cmdSessionVersion asks whether a backend keeps sessions: clamd
	// answers "1: ClamAV …".
	cmdSessionVersion = []byte("zIDSESSION\x00zVERSION\x00")
)

// checkSessions finds out, after a good health check and until it has an
// answer, whether b keeps clamd sessions: a clamd does; something that
// only looks like one (a proxy, a fake) may answer IDSESSION with an error
// or close the connection, and scans on b then connect once per scan.
// Until the answer is in, scans connect once per scan too.
func (s *Scanner) checkSessions(ctx context.Context, b *backend) {
	if !s.cfg.ReuseConnections || b.sessions.known.Load() != sessionsUnknown {
		return
	}
	rp, err := s.exchange(ctx, b, cmdSessionVersion, "IDSESSION")
	if err != nil || !rp.ok && rp.line == "" {
		return // no answer: asked again at the next health check
	}
	// A reply, or a connection closed after something else.
	line := mailtext.Visible(rp.line, maxReplyText)
	ok := rp.ok && strings.HasPrefix(line, "1: ClamAV ")
	b.sessions.known.Store(sessionsNo)
	if ok {
		b.sessions.known.Store(sessionsYes)
	} else {
		s.log().Info().Str("backend", b.Addr).Str("reply", line).Msg("clamd backend does not keep sessions: a connection per scan")
	}
}

// session is a connection to a clamd backend in a clamd session.
type session struct {
	conn net.Conn
	// sent is the number of commands sent in the session: the reply to
	// the next one is numbered sent+1. 0: IDSESSION has not gone out.
	sent int
	idle time.Time // when it was put back
}

// sessions are a backend's idle connections, most recently used last,
// and whether it keeps sessions at all.
type sessions struct {
	known  atomic.Int32 // sessionsUnknown until checkSessions has an answer
	mu     sync.Mutex
	idle   []*session
	closed bool
}

// What checkSessions found out about a backend.
const (
	sessionsUnknown = iota
	sessionsYes
	sessionsNo
)

// take returns the most recently used idle connection, or nil; those idle
// too long are closed on the way. Whether clamd closed it meanwhile is
// looked at just before its first use (scanOne's begin).
func (ss *sessions) take(now time.Time) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.expireLocked(now)
	n := len(ss.idle) - 1
	if n < 0 {
		return nil
	}
	s := ss.idle[n]
	ss.idle[n] = nil
	ss.idle = ss.idle[:n]
	return s
}

// expire closes the connections idle longer than maxSessionIdle (the
// health check calls it: nothing else runs once the mail stops).
func (ss *sessions) expire(now time.Time) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.expireLocked(now)
}

// expireLocked closes the expired connections, the oldest first in the
// list.
func (ss *sessions) expireLocked(now time.Time) {
	n := 0
	for n < len(ss.idle) && now.Sub(ss.idle[n].idle) >= maxSessionIdle {
		_ = ss.idle[n].conn.Close()
		ss.idle[n] = nil
		n++
	}
	ss.idle = ss.idle[n:]
}

// put keeps s for a later scan, at most limit connections; it closes s
// when the list is full or closed.
func (ss *sessions) put(s *session, limit int, now time.Time) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.expireLocked(now)
	if ss.closed || len(ss.idle) >= limit {
		_ = s.conn.Close()
		return
	}
	s.idle = now
	ss.idle = append(ss.idle, s)
}

// drain closes the idle connections.
func (ss *sessions) drain() { ss.end(false) }

// close drains the list for good: later puts close their connections.
func (ss *sessions) close() { ss.end(true) }

func (ss *sessions) end(final bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.closed = ss.closed || final
	for _, s := range ss.idle {
		_ = s.conn.Close()
	}
	ss.idle = nil
}

// quiet reports whether conn is open with nothing to read: an idle clamd
// session sends nothing, so a byte or the end of the stream means clamd
// closed it or broke the protocol. It peeks without blocking.
func quiet(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	open := false
	var one [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = errors.Is(rerr, syscall.EAGAIN)
		return true // one try: never wait
	})
	return err == nil && open
}

// numbered takes the session number off a reply ("3: stream: OK" for the
// third command) and reports whether it was n.
func numbered(line string, n int) (string, bool) {
	id, rest, ok := strings.Cut(line, ": ")
	if !ok || id != strconv.Itoa(n) {
		return line, false
	}
	return rest, true
}

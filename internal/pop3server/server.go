// Package pop3server is a small in-memory POP3 server (RFC 1939, with CAPA,
// RESP-CODES, PIPELINING and UIDL from RFC 2449, SASL PLAIN from RFC 5034
// and STLS from RFC 2595). popgate demo runs it as the upstream behind the
// proxy, and tests use it for fault injection. It is not a mail store: each
// user's mailbox lives in memory for the life of the Server.
//
// Sessions follow RFC 1939: a session sees a snapshot of its mailbox taken
// when it logs in, DELE only marks messages, and the marks are committed
// only by QUIT in the TRANSACTION state. A session that ends any other way
// (the client vanishes, Close) deletes nothing.
//
// There is no maildrop lock: several sessions for one user may run at once,
// each on its own snapshot. A QUIT removes the messages that session
// deleted (matched by UIDL) from whatever the mailbox holds at that time, so
// a message deleted by two sessions is removed once. Give every message of a
// mailbox a distinct UIDL.
package pop3server

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/popgate/popgate/proxy/pop3"
)

// Message is one message of a mailbox.
type Message struct {
	UIDL string // unique id (RFC 1939 §7: 1 to 70 printable characters)
	Data []byte // wire form: CRLF lines, not dot-stuffed
}

// Config configures a Server.
type Config struct {
	Users     map[string]string    // user → password
	Mailboxes map[string][]Message // initial mailbox per user (copied)
	TLS       *tls.Config          // STLS is offered when set
	Hostname  string               // for the APOP timestamp; os.Hostname() if empty

	// CutResponse, for fault-injection tests, is called before a RETR or TOP
	// response is written, with the command ("RETR" or "TOP") and the
	// message number (1-based). If it returns n >= 0 the server writes only
	// the first n bytes of the whole response (status line included; all of
	// it if n is larger) and then closes the connection without committing
	// deletions. A negative result lets the response through.
	CutResponse func(cmd string, msg int) int

	Logf func(format string, args ...any) // optional; never given passwords or message data
}

// Server is an in-memory POP3 server. Its methods are safe for concurrent
// use.
type Server struct {
	cfg      Config
	hostname string

	mu        sync.Mutex
	boxes     map[string][]Message
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	quits     int
	wg        sync.WaitGroup
}

// New returns a Server for cfg. Users and Mailboxes are copied.
func New(cfg Config) *Server {
	s := &Server{
		cfg:       cfg,
		hostname:  cfg.Hostname,
		boxes:     make(map[string][]Message),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]struct{}),
	}
	s.cfg.Users = make(map[string]string, len(cfg.Users))
	for u, p := range cfg.Users {
		s.cfg.Users[u] = p
	}
	for u, msgs := range cfg.Mailboxes {
		s.boxes[u] = append([]Message(nil), msgs...)
	}
	if s.hostname == "" {
		s.hostname, _ = os.Hostname()
		if s.hostname == "" {
			s.hostname = "localhost"
		}
	}
	return s
}

// Serve accepts connections on l and serves each in its own goroutine. It
// returns nil after Close, or the error of Accept.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	for {
		c, err := l.Accept()
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			if c != nil {
				c.Close()
			}
			return nil
		}
		if err != nil {
			s.mu.Unlock()
			return err
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops all Serve loops, closes every live connection without
// committing its deletions, and waits for the sessions to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Mailbox returns a copy of user's committed mailbox.
func (s *Server) Mailbox(user string) []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.boxes[user]...)
}

// SetMessage replaces the data of user's message with the given UIDL, as
// a server that recycles a UIDL would (sessions starting later see it).
func (s *Server) SetMessage(user, uidl string, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, m := range s.boxes[user] {
		if m.UIDL == uidl {
			s.boxes[user][i].Data = data
		}
	}
}

// Sessions returns the number of live connections.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// QuitCount returns how many sessions have ended with QUIT (in either
// state).
func (s *Server) QuitCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.quits
}

func (s *Server) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

// session is one connection.
type session struct {
	s         *Server
	conn      net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	tls       bool
	timestamp string

	user    string // from USER, waiting for PASS
	login   string // authenticated user: TRANSACTION state when set
	msgs    []Message
	deleted []bool
}

// handshakeTimeout bounds the STLS handshake.
const handshakeTimeout = 30 * time.Second

// authLineLimit bounds an AUTH continuation line (a base64 PLAIN response).
const authLineLimit = 2048

func (s *Server) serveConn(c net.Conn) {
	ss := &session{
		s:         s,
		conn:      c,
		br:        bufio.NewReader(c),
		bw:        bufio.NewWriter(c),
		timestamp: fmt.Sprintf("<%d.%d@%s>", os.Getpid(), time.Now().UnixNano(), s.hostname),
	}
	s.logf("pop3 server: connection from %s", c.RemoteAddr())
	ss.bw.WriteString(pop3.OKLine("POP3 server ready " + ss.timestamp))
	for {
		// PIPELINING: answer everything already received before flushing.
		if ss.br.Buffered() == 0 {
			if ss.bw.Flush() != nil {
				return
			}
		}
		line, err := pop3.ReadLine(ss.br, pop3.MaxCommandLine)
		if err == pop3.ErrLineTooLong {
			ss.bw.WriteString(pop3.ErrLine("", "command line too long"))
			if _, err := pop3.DiscardLine(ss.br); err != nil {
				ss.bw.Flush()
				return
			}
			continue
		}
		if err != nil {
			return
		}
		cmd, err := pop3.ParseCommand(line)
		if err != nil {
			ss.bw.WriteString(pop3.ErrLine("", strings.TrimPrefix(err.Error(), "pop3: ")))
			continue
		}
		s.logf("pop3 server: %s: %s", c.RemoteAddr(), cmd.Redacted())
		if !ss.command(cmd) {
			ss.bw.Flush()
			return
		}
	}
}

// command runs one command; it returns false to end the session.
func (ss *session) command(cmd pop3.Command) bool {
	switch cmd.Name {
	case "CAPA":
		ss.capa()
		return true
	case "QUIT":
		return ss.quit()
	}
	if ss.login == "" {
		switch cmd.Name {
		case "USER":
			if cmd.Rest == "" {
				ss.err("", "USER needs a name")
				return true
			}
			ss.user = cmd.Rest
			ss.ok("send PASS")
		case "PASS":
			if ss.user == "" {
				ss.err("", "send USER first")
				return true
			}
			user := ss.user
			ss.user = ""
			ss.login1(user, func(pw string) bool {
				return subtle.ConstantTimeCompare([]byte(pw), []byte(cmd.Rest)) == 1
			})
		case "APOP":
			if len(cmd.Args) != 2 {
				ss.err("", "usage: APOP name digest")
				return true
			}
			ss.login1(cmd.Args[0], func(pw string) bool {
				sum := md5.Sum([]byte(ss.timestamp + pw))
				want := hex.EncodeToString(sum[:])
				return subtle.ConstantTimeCompare([]byte(want), []byte(strings.ToLower(cmd.Args[1]))) == 1
			})
		case "AUTH":
			return ss.auth(cmd)
		case "STLS":
			return ss.stls()
		default:
			ss.err("", "unknown command or not allowed before login: "+cmd.Name)
		}
		return true
	}
	switch cmd.Name {
	case "STAT":
		n, size := ss.stat()
		ss.ok(fmt.Sprintf("%d %d", n, size))
	case "LIST", "UIDL":
		ss.listing(cmd)
	case "RETR":
		i, ok := ss.msgArg(cmd.Args, 1)
		if ok {
			return ss.send("RETR", i, pop3.OKLine(fmt.Sprintf("%d octets", len(ss.msgs[i].Data))), ss.msgs[i].Data)
		}
	case "TOP":
		if len(cmd.Args) != 2 {
			ss.err("", "usage: TOP msg lines")
			return true
		}
		k, err := strconv.Atoi(cmd.Args[1])
		if err != nil || k < 0 || !isDigits(cmd.Args[1]) {
			ss.err("", "invalid number of lines")
			return true
		}
		if i, ok := ss.msgArg(cmd.Args[:1], 1); ok {
			return ss.send("TOP", i, pop3.OKLine("top of message follows"), top(ss.msgs[i].Data, k))
		}
	case "DELE":
		if i, ok := ss.msgArg(cmd.Args, 1); ok {
			ss.deleted[i] = true
			ss.ok(fmt.Sprintf("message %d deleted", i+1))
		}
	case "NOOP":
		ss.ok("")
	case "RSET":
		clear(ss.deleted)
		n, size := ss.stat()
		ss.ok(fmt.Sprintf("maildrop has %d messages (%d octets)", n, size))
	default:
		ss.err("", "unknown command or not allowed after login: "+cmd.Name)
	}
	return true
}

func (ss *session) ok(text string)       { ss.bw.WriteString(pop3.OKLine(text)) }
func (ss *session) err(code, txt string) { ss.bw.WriteString(pop3.ErrLine(code, txt)) }

func (ss *session) capa() {
	ss.ok("capability list follows")
	caps := []string{"TOP", "USER", "UIDL", "RESP-CODES", "PIPELINING", "SASL PLAIN"}
	if ss.s.cfg.TLS != nil && !ss.tls && ss.login == "" {
		caps = append(caps, "STLS")
	}
	caps = append(caps, "IMPLEMENTATION popgate-test-server")
	for _, c := range caps {
		ss.bw.WriteString(c + "\r\n")
	}
	ss.bw.WriteString(".\r\n")
}

// login1 authenticates user with check (given the user's password) and
// enters the TRANSACTION state.
func (ss *session) login1(user string, check func(pw string) bool) {
	pw, known := ss.s.cfg.Users[user]
	if !check(pw) || !known {
		ss.err(pop3.CodeAuth, "invalid user name or password")
		return
	}
	ss.s.mu.Lock()
	ss.msgs = append([]Message(nil), ss.s.boxes[user]...)
	ss.s.mu.Unlock()
	ss.login = user
	ss.deleted = make([]bool, len(ss.msgs))
	n, size := ss.stat()
	ss.s.logf("pop3 server: %s logged in as %s", ss.conn.RemoteAddr(), user)
	ss.ok(fmt.Sprintf("maildrop has %d messages (%d octets)", n, size))
}

// auth runs AUTH PLAIN (RFC 4616, RFC 5034), with an initial response or a
// continuation.
func (ss *session) auth(cmd pop3.Command) bool {
	if len(cmd.Args) == 0 {
		ss.ok("SASL mechanisms follow")
		ss.bw.WriteString("PLAIN\r\n.\r\n")
		return true
	}
	if !strings.EqualFold(cmd.Args[0], "PLAIN") || len(cmd.Args) > 2 {
		ss.err("", "unsupported SASL mechanism")
		return true
	}
	var resp string
	if len(cmd.Args) == 2 {
		resp = cmd.Args[1]
		if resp == "=" {
			resp = ""
		}
	} else {
		ss.bw.WriteString("+ \r\n")
		if ss.bw.Flush() != nil {
			return false
		}
		line, err := pop3.ReadLine(ss.br, authLineLimit)
		if err == pop3.ErrLineTooLong {
			ss.err("", "authentication line too long")
			_, err = pop3.DiscardLine(ss.br)
			return err == nil
		}
		if err != nil {
			return false
		}
		if string(line) == "*" {
			ss.err("", "authentication cancelled")
			return true
		}
		resp = string(line)
	}
	dec, err := base64.StdEncoding.DecodeString(resp)
	parts := bytes.Split(dec, []byte{0})
	if err != nil || len(parts) != 3 {
		ss.err("", "malformed PLAIN response")
		return true
	}
	authz, user, pass := string(parts[0]), string(parts[1]), parts[2]
	if authz != "" && authz != user {
		ss.err(pop3.CodeAuth, "authorization identity not allowed")
		return true
	}
	ss.login1(user, func(pw string) bool { return subtle.ConstantTimeCompare([]byte(pw), pass) == 1 })
	return true
}

// stls runs STLS (RFC 2595). Whatever the client sent after the STLS line
// before the handshake is discarded with the old reader, and so is the
// state obtained before it (a pending USER).
func (ss *session) stls() bool {
	if ss.s.cfg.TLS == nil || ss.tls {
		ss.err("", "STLS not available")
		return true
	}
	ss.ok("begin TLS negotiation")
	if ss.bw.Flush() != nil {
		return false
	}
	tc := tls.Server(ss.conn, ss.s.cfg.TLS)
	ss.conn.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		ss.s.logf("pop3 server: %s: TLS handshake: %v", ss.conn.RemoteAddr(), err)
		return false
	}
	ss.conn.SetDeadline(time.Time{})
	ss.conn = tc
	ss.br = bufio.NewReader(tc)
	ss.bw = bufio.NewWriter(tc)
	ss.tls = true
	ss.user = ""
	return true
}

// quit ends the session, committing deletions in the TRANSACTION state.
func (ss *session) quit() bool {
	deleted := 0
	ss.s.mu.Lock()
	ss.s.quits++
	if ss.login != "" {
		gone := make(map[string]int)
		for i, d := range ss.deleted {
			if d {
				gone[ss.msgs[i].UIDL]++
			}
		}
		box := ss.s.boxes[ss.login]
		kept := make([]Message, 0, len(box))
		for _, m := range box {
			if gone[m.UIDL] > 0 {
				gone[m.UIDL]--
				deleted++
				continue
			}
			kept = append(kept, m)
		}
		ss.s.boxes[ss.login] = kept
	}
	ss.s.mu.Unlock()
	if ss.login != "" {
		ss.ok(fmt.Sprintf("bye (%d messages deleted)", deleted))
	} else {
		ss.ok("bye")
	}
	return false
}

func (ss *session) stat() (n int, size int) {
	for i, m := range ss.msgs {
		if !ss.deleted[i] {
			n++
			size += len(m.Data)
		}
	}
	return n, size
}

// msgArg parses args[0] as a message number that exists and is not
// deleted; it answers -ERR and returns false otherwise. want is the
// required number of arguments.
func (ss *session) msgArg(args []string, want int) (int, bool) {
	if len(args) != want {
		ss.err("", "wrong number of arguments")
		return 0, false
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || !isDigits(args[0]) || n < 1 || n > len(ss.msgs) {
		ss.err("", "no such message")
		return 0, false
	}
	if ss.deleted[n-1] {
		ss.err("", fmt.Sprintf("message %d already deleted", n))
		return 0, false
	}
	return n - 1, true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// listing answers LIST and UIDL, with or without a message number.
func (ss *session) listing(cmd pop3.Command) {
	item := func(i int) string {
		if cmd.Name == "UIDL" {
			return fmt.Sprintf("%d %s", i+1, ss.msgs[i].UIDL)
		}
		return fmt.Sprintf("%d %d", i+1, len(ss.msgs[i].Data))
	}
	if len(cmd.Args) > 0 {
		if i, ok := ss.msgArg(cmd.Args, 1); ok {
			ss.ok(item(i))
		}
		return
	}
	n, size := ss.stat()
	ss.ok(fmt.Sprintf("%d messages (%d octets)", n, size))
	for i := range ss.msgs {
		if !ss.deleted[i] {
			ss.bw.WriteString(item(i) + "\r\n")
		}
	}
	ss.bw.WriteString(".\r\n")
}

// send writes a RETR or TOP response, or the cut-off part of it that
// CutResponse asks for (then it returns false to close the connection).
func (ss *session) send(name string, i int, status string, data []byte) bool {
	var resp bytes.Buffer
	resp.Grow(len(status) + len(data) + len(data)/32 + 5)
	resp.WriteString(status)
	w := pop3.NewDotWriter(&resp)
	w.Write(data)
	w.Close()
	if cut := ss.s.cfg.CutResponse; cut != nil {
		if n := cut(name, i+1); n >= 0 {
			ss.bw.Write(resp.Bytes()[:min(n, resp.Len())])
			ss.s.logf("pop3 server: %s: %s %d cut after %d bytes", ss.conn.RemoteAddr(), name, i+1, n)
			return false
		}
	}
	ss.bw.Write(resp.Bytes())
	return true
}

// top returns the header of a message, the blank line after it and the
// first k lines of its body. A message without a blank line is all header.
func top(data []byte, k int) []byte {
	i := 0
	for {
		j := bytes.IndexByte(data[i:], '\n')
		if j < 0 {
			return data
		}
		line := data[i : i+j+1]
		i += j + 1
		if len(line) == 1 || len(line) == 2 && line[0] == '\r' {
			break
		}
	}
	for ; k > 0 && i < len(data); k-- {
		j := bytes.IndexByte(data[i:], '\n')
		if j < 0 {
			return data
		}
		i += j + 1
	}
	return data[:i]
}

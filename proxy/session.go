package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/internal/mailtext"
	"github.com/popgate/popgate/proxy/pop3"
	"github.com/popgate/popgate/proxy/throttle"
)

// state is the RFC 1939 session state as popgate has observed it.
type state int

const (
	stateAuthorization state = iota
	stateTransaction
	stateUpdate // QUIT relayed; the session ends
)

// Limits on misbehaving clients before popgate hangs up on them.
const (
	maxOverlongLines = 3
	maxBadCommands   = 10
	clientBufSize    = 4 << 10 // commands are short; responses go through cw
)

type session struct {
	srv    *Server
	cfg    *Listener
	log    zerolog.Logger
	id     string
	client netip.AddrPort // from the PROXY header where the listener takes one
	local  netip.AddrPort // the address the client connected to, likewise
	obs    SessionObserver
	ctx    context.Context
	cancel context.CancelFunc

	raw   *idleConn // client TCP connection
	conn  net.Conn  // raw, or TLS over raw
	cr    *bufio.Reader
	cw    *clientWriter
	tlsOn bool

	mu      sync.Mutex // guards up and aborted against abort()
	up      *upstreamConn
	aborted string

	gen         *generation // the configuration this session started under
	upName      string
	upAddr      string // the upstream's address: part of the message memory's keys
	outPort     uint16 // local port of a transparent upstream connection, for loop detection
	state       state
	pendingUser string            // from USER, until PASS succeeds
	attempt     *throttle.Attempt // the login attempt the server is answering (login.go)
	user        string
	policy      *SessionPolicy
	cache       topCache          // filtered messages, for TOP and RETR after TOP
	uidls       map[string]string // message number → UIDL, fetched once when filtering
	// relayedUIDLs is the raw UIDL listing relayed to the client, kept
	// while uidls is unset: parsed only if a filtered download needs it.
	relayedUIDLs []byte
	sizes        map[string]int64 // message number → LIST size, fetched once under a memory
	deleted      []memory.Key     // messages DELEted: their records go at a committed QUIT
	lineBuf      []byte

	// responding is set once any byte of the current response may have
	// reached the client writer; a failure then closes the connection
	// instead of appending an error line to a half-sent response.
	responding bool
	overlong   int
	bad        int
	commands   int
	messages   int
}

func newSession(srv *Server, cfg *Listener, c net.Conn, client netip.AddrPort) *session {
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{
		srv:    srv,
		cfg:    cfg,
		id:     newSessionID(),
		client: client,
		local:  addrPort(c.LocalAddr()),
		obs:    nopObserver{},
		ctx:    ctx,
		cancel: cancel,
		raw: &idleConn{Conn: c, readTimeout: cfg.LoginTimeout, writeTimeout: srv.opts.WriteTimeout,
			rxc: nopAdder{}, txc: nopAdder{}, until: time.Now().Add(loginDeadlineFactor * cfg.LoginTimeout)},
	}
	s.conn = s.raw
	s.setLogger()
	return s
}

func (s *session) setLogger() {
	s.log = s.srv.log.With().Str("session", s.id).Str("listener", s.cfg.Name).Str("client", s.client.String()).Logger()
}

var sessionIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func newSessionID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return sessionIDEncoding.EncodeToString(b[:])
}

// abort closes both connections from another goroutine (shutdown). The
// upstream gets no QUIT, so it deletes nothing.
func (s *session) abort(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.aborted != "" {
		return
	}
	s.aborted = reason
	s.cancel()
	_ = s.raw.Close()
	if s.up != nil {
		_ = s.up.close()
	}
}

func (s *session) run() {
	start := time.Now()
	reason := s.serve()
	s.mu.Lock()
	aborted := s.aborted != ""
	if aborted {
		reason = errors.New(s.aborted)
	}
	up := s.up
	s.mu.Unlock()
	s.cancel()
	s.closeClient()
	if s.cw != nil {
		s.cw.discard()
	}
	s.obs.Ended(sessionResult(reason, aborted))
	ev := s.log.Info().Dur("duration", time.Since(start)).Int64("client_rx", s.raw.rx).Int64("client_tx", s.raw.tx).
		Int("commands", s.commands).Int("messages", s.messages).Str("user", logText(s.user))
	s.srv.ports.release(s.outPort)
	s.cache.clear()
	if up != nil {
		_ = up.close()
		up.release()
		ev = ev.Int64("upstream_rx", up.raw.rx).Int64("upstream_tx", up.raw.tx)
	}
	if reason != nil {
		ev = ev.Str("end", reason.Error())
	} else {
		ev = ev.Str("end", "quit")
	}
	ev.Msg("session end")
}

// serve runs the session; nil means it ended with a relayed QUIT.
func (s *session) serve() error {
	s.log.Debug().Msg("session start")
	if s.cfg.Implicit {
		if err := s.handshake(); err != nil {
			return err
		}
	}
	s.cr = bufio.NewReaderSize(s.conn, clientBufSize)
	s.cw = newClientWriter(s.conn)

	if s.cfg.Router != nil {
		// The upstream is known only once the client names its login.
		s.cw.WriteString("+OK popgate ready\r\n")
	} else {
		up, err := s.connectUpstream(s.cfg.Upstream)
		if err != nil {
			s.log.Warn().Err(err).Str("upstream", s.upName).Msg("upstream unavailable")
			s.replyErr("SYS/TEMP", "mail server unavailable, try again later")
			_ = s.cw.Flush()
			return fmt.Errorf("%w: %w", errUpstreamUnavailable, err)
		}
		s.cw.Write(up.greeting)
		s.cw.WriteString("\r\n")
		if st, _ := pop3.ParseStatus(up.greeting); !st.OK {
			// A server that greets with -ERR (busy, shutting down) closes
			// next; pass its word on and end here rather than wait for it.
			_ = s.cw.Flush()
			return fmt.Errorf("%w: the server refused the session in its greeting", errUpstreamUnavailable)
		}
	}

	for s.state != stateUpdate {
		if err := s.next(); err != nil {
			if !s.responding && !isNetClosed(err) {
				if errors.Is(err, errUpstreamProtocol) || errors.Is(err, errUpstreamLost) {
					s.replyErr("SYS/TEMP", "mail server connection lost, try again later")
				}
			}
			if !s.responding {
				_ = s.cw.Flush()
			}
			return err
		}
	}
	return s.cw.Flush()
}

// closeClient ends the client connection without losing the last reply:
// closing a socket with unread input makes the kernel send a reset, which
// can destroy data the client has not read yet. So it half-closes, drains
// the client's leftovers briefly, then closes.
func (s *session) closeClient() {
	if tc, ok := s.conn.(*tls.Conn); ok {
		_ = tc.CloseWrite()
	}
	if tcp, ok := s.raw.Conn.(*net.TCPConn); ok && tcp.CloseWrite() == nil {
		_ = tcp.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, _ = io.CopyN(io.Discard, tcp, 64<<10)
	}
	_ = s.raw.Close()
}

func (s *session) handshake() error {
	tc := tls.Server(s.raw, s.cfg.TLS)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.LoginTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("%w: TLS handshake: %w", errClientFault, err)
	}
	s.conn = tc
	s.tlsOn = true
	return nil
}

func (s *session) connectUpstream(u *Upstream) (*upstreamConn, error) {
	addr := u.Address
	s.upName = u.Name
	d := &net.Dialer{}
	if s.cfg.Transparent {
		dst, err := s.originalDestination()
		if err != nil {
			return nil, err
		}
		if err := s.srv.refuseLoop(dst, s.client); err != nil {
			return nil, err
		}
		if s.cfg.DestRouter != nil {
			if du := s.cfg.DestRouter(dst.Addr()); du != nil {
				u = du.withDefaults()
			}
		}
		addr = dst.String()
		s.upName = addr
		d.Control = s.srv.ports.control(&s.outPort)
	}
	ds := dialSettings{writeTimeout: s.srv.opts.WriteTimeout, rx: s.obs.UpstreamIn(), tx: s.obs.UpstreamOut()}
	if u.ProxyProtocol != 0 {
		ds.proxyHeader = proxyproto.HeaderProxyFromAddrs(u.ProxyProtocol, net.TCPAddrFromAddrPort(s.client), net.TCPAddrFromAddrPort(s.local))
	}
	start := time.Now()
	up, err := dialUpstream(s.ctx, d, u, addr, ds)
	obsName := u.Name
	if s.cfg.Transparent {
		obsName = "transparent" // the destination is not a label: unbounded
	}
	s.obs.UpstreamConnected(obsName, time.Since(start), err)
	if err != nil {
		s.srv.ports.release(s.outPort)
		s.outPort = 0
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.aborted != "" {
		_ = up.close()
		return nil, errors.New(s.aborted)
	}
	up.refusesCleartext = u.LoginRequiresTLS && u.TLSMode == TLSNone
	s.up = up
	s.upAddr = addr
	s.log.Debug().Str("upstream", s.upName).Str("address", addr).Msg("upstream connected")
	return up, nil
}

// next reads one client command and handles it.
func (s *session) next() error {
	if s.cr.Buffered() == 0 {
		// Flush per response batch: pipelined commands get their answers
		// in one write, an interactive client gets each at once.
		if err := s.cw.Flush(); err != nil {
			return err
		}
		// Waiting for the client: hand the big buffers back (bufpool.go).
		s.cw.release()
		if s.up != nil {
			s.up.idle()
		}
	}
	s.responding = false
	if s.commands == 0 && s.bad == 0 && s.cfg.ProxyProtocol != nil && s.sentProxyHeader() {
		s.log.Warn().Msg("refused a PROXY protocol header from an untrusted source, or a second one")
		s.srv.opts.Observer.Refused(s.cfg.Name, RefusedProxyHeader)
		s.replyErr("", "PROXY protocol header not accepted")
		return fmt.Errorf("%w: unexpected PROXY header", errClientFault)
	}
	line, err := pop3.ReadLine(s.cr, s.cfg.MaxCommandLine)
	if s.up != nil {
		s.up.busy()
	}
	if errors.Is(err, pop3.ErrLineTooLong) {
		s.overlong++
		s.log.Warn().Int("limit", s.cfg.MaxCommandLine).Msg("client sent an overlong line")
		if s.overlong >= maxOverlongLines {
			s.replyErr("", "too many overlong lines, closing")
			return fmt.Errorf("%w: too many overlong lines", errClientFault)
		}
		s.replyErr("", fmt.Sprintf("line too long (limit %d octets)", s.cfg.MaxCommandLine))
		if err := s.cw.Flush(); err != nil {
			return err
		}
		_, err := pop3.DiscardLine(s.cr)
		return clientErr(err)
	}
	if err != nil {
		if isTimeout(err) {
			s.replyErr("", "disconnected for inactivity")
			return errClientIdle
		}
		return clientErr(err)
	}
	s.lineBuf = append(s.lineBuf[:0], line...)
	line = s.lineBuf
	cmd, err := pop3.ParseCommand(line)
	if err != nil {
		s.bad++
		if s.bad >= maxBadCommands {
			s.replyErr("", "too many bad commands, closing")
			return fmt.Errorf("%w: too many bad commands", errClientFault)
		}
		s.replyErr("", "unknown or malformed command")
		return nil
	}
	s.commands++
	s.obs.Command(commandLabel(cmd.Name))
	if e := s.log.Debug(); e.Enabled() {
		e.Str("command", cmd.Name).Msg("command")
	}
	return s.dispatch(cmd, line)
}

func (s *session) dispatch(cmd pop3.Command, line []byte) error {
	if s.refuseCleartext(cmd) {
		return nil
	}
	if s.cfg.Router != nil && s.state == stateAuthorization {
		if handled, err := s.routed(cmd); handled {
			return err
		}
	}
	switch cmd.Name {
	case "STLS":
		return s.startTLS()
	case "CAPA":
		return s.capa(line)
	case "QUIT":
		st, err := s.relaySingle(line)
		if err == nil {
			if st.OK && s.state == stateTransaction {
				// The deletions are committed: their records go too.
				if m := s.memory(); m != nil {
					s.forget(m, s.deleted...)
				}
			}
			s.state = stateUpdate
		}
		return err
	case "USER":
		if s.upstreamRefusesCleartext(cmd) {
			return nil
		}
		st, err := s.relaySingle(line)
		if err == nil && st.OK {
			s.pendingUser = cmd.Rest
		}
		return err
	case "PASS":
		if s.upstreamRefusesCleartext(cmd) {
			return nil
		}
		return s.login(line, s.pendingUser)
	case "APOP":
		return s.login(line, firstArg(cmd))
	case "AUTH":
		return s.auth(cmd, line)
	case "RETR", "TOP":
		if s.state == stateTransaction {
			return s.retrieve(cmd, line)
		}
	case "DELE":
		var key *memory.Key
		if m := s.memory(); m != nil && s.state == stateTransaction {
			// The UIDL of a deleted message is gone from the listing.
			uidl, err := s.uidl(firstArg(cmd))
			if err != nil {
				return err
			}
			if uidl != "" {
				k := s.memKey(uidl)
				key = &k
			}
		}
		st, err := s.relaySingle(line)
		if err == nil && st.OK {
			s.cache.drop(firstArg(cmd))
			if key != nil {
				s.deleted = append(s.deleted, *key)
			}
		}
		return err
	case "RSET":
		st, err := s.relaySingle(line)
		if err == nil && st.OK {
			s.deleted = nil
			// A listing taken after a DELE lacks the message RSET restored.
			s.uidls, s.relayedUIDLs = nil, nil
		}
		return err
	case "LIST", "STAT":
		if m := s.memory(); m != nil && s.state == stateTransaction && len(cmd.Args) <= 1 {
			if cmd.Name == "STAT" {
				return s.stat(m, line)
			}
			return s.list(m, cmd, line)
		}
		if cmd.Name == "LIST" && len(cmd.Args) == 0 {
			return s.relayMulti(line)
		}
	case "UIDL":
		if len(cmd.Args) == 0 {
			return s.relayUIDL(line)
		}
	}
	_, err := s.relaySingle(line)
	return err
}

// login relays a command that may complete the login (PASS, APOP), once
// the throttle admits it, and, on +OK, enters the TRANSACTION state.
func (s *session) login(line []byte, user string) error {
	if ok, err := s.admitLogin(user); !ok {
		return err
	}
	status, st, err := s.exchange(line)
	if err != nil {
		return err
	}
	s.loginResult(st.OK)
	if st.OK {
		if err := s.loggedIn(user); err != nil {
			return err
		}
	}
	s.writeLine(status)
	return nil
}

// loggedIn enters the TRANSACTION state and picks the session's policy. A
// session no policy accepts is refused before the client sees +OK; the
// upstream is closed without QUIT.
func (s *session) loggedIn(user string) error {
	s.user = user
	if s.gen.policyFor != nil {
		pol, err := s.gen.policyFor(SessionInfo{ID: s.id, Listener: s.cfg.Name, Client: s.client, Upstream: s.upName, User: user})
		if err != nil {
			s.log.Warn().Str("user", logText(user)).Err(err).Msg("login refused by policy")
			s.replyErr("SYS/PERM", "no mail policy applies to this account")
			return fmt.Errorf("%w: %w", errPolicyRefused, err)
		}
		s.policy = pol
	}
	s.state = stateTransaction
	s.raw.until = time.Time{}
	s.raw.setReadTimeout(s.cfg.IdleTimeout)
	ev := s.log.Info().Str("user", logText(user)).Str("upstream", s.upName).Bool("tls", s.tlsOn).Int64("config_generation", s.gen.id)
	if s.policy != nil {
		ev = ev.Str("policy", s.policy.Name)
	}
	ev.Msg("login")
	return nil
}

// Errors a session ends with, by cause (sessionResult sorts them).
var (
	errUpstreamLost        = errors.New("upstream connection lost") // went away or stalled
	errUpstreamUnavailable = errors.New("upstream unavailable")     // could not connect, or refused the session
	errClientGone          = errors.New("client connection lost")   // closed or reset the connection
	errClientFault         = errors.New("client protocol error")    // broke the protocol, or its TLS failed
	errClientIdle          = errors.New("client: idle timeout")
	errPolicyRefused       = errors.New("policy")
)

// sessionResult names how a session ended, for metrics.
func sessionResult(err error, aborted bool) string {
	switch {
	case err == nil:
		return SessionQuit
	case aborted:
		return SessionShutdown
	case errors.Is(err, errPolicyRefused):
		return SessionPolicyRefused
	case errors.Is(err, errUpstreamUnavailable):
		return SessionUpstreamUnavailable
	case errors.Is(err, errUpstreamLost), errors.Is(err, errUpstreamProtocol):
		return SessionUpstreamError
	case errors.Is(err, errClientIdle):
		return SessionTimeout
	case errors.Is(err, errClientFault):
		return SessionClientError
	case errors.Is(err, errClientGone):
		return SessionClientClosed
	}
	return SessionError
}

func upstreamErr(err error) error {
	if err == nil || errors.Is(err, errUpstreamProtocol) {
		return err
	}
	return fmt.Errorf("%w: %v", errUpstreamLost, err)
}

func clientErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", errClientGone, err)
}

// send forwards a client line to the upstream.
func (s *session) send(line []byte) error {
	w := s.up.w
	w.Write(line)
	w.WriteString("\r\n")
	return upstreamErr(w.Flush())
}

// readStatus reads and checks one upstream status line. The returned line
// aliases the upstream reader's buffer.
func (s *session) readStatus() ([]byte, pop3.Status, error) {
	line, err := pop3.ReadLine(s.up.r, s.cfg.Upstream.MaxStatusLine)
	if err != nil {
		if errors.Is(err, pop3.ErrLineTooLong) {
			return nil, pop3.Status{}, fmt.Errorf("%w: status line over %d octets", errUpstreamProtocol, s.cfg.Upstream.MaxStatusLine)
		}
		return nil, pop3.Status{}, upstreamErr(err)
	}
	st, err := pop3.ParseStatus(line)
	if err != nil {
		return nil, st, fmt.Errorf("%w: %v", errUpstreamProtocol, err)
	}
	return line, st, nil
}

func (s *session) writeLine(line []byte) {
	s.cw.Write(line)
	s.cw.WriteString("\r\n")
}

func (s *session) replyErr(code, text string) { s.cw.WriteString(pop3.ErrLine(code, text)) }

// exchange sends a command and reads its status line, without relaying it.
func (s *session) exchange(line []byte) ([]byte, pop3.Status, error) {
	if err := s.send(line); err != nil {
		return nil, pop3.Status{}, err
	}
	return s.readStatus()
}

func (s *session) relaySingle(line []byte) (pop3.Status, error) {
	status, st, err := s.exchange(line)
	if err != nil {
		return st, err
	}
	s.writeLine(status)
	return st, nil
}

// relayMulti relays a command whose +OK response is multi-line, byte for
// byte. The terminator is written only once the upstream's has been seen.
func (s *session) relayMulti(line []byte) error {
	st, err := s.relaySingle(line)
	if err != nil || !st.OK {
		return err
	}
	return s.relayBody()
}

// relayUIDL relays a UIDL listing. Under a filtering policy, while popgate
// has no listing of its own, it keeps a copy: the session's filtered
// downloads need the UIDLs, and most clients ask for the listing before
// they download, so the server need not make it twice.
func (s *session) relayUIDL(line []byte) error {
	if s.uidls != nil || s.chain().Empty() {
		return s.relayMulti(line)
	}
	st, err := s.relaySingle(line)
	if err != nil || !st.OK {
		return err
	}
	keep := &keepingWriter{w: s.cw, max: maxUIDLListing}
	if err := s.relayBodyTo(keep); err != nil {
		return err
	}
	if !keep.over {
		s.relayedUIDLs = keep.kept
	}
	return nil
}

// keepingWriter passes writes on to w and keeps a copy of what w took, up
// to max bytes; over says there was more.
type keepingWriter struct {
	w    io.Writer
	max  int
	kept []byte
	over bool
}

func (k *keepingWriter) Write(p []byte) (int, error) {
	n, err := k.w.Write(p)
	switch {
	case k.over:
	case len(k.kept)+n > k.max:
		k.over, k.kept = true, nil
	default:
		k.kept = append(k.kept, p[:n]...)
	}
	return n, err
}

// relayBody passes the response on as the upstream sent it, terminator
// included: the raw reader returns the terminator only once all of it was
// read, so a response cut short never gets one.
func (s *session) relayBody() error { return s.relayBodyTo(s.cw) }

// relayBodyTo is relayBody with the client's side of the copy as w.
func (s *session) relayBodyTo(w io.Writer) error {
	s.responding = true
	if _, err := pop3.NewRawDotReader(s.up.r).WriteTo(w); err != nil {
		return fmt.Errorf("relaying response: %w", err)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

func isNetClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF)
}

// capabilities popgate can relay (RFC 2449 §6 and registered extensions).
// STLS is handled separately: it depends on the listener, not the upstream.
var relayableCapa = map[string]bool{
	"TOP": true, "USER": true, "SASL": true, "RESP-CODES": true, "LOGIN-DELAY": true,
	"PIPELINING": true, "EXPIRE": true, "UIDL": true, "IMPLEMENTATION": true,
	"AUTH-RESP-CODE": true, "UTF8": true, "LANG": true,
}

// maxCapaResponse bounds the capability list popgate reads into memory.
const maxCapaResponse = 64 << 10

func (s *session) offersSTLS() bool {
	return s.cfg.TLS != nil && !s.cfg.Implicit && !s.tlsOn && s.state == stateAuthorization
}

// capa answers CAPA with the upstream's capabilities that popgate can
// really relay, plus STLS when this listener offers it.
func (s *session) capa(line []byte) error {
	if err := s.send(line); err != nil {
		return err
	}
	status, st, err := s.readStatus()
	if err != nil {
		return err
	}
	if !st.OK {
		if !s.offersSTLS() {
			s.writeLine(status)
			return nil
		}
		// The upstream predates CAPA; the client still needs to see STLS.
		s.cw.WriteString("+OK capability list follows\r\nSTLS\r\n.\r\n")
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(pop3.NewDotReader(s.up.r), maxCapaResponse+1))
	if err != nil {
		return upstreamErr(err)
	}
	if len(body) > maxCapaResponse {
		return fmt.Errorf("%w: capability list over %d octets", errUpstreamProtocol, maxCapaResponse)
	}
	s.writeLine(status)
	for l := range strings.Lines(string(body)) {
		name, _, _ := strings.Cut(strings.TrimRight(l, "\r\n"), " ")
		if relayableCapa[strings.ToUpper(name)] {
			s.cw.WriteString(s.capaLine(l))
		}
	}
	if s.offersSTLS() {
		s.cw.WriteString("STLS\r\n")
	}
	s.cw.WriteString(".\r\n")
	return nil
}

// startTLS answers STLS from the client (RFC 2595 §4). Commands the client
// pipelined behind STLS arrived in plaintext; they are discarded, never run.
func (s *session) startTLS() error {
	switch {
	case !s.offersSTLS() && s.tlsOn:
		s.replyErr("", "command not permitted when TLS active")
		return nil
	case !s.offersSTLS():
		s.replyErr("", "STLS not available")
		return nil
	case s.pendingUser != "":
		// USER already reached the upstream in plaintext; TLS now would
		// not protect the identity the login continues with.
		s.replyErr("", "STLS must come before USER")
		return nil
	}
	s.cw.WriteString("+OK begin TLS negotiation\r\n")
	if err := s.cw.Flush(); err != nil {
		return clientErr(err)
	}
	if n := s.cr.Buffered(); n > 0 {
		s.log.Warn().Int("bytes", n).Msg("discarded plaintext pipelined after STLS (possible command injection)")
	}
	if err := s.handshake(); err != nil {
		return err
	}
	s.cr = bufio.NewReaderSize(s.conn, clientBufSize)
	s.cw.discard()
	s.cw = newClientWriter(s.conn)
	return nil
}

// maxLogText bounds a log field of untrusted text.
const maxLogText = 1000

// logText is a log field of untrusted text (a login name from the client, a
// UIDL from the server, a filter's reason): control and bidi characters are
// shown as <U+XXXX> (mailtext.Visible), so that a name cannot forge a line
// of a console log, drive the terminal it is read on, or reorder it.
func logText(s string) string { return mailtext.Visible(s, maxLogText) }

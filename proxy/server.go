package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/proxy/pop3"
)

// Server owns popgate's listeners and live sessions.
type Server struct {
	opts      Options
	log       zerolog.Logger
	mu        sync.Mutex
	lns       []*boundListener
	live      map[*session]struct{}
	done      chan struct{} // closed when Shutdown starts
	wg        sync.WaitGroup
	closed    bool
	accepting int // accept loops running
	ports     outPorts
	gen       *generation // the policy new sessions get
}

// generation is one configuration's policy. Sessions keep the generation
// they started under, so a reload never changes a running session; a
// superseded generation is retired (its scanners closed) once its last
// session has ended.
type generation struct {
	id        int64
	policyFor func(SessionInfo) (*SessionPolicy, error)
	retire    func()
	sessions  int
	current   bool
}

type boundListener struct {
	cfg   *Listener
	ln    net.Listener
	total int
	perIP map[netip.Addr]int
}

// New checks opts and returns a Server that is not yet listening.
func New(opts Options) (*Server, error) {
	if len(opts.Listeners) == 0 {
		return nil, errors.New("proxy: no listeners")
	}
	if opts.MaxSASLLine <= 0 {
		opts.MaxSASLLine = DefaultMaxSASLLine
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	for i := range opts.Listeners {
		l := &opts.Listeners[i]
		if l.Upstream == nil && !l.Transparent {
			return nil, fmt.Errorf("proxy: listener %q has no upstream", l.Name)
		}
		if l.Implicit && l.TLS == nil {
			return nil, fmt.Errorf("proxy: listener %q: implicit TLS without a certificate", l.Name)
		}
	}
	return &Server{opts: opts, log: opts.Logger, live: map[*session]struct{}{}, done: make(chan struct{}),
		gen: &generation{id: 1, policyFor: opts.PolicyFor, retire: opts.Retire, current: true}}, nil
}

// Listen binds every listener. On error nothing stays bound.
func (s *Server) Listen() error {
	for i := range s.opts.Listeners {
		cfg := s.opts.Listeners[i].withDefaults()
		var lc net.ListenConfig
		if cfg.Transparent && cfg.TProxy {
			lc.Control = setTransparent
		}
		ln, err := lc.Listen(context.Background(), "tcp", cfg.Address)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listener %s: %w", cfg.Name, err)
		}
		s.lns = append(s.lns, &boundListener{cfg: cfg, ln: ln, perIP: map[netip.Addr]int{}})
	}
	return nil
}

// Addrs returns the bound address of each listener, in configuration order.
func (s *Server) Addrs() []net.Addr {
	out := make([]net.Addr, len(s.lns))
	for i, l := range s.lns {
		out[i] = l.ln.Addr()
	}
	return out
}

// Serve accepts on every bound listener until Shutdown; it returns after
// all accept loops have stopped.
func (s *Server) Serve() error {
	var wg sync.WaitGroup
	errc := make(chan error, len(s.lns))
	for _, bl := range s.lns {
		wg.Add(1)
		s.mu.Lock()
		s.accepting++
		s.mu.Unlock()
		go func() {
			defer wg.Done()
			err := s.acceptLoop(bl)
			s.mu.Lock()
			s.accepting--
			s.mu.Unlock()
			errc <- err
		}()
		s.log.Info().Str("listener", bl.cfg.Name).Str("address", bl.ln.Addr().String()).
			Bool("implicit_tls", bl.cfg.Implicit).Bool("stls", bl.cfg.TLS != nil && !bl.cfg.Implicit).
			Bool("transparent", bl.cfg.Transparent).Msg("listening")
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) acceptLoop(bl *boundListener) error {
	var backoff time.Duration
	for {
		conn, err := bl.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return nil
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("listener %s: %w", bl.cfg.Name, err)
			}
			// EMFILE and friends: back off instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn().Err(err).Str("listener", bl.cfg.Name).Dur("retry_in", backoff).Msg("accept failed")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.admit(bl, conn)
	}
}

// admit applies the listener's total limit and starts the connection's
// goroutine, which reads a PROXY header where one is due, applies the per-IP
// limit to the real client, and runs the session.
func (s *Server) admit(bl *boundListener, conn net.Conn) {
	client := addrPort(conn.RemoteAddr())
	s.mu.Lock()
	reason := ""
	switch {
	case s.closed:
		reason = "shutting down"
	case bl.cfg.MaxConnections > 0 && bl.total >= bl.cfg.MaxConnections:
		reason = "too many connections"
		s.opts.Observer.Refused(bl.cfg.Name, RefusedTotal)
	}
	if reason != "" {
		s.mu.Unlock()
		s.log.Warn().Str("listener", bl.cfg.Name).Str("client", client.String()).Str("reason", reason).Msg("connection refused")
		go refuse(conn, reason, bl.cfg.Implicit)
		return
	}
	bl.total++
	sess := newSession(s, bl.cfg, conn, client)
	sess.gen = s.gen
	s.gen.sessions++
	s.live[sess] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.wg.Done()
		ok, refusal := s.accept(bl, sess)
		if ok {
			sess.run()
			s.mu.Lock()
			if bl.perIP[sess.client.Addr()]--; bl.perIP[sess.client.Addr()] <= 0 {
				delete(bl.perIP, sess.client.Addr())
			}
			s.mu.Unlock()
		}
		s.mu.Lock()
		delete(s.live, sess)
		bl.total--
		g := sess.gen
		g.sessions--
		retire := !g.current && g.sessions == 0
		s.mu.Unlock()
		if refusal != nil {
			// Only now: a client that reads the refusal and connects again
			// at once finds the slot free.
			refusal()
		}
		if retire && g.retire != nil {
			g.retire()
		}
	}()
}

// accept readies a new connection for its session: the PROXY header of a
// trusted load balancer, then the per-IP limit on the client it names. On
// false the connection is not served: it was closed, or refusal answers and
// closes it once the caller has given back its slot. A refused connection
// never became a session: its log line names no session, as admit's do.
func (s *Server) accept(bl *boundListener, sess *session) (bool, func()) {
	name := bl.cfg.Name
	if pp := bl.cfg.ProxyProtocol; pp != nil && pp.trusts(sess.client.Addr()) {
		if err := sess.readProxyHeader(); err != nil {
			s.log.Warn().Err(err).Str("listener", name).Str("client", sess.client.String()).
				Str("reason", "bad PROXY protocol header").Msg("connection refused")
			s.opts.Observer.Refused(name, RefusedProxyHeader)
			_ = sess.raw.Close()
			return false, nil
		}
	}
	client := sess.client.Addr()
	s.mu.Lock()
	full := bl.cfg.MaxConnectionsPerIP > 0 && bl.perIP[client] >= bl.cfg.MaxConnectionsPerIP
	if !full {
		bl.perIP[client]++
	}
	s.mu.Unlock()
	if full {
		const reason = "too many connections from your address"
		s.log.Warn().Str("listener", name).Str("client", sess.client.String()).Str("reason", reason).Msg("connection refused")
		s.opts.Observer.Refused(name, RefusedPerIP)
		return false, func() { refuse(sess.raw, reason, bl.cfg.Implicit) }
	}
	sess.obs = s.opts.Observer.Session(name)
	sess.raw.rxc, sess.raw.txc = sess.obs.ClientIn(), sess.obs.ClientOut()
	return true, nil
}

// refuse answers a connection popgate will not serve. On an implicit-TLS
// listener a plaintext line would be garbage to the client, so it just closes.
func refuse(conn net.Conn, reason string, implicit bool) {
	defer conn.Close()
	if implicit {
		return
	}
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = conn.Write([]byte(pop3.ErrLine("SYS/TEMP", reason+", try again later")))
}

// Shutdown stops accepting, lets sessions finish until ctx is done, then
// closes what is left. Closed sessions never send QUIT upstream, so the
// server deletes nothing (RFC 1939 §6).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	n := len(s.live)
	s.mu.Unlock()
	s.closeListeners()
	s.log.Info().Int("sessions", n).Msg("shutting down: waiting for sessions to finish")

	finished := make(chan struct{})
	go func() { s.wg.Wait(); close(finished) }()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	n = len(s.live)
	for sess := range s.live {
		sess.abort("shutdown")
	}
	s.mu.Unlock()
	s.log.Warn().Int("sessions", n).Msg("shutdown timeout: closed remaining sessions without QUIT")
	<-finished
	return ctx.Err()
}

func (s *Server) closeListeners() {
	for _, bl := range s.lns {
		_ = bl.ln.Close()
	}
}

// Ready says why the server cannot take new sessions, or nil when every
// listener is bound and accepting (for readiness probes: a draining server
// is not ready).
func (s *Server) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return errors.New("shutting down")
	case s.accepting < len(s.opts.Listeners):
		return fmt.Errorf("%d of %d listeners accepting", s.accepting, len(s.opts.Listeners))
	}
	return nil
}

// Sessions returns the number of live sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live)
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// Logger returns the server's logger, for the caller's own lifecycle logs.
func (s *Server) Logger() zerolog.Logger { return s.log }

// SetPolicy makes f the policy of sessions that start from now on, as
// configuration generation id. Running sessions keep theirs; retire (may be
// nil) is called once the previous generation has no session left.
func (s *Server) SetPolicy(id int64, f func(SessionInfo) (*SessionPolicy, error), retire func()) {
	s.mu.Lock()
	old := s.gen
	s.gen = &generation{id: id, policyFor: f, retire: retire, current: true}
	old.current = false
	idle := old.sessions == 0
	s.mu.Unlock()
	if idle && old.retire != nil {
		old.retire()
	}
}

// Generation returns the id of the configuration generation new sessions
// get.
func (s *Server) Generation() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen.id
}

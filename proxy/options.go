// Package proxy runs popgate's listeners and POP3 sessions: it accepts
// clients, dials their upstream server, relays the session faithfully and
// hands every downloaded message (RETR, TOP) to the filter chain the session
// was given. It knows nothing of HCL: the caller builds Options.
package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/proxy/pop3"
	"github.com/popgate/popgate/proxy/throttle"
)

// Defaults of Options, Listener, Upstream and ProxyProtocol for zero
// values, and of the configuration (package policy uses these). The line
// limits are POP3's own: pop3.MaxCommandLine and pop3.MaxStatusLine.
const (
	DefaultConnectTimeout     = 10 * time.Second // Upstream.ConnectTimeout
	DefaultUpstreamTimeout    = 60 * time.Second // Upstream.Timeout
	DefaultLoginTimeout       = 60 * time.Second // Listener.LoginTimeout
	DefaultIdleTimeout        = 10 * time.Minute // Listener.IdleTimeout: RFC 1939 §3's minimum
	DefaultProxyHeaderTimeout = 5 * time.Second  // ProxyProtocol.Timeout
	DefaultWriteTimeout       = 60 * time.Second // Options.WriteTimeout
	DefaultMaxSASLLine        = 16 << 10         // Options.MaxSASLLine
)

// TLSMode says how popgate talks TLS to an upstream server.
type TLSMode int

const (
	TLSNone     TLSMode = iota // plain POP3
	TLSStartTLS                // plain connect, then STLS (RFC 2595); refusing STLS is an error
	TLSImplicit                // TLS from the first byte (POP3S, port 995)
)

// Upstream is a POP3 server sessions are relayed to.
type Upstream struct {
	Name    string
	Address string // host:port
	TLSMode TLSMode
	// TLS verifies the server. Nil means the system roots and the host of
	// Address as server name; InsecureSkipVerify is honoured if set.
	TLS *tls.Config
	// RootCAs, when set, gives the roots to verify the server with at each
	// connection, in place of TLS.RootCAs: a CA bundle reloaded while
	// popgate runs applies to the next connection.
	RootCAs        func() *x509.CertPool
	ConnectTimeout time.Duration // dial and TLS handshake; default DefaultConnectTimeout
	// Timeout bounds the wait for each read from the server (a response
	// that keeps flowing never times out); default DefaultUpstreamTimeout.
	Timeout       time.Duration
	MaxStatusLine int // longest status line accepted, CRLF included; default pop3.MaxStatusLine
	// ProxyProtocol, 1 or 2, sends a PROXY protocol header of that version
	// first, carrying the client's address and the address it connected
	// to; 0 sends none.
	ProxyProtocol byte
	// LoginRequiresTLS keeps passwords off a connection to this server
	// that is not TLS (TLSMode TLSNone): USER, PASS and AUTH with a
	// mechanism that sends the password itself are refused with -ERR
	// [SYS/TEMP] and never sent; APOP and hashed SASL mechanisms go on.
	LoginRequiresTLS bool
}

// Listener is one address popgate accepts clients on.
type Listener struct {
	Name    string
	Address string
	// TLS holds the certificate offered to clients. With Implicit the
	// handshake starts at connect (POP3S); otherwise STLS is offered.
	TLS      *tls.Config
	Implicit bool
	// Upstream is where sessions go. With Transparent the address is taken
	// from the connection's original destination (SO_ORIGINAL_DST) and
	// Upstream, if set, supplies only TLS mode and timeouts.
	Upstream    *Upstream
	Transparent bool
	// TProxy, with Transparent, is for TPROXY interception (iptables or
	// nftables tproxy, with policy routing) instead of REDIRECT/DNAT: the
	// original destination is the connection's own local address, and the
	// listening socket gets IP_TRANSPARENT (CAP_NET_ADMIN) so it may accept
	// connections to addresses that are not the machine's.
	TProxy bool
	// Router, when set, routes sessions by login: popgate greets the
	// client itself and connects to the upstream Router picks once the
	// client names its login (USER, AUTH PLAIN, AUTH LOGIN), sending the
	// login name Router returns. APOP and other SASL mechanisms, whose
	// proofs are bound to the server's own greeting or challenge, are
	// refused. A Router error refuses the login, never dials anything.
	Router func(login string) (up *Upstream, user string, err error)
	// DestRouter, for transparent listeners, picks the upstream whose TLS
	// settings and timeouts apply to an original destination (the address
	// stays the destination's); nil or a nil result means Upstream.
	DestRouter func(dst netip.Addr) *Upstream

	MaxConnections      int           // all clients of this listener; 0 = unlimited
	MaxConnectionsPerIP int           // from one client address; 0 = unlimited
	LoginTimeout        time.Duration // client idle before login; default DefaultLoginTimeout; login within loginDeadlineFactor times it
	IdleTimeout         time.Duration // client idle after login; default DefaultIdleTimeout
	MaxCommandLine      int           // default pop3.MaxCommandLine

	// ProxyProtocol, when set, takes the client's address from a PROXY
	// protocol header (v1 or v2) on connections from trusted sources.
	ProxyProtocol *ProxyProtocol

	// LoginRequiresTLS refuses logins that would send a password in the
	// clear (USER, PASS, AUTH PLAIN and LOGIN, any mechanism but the
	// hashed ones) before the client's STLS, with -ERR [AUTH], and leaves
	// them out of CAPA; clients in PlaintextLoginFrom are exempt. APOP and
	// hashed SASL mechanisms stay usable.
	LoginRequiresTLS   bool
	PlaintextLoginFrom []netip.Prefix
	// LoginThrottle limits failed logins (Options.Throttle holds the
	// counts); nil: no throttling.
	LoginThrottle *throttle.Limits
}

// ProxyProtocol says whom a listener believes PROXY protocol headers from.
// A connection from a Trusted address must start with a header (its LOCAL
// command, as in load balancer health checks, keeps the connection's own
// addresses); its source address then is the client's everywhere: logs,
// per-IP limits, policy matching, a PROXY header sent upstream. Anyone else
// is served as a direct client and refused if it sends a header.
type ProxyProtocol struct {
	Trusted []netip.Prefix
	Timeout time.Duration // for the header; default DefaultProxyHeaderTimeout
}

func (p *ProxyProtocol) trusts(a netip.Addr) bool { return inPrefixes(a, p.Trusted) }

func inPrefixes(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// SessionInfo describes a session at the moment its filter chain is chosen.
type SessionInfo struct {
	ID       string
	Listener string
	Client   netip.AddrPort
	Upstream string // upstream name, or the address in transparent mode
	User     string // login name as the client gave it
}

// Options configures a Server.
type Options struct {
	Listeners []Listener
	Logger    zerolog.Logger
	// PolicyFor returns the policy of a session once its login succeeded.
	// An error refuses the session: the client gets -ERR and both
	// connections close (no QUIT). Nil, or a policy with an empty chain,
	// relays messages without spooling them.
	PolicyFor func(SessionInfo) (*SessionPolicy, error)
	// Retire (may be nil) is called once PolicyFor's generation has been
	// replaced by SetPolicy and has no session left, as SetPolicy's retire
	// is for later generations.
	Retire func()
	// MaxSASLLine bounds one line of an AUTH exchange (RFC 5034 allows
	// responses longer than a command line); default DefaultMaxSASLLine.
	MaxSASLLine int
	// WriteTimeout bounds each write to a client or upstream; default
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// Observer is told what sessions do (metrics); nil means nobody.
	Observer Observer
	// Throttle holds the failed-login counts of every listener with a
	// LoginThrottle; nil means none is throttled.
	Throttle *throttle.Throttle
}

// SessionPolicy is what popgate does with the messages of one session.
type SessionPolicy struct {
	Name  string
	Chain *filters.Chain
	// FilterTOP makes TOP fetch the whole message, filter it, and serve
	// the first lines of the result (cached per session), so TOP and RETR
	// show the same filtered message. Otherwise TOP is relayed unfiltered.
	FilterTOP bool
	// KeepAlive, when set, sends +OK and then a header field every
	// KeepAlive while a slow chain runs, so clients do not time out on big
	// scans. If the chain then refuses or defers the message, the
	// connection is closed without a terminator: the client keeps the
	// message and retries. Zero sends nothing until the chain is done.
	KeepAlive time.Duration
	// TOPCacheSize bounds the filtered messages a session keeps: after TOP
	// until the RETR that usually follows, and those whose original went
	// to quarantine (so it goes there once); default 16.
	TOPCacheSize int
	// Memory, when set, remembers each message's verdict across sessions,
	// restarts and instances (see Memory).
	Memory *Memory
}

// loginDeadlineFactor times LoginTimeout is the most a client may take to
// log in (3 minutes by default, as in Dovecot): the idle limit alone lets a
// client that sends a byte or a NOOP now and then hold a session, and its
// per-IP slot, forever.
const loginDeadlineFactor = 3

func (u *Upstream) withDefaults() *Upstream {
	c := *u
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultUpstreamTimeout
	}
	if c.MaxStatusLine <= 0 {
		c.MaxStatusLine = pop3.MaxStatusLine
	}
	if c.TLSMode != TLSNone {
		if c.TLS == nil {
			c.TLS = &tls.Config{} // system roots, server name from Address
		}
		c.TLS = hardenTLS(c.TLS)
	}
	return &c
}

func (l *Listener) withDefaults() *Listener {
	c := *l
	if c.LoginTimeout <= 0 {
		c.LoginTimeout = DefaultLoginTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxCommandLine <= 0 {
		c.MaxCommandLine = pop3.MaxCommandLine
	}
	if c.TLS != nil {
		c.TLS = hardenTLS(c.TLS)
	}
	if c.Upstream != nil {
		c.Upstream = c.Upstream.withDefaults()
	} else {
		c.Upstream = (&Upstream{Name: "transparent"}).withDefaults()
	}
	return &c
}

// modernCipherSuites are the TLS 1.2 cipher suites popgate accepts on both
// sides: ECDHE key exchange with an AEAD cipher (Mozilla's "intermediate"
// profile, without DHE, which Go does not implement). Go's own default list
// also has the ECDHE CBC-SHA1 suites, and a GODEBUG setting can bring back
// RSA key exchange and 3DES; an explicit list rules out both. TLS 1.3
// suites are all AEAD and not configurable.
var modernCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// hardenTLS returns a copy of c that speaks TLS 1.2 or later and, unless c
// names its own, only modernCipherSuites.
func hardenTLS(c *tls.Config) *tls.Config {
	c = c.Clone()
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	if c.CipherSuites == nil {
		c.CipherSuites = modernCipherSuites
	}
	return c
}

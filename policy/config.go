// Package policy turns popgate's HCL configuration into a validated,
// immutable Config (what the configuration says), and reports every problem
// it finds as an hcl.Diagnostic with a precise source range.
//
// Decoding has no side effects: it starts no goroutine, opens no socket and
// writes nothing (it reads the files the configuration names, such as
// certificates and file() arguments, to check them). `popgate check`,
// `--explain` and the fuzzer run it freely; package policy/generation builds
// the running parts from a Config.
//
// # Loading
//
// Load reads one file, or every *.hcl file of a directory (in name order,
// merged as if they were one file). LoadBytes does the same for a file held in
// memory. Both return every error and warning found in one pass; callers check
// diags.HasErrors() and print the diagnostics with WriteDiagnostics.
//
// # Two-phase decoding
//
// gohcl checks the shape of the file first; then every value is evaluated
// and validated with its own range. Scanner and filter blocks are decoded by
// the kinds registered in package filters (each kind checks its own
// settings) into FilterSpec and ScannerSpec values.
//
// # Expressions
//
// Attribute values may call two functions:
//
//	env("VAR")            the value of environment variable VAR; an error if unset
//	env("VAR", "default") the value of VAR, or "default" if VAR is unset
//	file("path")          the contents of a regular file (at most 1 MiB of UTF-8),
//	                      with one trailing newline removed; a relative path is
//	                      relative to the directory of the configuration file
//
// Sizes are strings such as "25MB" (see filters.ParseSize) and durations are strings
// such as "1h30m" (see time.ParseDuration) or, in whole days, "30d".
//
// # Paths
//
// Relative file and directory paths in attributes (cert_file, key_file,
// ca_file, log file, spool dir) are relative to the directory of the
// configuration file, like file(); Config holds them already joined with that
// directory.
package policy

import (
	"net/netip"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine/release"

	"github.com/hashicorp/hcl/v2"
)

// Config is a loaded and validated configuration. It is built once by Load or
// LoadBytes and must not be modified afterwards: it may be shared by many
// goroutines, and a reload builds a new Config instead of changing the old one.
type Config struct {
	// Listeners in the order they appear in the configuration.
	Listeners []*Listener
	// Upstreams by block name.
	Upstreams map[string]*Upstream
	Log       Log
	Spool     Spool
	// ShutdownTimeout is how long a draining proxy waits for sessions to end
	// (top-level attribute shutdown_timeout, default "30s"; "0s" closes at
	// once).
	ShutdownTimeout time.Duration

	// Scanners holds the decoded scanner blocks in file order, Filters the
	// decoded filter blocks by name, Policies the policy blocks in file
	// order, Quarantine the quarantine block (nil if none).
	Scanners   []*filters.ScannerSpec
	Filters    map[string]*filters.FilterSpec
	Policies   []*Policy
	Quarantine *Quarantine
	// Routes in file order (see RouteLogin, RouteDestination).
	Routes []*Route

	// Metrics is the metrics block, nil when there is none.
	Metrics *Metrics
	// Memory is where the message memory lives (the memory block, or its
	// embedded default); nil when it is off.
	Memory *Memory
	// Deliveries are the delivery blocks by name; Notify is the notify
	// block (nil without one).
	Deliveries map[string]*Delivery
	Notify     *Notify
	// Release says, by filter name, who may release what the filter held
	// (attribute release of each filter block, or its type's default).
	Release map[string]release.Permission
	// Signed says, by filter name, what becomes of a change of the filter
	// that would break a signature of the message (attribute signed of
	// each filter block: "change", the default, "withhold" or "keep").
	Signed map[string]filters.Signed

	// Files maps each file name used in diagnostics to its parsed file, for
	// WriteDiagnostics. It is set even when loading fails.
	Files map[string]*hcl.File

	baseDir string

	policyIndex   *index
	defaultPolicy *Policy
	routeIndex    *index
}

// Listener is one `listener "NAME"` block: where popgate accepts clients.
type Listener struct {
	// Name is the block label.
	Name string
	// Address is host:port to listen on (attribute address, required). An
	// empty host means every interface; port 0 picks a free port.
	Address string
	// Upstream names the upstream block sessions go to (attribute upstream).
	// It is required unless Transparent is set.
	Upstream string
	// Transparent makes sessions go to the original destination of
	// REDIRECTed connections (SO_ORIGINAL_DST). Attribute transparent,
	// default false.
	Transparent bool
	// TProxy (attribute tproxy, default false) is for interception by
	// TPROXY rules instead of REDIRECT: the original destination is the
	// connection's local address, and the listening socket is made
	// IP_TRANSPARENT (which needs CAP_NET_ADMIN). Only with Transparent.
	TProxy bool
	// TLS is nil when the listener speaks plain POP3 only.
	TLS *ListenerTLS
	// MaxConnections limits concurrent sessions (attribute max_connections,
	// default 1000, at least 1).
	MaxConnections int
	// MaxConnectionsPerIP limits concurrent sessions from one client address
	// (attribute max_connections_per_ip, default 50, at least 1).
	MaxConnectionsPerIP int
	// LoginTimeout is the idle time allowed before authentication
	// (attribute login_timeout, default "60s").
	LoginTimeout time.Duration
	// IdleTimeout is the idle time allowed after authentication (attribute
	// idle_timeout, default "10m"). Values below ten minutes are accepted
	// with a warning: RFC 1939 §3 requires at least ten minutes.
	IdleTimeout time.Duration
	// MaxCommandLine is the longest client command line accepted, in octets
	// including CRLF (attribute max_command_line, default 255 as in RFC 2449
	// §4, between 64 and 65536).
	MaxCommandLine int
	// ProxyProtocol, when set, makes the listener read a PROXY protocol
	// header (v1 or v2) from trusted sources (block proxy_protocol).
	ProxyProtocol *ProxyProtocol
	// LoginRouting lists the upstreams a login may pick itself with a
	// "#NAME" (or "@NAME") suffix (attribute login_routing); empty: off.
	LoginRouting []string
	// LoginRequiresTLS refuses logins that send the password in the clear
	// (USER/PASS, AUTH PLAIN and LOGIN) before STLS, and leaves them out
	// of CAPA (attribute login_requires_tls, default false); APOP and
	// hashed SASL mechanisms stay usable. Clients in PlaintextLoginFrom
	// (attribute plaintext_login_from) are exempt.
	LoginRequiresTLS   bool
	PlaintextLoginFrom []netip.Prefix
	// LoginThrottle slows down and then refuses failed logins (block
	// login_throttle; its defaults without one); nil: off.
	LoginThrottle *LoginThrottle
	// Range is the block header (`listener "NAME"`).
	Range hcl.Range
}

// ListenerTLS is the `tls` block of a listener. Unless Implicit is set the
// listener speaks plain POP3 and offers STLS; with Implicit the TLS handshake
// comes first (POP3S, port 995 style). Each certificate and key are checked
// to exist and to form a valid pair when the configuration is loaded; while
// popgate runs they are reloaded when their files change.
type ListenerTLS struct {
	// Certificates are the block's cert_file and key_file, then each of its
	// certificate blocks, in order (at least one). A client naming a server
	// (SNI) gets the first whose DNS names match; the first one is the
	// default.
	Certificates []KeyPair
	Implicit     bool // attribute implicit, default false
}

// KeyPair is a certificate chain file and its private key file (PEM):
// attributes cert_file and key_file, both required.
type KeyPair struct {
	CertFile string
	KeyFile  string
}

// Upstream TLS modes.
const (
	UpstreamTLSNone     = "none"
	UpstreamTLSStartTLS = "starttls"
	UpstreamTLSImplicit = "implicit"
)

// Upstream is one `upstream "NAME"` block: a POP3 server popgate connects to.
type Upstream struct {
	// Name is the block label.
	Name string
	// Address is host:port of the server (attribute address, required).
	Address string
	// TLS is UpstreamTLSNone, UpstreamTLSStartTLS or UpstreamTLSImplicit
	// (attribute tls, default "none").
	TLS string
	// CAFile is a PEM bundle of trusted roots (attribute ca_file); empty
	// means the system roots.
	CAFile string
	// ServerName overrides the name the server certificate is checked
	// against (attribute server_name); empty means the host of Address.
	ServerName string
	// InsecureSkipVerify is set by `tls_verify = false` (with a warning).
	InsecureSkipVerify bool
	// ClientCertificate, when set, is presented to a server that asks for
	// one (attributes cert_file and key_file).
	ClientCertificate *KeyPair
	// ConnectTimeout bounds dialing and the TLS handshake (attribute
	// connect_timeout, default "10s").
	ConnectTimeout time.Duration
	// Timeout bounds the wait for each response (attribute timeout, default
	// "60s").
	Timeout time.Duration
	// MaxStatusLine is the longest status line accepted from the server, in
	// octets including CRLF (attribute max_status_line, default 512 as in
	// RFC 2449 §4, between 64 and 65536).
	MaxStatusLine int
	// ProxyProtocol is ProxyProtocolNone, ProxyProtocolV1 or
	// ProxyProtocolV2: the PROXY header sent to the server before anything
	// else, carrying the client's address (attribute proxy_protocol,
	// default "none"; Dovecot needs haproxy_trusted_networks).
	ProxyProtocol string
	// LoginRequiresTLS (attribute login_requires_tls, default false)
	// keeps passwords off a connection to this server that is not TLS:
	// USER/PASS and AUTH PLAIN or LOGIN are refused and never sent; APOP
	// and hashed SASL mechanisms go on.
	LoginRequiresTLS bool
	// Release is the release block: how released originals get back into
	// this upstream's mailboxes; nil means they cannot.
	Release *UpstreamRelease
	// Range is the block header (`upstream "NAME"`).
	Range hcl.Range
}

// ProxyProtocol is the proxy_protocol block of a listener. A connection
// from a Trusted address must start with a PROXY header (v1 or v2), whose
// source address then stands for the client everywhere: logs, limits,
// policy matching. A connection from anywhere else is served as it is, and
// refused if it sends a PROXY header.
type ProxyProtocol struct {
	// Trusted lists the load balancers' addresses and prefixes (attribute
	// trusted, required, at least one).
	Trusted []netip.Prefix
	// Timeout bounds the wait for the header (attribute timeout, default
	// "5s").
	Timeout time.Duration
}

// Upstream PROXY protocol versions.
const (
	ProxyProtocolNone = "none"
	ProxyProtocolV1   = "v1"
	ProxyProtocolV2   = "v2"
)

// Metrics is the metrics block: an HTTP listener with /metrics
// (Prometheus), /healthz and /readyz.
type Metrics struct {
	// Address is host:port to listen on (attribute address, required).
	Address string
	// AdminToken enables the administrator API on this listener: the
	// bearer token read from attribute admin_token_file.
	AdminToken string
}

// Log is the `log` block.
type Log struct {
	Level  string // debug | info | warn | error; default info
	Format string // json | console; default json
	File   string // "" means standard error
}

// Spool is the `spool` block: where message bodies are held while filters
// run.
type Spool struct {
	// Dir holds spool files of bodies larger than MemoryLimit (attribute dir,
	// default os.TempDir()). It must be an existing directory.
	Dir string
	// MemoryLimit is the largest body kept in memory, in bytes (attribute
	// memory_limit, a size, default "1MB" = 1000000 bytes).
	MemoryLimit int64
}

// EvalContext returns a new evaluation context with the functions available
// in this configuration (env, file; file relative to the configuration's
// directory), for decoding the bodies of blocks that other packages own (scanner, filter). Each call returns a fresh
// context, so a caller may extend it freely.
func (c *Config) EvalContext() *hcl.EvalContext {
	return newEvalContext(c.baseDir)
}

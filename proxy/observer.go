package proxy

import (
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/proxy/pop3"
)

// Observer is told what the server's sessions do, for metrics. Its methods
// are called from session goroutines: they must be cheap and never block.
// Every label it is given is bounded by the configuration (listener,
// upstream, policy and filter names) or by a fixed set (commands, results),
// never a user name or a client address.
type Observer interface {
	// Session is called when a connection is accepted on listener; the
	// SessionObserver it returns sees that session alone.
	Session(listener string) SessionObserver
	// Refused counts a connection turned away before it became a session:
	// limit is RefusedTotal, RefusedPerIP or RefusedProxyHeader.
	Refused(listener, limit string)
}

// Reasons a connection is refused before it becomes a session.
const (
	RefusedTotal       = "total"        // the listener's max_connections
	RefusedPerIP       = "per_ip"       // max_connections_per_ip
	RefusedProxyHeader = "proxy_header" // a missing, malformed or untrusted PROXY header
)

// Adder is a byte counter; a Prometheus counter is one.
type Adder interface{ Add(float64) }

// SessionObserver sees one session.
type SessionObserver interface {
	// Counters for the bytes of each direction; Add is called per read or
	// write.
	ClientIn() Adder
	ClientOut() Adder
	UpstreamIn() Adder
	UpstreamOut() Adder
	// Command counts one client command: a name from KnownCommands, else
	// "other".
	Command(name string)
	// UpstreamConnected reports a connection attempt to upstream (a name,
	// or "transparent" for an original destination).
	UpstreamConnected(upstream string, took time.Duration, err error)
	// Message reports a filtered message.
	Message(policy string, res *filters.Result)
	// Download reports where the time of one filtered download (RETR, or
	// TOP under filter_top) went, once its answer is written.
	Download(policy string, t DownloadTimes)
	// Memory reports a use of the message memory: op is MemoryLookup,
	// MemoryWrite or MemoryDelete, result one of the Memory* results.
	Memory(op, result string, took time.Duration)
	// Login counts a login attempt: one of the Login* results.
	Login(result string)
	// Throttled counts an attempt refused by a lock of the login throttle;
	// Lockout counts a lock that began. scope is throttle.ScopeAddress or
	// throttle.ScopeName (never the address or the name itself).
	Throttled(scope string)
	Lockout(scope string)
	// Ended is the session's end: one of the Session* results.
	Ended(result string)
}

// DownloadTimes splits a filtered download's time at its boundaries: the
// command sent upstream, the status line back, the message's last byte,
// the chain's result, and the answer written to the client. It shows
// whether a slow download waited for the server, the scanners and the
// quarantine, or the client.
type DownloadTimes struct {
	// UpstreamWait runs from the command sent upstream to the server's
	// status line.
	UpstreamWait time.Duration
	// UpstreamRead runs from the status line to the message's last byte
	// spooled (a scanner that starts early reads the message meanwhile).
	UpstreamRead time.Duration
	// Filtering runs from the last byte to the chain's result: scanners'
	// verdicts, the filters, and the original's durable quarantine write.
	Filtering time.Duration
	// Delivery runs from the result to the answer written to the client
	// (flushed unless the client pipelined more commands).
	Delivery time.Duration
}

// Login results, as Login reports them.
const (
	LoginOK        = "ok"        // the server accepted the credentials
	LoginFailed    = "failed"    // the server refused them
	LoginThrottled = "throttled" // refused by the login throttle, never sent
	LoginPlaintext = "plaintext" // refused: a password in the clear, never sent
)

// Message memory operations and their results, as Memory reports them.
const (
	MemoryLookup = "lookup"
	MemoryWrite  = "write"
	MemoryDelete = "delete"

	MemoryHit     = "hit"     // a record served the message: no scan
	MemoryMiss    = "miss"    // no record (or none for this size or chain)
	MemoryRescan  = "rescan"  // a record too old, or made under older signatures
	MemoryChanged = "changed" // the upstream's message differs from the record's
	MemoryOK      = "ok"
	MemoryError   = "error" // the store failed or timed out: a rescan, never a pass
)

// Session results, as Ended reports them.
const (
	SessionQuit                = "quit"                 // the client QUIT
	SessionClientClosed        = "client_closed"        // the client went away without QUIT
	SessionTimeout             = "timeout"              // the client idled too long
	SessionClientError         = "client_error"         // TLS handshake failure, abuse, bad PROXY header
	SessionUpstreamUnavailable = "upstream_unavailable" // connecting, TLS or greeting failed
	SessionUpstreamError       = "upstream_error"       // the server broke off or broke the protocol
	SessionPolicyRefused       = "policy_refused"       // no policy for the login
	SessionShutdown            = "shutdown"             // closed by a shutdown
	SessionError               = "error"                // anything else
)

// KnownCommands returns the command names counted under their own name:
// the POP3 commands popgate knows (pop3.Commands), in a new slice.
func KnownCommands() []string { return pop3.Commands() }

// commandLabel bounds command names to KnownCommands and "other".
func commandLabel(name string) string {
	if pop3.IsCommand(name) {
		return name
	}
	return "other"
}

// nopObserver is the Observer of a server without one.
type nopObserver struct{}

type nopAdder struct{}

func (nopAdder) Add(float64) {}

func (nopObserver) Session(string) SessionObserver { return nopObserver{} }
func (nopObserver) Refused(string, string)         {}
func (nopObserver) ClientIn() Adder                { return nopAdder{} }
func (nopObserver) ClientOut() Adder               { return nopAdder{} }
func (nopObserver) UpstreamIn() Adder              { return nopAdder{} }
func (nopObserver) UpstreamOut() Adder             { return nopAdder{} }
func (nopObserver) Command(string)                 {}
func (nopObserver) UpstreamConnected(string, time.Duration, error) {
}
func (nopObserver) Message(string, *filters.Result)      {}
func (nopObserver) Download(string, DownloadTimes)       {}
func (nopObserver) Memory(string, string, time.Duration) {}
func (nopObserver) Ended(string)                         {}
func (nopObserver) Login(string)                         {}
func (nopObserver) Throttled(string)                     {}
func (nopObserver) Lockout(string)                       {}

var (
	_ Observer        = nopObserver{}
	_ SessionObserver = nopObserver{}
)

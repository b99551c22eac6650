// Package clamav scans messages with ClamAV's clamd over the INSTREAM
// protocol, and provides the "clamav" scanner and filter types of the policy
// file:
//
//	scanner "clamav" "local" {
//	  addresses       = ["tcp://127.0.0.1:3310", "unix:///run/clamav/clamd.ctl"]
//	  timeout         = "30s"   # ceiling of one scan's deadline
//	  max_size        = "25MB"  # mirror clamd's StreamMaxLength (or stay below it)
//	  max_concurrent  = 8
//	  health_interval = "10s"
//	  probe_stream_max = true   # check clamd's StreamMaxLength at start (probe.go)
//	}
//	filter "clamav" "av" {
//	  scanner  = "local"
//	  scan     = "message"      # message | parts | both (parts.go)
//	  oversize = "tempfail"     # tempfail | pass-with-tag | reject | quarantine
//	}
//
// The package fails closed: a message is called clean only when a clamd
// answered exactly "stream: OK" after receiving the whole message, in full,
// followed by the end-of-stream marker. Every other outcome (a read error on
// the message, a write error, a timeout, a cancelled context, clamd closing
// the connection, an ERROR or unparsable reply, a reply that comes before the
// end of the stream) is an error, and the filter chain applies its on_error.
//
// The protocol is spoken here rather than through
// github.com/dutchcoders/go-clamd, whose defects cannot be closed from
// outside; docs/CLAMAV.md says why, defect by defect.
package clamav

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/backends"
)

// Defaults of Config.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultMinTimeout     = 5 * time.Second
	DefaultThroughput     = 1000 * 1000 // bytes per second: 1 MB/s
	DefaultMaxSize        = 25 * 1000 * 1000
	DefaultMaxConcurrent  = 8
	DefaultHealthInterval = 10 * time.Second
	DefaultDialTimeout    = 3 * time.Second
	DefaultPingTimeout    = 5 * time.Second
	// DefaultMaxAttempts caps Config.MaxAttempts when it is 0: a scan is
	// tried on at most this many backends (fewer when fewer are configured).
	DefaultMaxAttempts = 3
)

// Config configures a Scanner. Zero values mean the defaults above.
type Config struct {
	// Addresses are the clamd backends, "tcp://host:port" or
	// "unix:///absolute/path". At least one is required.
	Addresses []string
	// Timeout is the ceiling of a scan's deadline (see ScanTimeout).
	Timeout time.Duration
	// MinTimeout is the floor of a scan's deadline; capped at Timeout.
	MinTimeout time.Duration
	// Throughput is the slowest scan rate, in bytes per second, that is
	// still considered progress: a scan gets MinTimeout plus size/Throughput.
	Throughput int64
	// MaxSize is the largest message sent to clamd, in bytes. It must not
	// be larger than clamd's StreamMaxLength. A larger message is not
	// scanned at all (not even partly) and is reported as ErrOversize.
	MaxSize int64
	// MaxConcurrent bounds the scans in flight on this Scanner.
	MaxConcurrent int
	// HealthInterval is the period of the health checks (PING).
	HealthInterval time.Duration
	// PingTimeout bounds one health check; 0 means the smaller of
	// DefaultPingTimeout and HealthInterval.
	PingTimeout time.Duration
	// DialTimeout bounds connecting to a backend (also capped by the scan's
	// deadline).
	DialTimeout time.Duration
	// MaxAttempts bounds the backends one scan is tried on after
	// connection errors; 0 means min(len(Addresses), DefaultMaxAttempts).
	MaxAttempts int
	// ProbeStreamMax checks, once per backend after its first good health
	// check, in the background, that clamd takes a stream of MaxSize bytes
	// (its StreamMaxLength is not below it): an error in the log and the
	// backend's Problem when not. The policy file's probe_stream_max,
	// which is true unless set to false; false here (the zero value).
	ProbeStreamMax bool
	// ReuseConnections keeps connections to clamd open between scans, in
	// clamd sessions (IDSESSION; session.go), at most MaxConcurrent idle
	// per backend and for at most 20 s each. The policy file's
	// reuse_connections, which is true unless set to false; false here
	// (the zero value): a connection per scan, which clamd closes after
	// its reply.
	ReuseConnections bool
}

var (
	// ErrOversize: the message is larger than MaxSize, so it was not
	// scanned (no byte of it was sent). It is never a clean verdict; the
	// filter applies its oversize action.
	ErrOversize = errors.New("clamav: message larger than max_size, not scanned")
	// ErrSizeLimit: clamd refused the stream with "INSTREAM size limit
	// exceeded": its StreamMaxLength is smaller than this scanner's
	// max_size (a misconfiguration). No verdict.
	ErrSizeLimit = errors.New("clamav: clamd's INSTREAM size limit exceeded (clamd's StreamMaxLength is below max_size)")
	// ErrClosed: Scan was called after Close, or Close ended the wait for a
	// scan slot.
	ErrClosed = errors.New("clamav: scanner closed")
	// ErrNoVerdict wraps the errors of all attempts when no backend gave a
	// verdict.
	ErrNoVerdict = errors.New("clamav: no verdict")
)

// limitsExceeded starts the name clamd reports, with AlertExceedsMax yes,
// for a stream it did not scan in full because of one of its limits:
// "Heuristics.Limits.Exceeded.MaxFileSize", "….MaxRecursion", ….
const limitsExceeded = "Heuristics.Limits.Exceeded."

// LimitsError is clamd's answer that it did not scan all of a stream (a
// file in an archive nested deeper than MaxRecursion, larger than
// MaxFileSize, past MaxScanSize or MaxFiles, …): what clamd with
// AlertExceedsMax yes reports as "Heuristics.Limits.Exceeded.* FOUND".
// It is neither infected nor clean: the filter applies its oversize
// action. (Without AlertExceedsMax clamd answers "OK" instead, which
// popgate cannot tell from clean: docs/CLAMAV.md.)
type LimitsError struct {
	Backend   string
	Signature string // "Heuristics.Limits.Exceeded.MaxRecursion"
}

func (e *LimitsError) Error() string {
	return fmt.Sprintf("clamav: %s: clamd did not scan all of the stream: %s", e.Backend, e.Signature)
}

// Result is a verdict from clamd.
type Result struct {
	Infected  bool
	Signature string // clamd's name for what it found; "" when clean
	Backend   string // the address (as configured) that gave the verdict
	// Duration is the whole Scan call: waiting for a slot, failed attempts
	// on other backends, and the scan that gave the verdict.
	Duration time.Duration
}

// Scanner scans messages on a set of clamd backends, with health checks,
// failover, a bound on concurrent scans and deadlines. It is safe for
// concurrent use. NewScanner starts one goroutine (the health checker);
// Close stops it.
type Scanner struct {
	cfg    Config
	logger zerolog.Logger
	onScan atomic.Pointer[func(time.Duration, error)]
	pool   *backends.Pool[*backend]
	slots  chan struct{}

	// The StreamMaxLength probes (probe.go): Close cancels ctx and waits.
	ctx    context.Context
	cancel context.CancelFunc
	probes sync.WaitGroup
}

// backend is one clamd address.
type backend struct {
	backends.Health        // Addr: as configured, for results and logs; version: its last VERSION reply
	network         string // "tcp" or "unix"
	address         string // host:port or socket path

	probe   atomic.Int32           // probeNone, probeRunning, probeDone
	problem atomic.Pointer[string] // what the probe found wrong, if anything

	sessions sessions // idle connections (Config.ReuseConnections)
}

func (s *Scanner) log() *zerolog.Logger { return &s.logger }

// OnScan makes f see the duration and error of every Scan (metrics); nil
// stops it. f must be cheap and must not block.
func (s *Scanner) OnScan(f func(time.Duration, error)) {
	if f == nil {
		s.onScan.Store(nil)
		return
	}
	s.onScan.Store(&f)
}

var _ filters.Scanner = (*Scanner)(nil)

// Backends returns the state of every backend, in configuration order,
// with the problem the StreamMaxLength probe found on it, if any.
func (s *Scanner) Backends() []filters.Backend {
	out := s.pool.Backends()
	for i, b := range s.pool.Members() {
		if p := b.problem.Load(); p != nil {
			out[i].Problem = *p
		}
	}
	return out
}

// Version names the signature versions the backends last reported (their
// VERSION replies, distinct, sorted, joined by "; "): the message memory
// rescans what was scanned under others. "" until a health check ran.
func (s *Scanner) Version() string { return s.pool.Version() }

// Check pings every backend now (filters.Scanner).
func (s *Scanner) Check(ctx context.Context) error { return s.Ping(ctx) }

// ParseAddress splits a clamd address, "tcp://host:port" or
// "unix:///absolute/path", into the network and address for net.Dial.
func ParseAddress(s string) (network, address string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("%q is not a clamd address: want tcp://host:port or unix:///absolute/path", s)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", "", fmt.Errorf("%q is not a clamd address: want tcp://host:port or unix:///absolute/path, nothing more", s)
	}
	switch u.Scheme {
	case "tcp":
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" || (u.Path != "" && u.Path != "/") {
			return "", "", fmt.Errorf("%q is not a clamd TCP address: want tcp://host:port", s)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", "", fmt.Errorf("%q: the port must be a number from 1 to 65535", s)
		}
		return "tcp", u.Host, nil
	case "unix":
		if u.Host != "" || !path.IsAbs(u.Path) || path.Clean(u.Path) == "/" {
			return "", "", fmt.Errorf("%q is not a clamd socket address: want unix:///absolute/path (three slashes)", s)
		}
		return "unix", u.Path, nil
	}
	return "", "", fmt.Errorf("%q is not a clamd address: the scheme must be tcp:// or unix://", s)
}

// withDefaults fills in the zero fields of cfg.
func (cfg Config) withDefaults() Config {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MinTimeout <= 0 {
		cfg.MinTimeout = DefaultMinTimeout
	}
	cfg.MinTimeout = min(cfg.MinTimeout, cfg.Timeout)
	if cfg.Throughput <= 0 {
		cfg.Throughput = DefaultThroughput
	}
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = DefaultMaxConcurrent
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = DefaultHealthInterval
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = min(DefaultPingTimeout, cfg.HealthInterval)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = min(len(cfg.Addresses), DefaultMaxAttempts)
	}
	return cfg
}

// NewScanner checks cfg and starts the health checker (the first round of
// PINGs runs at once, in the background: NewScanner never waits for clamd).
// Until a backend has failed, it counts as healthy.
func NewScanner(cfg Config, log zerolog.Logger) (*Scanner, error) {
	if len(cfg.Addresses) == 0 {
		return nil, errors.New("clamav: no clamd address")
	}
	cfg.Addresses = append([]string(nil), cfg.Addresses...)
	cfg = cfg.withDefaults()
	s := &Scanner{
		cfg:    cfg,
		logger: log,
		slots:  make(chan struct{}, cfg.MaxConcurrent),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	var members []*backend
	seen := make(map[string]bool)
	for _, a := range cfg.Addresses {
		network, address, err := ParseAddress(a)
		if err != nil {
			return nil, fmt.Errorf("clamav: %w", err)
		}
		if seen[network+" "+address] {
			return nil, fmt.Errorf("clamav: address %q listed twice", a)
		}
		seen[network+" "+address] = true
		members = append(members, &backend{Health: backends.Health{Addr: a}, network: network, address: address})
	}
	s.pool = backends.New("clamd", log, members, cfg.HealthInterval, s.check)
	return s, nil
}

// MaxSize is the largest message Scan sends to clamd.
func (s *Scanner) MaxSize() int64 { return s.cfg.MaxSize }

// Config returns the configuration in use, defaults filled in.
func (s *Scanner) Config() Config {
	c := s.cfg
	c.Addresses = append([]string(nil), c.Addresses...)
	return c
}

// Healthy is the number of backends that answered their last health check
// (or scan), or have not been checked yet.
func (s *Scanner) Healthy() int { return s.pool.Healthy() }

// ScanTimeout is the deadline a scan of size bytes gets, once it holds a
// slot: MinTimeout + size/Throughput, capped at Timeout. With the defaults
// (5 s, 1 MB/s, 30 s), a 100 KB message gets 5.1 s and anything from 25 MB
// up gets 30 s. A negative size (unknown) gets Timeout. The deadline covers
// every attempt of the scan (dial, send, clamd's scan, reply), failovers
// included.
func (s *Scanner) ScanTimeout(size int64) time.Duration {
	return scanTimeout(s.cfg, size)
}

func scanTimeout(cfg Config, size int64) time.Duration {
	if size < 0 {
		return cfg.Timeout
	}
	extra := float64(size) / float64(cfg.Throughput) * float64(time.Second)
	if extra >= float64(cfg.Timeout) {
		return cfg.Timeout
	}
	return min(cfg.MinTimeout+time.Duration(extra), cfg.Timeout)
}

// Close stops the health checker and a StreamMaxLength probe, and waits
// for them; later Scans, and Scans still waiting for a slot, return
// ErrClosed. Scans already talking to clamd
// run to their end (each is bounded by its deadline). Close is idempotent
// and returns nil.
func (s *Scanner) Close() error {
	s.cancel()
	s.pool.Close()
	s.probes.Wait()
	for _, b := range s.pool.Members() {
		b.sessions.close()
	}
	return nil
}

// ScanReader sends size bytes read from r to clamd and returns its verdict. size
// must be the exact length of what r yields: a reader that yields fewer or
// more bytes, or fails, gives an error (the stream is then abandoned without
// its end marker, so clamd never scans the part it got). A negative size
// means unknown: up to MaxSize bytes are sent, and a longer stream gives
// ErrOversize. A size above MaxSize gives ErrOversize without connecting.
//
// After a connection error (clamd down, restarted, or closing the
// connection before its verdict) the scan is retried on the next healthy
// backend, up to MaxAttempts, provided the message can be read again: r is
// an io.Seeker, or nothing has been read from it yet. A verdict, an ERROR
// reply from clamd, a timeout or a read error on r is never retried.
//
// Any error means there is no verdict; Result is then the zero value apart
// from Duration.
func (s *Scanner) ScanReader(ctx context.Context, r io.Reader, size int64) (Result, error) {
	src := &readerSource{r: r}
	if sk, ok := r.(io.Seeker); ok {
		if off, err := sk.Seek(0, io.SeekCurrent); err == nil {
			src.seeker, src.start = sk, off
		}
	}
	return s.scan(ctx, src, size)
}

// source gives the message to each attempt of a scan.
type source interface {
	// open returns the message from its first byte, for attempt n (0, 1,
	// …). ok is false when it cannot be read again.
	open(n int) (r io.Reader, ok bool, err error)
	close()
}

// readerSource is the source of Scan.
type readerSource struct {
	r      io.Reader
	seeker io.Seeker
	start  int64
	cr     *countingReader
	// follows: r yields the message as the proxy receives it (Start), and
	// blocks only when it has nothing yet; scanOne then sends each chunk
	// as soon as there are bytes for it (readSome), not once it is full.
	follows bool
}

func (rs *readerSource) open(n int) (io.Reader, bool, error) {
	switch {
	case n == 0:
	case rs.seeker != nil:
		if _, err := rs.seeker.Seek(rs.start, io.SeekStart); err != nil {
			return nil, false, fmt.Errorf("rewinding the message for another attempt: %w", err)
		}
	case rs.cr != nil && rs.cr.n > 0:
		return nil, false, nil
	}
	rs.cr = &countingReader{r: rs.r}
	return rs.cr, true, nil
}

func (rs *readerSource) close() {}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// scan is Scan with a source that may be opened once per attempt.
func (s *Scanner) scan(ctx context.Context, src source, size int64) (res Result, err error) {
	start := time.Now()
	defer func() {
		res.Duration = time.Since(start)
		src.close()
		if f := s.onScan.Load(); f != nil {
			(*f)(res.Duration, err)
		}
	}()
	if s.pool.Closed() {
		return Result{}, ErrClosed
	}
	if size > s.cfg.MaxSize {
		return Result{}, fmt.Errorf("%w (%d bytes > max_size %d)", ErrOversize, size, s.cfg.MaxSize)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("clamav: %w", err)
	}

	// A slot: waiting ends with the context or Close.
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return Result{}, fmt.Errorf("clamav: waiting for a scan slot: %w", ctx.Err())
	case <-s.pool.Done():
		return Result{}, ErrClosed
	}
	defer func() { <-s.slots }()

	timeout := scanTimeout(s.cfg, size)
	if h, ok := src.(interface{ sizeHint() int64 }); ok && size < 0 {
		timeout = scanTimeout(s.cfg, h.sizeHint()) // a decoded part: not longer than its encoded form
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	read := fill
	if rs, ok := src.(*readerSource); ok && rs.follows {
		read = readSome
	}
	var errs []error
	attempt := 0 // src.open's count: one per scanOne
	for n, b := range s.pool.Candidates() {
		if n >= s.cfg.MaxAttempts {
			break
		}
		v, opened, err := s.scanOn(ctx, b, src, &attempt, size, timeout, read)
		if err != nil && !opened {
			errs = append(errs, err)
			break
		}
		if !opened {
			break // the message cannot be read again
		}
		if err == nil {
			s.pool.Observe(b, nil)
			if strings.HasPrefix(v.signature, limitsExceeded) {
				return Result{Backend: b.Addr}, &LimitsError{Backend: b.Addr, Signature: v.signature}
			}
			return Result{Infected: v.infected, Signature: v.signature, Backend: b.Addr}, nil
		}
		errs = append(errs, err)
		var ce *connError
		if !errors.As(err, &ce) || ctx.Err() != nil || ce.reused {
			// A verdict-less answer, a timeout or a read error: not
			// retried; nor an idle session that died on a message that
			// cannot be read again (not the backend's failure).
			break
		}
		s.pool.Observe(b, err)
		s.log().Warn().Str("backend", b.Addr).Err(err).Int("attempt", n+1).Msg("clamd scan failed on a connection error")
	}
	if len(errs) == 1 {
		return Result{}, errs[0]
	}
	if len(errs) == 0 { // not reachable: there is at least one backend
		errs = append(errs, errors.New("no backend tried"))
	}
	return Result{}, fmt.Errorf("%w: %w", ErrNoVerdict, errors.Join(errs...))
}

// scanOn scans src on b: opened is false when src could not be opened
// (err says why, or nil when it cannot be read again). A connection of a
// clamd session that turns out dead (clamd closed it while it sat idle:
// restarted, or timed it out) is not the backend's failure: b's other idle
// connections likely went with it, and the scan runs once more on a new
// connection when the message can be read again.
func (s *Scanner) scanOn(ctx context.Context, b *backend, src source, attempt *int, size int64, timeout time.Duration, read func(io.Reader, []byte) (int, error)) (v verdict, opened bool, err error) {
	for retried := false; ; retried = true {
		r, ok, oerr := src.open(*attempt)
		*attempt++
		switch {
		case oerr != nil:
			return verdict{}, !retried, fmt.Errorf("clamav: %w", oerr)
		case !ok && retried:
			return v, true, err // the dead session's error stands
		case !ok:
			return verdict{}, false, nil
		}
		v, err = s.scanOne(ctx, b, r, size, timeout, read)
		var ce *connError
		if retried || !errors.As(err, &ce) || !ce.reused || ctx.Err() != nil {
			return v, true, err
		}
		s.log().Info().Str("backend", b.Addr).Err(err).Msg("clamd closed an idle session: scanning on a new connection")
		b.sessions.drain()
	}
}

// check is the health check of b: PING, then VERSION for Version; after
// the first good one, the StreamMaxLength probe starts.
func (s *Scanner) check(ctx context.Context, b *backend) error {
	if err := s.ping(ctx, b); err != nil {
		return err
	}
	s.startProbe(b)
	if v, err := s.version(ctx, b); err == nil {
		b.SetVersion(v)
	}
	s.checkSessions(ctx, b)
	b.sessions.expire(time.Now())
	return nil
}

// Ping checks every backend now, updating the health state, and returns nil
// when at least one answered PONG; otherwise the backends' errors.
func (s *Scanner) Ping(ctx context.Context) error {
	if s.pool.Closed() {
		return ErrClosed
	}
	return s.pool.Check(ctx)
}

// Start streams the message to clamd as the proxy receives it
// (filters.Starter), so that clamd scans while the rest still arrives and
// the verdict follows the last byte closely. The stream has no size up
// front: it may hold up to MaxSize bytes, and the end-of-stream marker goes
// out only after r ended with io.EOF, the message whole. A message cut
// short or dropped ends r with an error: the stream is abandoned without
// its marker, so clamd never gives a verdict on part of it. Filter uses
// the verdict only for exactly the message Start was given (started).
func (f *Filter) Start(ctx context.Context, r io.Reader) any {
	if f.scan == ScanParts {
		return nil // the message is not scanned as one stream
	}
	e := &early{done: make(chan struct{})}
	cr := &countingReader{r: r}
	go func() {
		defer close(e.done)
		e.res, e.err = f.scanner.scan(ctx, &readerSource{r: cr, follows: true}, -1)
		e.n = cr.n
	}()
	return e
}

// early is a scan Start began.
type early struct {
	done chan struct{}
	res  Result
	err  error
	n    int64 // bytes read from the message
}

// started is the outcome of the scan Start began on body while it
// arrived (ok), when it has one: clamd's clean or infected answer after all of
// body's bytes and the end of the stream, or clamd's failure to answer
// once it had them all (a timeout, an ERROR reply: what a scan of body
// would have met too, so it is not tried again). ok is false when there is
// no such scan, or when it failed before it had the whole message or on a
// connection error, which a scan of the finished body fails over from:
// scanMessage then scans body itself, as without Start.
func (f *Filter) started(ctx context.Context, env *filters.Envelope, body filters.Body) (Result, bool, error) {
	e, ok := env.Started(f, body).(*early)
	if !ok {
		return Result{}, false, nil
	}
	select {
	case <-e.done:
	case <-ctx.Done():
		return Result{}, false, nil
	}
	var ce *connError
	if e.n != body.Size() || errors.As(e.err, &ce) {
		return Result{}, false, nil
	}
	return e.res, true, e.err
}

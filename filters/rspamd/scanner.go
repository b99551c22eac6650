// Package rspamd asks rspamd (https://rspamd.com) for its opinion of
// messages over rspamd's HTTP protocol, and teaches it through its
// controller. It provides the "rspamd" scanner type of the policy file:
//
//	scanner "rspamd" "local" {
//	  addresses           = ["http://127.0.0.1:11333"]  # normal workers, tried in turn
//	  timeout             = "15s"     # one attempt; above rspamd's task_timeout (8s)
//	  max_size            = "25MB"    # a larger message is not sent: no verdict
//	  health_interval     = "10s"
//	  controller          = "http://127.0.0.1:11334"   # for learning (optional)
//	  controller_password = env("RSPAMD_PASSWORD")
//	}
//
// A scan is POST /checkv2 with the message streamed as the body; the answer
// becomes a filters.SpamReport (score, rspamd's action, the matched rules,
// the header changes of its milter block, a rewritten subject). The
// scanner only reports: what a spam filter does with the report is the
// filter's business.
//
// The scanner fails closed: a report comes only from a 2xx answer that
// parses as rspamd's. A backend that cannot be reached, hangs past the
// timeout, answers with another status, or answers something that is not
// rspamd's JSON (or more than 1 MiB of it) gives no report; the scan goes
// on to the next backend, and when none answers it is an error, on which
// the chain applies the filter's on_error. Never a ham result.
//
// What rspamd is told besides the message: Queue-Id (popgate's session id,
// so that rspamd's log and popgate's meet) and Deliver-To (the login), which
// is rspamd's name for the mailbox a message is delivered to, the key of
// its per-user settings and per-user Bayes. Not sent, on purpose:
//   - User: it means an SMTP-authenticated sender, and rspamd skips much for
//     those (Authentication-Results, greylisting, hfilter, RBLs, DMARC and
//     SPF with rspamd's defaults). The POP3 login is the recipient.
//   - IP and Helo: they mean the SMTP client that handed the message over,
//     which a POP3 proxy never saw. The POP3 client's address would make
//     rspamd run SPF against the reader's address, and a LAN or loopback
//     address turns rspamd's checks for local senders off. rspamd's
//     external_relay module can take the sender from the Received header
//     the mailbox's own MX wrote; without it, expect HFILTER_HOSTNAME_UNKNOWN
//     on every message.
//   - From and Rcpt: envelope addresses popgate does not have. rspamd reads
//     the message's own From and To; the envelope sender only matters to SPF,
//     which needs the IP as well.
//
// HTTPCrypt (rspamd's own encryption) is not supported: rspamd is reached on
// loopback or a trusted network, like clamd.
//
// The protocol is spoken here with net/http and encoding/json rather than
// through github.com/Shopify/go-rspamd, the Go client there is: it is
// archived (2024), its answer has no required_score, is_skipped, milter
// block or subject, it counts rspamd's 204 "too few tokens" learn answer as
// a failure, reads answers without a bound, and pulls in resty. The part of
// the protocol popgate needs is two endpoints and one JSON object.
package rspamd

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/backends"
)

// Defaults of Config.
const (
	DefaultTimeout        = 15 * time.Second
	DefaultMaxSize        = 25 * 1000 * 1000
	DefaultHealthInterval = 10 * time.Second
)

const (
	dialTimeout = 3 * time.Second
	// pingTimeout bounds a health check (or HealthInterval, if shorter).
	pingTimeout = 5 * time.Second
	// maxAttempts: a scan is tried on at most this many backends.
	maxAttempts = 3
)

// Config configures a Scanner. Zero values mean the defaults above.
type Config struct {
	// Addresses are the normal workers, "http://host:port" or "host:port".
	// At least one is required.
	Addresses []string
	// Timeout bounds one attempt of a scan on one backend: connecting,
	// sending the message, rspamd's work and its answer.
	Timeout time.Duration
	// MaxSize is the largest message sent to rspamd, in bytes; a larger one
	// is not sent (ErrOversize).
	MaxSize int64
	// Password, if set, goes with every scan as the Password header, for a
	// worker behind a proxy that wants it (rspamd's normal worker itself
	// asks for none).
	Password string
	// Controller is the controller worker's address, for learning
	// (ControllersFor, FindController); "" when the scanner does not learn.
	// The scanner itself only scans.
	Controller string
	// ControllerPassword is the controller's password (its enable_password
	// where the two differ: learning needs it).
	ControllerPassword string
	// HealthInterval is the period of the health checks (GET /ping).
	HealthInterval time.Duration
}

// orDefault is v, or def when v is not positive.
func orDefault[T int64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

var (
	// ErrOversize: the message is larger than MaxSize, so it was not sent.
	// It is no verdict; a filter decides what an unscanned message gets.
	ErrOversize = errors.New("rspamd: message larger than max_size, not scanned")
	// ErrClosed: Scan was called after Close.
	ErrClosed = errors.New("rspamd: scanner closed")
	// ErrNoVerdict wraps the errors of all attempts when no backend gave a
	// report.
	ErrNoVerdict = errors.New("rspamd: no verdict")
)

// Scanner scans messages on a set of rspamd normal workers, with health
// checks and failover. It is safe for concurrent use. NewScanner starts one
// goroutine (the health checker); Close stops it.
type Scanner struct {
	cfg    Config
	log    zerolog.Logger
	client *http.Client
	pool   *backends.Pool[*backend]
	onScan atomic.Pointer[func(time.Duration, error)]
}

// backend is one normal worker.
type backend struct {
	backends.Health        // Addr: as configured; version: its Server header
	base            string // "http://host:port"
}

var _ filters.Scanner = (*Scanner)(nil)

// NewScanner checks cfg and starts the health checker (the first round of
// checks runs at once, in the background: NewScanner never waits for
// rspamd). Until a backend has failed, it counts as healthy.
func NewScanner(cfg Config, log zerolog.Logger) (*Scanner, error) {
	if len(cfg.Addresses) == 0 {
		return nil, errors.New("rspamd: no address")
	}
	cfg.Addresses = slices.Clone(cfg.Addresses)
	cfg.Timeout = orDefault(cfg.Timeout, DefaultTimeout)
	cfg.MaxSize = orDefault(cfg.MaxSize, DefaultMaxSize)
	cfg.HealthInterval = orDefault(cfg.HealthInterval, DefaultHealthInterval)
	s := &Scanner{cfg: cfg, log: log, client: newHTTPClient(dialTimeout)}
	var members []*backend
	for _, a := range cfg.Addresses { // DecodeConfig also refuses duplicates
		base, err := ParseAddress(a)
		if err != nil {
			return nil, fmt.Errorf("rspamd: %w", err)
		}
		members = append(members, &backend{Health: backends.Health{Addr: a}, base: base})
	}
	s.pool = backends.New("rspamd", log, members, cfg.HealthInterval, s.check)
	return s, nil
}

// OnScan makes f see the duration and error of every scan (metrics); nil
// stops it. f must be cheap and must not block.
func (s *Scanner) OnScan(f func(time.Duration, error)) {
	if f == nil {
		s.onScan.Store(nil)
		return
	}
	s.onScan.Store(&f)
}

// Config returns the configuration in use, defaults filled in.
func (s *Scanner) Config() Config {
	c := s.cfg
	c.Addresses = slices.Clone(c.Addresses)
	return c
}

// MaxSize is the largest message a scan sends.
func (s *Scanner) MaxSize() int64 { return s.cfg.MaxSize }

// Backends returns the state of every backend, in configuration order.
func (s *Scanner) Backends() []filters.Backend { return s.pool.Backends() }

// Check asks every backend for /ping now; nil when at least one answers.
func (s *Scanner) Check(ctx context.Context) error {
	if s.pool.Closed() {
		return ErrClosed
	}
	return s.pool.Check(ctx)
}

// Version names the rspamd versions the backends last reported in their
// answers' Server header ("rspamd/3.4"; distinct ones joined by "; "); ""
// until a backend answered.
func (s *Scanner) Version() string { return s.pool.Version() }

// Close stops the health checker; later scans return ErrClosed. Scans in
// flight run to their end (each attempt is bounded by Timeout). Close is
// idempotent and returns nil.
func (s *Scanner) Close() error {
	s.pool.Close()
	s.client.CloseIdleConnections()
	return nil
}

// check is the health check of b: GET /ping, within PingTimeout.
func (s *Scanner) check(ctx context.Context, b *backend) error {
	ctx, cancel := context.WithTimeout(ctx, min(pingTimeout, s.cfg.HealthInterval))
	defer cancel()
	v, err := ping(ctx, s.client, b.Addr, b.base)
	b.SetVersion(v)
	return err
}

// Scan asks rspamd about body (filters.Scanner), telling it nothing about
// the session: ScanEnvelope does.
func (s *Scanner) Scan(ctx context.Context, body filters.Body) (filters.ScanResult, error) {
	return s.ScanEnvelope(ctx, nil, body)
}

// ScanEnvelope asks rspamd about body, delivered in the session env (nil:
// none; see the package doc for what is passed on). The result's Spam is
// the report; any error means there is none.
func (s *Scanner) ScanEnvelope(ctx context.Context, env *filters.Envelope, body filters.Body) (res filters.ScanResult, err error) {
	start := time.Now()
	defer func() {
		res.Took = time.Since(start)
		if f := s.onScan.Load(); f != nil {
			(*f)(res.Took, err)
		}
	}()
	if s.pool.Closed() {
		return res, ErrClosed
	}
	if size := body.Size(); size > s.cfg.MaxSize {
		return res, fmt.Errorf("%w (%d bytes > max_size %d)", ErrOversize, size, s.cfg.MaxSize)
	}
	hdr := scanHeaders(env, s.cfg.Password)
	var errs []error
	for n, b := range s.pool.Candidates() {
		if n >= maxAttempts {
			break
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("rspamd: %w", err))
			break
		}
		rep, err := s.scanOne(ctx, b, hdr, body)
		if err == nil {
			s.pool.Observe(b, nil)
			return filters.ScanResult{Backend: b.Addr, Spam: rep}, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break // the caller gave up: not the backend's fault
		}
		var se *StatusError
		if !errors.As(err, &se) {
			// Unreachable, hung, or not talking rspamd: skipped until its
			// health check passes. A status answer comes from a live
			// rspamd that refused this request.
			s.pool.Observe(b, err)
		}
		s.log.Warn().Str("backend", b.Addr).Err(err).Int("attempt", n+1).Msg("rspamd scan failed")
	}
	if len(errs) == 1 {
		return res, errs[0]
	}
	return res, fmt.Errorf("%w: %w", ErrNoVerdict, errors.Join(errs...))
}

// scanHeaders are the request headers of a scan in env.
func scanHeaders(env *filters.Envelope, password string) http.Header {
	h := http.Header{}
	if env != nil {
		setIfValid(h, "Queue-Id", env.SessionID)
		setIfValid(h, "Deliver-To", env.User)
	}
	if password != "" {
		h.Set("Password", password)
	}
	return h
}

// setIfValid sets a header whose value came from outside (a login name)
// only when it is a valid header value: printable, no CR, LF or other
// control character. A login that is not is left out rather than making the
// message unscannable.
func setIfValid(h http.Header, name, value string) {
	if value == "" || len(value) > 256 {
		return
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < 0x20 || c == 0x7f {
			return
		}
	}
	h.Set(name, value)
}

// scanOne is one attempt of a scan on b, within Timeout.
func (s *Scanner) scanOne(parent context.Context, b *backend, hdr http.Header, body filters.Body) (*filters.SpamReport, error) {
	ctx, cancel := context.WithTimeout(parent, s.cfg.Timeout)
	defer cancel()
	r, err := body.Open()
	if err != nil {
		return nil, fmt.Errorf("rspamd: opening the message: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.base+"/checkv2", r)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("rspamd: %s: %w", b.Addr, err)
	}
	req.ContentLength = body.Size() // the transport closes r
	req.Header = hdr.Clone()
	a, err := do(s.client, b.Addr, req)
	b.SetVersion(a.version)
	switch {
	case err != nil && parent.Err() != nil:
		return nil, fmt.Errorf("rspamd: %s: %w", b.Addr, parent.Err())
	case err != nil && ctx.Err() != nil:
		return nil, &transportError{backend: b.Addr, err: fmt.Errorf("no answer within %v: %w", s.cfg.Timeout, context.DeadlineExceeded)}
	case err != nil:
		return nil, err
	case a.code < 200 || a.code > 299:
		return nil, statusError(b.Addr, a)
	}
	rep, err := parseCheck(a.body)
	if err != nil {
		return nil, &ReplyError{Backend: b.Addr, Problem: err.Error()}
	}
	return rep, nil
}

// Package metrics exports what popgate does as Prometheus metrics and serves
// them, with health and readiness probes, on an HTTP listener of its own.
//
// Labels are bounded by the configuration (listener, upstream, policy,
// filter and scanner names, clamd addresses) or by fixed sets (commands,
// session results, verdicts); never a user name or a client address.
package metrics

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/proxy"
)

const namespace = "popgate"

// Latency buckets, in seconds: from a cached TOP (100 µs) to a big scan.
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// Metrics is popgate's metric registry. It is the proxy's Observer; the
// caller also reports configuration reloads and hands over the scanners of
// the current configuration.
type Metrics struct {
	reg *prometheus.Registry

	sessionsActive  *prometheus.GaugeVec
	sessions        *prometheus.CounterVec
	commands        map[string]prometheus.Counter // bound per command name: counted per command, no label hashing
	bytes           *prometheus.CounterVec
	messages        *prometheus.CounterVec
	verdicts        *prometheus.CounterVec
	filterDuration  *prometheus.HistogramVec
	scanDuration    *prometheus.HistogramVec
	downloadPhases  *prometheus.HistogramVec
	quarantine      *prometheus.CounterVec
	releases        *prometheus.CounterVec
	generation      prometheus.Gauge
	reloads         *prometheus.CounterVec
	refused         *prometheus.CounterVec
	upstreamConnect *prometheus.HistogramVec
	upstreamFailed  *prometheus.CounterVec
	memoryOps       *prometheus.CounterVec
	memoryLatency   *prometheus.HistogramVec
	logins          *prometheus.CounterVec
	throttled       *prometheus.CounterVec
	lockouts        *prometheus.CounterVec
	tlsReloads      *prometheus.CounterVec
	tlsExpiry       *prometheus.GaugeVec

	families  []Family
	listeners sync.Map // name → *listenerMetrics
	scanners  atomic.Pointer[[]Scanner]
}

var _ proxy.Observer = (*Metrics)(nil)

// New returns a registry with every popgate metric, and the Go runtime and
// process collectors.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	family := func(name string, histogram bool, labels ...string) {
		m.families = append(m.families, Family{Name: namespace + "_" + name, Labels: labels, Histogram: histogram})
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
		m.reg.MustRegister(c)
		family(name, false, labels...)
		return c
	}
	histogram := func(name, help string, labels ...string) *prometheus.HistogramVec {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: latencyBuckets}, labels)
		m.reg.MustRegister(h)
		family(name, true, labels...)
		return h
	}
	m.sessionsActive = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "sessions_active",
		Help: "Sessions open now, by listener."}, []string{"listener"})
	m.reg.MustRegister(m.sessionsActive)
	family("sessions_active", false, "listener")
	m.sessions = counter("sessions_total", "Sessions ended, by listener and how they ended (quit, client_closed, timeout, client_error, upstream_unavailable, upstream_error, policy_refused, shutdown, error).", "listener", "result")
	commands := counter("commands_total", "Client commands, by command (unknown ones as other).", "command")
	m.commands = map[string]prometheus.Counter{"other": commands.WithLabelValues("other")}
	for _, c := range proxy.KnownCommands() {
		m.commands[c] = commands.WithLabelValues(c)
	}
	m.bytes = counter("bytes_total", "Bytes moved, by listener and direction (client_in, client_out, upstream_in, upstream_out).", "listener", "direction")
	m.messages = counter("messages_total", "Filtered messages, by policy and outcome (delivered, changed, withheld, refused, deferred, failed_open).", "policy", "outcome")
	m.verdicts = counter("filter_verdicts_total", "Filter verdicts, by filter and verdict (pass, replace, reject, retry, error).", "filter", "verdict")
	m.filterDuration = histogram("filter_duration_seconds", "Time each filter took per message.", "filter")
	m.scanDuration = histogram("scan_duration_seconds", "Time a scan took, failovers and waiting for a slot included, by scanner and kind (clamav).", "scanner", "kind")
	m.downloadPhases = histogram("download_phase_seconds", "Where the time of filtered downloads fetched from the server went, by policy and phase: upstream_wait (command to the server's status line), upstream_read (status line to the message's last byte), filtering (last byte to the chain's result: scanners, filters, quarantine writes), delivery (result to the answer written to the client).", "policy", "phase")
	m.quarantine = counter("quarantine_writes_total", "Originals written to quarantine, by result (ok, failed).", "result")
	m.releases = counter("quarantine_releases_total", "Quarantine releases, by actor (cli, api, link) and result (released, already, refused, failed, uncertain).", "actor", "result")
	m.generation = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "config_generation",
		Help: "The configuration generation new sessions get (1 at start, +1 per successful reload)."})
	m.reg.MustRegister(m.generation)
	family("config_generation", false)
	m.reloads = counter("config_reloads_total", "Configuration reloads, by result (ok, failed).", "result")
	m.refused = counter("limit_rejections_total", "Connections refused before a session started, by listener and limit (total, per_ip, proxy_header).", "listener", "limit")
	m.upstreamConnect = histogram("upstream_connect_seconds", "Time to connect to an upstream, TLS and greeting included, by upstream (transparent for original destinations).", "upstream")
	m.upstreamFailed = counter("upstream_connect_failures_total", "Failed connections to an upstream, by upstream.", "upstream")
	m.memoryOps = counter("memory_operations_total", "Uses of the message memory, by operation (lookup, write, delete) and result (hit, miss, rescan, changed for lookups; ok; error).", "op", "result")
	m.memoryLatency = histogram("memory_seconds", "Time a message memory operation took, by operation (lookup, write, delete).", "op")
	m.logins = counter("logins_total", "Login attempts, by listener and result (ok, failed: the server's answer; throttled, plaintext: refused by popgate, never sent).", "listener", "result")
	m.throttled = counter("login_throttled_total", "Login attempts refused by a lock of the login throttle, by listener and scope (address, name).", "listener", "scope")
	m.lockouts = counter("login_lockouts_total", "Locks of the login throttle that began, by listener and scope (address, name).", "listener", "scope")
	m.tlsReloads = counter("tls_reloads_total", "Loads of changed certificate, key and CA files while running (file watch and SIGHUP), by result (ok, refused: the files in use stay).", "result")
	m.tlsExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "tls_certificate_expiry_timestamp_seconds",
		Help: "When the certificate in use from each certificate file expires (Unix time): alert well before, in case renewal fails."}, []string{"file"})
	m.reg.MustRegister(m.tlsExpiry)
	family("tls_certificate_expiry_timestamp_seconds", false, "file")
	m.reg.MustRegister(backendCollector{m}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	family("scanner_backend_up", false, "scanner", "kind", "address")
	family("scanner_backend_misconfigured", false, "scanner", "kind", "address")
	for _, r := range []string{"ok", "failed"} {
		m.reloads.WithLabelValues(r)
		m.quarantine.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "refused"} {
		m.tlsReloads.WithLabelValues(r)
	}
	return m
}

// Family describes one of popgate's own metrics.
type Family struct {
	Name      string // with the popgate_ prefix
	Labels    []string
	Histogram bool // exposed as Name_bucket, Name_sum and Name_count
}

// Families lists popgate's own metrics (not the go_ and process_ ones), for
// dashboards and their tests.
func (m *Metrics) Families() []Family { return append([]Family(nil), m.families...) }

// Registry is where the metrics are registered, for serving and tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SetGeneration records the configuration generation now in force.
func (m *Metrics) SetGeneration(id int64) { m.generation.Set(float64(id)) }

// Reloaded counts a reload attempt.
func (m *Metrics) Reloaded(ok bool) {
	if ok {
		m.reloads.WithLabelValues("ok").Inc()
	} else {
		m.reloads.WithLabelValues("failed").Inc()
	}
}

// TLSReloaded counts one load of TLS files (tlsfiles.Hooks.Reloaded).
func (m *Metrics) TLSReloaded(ok bool) {
	if ok {
		m.tlsReloads.WithLabelValues("ok").Inc()
	} else {
		m.tlsReloads.WithLabelValues("refused").Inc()
	}
}

// TLSCertificate records when the certificate loaded from file expires
// (tlsfiles.Hooks.Certificate).
func (m *Metrics) TLSCertificate(file string, notAfter time.Time) {
	m.tlsExpiry.WithLabelValues(file).Set(float64(notAfter.Unix()))
}

// Scanner is a scanner of the configuration in force, as reported.
type Scanner struct {
	Name, Kind string
	Scanner    filters.Scanner
}

// SetScanners makes the scanners of the configuration now in force the ones
// whose backends are reported.
func (m *Metrics) SetScanners(scanners []Scanner) {
	m.scanners.Store(&scanners)
}

// Released counts one quarantine release (generation.Options.OnRelease).
func (m *Metrics) Released(actor, result string) { m.releases.WithLabelValues(actor, result).Inc() }

// Scanned times one scan (filters.BuildContext.OnScan).
func (m *Metrics) Scanned(scanner, kind string, took time.Duration, _ error) {
	m.scanDuration.WithLabelValues(scanner, kind).Observe(took.Seconds())
}

// Refused implements proxy.Observer.
func (m *Metrics) Refused(listener, limit string) { m.refused.WithLabelValues(listener, limit).Inc() }

// Session implements proxy.Observer.
func (m *Metrics) Session(listener string) proxy.SessionObserver {
	lm := m.listener(listener)
	lm.active.Inc()
	return &sessionMetrics{m: m, l: lm}
}

// listenerMetrics are a listener's metrics with their labels bound, so a
// session does no label lookup per byte.
type listenerMetrics struct {
	name                                         string
	active                                       prometheus.Gauge
	clientIn, clientOut, upstreamIn, upstreamOut prometheus.Counter
}

func (m *Metrics) listener(name string) *listenerMetrics {
	if lm, ok := m.listeners.Load(name); ok {
		return lm.(*listenerMetrics)
	}
	lm := &listenerMetrics{
		name:        name,
		active:      m.sessionsActive.WithLabelValues(name),
		clientIn:    m.bytes.WithLabelValues(name, "client_in"),
		clientOut:   m.bytes.WithLabelValues(name, "client_out"),
		upstreamIn:  m.bytes.WithLabelValues(name, "upstream_in"),
		upstreamOut: m.bytes.WithLabelValues(name, "upstream_out"),
	}
	actual, _ := m.listeners.LoadOrStore(name, lm)
	return actual.(*listenerMetrics)
}

type sessionMetrics struct {
	m     *Metrics
	l     *listenerMetrics
	ended atomic.Bool
}

var _ proxy.SessionObserver = (*sessionMetrics)(nil)

func (s *sessionMetrics) ClientIn() proxy.Adder    { return s.l.clientIn }
func (s *sessionMetrics) ClientOut() proxy.Adder   { return s.l.clientOut }
func (s *sessionMetrics) UpstreamIn() proxy.Adder  { return s.l.upstreamIn }
func (s *sessionMetrics) UpstreamOut() proxy.Adder { return s.l.upstreamOut }

// Command counts name, which the proxy bounds to KnownCommands and "other".
func (s *sessionMetrics) Command(name string) {
	if c, ok := s.m.commands[name]; ok {
		c.Inc()
	}
}

func (s *sessionMetrics) UpstreamConnected(upstream string, took time.Duration, err error) {
	if err != nil {
		s.m.upstreamFailed.WithLabelValues(upstream).Inc()
		return
	}
	s.m.upstreamConnect.WithLabelValues(upstream).Observe(took.Seconds())
}

func (s *sessionMetrics) Ended(result string) {
	if s.ended.Swap(true) {
		return
	}
	s.l.active.Dec()
	s.m.sessions.WithLabelValues(s.l.name, result).Inc()
}

// Login counts a login attempt.
func (s *sessionMetrics) Login(result string) { s.m.logins.WithLabelValues(s.l.name, result).Inc() }

// Throttled counts an attempt the login throttle refused.
func (s *sessionMetrics) Throttled(scope string) {
	s.m.throttled.WithLabelValues(s.l.name, scope).Inc()
}

// Lockout counts a lock of the login throttle.
func (s *sessionMetrics) Lockout(scope string) { s.m.lockouts.WithLabelValues(s.l.name, scope).Inc() }

// Memory counts a use of the message memory.
func (s *sessionMetrics) Memory(op, result string, took time.Duration) {
	s.m.memoryOps.WithLabelValues(op, result).Inc()
	s.m.memoryLatency.WithLabelValues(op).Observe(took.Seconds())
}

// Message counts a filtered message, each filter's verdict and time, and
// quarantine writes.
func (s *sessionMetrics) Message(policy string, res *filters.Result) {
	m := s.m
	changed := false
	for _, st := range res.Steps {
		if st.Filter == "quarantine" { // the chain's own step: the write of the original
			result := "ok"
			if st.Err != nil {
				result = "failed"
			}
			m.quarantine.WithLabelValues(result).Inc()
			continue
		}
		verdict := "error"
		if st.Err == nil {
			verdict = strings.ToLower(st.Action.String())
			changed = changed || st.Action == filters.Replace
		}
		m.verdicts.WithLabelValues(st.Filter, verdict).Inc()
		if st.Err != nil || st.Duration > 0 {
			m.filterDuration.WithLabelValues(st.Filter).Observe(st.Duration.Seconds())
		}
	}
	m.messages.WithLabelValues(policy, outcome(res, changed)).Inc()
}

// Download records where a filtered download's time went.
func (s *sessionMetrics) Download(policy string, t proxy.DownloadTimes) {
	h := s.m.downloadPhases
	h.WithLabelValues(policy, "upstream_wait").Observe(t.UpstreamWait.Seconds())
	h.WithLabelValues(policy, "upstream_read").Observe(t.UpstreamRead.Seconds())
	h.WithLabelValues(policy, "filtering").Observe(t.Filtering.Seconds())
	h.WithLabelValues(policy, "delivery").Observe(t.Delivery.Seconds())
}

func outcome(res *filters.Result, changed bool) string {
	switch {
	case res.Outcome == filters.Refuse:
		return "refused"
	case res.Outcome == filters.Defer:
		return "deferred"
	case res.Withheld:
		return "withheld"
	case res.FailedOpen:
		return "failed_open"
	case changed:
		return "changed"
	}
	return "delivered"
}

// backendCollector reports popgate_scanner_backend_up and
// popgate_scanner_backend_misconfigured from the scanners' own state at
// scrape time.
type backendCollector struct{ m *Metrics }

var backendUp = prometheus.NewDesc(namespace+"_scanner_backend_up",
	"Whether a scanner backend (a clamd) answered its last health check or scan (1) or not (0), by scanner, kind and address.",
	[]string{"scanner", "kind", "address"}, nil)

var backendMisconfigured = prometheus.NewDesc(namespace+"_scanner_backend_misconfigured",
	"Whether the scanner found a backend misconfigured for it (1; clamav: clamd's StreamMaxLength below max_size) or not (0), by scanner, kind and address.",
	[]string{"scanner", "kind", "address"}, nil)

func (c backendCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backendUp
	ch <- backendMisconfigured
}

func (c backendCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.m.scanners.Load()
	if p == nil {
		return
	}
	for _, s := range *p {
		for _, b := range s.Scanner.Backends() {
			up := 0.0
			if b.Up {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(backendUp, prometheus.GaugeValue, up, s.Name, s.Kind, b.Address)
			bad := 0.0
			if b.Problem != "" {
				bad = 1
			}
			ch <- prometheus.MustNewConstMetric(backendMisconfigured, prometheus.GaugeValue, bad, s.Name, s.Kind, b.Address)
		}
	}
}

// Handler serves /metrics (Prometheus text format), /healthz (200 while the
// process serves HTTP at all) and /readyz (200 when ready returns nil, else
// 503 with its reason: for load balancer health checks).
// extra, when set, serves /release/ and /api/ (release links and the admin
// API).
func (m *Metrics) Handler(ready func() error, extra http.Handler) http.Handler {
	mux := http.NewServeMux()
	if extra != nil {
		mux.Handle("/release/", extra)
		mux.Handle("/api/", extra)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready: "+err.Error()+"\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}

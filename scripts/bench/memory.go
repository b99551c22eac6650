package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The message memory (issue 11): a second download of a scanned mailbox
// through the full chain, served from the upstream's bytes plus the recorded
// edits, with no clamd call.

// memoryChain is the full chain of the memory measurement.
var memoryChain = []string{"av", "dangerous", "stamp"}

// memStoreNames are the stores of -memstores.
var memStoreNames = []string{"embedded", "redis"}

// memRedisDB is the Redis database the bench's records go to: the test
// redis is shared with the tests (database 0, their own key prefixes), so
// the bench takes a database of its own and empties it (FLUSHDB) before
// each cell and at the end.
const memRedisDB = 13

// memoryCell is one store at one concurrency: direct, popgate pass-through
// and popgate with the full chain and the memory, in alternating runs.
type memoryCell struct {
	store    string // "embedded" or "redis"
	sessions int
	messages int // per session (the clean attachment-heavy ones)

	mailboxes   int           // warmed up (all the bench's mailboxes)
	warmWall    time.Duration // the warm-up download (every mailbox once, one session each at once)
	warmSettle  time.Duration // from the end of the warm-up until the writes stopped growing
	warmScans   float64       // clamd scans during the warm-up
	writesOK    float64
	writesError float64
	records     int64 // in the store after the warm-up (bbolt KeyN; Redis DBSIZE)

	direct, pass, mem []runStats
	order             []string

	scans        float64            // clamd scans during the measured runs (all modes: only the memory popgate has clamd)
	lookups      map[string]float64 // by result, measured runs
	lookupHist   histogram          // popgate_memory_seconds{op="lookup"}, measured runs
	memMessages  map[string]float64 // popgate_messages_total by outcome, measured runs
	metricsAddr  string
	metricsFound string // how the metrics address was found

	// Store size after the warm-up.
	fileBytes    int64   // embedded: memory.db's size
	leafInuse    int64   // embedded: bytes in use in the records bucket's leaf pages (keys, values, page headers)
	valueBytes   int64   // embedded: sum of the values (4 bytes of last use + the encoded record)
	redisUsed    int64   // redis: INFO used_memory with the records − without them (FLUSHDB SYNC at the end of the cell)
	redisSampled []int64 // redis: MEMORY USAGE of a few keys
	sizeErr      string

	peakRSSkB int64 // the memory popgate's VmHWM
	logLines  int
}

type memoryResults struct {
	cells     []*memoryCell
	redisAddr string
	goBench   []goBenchLine
	goBenchMs time.Duration
	goBenchCmd,
	goBenchErr string
}

// goBenchLine is one result line of the stores' Go benchmarks.
type goBenchLine struct {
	pkg, name          string // boltstore, "Store/Get/c32"
	n                  int
	nsOp               float64
	mean, p50, p99, mx float64 // µs
}

// memoryHCL is the configuration of the memory runs: the full chain with
// the memory (the default rescan: on a signature change), and a metrics
// listener on a free port.
func memoryHCL(dir, clamdAddr, store, redisAddr string) (string, string, error) {
	s, qdir, err := chainConfig(dir, clamdAddr, memoryChain, "", "")
	if err != nil {
		return "", "", err
	}
	s += metricsHCL
	if store == "redis" {
		s += fmt.Sprintf("memory {\n  store = \"redis\"\n  redis {\n    address = %q\n    db      = %d\n  }\n}\n", redisAddr, memRedisDB)
	}
	return s, qdir, nil
}

// runMemory measures the message memory at each of cfg.memSessions with each
// of cfg.memStores, then runs the stores' Go benchmarks.
func runMemory(ctx context.Context, cfg config, dir, upstream, clamdAddr string, users []benchUser, clean [][]byte) (*memoryResults, error) {
	mr := &memoryResults{redisAddr: os.Getenv("POPGATE_TEST_REDIS")}
	if slices.Contains(cfg.memStores, "redis") && mr.redisAddr == "" {
		return nil, errors.New("POPGATE_TEST_REDIS is not set (scripts/testenv.sh starts a redis-server); or leave redis out of -memstores")
	}
	for _, store := range cfg.memStores {
		for _, n := range cfg.memSessions {
			c, err := measureMemory(ctx, cfg, dir, upstream, clamdAddr, mr.redisAddr, store, users, n, clean)
			if err != nil {
				return nil, err
			}
			mr.cells = append(mr.cells, c)
		}
	}
	if slices.Contains(cfg.memStores, "redis") {
		if err := redisFlush(mr.redisAddr, memRedisDB); err != nil {
			log.Printf("memory: emptying redis database %d at the end: %v", memRedisDB, err)
		}
	}
	if cfg.memGoBench {
		mr.runGoBench(ctx)
	}
	return mr, nil
}

func measureMemory(ctx context.Context, cfg config, dir, upstream, clamdAddr, redisAddr, store string, users []benchUser,
	n int, clean [][]byte) (*memoryCell, error) {
	c := &memoryCell{store: store, sessions: n, messages: len(clean), mailboxes: len(users)}
	name := fmt.Sprintf("memory, %s, %d sessions", store, n)
	if store == "redis" {
		if err := redisFlush(redisAddr, memRedisDB); err != nil {
			return nil, fmt.Errorf("%s: emptying redis database %d: %w", name, memRedisDB, err)
		}
	}
	extra, qdir, err := memoryHCL(dir, clamdAddr, store, redisAddr)
	if err != nil {
		return nil, err
	}
	// The metrics listener is bound once, at start: it stays the same.
	mp, err := startPopgate(ctx, cfg.popgate, dir, upstream, cfg.logLevel, extra)
	if err != nil {
		return nil, err
	}
	defer mp.stop()
	c.metricsAddr, c.metricsFound, err = findMetricsAddr(mp)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	pp, err := startPopgate(ctx, cfg.popgate, dir, upstream, cfg.logLevel, metricsHCL) // as mp: they differ by the chain and the memory
	if err != nil {
		return nil, err
	}
	defer pp.stop()

	exact := exactSession(clean)
	tagged := filteredSession(1, clean, func(k int, body []byte) error {
		if len(body) != len(tagPrefix)+len(clean[k]) || !bytes.HasPrefix(body, tagPrefix) || !bytes.Equal(body[len(tagPrefix):], clean[k]) {
			return fmt.Errorf("got %d bytes, not the tag header + the %d-byte original", len(body), len(clean[k]))
		}
		return nil
	})

	// Warm-up: every mailbox downloaded once (one session each, all at
	// once), which scans every message and writes its record.
	log.Printf("%s: warm-up: %d mailboxes × %d messages through the full chain", name, len(users), len(clean))
	m0, err := scrape(c.metricsAddr)
	if err != nil {
		return nil, fmt.Errorf("%s: /metrics: %w", name, err)
	}
	t0 := time.Now()
	if _, err := measureRunWith(ctx, mp.addr, users, len(users), 0, tagged); err != nil {
		return nil, fmt.Errorf("%s: warm-up: %w", name, err)
	}
	c.warmWall = time.Since(t0)
	// The records are written after the client has its message: wait until
	// the write counter stops growing (it is still for a second, or has all
	// of them and is still for 200 ms).
	want := float64(len(users) * len(clean))
	t1 := time.Now()
	var m1 metricSet
	last, still := -1.0, time.Time{}
	for {
		if m1, err = scrape(c.metricsAddr); err != nil {
			return nil, fmt.Errorf("%s: /metrics: %w", name, err)
		}
		w := m1.sum("popgate_memory_operations_total", map[string]string{"op": "write"})
		if w != last {
			last, still = w, time.Now()
		}
		if (w >= want && time.Since(still) >= 200*time.Millisecond) || time.Since(still) >= time.Second {
			break
		}
		if time.Since(t1) > 60*time.Second {
			log.Printf("%s: the memory's writes still grow after 60 s (%.0f of %.0f); going on", name, w, want)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.warmSettle = time.Since(t1)
	c.writesOK = m1.sum("popgate_memory_operations_total", map[string]string{"op": "write", "result": "ok"}) -
		m0.sum("popgate_memory_operations_total", map[string]string{"op": "write", "result": "ok"})
	c.writesError = m1.sum("popgate_memory_operations_total", map[string]string{"op": "write", "result": "error"}) -
		m0.sum("popgate_memory_operations_total", map[string]string{"op": "write", "result": "error"})
	c.warmScans = m1.sum("popgate_scan_duration_seconds_count", nil) - m0.sum("popgate_scan_duration_seconds_count", nil)
	log.Printf("%s: warm-up in %.1f s, writes settled %.1f s later: %.0f written (%.0f failed), %.0f clamd scans",
		name, c.warmWall.Seconds(), c.warmSettle.Seconds(), c.writesOK, c.writesError, c.warmScans)

	paths := map[string]struct {
		addr string
		pid  int
		sess sessionFunc
	}{
		"direct":  {upstream, 0, exact},
		"popgate": {pp.addr, pp.pid(), exact},
		"memory":  {mp.addr, mp.pid(), tagged},
	}
	measure := func(mode string, d time.Duration) (runStats, error) {
		pt := paths[mode]
		waited, idle := waitIdle(ctx, cfg.idleWait)
		var before time.Duration
		if pt.pid != 0 {
			before, _ = cpuTime(pt.pid)
		}
		st, err := measureRunWith(ctx, pt.addr, users, n, d, pt.sess)
		if err != nil {
			return runStats{}, fmt.Errorf("%s, %s: %w", name, mode, err)
		}
		st.mode, st.waited, st.idle = mode, waited, idle
		if pt.pid != 0 {
			after, _ := cpuTime(pt.pid)
			st.cpu = after - before
		}
		st.others = max(0, st.others-st.cpu)
		return st, nil
	}
	if cfg.warmup > 0 {
		// The pass-through popgate is fresh; the memory popgate and
		// Dovecot were warmed by the warm-up download.
		if _, err := measure("popgate", cfg.warmup); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	mBefore, err := scrape(c.metricsAddr)
	if err != nil {
		return nil, fmt.Errorf("%s: /metrics: %w", name, err)
	}
	modes := []string{"direct", "popgate", "memory"}
	for r := 0; r < cfg.repeat; r++ {
		order := slices.Clone(modes)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, mode := range order {
			var st runStats
			for attempt := 0; ; attempt++ {
				if st, err = measure(mode, cfg.duration); err != nil {
					return nil, err
				}
				st.retries = attempt
				if !st.disturbed() || attempt >= cfg.retries {
					break
				}
				log.Printf("%s, %s: others used %.0f%% of the machine during the run; measuring it again", name, mode, 100*st.othersShare())
			}
			log.Printf("%s, run %d/%d, %-7s %6.1f MB/s %6.0f msg/s  RETR p50 %s p99 %s  CPU busy %.0f%% (others %.0f%%)",
				name, r+1, cfg.repeat, mode, st.mbps, st.msgps, ms(st.retrP50), ms(st.retrP99), 100*st.busy, 100*st.othersShare())
			c.order = append(c.order, mode)
			switch mode {
			case "direct":
				c.direct = append(c.direct, st)
			case "popgate":
				c.pass = append(c.pass, st)
			default:
				c.mem = append(c.mem, st)
			}
		}
	}
	mAfter, err := scrape(c.metricsAddr)
	if err != nil {
		return nil, fmt.Errorf("%s: /metrics: %w", name, err)
	}
	c.scans = mAfter.sum("popgate_scan_duration_seconds_count", nil) - mBefore.sum("popgate_scan_duration_seconds_count", nil)
	c.lookups = mAfter.byLabel("popgate_memory_operations_total", "result", map[string]string{"op": "lookup"})
	for k, v := range mBefore.byLabel("popgate_memory_operations_total", "result", map[string]string{"op": "lookup"}) {
		c.lookups[k] -= v
	}
	c.memMessages = mAfter.byLabel("popgate_messages_total", "outcome", nil)
	for k, v := range mBefore.byLabel("popgate_messages_total", "outcome", nil) {
		c.memMessages[k] -= v
	}
	c.lookupHist = mAfter.histogram("popgate_memory_seconds", map[string]string{"op": "lookup"}).
		minus(mBefore.histogram("popgate_memory_seconds", map[string]string{"op": "lookup"}))
	log.Printf("%s: measured runs: %.0f clamd scans, lookups %v, lookup p50 ≈ %s p99 ≈ %s (from the histogram's buckets)",
		name, c.scans, c.lookups, msq(c.lookupHist.quantile(0.5)), msq(c.lookupHist.quantile(0.99)))

	if store == "redis" {
		// popgate still connected, so its connections' buffers are in
		// both figures.
		c.sizeRedis(redisAddr)
	}
	c.peakRSSkB = procStatusKB(mp.pid(), "VmHWM")
	mp.stop()
	pp.stop()
	c.logLines, _ = mp.logStats()
	if store == "embedded" {
		c.sizeEmbedded(filepath.Join(qdir, "memory.db"))
	}
	return c, nil
}

// sizeEmbedded reads the size of memory.db (popgate stopped) and, with
// bbolt read-only, its records and the bytes they use in leaf pages.
func (c *memoryCell) sizeEmbedded(path string) {
	fi, err := os.Stat(path)
	if err != nil {
		c.sizeErr = err.Error()
		return
	}
	c.fileBytes = fi.Size()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		c.sizeErr = err.Error()
		return
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("records"))
		if b == nil {
			return errors.New(`no "records" bucket`)
		}
		st := b.Stats()
		c.records, c.leafInuse = int64(st.KeyN), int64(st.LeafInuse+st.InlineBucketInuse) // a small bucket is inline in its parent page
		return b.ForEach(func(_, v []byte) error { c.valueBytes += int64(len(v)); return nil })
	})
	if err != nil {
		c.sizeErr = err.Error()
	}
}

// sizeRedis reads the bench database's keys, the MEMORY USAGE of a few, and
// how much used_memory drops when the database is emptied (FLUSHDB SYNC):
// the records' memory, Redis's per-key overhead included.
func (c *memoryCell) sizeRedis(addr string) {
	r, err := dialRedis(addr, memRedisDB)
	if err != nil {
		c.sizeErr = err.Error()
		return
	}
	defer r.close()
	if v, err := r.do("DBSIZE"); err == nil {
		c.records, _ = v.(int64)
	} else {
		c.sizeErr = err.Error()
		return
	}
	v, err := r.do("SCAN", "0", "COUNT", "20")
	if err != nil {
		c.sizeErr = err.Error()
		return
	}
	reply, _ := v.([]any)
	if len(reply) != 2 {
		c.sizeErr = fmt.Sprintf("SCAN: unexpected reply %v", v)
		return
	}
	keys, _ := reply[1].([]any)
	for _, k := range keys {
		if len(c.redisSampled) == 5 {
			break
		}
		ks, _ := k.(string)
		if u, err := r.do("MEMORY", "USAGE", ks, "SAMPLES", "0"); err == nil {
			if n, ok := u.(int64); ok {
				c.redisSampled = append(c.redisSampled, n)
			}
		}
	}
	with, err := redisUsedMemory(addr)
	if err != nil {
		c.sizeErr = err.Error()
		return
	}
	if _, err := r.do("FLUSHDB", "SYNC"); err != nil {
		c.sizeErr = err.Error()
		return
	}
	without, err := redisUsedMemory(addr)
	if err != nil {
		c.sizeErr = err.Error()
		return
	}
	c.redisUsed = with - without
}

// findMetricsAddr finds the address popgate's metrics listener (127.0.0.1:0)
// bound: from the "metrics listening" line of its log (logged at level info),
// else, at a quieter level, from the listening TCP sockets the process holds
// (/proc/PID/fd and /proc/PID/net/tcp) other than its POP3 listener.
func findMetricsAddr(p *popgateProc) (addr, how string, err error) {
	if b, err := os.ReadFile(p.logPath); err == nil {
		for l := range strings.Lines(string(b)) {
			if strings.Contains(l, `"metrics listening"`) {
				if m := regexp.MustCompile(`"address":"([^"]+)"`).FindStringSubmatch(l); m != nil {
					return m[1], "popgate's log", nil
				}
			}
		}
	}
	ports, err := listeningPorts(p.pid())
	if err != nil {
		return "", "", fmt.Errorf("finding the metrics listener: %w", err)
	}
	pop3 := portOf(p.addr)
	for _, port := range ports {
		if port == pop3 {
			continue
		}
		a := net.JoinHostPort("127.0.0.1", port)
		if _, err := scrape(a); err == nil {
			return a, "the process's listening sockets (/proc; the log level is above info)", nil
		}
	}
	return "", "", fmt.Errorf("no metrics listener among popgate's listening ports %v", ports)
}

// listeningPorts lists the ports of the IPv4 TCP sockets in LISTEN state that
// process pid holds.
func listeningPorts(pid int) ([]string, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return nil, err
	}
	var ports []string
	for l := range strings.Lines(string(b)) {
		f := strings.Fields(l)
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		if port, err := strconv.ParseUint(hexPort, 16, 16); err == nil {
			ports = append(ports, strconv.FormatUint(port, 10))
		}
	}
	return ports, nil
}

// metricSet is one scrape of /metrics: each sample line's labels and value.
type metricSet map[string][]metricSample

type metricSample struct {
	labels map[string]string
	value  float64
}

func scrape(addr string) (metricSet, error) {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

var sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)`)
var labelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// parseMetrics reads the Prometheus text format (enough of it for popgate's
// own metrics).
func parseMetrics(r io.Reader) (metricSet, error) {
	ms := metricSet{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		m := sampleRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		s := metricSample{labels: map[string]string{}, value: v}
		for _, lm := range labelRE.FindAllStringSubmatch(m[2], -1) {
			s.labels[lm[1]] = lm[2]
		}
		ms[m[1]] = append(ms[m[1]], s)
	}
	return ms, sc.Err()
}

func (s metricSample) matches(want map[string]string) bool {
	for k, v := range want {
		if s.labels[k] != v {
			return false
		}
	}
	return true
}

// sum adds the samples of name whose labels include want.
func (ms metricSet) sum(name string, want map[string]string) float64 {
	var t float64
	for _, s := range ms[name] {
		if s.matches(want) {
			t += s.value
		}
	}
	return t
}

// byLabel sums the samples of name matching want by the value of label.
func (ms metricSet) byLabel(name, label string, want map[string]string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range ms[name] {
		if s.matches(want) {
			out[s.labels[label]] += s.value
		}
	}
	return out
}

// histogram is a Prometheus histogram's cumulative buckets.
type histogram struct {
	le    []float64 // upper bounds, ascending, +Inf last
	count []float64 // cumulative
}

func (ms metricSet) histogram(name string, want map[string]string) histogram {
	by := map[float64]float64{}
	for _, s := range ms[name+"_bucket"] {
		if !s.matches(want) {
			continue
		}
		le, err := strconv.ParseFloat(s.labels["le"], 64) // "+Inf" parses as +Inf
		if err == nil {
			by[le] += s.value
		}
	}
	var h histogram
	for le := range by {
		h.le = append(h.le, le)
	}
	sort.Float64s(h.le)
	for _, le := range h.le {
		h.count = append(h.count, by[le])
	}
	return h
}

// minus is h − o bucket by bucket (o: an earlier scrape of the same series).
func (h histogram) minus(o histogram) histogram {
	out := histogram{le: slices.Clone(h.le), count: slices.Clone(h.count)}
	for i, le := range out.le {
		if j := slices.Index(o.le, le); j >= 0 {
			out.count[i] -= o.count[j]
		}
	}
	return out
}

func (h histogram) total() float64 {
	if len(h.count) == 0 {
		return 0
	}
	return h.count[len(h.count)-1]
}

// atMost is the share of observations in buckets with bounds ≤ le (le must
// be a bucket bound for an exact answer; else the bound below it).
func (h histogram) atMost(le float64) float64 {
	if h.total() == 0 {
		return math.NaN()
	}
	c := 0.0
	for i, b := range h.le {
		if b <= le {
			c = h.count[i]
		}
	}
	return c / h.total()
}

// quantile estimates the q-quantile in seconds as Prometheus's
// histogram_quantile does: linear interpolation inside the bucket that
// holds it (the first bucket from 0); NaN without observations; the
// highest finite bound when it falls in +Inf.
func (h histogram) quantile(q float64) float64 {
	n := h.total()
	if n == 0 {
		return math.NaN()
	}
	rank := q * n
	lower, below := 0.0, 0.0
	for i, le := range h.le {
		if h.count[i] >= rank {
			if math.IsInf(le, 1) {
				return lower
			}
			in := h.count[i] - below
			if in <= 0 {
				return le
			}
			return lower + (le-lower)*(rank-below)/in
		}
		lower, below = le, h.count[i]
	}
	return lower
}

// bucketOf names the bucket the q-quantile falls in: "0.5–1 ms".
func (h histogram) bucketOf(q float64) string {
	n := h.total()
	if n == 0 {
		return "–"
	}
	lower := 0.0
	for i, le := range h.le {
		if h.count[i] >= q*n {
			if math.IsInf(le, 1) {
				return fmt.Sprintf("> %s ms", trimMS(lower))
			}
			return fmt.Sprintf("%s–%s ms", trimMS(lower), trimMS(le))
		}
		lower = le
	}
	return "–"
}

func trimMS(sec float64) string { return strconv.FormatFloat(sec*1000, 'g', 3, 64) }

// msq prints seconds as milliseconds; "–" for NaN.
func msq(sec float64) string {
	if math.IsNaN(sec) {
		return "–"
	}
	return fmt.Sprintf("%.3f ms", sec*1000)
}

// A minimal RESP client (no new dependency): the bench only flushes its
// database and reads sizes.
type redisConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialRedis(addr string, db int) (*redisConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := &redisConn{c: c, r: bufio.NewReader(c)}
	if _, err := r.do("SELECT", strconv.Itoa(db)); err != nil {
		c.Close()
		return nil, fmt.Errorf("SELECT %d: %w", db, err)
	}
	return r, nil
}

func (r *redisConn) close() { _ = r.c.Close() }

func (r *redisConn) do(args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(r.c, b.String()); err != nil {
		return nil, err
	}
	return r.read()
}

func (r *redisConn) read() (any, error) {
	line, err := r.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, errors.New(line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r.r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = r.read(); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

func redisFlush(addr string, db int) error {
	r, err := dialRedis(addr, db)
	if err != nil {
		return err
	}
	defer r.close()
	_, err = r.do("FLUSHDB")
	return err
}

// redisUsedMemory is INFO memory's used_memory, in bytes.
func redisUsedMemory(addr string) (int64, error) {
	r, err := dialRedis(addr, 0)
	if err != nil {
		return 0, err
	}
	defer r.close()
	v, err := r.do("INFO", "memory")
	if err != nil {
		return 0, err
	}
	s, _ := v.(string)
	for l := range strings.Lines(s) {
		if x, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
			return strconv.ParseInt(x, 10, 64)
		}
	}
	return 0, errors.New("no used_memory in INFO memory")
}

var goBenchRE = regexp.MustCompile(`^Benchmark(\S+?)(?:-\d+)?\s+(\d+)\s+([\d.]+) ns/op(.*)$`)

// runGoBench runs the stores' Go benchmarks (latency percentiles of Get,
// GetMany and Put at 1 and 32 goroutines, without popgate around them).
func (mr *memoryResults) runGoBench(ctx context.Context) {
	args := []string{"test", "-run", "^$", "-bench", "Store$", "-benchtime", "2000x", "./filters/memory/..."}
	mr.goBenchCmd = "go " + strings.Join(args, " ")
	log.Printf("memory: %s", mr.goBenchCmd)
	t := time.Now()
	cmd := exec.CommandContext(ctx, "go", args...)
	out, err := cmd.CombinedOutput()
	mr.goBenchMs = time.Since(t)
	pkg := ""
	for l := range strings.Lines(string(out)) {
		l = strings.TrimSpace(l)
		if p, ok := strings.CutPrefix(l, "pkg: "); ok {
			pkg = filepath.Base(p)
			continue
		}
		m := goBenchRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		g := goBenchLine{pkg: pkg, name: m[1]}
		g.n, _ = strconv.Atoi(m[2])
		g.nsOp, _ = strconv.ParseFloat(m[3], 64)
		f := strings.Fields(m[4])
		for i := 0; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseFloat(f[i], 64)
			switch f[i+1] {
			case "mean-µs":
				g.mean = v
			case "p50-µs":
				g.p50 = v
			case "p99-µs":
				g.p99 = v
			case "max-µs":
				g.mx = v
			}
		}
		mr.goBench = append(mr.goBench, g)
	}
	if err != nil {
		tail := strings.TrimSpace(string(out))
		if len(tail) > 600 {
			tail = "…" + tail[len(tail)-600:]
		}
		mr.goBenchErr = fmt.Sprintf("%v: %s", err, tail)
		log.Printf("memory: go test -bench: %s", mr.goBenchErr)
	}
	for _, g := range mr.goBench {
		log.Printf("memory: %s %s: p50 %.0f µs, p99 %.0f µs", g.pkg, g.name, g.p50, g.p99)
	}
}

// goBenchP99 is the p99 of pkg's Store/OP/cN in µs, NaN if not run.
func (mr *memoryResults) goBenchP99(pkg, name string) float64 {
	for _, g := range mr.goBench {
		if g.pkg == pkg && g.name == name {
			return g.p99
		}
	}
	return math.NaN()
}

package e2e

// The soak (issue 6): popgate in this process (wired as `popgate run` wires
// it, so goleak sees its goroutines), in front of the real Dovecot and
// clamd through fault relays, under 200 concurrent client sessions with
// random faults (clients that vanish, upstream connections cut at random
// bytes, clamd connections cut, answering garbage or slow) over
// mailboxes of clean, attachment, stripped-attachment and EICAR messages,
// for POPGATE_SOAK_TIME (default 10s; `make soak` runs minutes). Then every
// mailbox is checked (a message is gone only if a session got it whole,
// DELEd it and sent QUIT), every message a client got whole is checked
// against its original, the quarantine against what was withheld or
// stripped, and goroutines, open fds and RSS against their baseline.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	_ "github.com/popgate/popgate/filters/builtin" // the soak runs popgate in-process
	"github.com/popgate/popgate/internal/testenv"
	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/policy/generation"
)

const soakWorkers = 200

var soakEnds sync.Map
var soakEndsN atomic.Int64

// soakMsg is one message a soak worker put into its mailbox.
type soakMsg struct {
	id   string
	kind string // "clean", "attach", "exe", "virus"
	data []byte // as stored; dropped once stored (sums below)
	path string
	// sha256 of the message as served (CRLF) and as delivered tagged: the
	// test keeps thousands of messages, not their bytes.
	sum, tagged [sha256.Size]byte
	size        int
}

var soakToken = regexp.MustCompile(`soak-[0-9]+-[0-9]+`)

func soakMessage(t *testing.T, worker, seq int, kind string) *soakMsg {
	id := fmt.Sprintf("soak-%d-%d", worker, seq)
	var data []byte
	switch kind {
	case "clean":
		data = crlf([]byte("From: a@example.com\nTo: u@example.com\nSubject: " + id + "\nMessage-ID: <" + id + "@example.com>\n\n" +
			"hello\n.\n..dots\nbye " + id + "\n"))
	case "attach":
		var raw bytes.Buffer
		for i := 0; raw.Len() < 10_000+worker*37; i++ {
			fmt.Fprintf(&raw, "%s %06d \x00\xff attachment data\r\n", id, i)
		}
		data = multipartMsg(id, id, textPart("see attached\n"), attachment("application/pdf", "r.pdf", raw.Bytes()))
	case "exe":
		data = multipartMsg(id, id, textPart("a tool\n"), attachment("application/octet-stream", "setup.exe", []byte(fakeEXE)))
	case "virus":
		data = multipartMsg(id, id, textPart("the file\n"), attachment("application/octet-stream", "eicar.com", []byte(testenv.EICAR)))
	}
	c := crlf(data)
	return &soakMsg{id: id, kind: kind, data: data, size: len(c), sum: sha256.Sum256(c),
		tagged: sha256.Sum256(append([]byte(stampHeader), c...))}
}

// soakCounts are the soak's tallies.
type soakCounts struct {
	sessions, messages, faults, lost, trunc, unscan atomic.Int64
	notices, stripped                               atomic.Int64
}

// soakWorker is one client with its own mailbox, running sessions one
// after another.
type soakWorker struct {
	n       int
	u       *testenv.User
	msgs    map[string]*soakMsg // by id, every message ever added
	allowed map[string]bool     // ids a session got whole, DELEd and QUIT
	seq     int
	errs    []string
	ids     []string // quarantine ids of the notices it got
	// held is every message it got as a notice or stripped: served again
	// (a retry after a fault) from popgate's memory, it is not quarantined
	// again, so the quarantine holds one original per held message.
	held map[string]bool
}

func (w *soakWorker) fail(format string, args ...any) {
	if len(w.errs) < 10 {
		w.errs = append(w.errs, fmt.Sprintf("worker %d: ", w.n)+fmt.Sprintf(format, args...))
	}
}

func (w *soakWorker) refill(t *testing.T) {
	kinds := []string{"clean", "attach", "exe", "virus"}
	var data [][]byte
	var added []*soakMsg
	for _, k := range kinds[:2+w.seq%3] {
		w.seq++
		m := soakMessage(t, w.n, w.seq, k)
		added = append(added, m)
		data = append(data, m.data)
	}
	paths := w.u.AddMessages(t, data...)
	for i, m := range added {
		m.path = paths[i]
		m.data = nil
		w.msgs[m.id] = m
	}
}

// check judges one message a client got whole; it returns the message's
// id ("" when it cannot tell).
func (w *soakWorker) check(c *soakCounts, got []byte) string {
	id := string(soakToken.Find(got))
	m := w.msgs[id]
	if m == nil {
		c.trunc.Add(1)
		w.fail("a message ending in the terminator names no message of this mailbox (%d bytes: %.100q)", len(got), got)
		return ""
	}
	if containsEICAR(got) {
		c.unscan.Add(1)
		w.fail("%s: the client got the EICAR test virus", id)
		return id
	}
	switch m.kind {
	case "clean", "attach":
		if sha256.Sum256(got) != m.tagged {
			if sha256.Sum256(got) == m.sum {
				c.unscan.Add(1)
				w.fail("%s delivered without the scan's tag", id)
			} else {
				c.trunc.Add(1)
				w.fail("%s: %d bytes ending in the terminator, not the %d-byte tagged message", id, len(got), len(stampHeader)+m.size)
			}
		}
	case "exe":
		if !bytes.HasPrefix(got, []byte(stampHeader)) || bytes.Contains(got, []byte(b64Lines([]byte(fakeEXE))[:60])) ||
			!bytes.HasSuffix(got, []byte("--\r\nepilogue, kept as it is\r\n")) {
			c.trunc.Add(1)
			w.fail("%s: not the stripped, tagged, whole message: %.200q", id, got)
		}
		c.stripped.Add(1)
		w.held[id] = true
	case "virus":
		qid, ok := isNotice(got)
		if !ok {
			c.trunc.Add(1)
			w.fail("%s: the client got no notice for the virus: %.200q", id, got)
		} else {
			c.notices.Add(1)
			w.ids = append(w.ids, qid)
			w.held[id] = true
		}
	}
	return id
}

// session runs one client session with a random client fault.
func (w *soakWorker) session(t *testing.T, addr string, rnd *rand.Rand, c *soakCounts) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		w.fail("dial: %v", err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	fc := &faultClient{t: t, c: conn, r: bufio.NewReader(conn), s: &faultSession{
		complete: map[int][]byte{}, partial: map[int][]byte{}, errs: map[int]string{},
	}}
	c.sessions.Add(1)
	defer func() {
		if fc.s.ended != nil {
			soakEnds.Store(fc.s.ended.Error()[:min(40, len(fc.s.ended.Error()))], true)
			soakEndsN.Add(1)
		}
	}()
	fault := rnd.IntN(100)
	if !fc.greet() || !fc.login(w.u) {
		return
	}
	if fault < 4 { // vanish right after the login
		c.faults.Add(1)
		fc.vanish()
		return
	}
	st, ok := fc.cmd("STAT")
	if !ok {
		return
	}
	f := strings.Fields(st)
	n := 0
	if len(f) >= 2 {
		n, _ = strconv.Atoi(f[1])
	}
	vanishIn, vanishAfter := 0, 0
	if fault < 18 && n > 0 { // vanish in the middle of a RETR
		vanishIn, vanishAfter = 1+rnd.IntN(n), 1+rnd.IntN(40_000)
	}
	for i := 1; i <= n; i++ {
		after := 0
		if i == vanishIn {
			after = vanishAfter
		}
		okRetr := fc.retr(i, after)
		if d, got := fc.s.complete[i]; got {
			c.messages.Add(1)
			_ = d
		}
		if !okRetr {
			if i == vanishIn && fc.s.ended != nil && fc.s.ended.Error() == "client vanished" {
				c.faults.Add(1)
			}
			break
		}
	}
	ids := map[int]string{}
	for i, data := range fc.s.complete {
		ids[i] = w.check(c, data)
	}
	for i, data := range fc.s.partial {
		if containsEICAR(data) {
			c.unscan.Add(1)
			w.fail("RETR %d: the client got part of the EICAR test virus", i)
		}
	}
	if fc.s.ended != nil {
		return
	}
	if fault < 60 { // DELE what came whole
		for i := 1; i <= n; i++ {
			if _, ok := fc.s.complete[i]; ok && !fc.dele(i) {
				return
			}
		}
	}
	if fault >= 18 && fault < 26 { // vanish after DELE, without QUIT
		c.faults.Add(1)
		fc.vanish()
		return
	}
	fc.s.quitSent = true
	for _, i := range fc.s.deleted {
		if id := ids[i]; id != "" {
			w.allowed[id] = true
		}
	}
	fc.quit()
}

func soakDuration(t *testing.T) time.Duration {
	if s := os.Getenv("POPGATE_SOAK_TIME"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("POPGATE_SOAK_TIME: %v", err)
		}
		return d
	}
	return 10 * time.Second
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("open fds: %v", err)
	}
	return len(ents)
}

func heapMiB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc) / (1 << 20)
}

func rssMiB(t *testing.T) float64 {
	runtime.GC()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(b)) {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func TestSoak(t *testing.T) {
	// Not parallel: goleak, fds and RSS are the process's; the parallel
	// tests of this package wait until the sequential ones are done.
	d := testenv.Dovecot(t)
	clamd := testenv.Clamd(t)
	dur := soakDuration(t)
	markDovecotLog(t, d)
	ignore := goleak.IgnoreCurrent()
	goroutines0, fds0, rss0 := runtime.NumGoroutine(), openFDs(t), rssMiB(t)

	dir := t.TempDir()
	qdir := filepath.Join(dir, "quarantine")
	upRelay := testenv.NewRelay(t, d.Addr)
	clamdRelay := testenv.NewRelay(t, clamd.Addr())
	var planMu sync.Mutex
	prnd := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	pick := func(n int) int {
		planMu.Lock()
		defer planMu.Unlock()
		return prnd.IntN(n)
	}
	upRelay.SetPlan(func(int) []testenv.Fault {
		switch r := pick(100); {
		case r < 6: // cut anywhere in what Dovecot sends
			return []testenv.Fault{{Dir: testenv.ToClient, Offset: int64(pick(150_000)), Action: testenv.Cut}}
		case r < 9: // cut anywhere in what popgate sends
			return []testenv.Fault{{Dir: testenv.ToTarget, Offset: int64(pick(120)), Action: testenv.Cut}}
		case r < 10: // cut in a RETR answer
			return []testenv.Fault{{Dir: testenv.ToClient, After: " octets\r\n", Offset: int64(pick(20_000)), Action: testenv.Cut}}
		}
		return nil
	})
	clamdRelay.SetPlan(func(int) []testenv.Fault {
		switch r := pick(100); {
		case r < 4:
			return []testenv.Fault{{Dir: testenv.ToTarget, After: "zINSTREAM\x00", Offset: int64(10 + pick(5000)), Action: testenv.Cut}}
		case r < 6:
			return []testenv.Fault{{Dir: testenv.ToClient, After: "stream: ", Action: testenv.Corrupt, Data: []byte("GARBAGE ")}}
		case r < 10:
			return []testenv.Fault{{Dir: testenv.ToClient, After: "stream: ", Action: testenv.Delay, Delay: time.Duration(pick(300)) * time.Millisecond}}
		}
		return nil
	})

	cfgText := fmt.Sprintf(`listener "soak" {
  address = "127.0.0.1:0"
  upstream = "dovecot"
  max_connections = 1000
  max_connections_per_ip = 1000
}
upstream "dovecot" {
  address = %s
  tls = "none"
  # Dovecot forks a login process per connection: with 200 sessions
  # starting at once on a busy machine, greetings take seconds.
  timeout = "10s"
}
scanner "clamav" "clamd" {
  addresses = [%s]
  timeout = "10s"
  max_concurrent = 16
}
filter "clamav" "av" {
  scanner = "clamd"
}
filter "strip" "dangerous" {
  extensions = ["exe"]
}
filter "tag" "stamp" {
  headers = { "X-Popgate-Scanned" = "yes" }
}
quarantine {
  dir = %s
}
policy "default" {
  chain = ["av", "dangerous", "stamp"]
}
log {
  level = "info"
  format = "json"
}
metrics {
  address = "127.0.0.1:0"
}
`, hclString(upRelay.Addr()), hclString("tcp://"+clamdRelay.Addr()), hclString(qdir))
	cfgPath := filepath.Join(dir, "popgate.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "popgate.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}

	// Started as cmdRun starts it.
	cfg, diags := policy.Load(cfgPath)
	if diags.HasErrors() {
		t.Fatalf("config: %v", diags)
	}
	log := zerolog.New(logFile).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	srv, err := generation.Start(cfg, cfgPath, generation.Options{Log: log, Version: "soak"})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	addr := srv.Addrs()[0].String()

	start := time.Now()
	workers := make([]*soakWorker, soakWorkers)
	for i := range workers {
		w := &soakWorker{n: i, u: d.NewUser(t), msgs: map[string]*soakMsg{}, allowed: map[string]bool{}, held: map[string]bool{}}
		registerUser(w.u)
		w.refill(t)
		workers[i] = w
	}
	var counts soakCounts
	// rounds runs sessions on every worker at once: n each, or (n < 0)
	// until the deadline.
	rounds := func(n int, deadline time.Time) {
		var wg sync.WaitGroup
		for _, w := range workers {
			wg.Go(func() {
				// A ramp of 1 s: Dovecot forks a login process per
				// connection, and 200 at once keep the last waiting for
				// its greeting beyond the upstream timeout.
				time.Sleep(time.Duration(w.n) * 5 * time.Millisecond)
				rnd := rand.New(rand.NewPCG(uint64(w.n), uint64(time.Now().UnixNano())))
				for i := 0; n < 0 && time.Now().Before(deadline) || i < n; i++ {
					w.session(t, addr, rnd, &counts)
					if len(w.u.Files(t)) < 2 {
						w.refill(t)
					}
				}
			})
		}
		wg.Wait()
	}
	// A warm-up round first: the baseline is popgate idle after 200
	// sessions, with its pools and the race detector's shadow memory
	// grown; the soak must not grow it further.
	t.Logf("setup (200 mailboxes): %v", time.Since(start).Round(time.Millisecond))
	rounds(1, time.Time{})
	t.Logf("warm-up round done: %v", time.Since(start).Round(time.Millisecond))
	goroutinesA, fdsA, rssA := idleState(t, srv, clamdRelay, 0, 0)
	heapA := heapMiB()
	rounds(-1, time.Now().Add(dur))
	t.Logf("soak round done: %v", time.Since(start).Round(time.Millisecond))
	goroutinesB, fdsB, rssB := idleState(t, srv, clamdRelay, goroutinesA, fdsA)
	heapB := heapMiB()
	ran := time.Since(start)

	// popgate's own count of sessions agrees with the clients'.
	metricsText := scrape(t, "http://"+srv.MetricsAddr().String()+"/metrics")
	var ended, active float64
	for _, m := range regexp.MustCompile(`(?m)^popgate_sessions_(total|active)\{[^}]*\} ([0-9.e+]+)$`).FindAllStringSubmatch(metricsText, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		if m[1] == "total" {
			ended += v
		} else {
			active += v
		}
	}
	if int64(ended) != counts.sessions.Load() || active != 0 {
		t.Errorf("metrics: popgate_sessions_total sums to %v and popgate_sessions_active to %v; the clients ran %d sessions, all ended",
			ended, active, counts.sessions.Load())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	upRelay.Close()
	clamdRelay.Close()
	logFile.Close()

	// Every session Dovecot logged in has ended: the Maildirs are final.
	waitDovecotIdleAll(t, d, workers)
	t.Logf("Dovecot idle: %v", time.Since(start).Round(time.Millisecond))
	for _, w := range workers {
		present := map[string]bool{}
		for _, p := range w.u.Files(t) {
			present[p] = true
		}
		for id, m := range w.msgs {
			if !present[m.path] && !w.allowed[id] {
				counts.lost.Add(1)
				w.fail("%s is gone from the Maildir, but no session QUIT after DELE of it received whole", id)
			}
		}
		for _, e := range w.errs {
			t.Error(e)
		}
	}

	// The quarantine holds originals of withheld or stripped messages
	// only, at least one per notice or stripped message a client got, and
	// every notice's id.
	quarantined := map[string][]byte{}
	ents, _ := os.ReadDir(filepath.Join(qdir, "msg"))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(qdir, "msg", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		quarantined[strings.TrimSuffix(e.Name(), ".eml")] = b
		var m *soakMsg
		if id := string(soakToken.Find(b)); id != "" {
			var wn int
			fmt.Sscanf(id, "soak-%d-", &wn)
			if wn >= 0 && wn < len(workers) {
				m = workers[wn].msgs[id]
			}
		}
		if m == nil || (m.kind != "virus" && m.kind != "exe") || sha256.Sum256(b) != m.sum {
			t.Errorf("quarantine %s holds no original of a withheld or stripped message", e.Name())
		}
	}
	held := 0
	for _, w := range workers {
		held += len(w.held)
	}
	if n := len(quarantined); n < held {
		t.Errorf("quarantine holds %d originals, clients got %d messages as notices or stripped (%d notices, %d stripped in all)",
			n, held, counts.notices.Load(), counts.stripped.Load())
	}
	for _, w := range workers {
		for _, id := range w.ids {
			if quarantined[id] == nil {
				t.Errorf("a notice names quarantine id %s, which is not in the quarantine", id)
			}
		}
	}
	if tmp, _ := os.ReadDir(filepath.Join(qdir, "tmp")); len(tmp) != 0 {
		t.Errorf("quarantine tmp/ holds %d leftovers", len(tmp))
	}

	logData, _ := os.ReadFile(logPath)
	// The final secrets scan of TestMain covers this popgate's log too.
	registry.Lock()
	registry.outputs = append(registry.outputs, collectedOutput{t.Name(), "log (in-process)", logData})
	registry.procs++
	registry.Unlock()
	unavailable := map[string]int{}
	for line := range bytes.Lines(logData) {
		if bytes.Contains(line, []byte("upstream unavailable")) {
			e := string(regexp.MustCompile(`"error":"[^"]*"`).Find(line))
			unavailable[regexp.MustCompile(`[0-9]+`).ReplaceAllString(e, "N")]++
		}
	}
	t.Logf("upstream unavailable: %v", unavailable)
	if found := findSecrets(logData, secretsSnapshot()); len(found) > 0 {
		t.Errorf("the soak's log holds secrets: %d of them", len(found))
	}
	if !bytes.Contains(logData, []byte(`"message":"login"`)) {
		t.Errorf("the soak's log holds no login")
	}

	// Back at the baseline: goroutines (goleak), fds, RSS.
	if err := goleak.Find(ignore); err != nil {
		t.Errorf("goroutines left after the soak: %v", err)
	}
	goroutines1, fds1 := runtime.NumGoroutine(), openFDs(t)
	faults := counts.faults.Load() + int64(upRelay.Fired()+clamdRelay.Fired())
	line := fmt.Sprintf("soak: %d sessions, %d messages, %d faults, %d lost, %d truncated, %d unscanned, goroutines %d→%d, fds %d→%d, rss %.0f→%.0f MiB",
		counts.sessions.Load(), counts.messages.Load(), faults, counts.lost.Load(), counts.trunc.Load(), counts.unscan.Load(),
		goroutinesA, goroutinesB, fdsA, fdsB, rssA, rssB)
	reportSummary(t, line)
	t.Logf("live heap %.0f→%.0f MiB (race detector: %v)", heapA, heapB, raceEnabled)
	t.Logf("before popgate started: %d goroutines, %d fds, %.0f MiB RSS; after it stopped: %d goroutines, %d fds", goroutines0, fds0, rss0, goroutines1, fds1)
	soakEnds.Range(func(k, v any) bool { t.Logf("ended: %v", k); return true })
	t.Logf("ended early: %d", soakEndsN.Load())
	t.Logf("soak ran %v with %d workers; %d notices, %d stripped, %d originals quarantined", ran.Round(time.Millisecond), soakWorkers,
		counts.notices.Load(), counts.stripped.Load(), len(quarantined))
	if counts.lost.Load()+counts.trunc.Load()+counts.unscan.Load() > 0 {
		t.Errorf("soak: %d lost, %d truncated, %d unscanned", counts.lost.Load(), counts.trunc.Load(), counts.unscan.Load())
	}
	if fds1 > fds0+4 {
		t.Errorf("open fds %d after popgate stopped, %d before it started", fds1, fds0)
	}
	if goroutinesB > goroutinesA+10 {
		t.Errorf("goroutines %d with popgate idle after the soak, %d after the warm-up", goroutinesB, goroutinesA)
	}
	if fdsB > fdsA+8 {
		t.Errorf("open fds %d with popgate idle after the soak, %d after the warm-up", fdsB, fdsA)
	}
	// The race detector's shadow memory follows the peak of the heap and
	// is not given back: under -race the live heap is checked instead.
	if limit := rssA*1.25 + 48; !raceEnabled && rssB > limit {
		t.Errorf("RSS %.0f MiB with popgate idle after the soak, %.0f MiB after the warm-up (limit %.0f)", rssB, rssA, limit)
	}
	if heapB > heapA+32 {
		t.Errorf("live heap %.0f MiB with popgate idle after the soak, %.0f MiB after the warm-up", heapB, heapA)
	}
	if counts.sessions.Load() < soakWorkers || counts.messages.Load() == 0 || faults == 0 {
		t.Errorf("the soak did too little: %d sessions, %d messages, %d faults", counts.sessions.Load(), counts.messages.Load(), faults)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Errorf("metrics: %v", err)
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("metrics: %v %s", err, resp.Status)
	}
	c.CloseIdleConnections()
	return string(b)
}

// idleState waits until popgate has no session left and the fds and
// goroutines are down to at most the given baseline plus a margin (or
// settled, when there is none yet), then returns goroutines, fds and RSS.
//
// Connections to clamd that popgate keeps for later scans (clamd
// sessions, at most max_concurrent) are not counted: each is an fd in
// popgate and, through the in-process relay to clamd, two fds and three
// goroutines there, and how many stay open after a round depends on how
// many scans ran at once at its end.
func idleState(t *testing.T, srv *generation.Service, clamdRelay *testenv.Relay, goroutines, fds int) (int, int, float64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for srv.Sessions() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still open after all clients ended", srv.Sessions())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Connections close a moment after the session ends (the client
	// side drains briefly); wait for the counts to settle.
	counts := func() (int, int) {
		kept := clamdRelay.Active() / 2 // a client side and a target side each
		return runtime.NumGoroutine() - 3*kept, openFDs(t) - 3*kept
	}
	g, f := counts()
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		g2, f2 := counts()
		if goroutines > 0 && g2 <= goroutines+10 && f2 <= fds+8 || goroutines == 0 && g2 == g && f2 == f {
			g, f = g2, f2
			break
		}
		g, f = g2, f2
	}
	return g, f, rssMiB(t)
}

// waitDovecotIdleAll is waitDovecotIdle for every worker's user.
func waitDovecotIdleAll(t *testing.T, d *testenv.DovecotEnv, workers []*soakWorker) {
	t.Helper()
	var users []*testenv.User
	for _, w := range workers {
		users = append(users, w.u)
	}
	waitDovecotUsers(t, d, users)
}

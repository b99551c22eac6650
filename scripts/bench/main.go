// Command bench measures popgate against a direct connection to the same
// Dovecot and against nginx's mail proxy, in the same run: at each level of
// concurrency (-sessions) N workers run POP3 sessions back to back (login,
// RETR of realistic MIME messages, QUIT) directly, through `popgate run`
// (empty chain, strip+tag, clamd) and through nginx (a foreground child with
// an auth_http responder in this program), with and without the client's
// delayed ACKs (TCP_QUICKACK). It reports MB/s, msg/s, p50/p99 RETR and login
// latency, CPU per GB, peak RSS for a big message and memory per idle
// session, draws a chart with gnuplot and writes -out (docs/PERFORMANCE.md
// in `make bench`).
//
// It needs the test environment (scripts/testenv.sh) and its variables:
//
//	make build && . "$(scripts/testenv.sh envfile)" && go run ./scripts/bench -out docs/PERFORMANCE.md
//
// Bench users are made with internal/testenv (per-user passwd-files, Maildirs
// owned by the mail uid) and removed at the end. Nothing is deleted from a
// mailbox (no DELE), so the mailboxes are made once and shared.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/popgate/popgate/filters"
)

type config struct {
	sessions  []int
	mailboxes int
	messages  int
	size      int
	duration  time.Duration
	warmup    time.Duration
	repeat    int
	out       string
	chart     string
	popgate   string
	logLevel  string
	idleWait  time.Duration
	targets   []string // of targetNames: the empty-chain comparison
	quickAck  []int    // levels at which the TCP_QUICKACK series runs
	nginx     string
	nginxMod  string
	// Filter chains (chains.go).
	chains        []string // of chainNames
	fmessages     int      // attachment-heavy messages per variant and session
	cmessages     int      // of those, downloaded per session through clamd
	clamdSessions []int
	stripSessions []int // strip+tag levels (clean messages)
	exeSessions   []int // of those, where the 10% .exe variant runs too
	mixSessions   []int // of those, where the realistic mix and the strip corpus run too
	mixDir        string
	retries       int // re-measurements of a disturbed run
	bigSize       int
	// The spam filter (spam.go).
	spamSessions []int
	smessages    int // small messages of the mix per mailbox, the most a session downloads
	spamRounds   int // how often a session goes through the mix in a run through the spam chain or to rspamd
	// Message memory (memory.go).
	memSessions []int
	memStores   []string // of memStoreNames
	memGoBench  bool     // also run the stores' Go benchmarks
	// Idle sessions (idle.go).
	idle int
}

// has reports whether the chain (or measurement) name was asked for.
func (c config) has(name string) bool { return slices.Contains(c.chains, name) }

// targetNames are the paths of the empty-chain comparison.
var targetNames = []string{"direct", "popgate", "nginx"}

func main() {
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")
	if len(os.Args) > 1 && os.Args[1] == idleServerArg {
		idleServerMain(os.Args[2:])
		return
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		log.Print(err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		log.Print(err)
		stop()
		os.Exit(1)
	}
}

func intList(flagName, v string) ([]int, error) {
	var out []int
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-%s: %q is not a positive number", flagName, f)
		}
		out = append(out, n)
	}
	return out, nil
}

func nameList(flagName, v string, allowed []string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !slices.Contains(allowed, f) {
			return nil, fmt.Errorf("-%s: %q is not one of %s", flagName, f, strings.Join(allowed, ", "))
		}
		out = append(out, f)
	}
	return out, nil
}

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	sessions := fs.String("sessions", "1,32,256", "comma-separated numbers of concurrent sessions (client workers)")
	mailboxes := fs.Int("mailboxes", 32, "bench mailboxes per message set; worker i uses mailbox i mod this (Dovecot does not lock a Maildir for POP3 by default, and nothing is deleted)")
	messages := fs.Int("messages", 200, "messages in each bench mailbox, and the most one session downloads before it quits")
	size := fs.String("size", "100KB", `size of each message ("100KB" = 100000 bytes, "100KiB" = 102400)`)
	duration := fs.Duration("duration", 2*time.Second, "length of a measured run: each worker runs sessions back to back until it ends")
	warmup := fs.Duration("warmup", time.Second, "length of the warm-up run of each target at each level")
	repeat := fs.Int("repeat", 3, "measured runs of each target at each level (targets alternate; the median is reported)")
	out := fs.String("out", "", "write the report (Markdown) to this file, e.g. docs/PERFORMANCE.md")
	chart := fs.String("chart", "", "write the throughput chart (PNG, gnuplot) to this file; default: perf-throughput.png next to -out")
	bin := fs.String("popgate", "bin/popgate", "the popgate binary (make build)")
	level := fs.String("loglevel", "warn", "popgate's log level during the benchmark")
	idleWait := fs.Duration("idlewait", 500*time.Millisecond, "before each run, wait up to this long for the machine to be idle (other work skews the results); 0: do not wait")
	targets := fs.String("targets", strings.Join(targetNames, ","), "empty-chain comparison: comma-separated paths (direct, popgate, nginx)")
	quick := fs.String("quickack", "1,32", "levels at which every target runs a second series with TCP_QUICKACK set by the client (\"\": none)")
	nginx := fs.String("nginx", "/usr/sbin/nginx", "the nginx binary")
	nginxMod := fs.String("nginxmodule", "/usr/lib/nginx/modules/ngx_mail_module.so", "nginx's mail module (load_module)")
	chains := fs.String("chains", strings.Join(chainNames, ","), "comma-separated measurements: none (empty chain: direct, popgate, nginx), strip+tag, clamd, spam (the spam filter on rspamd), memory (a second download through the full chain served by the message memory), rss (peak RSS with a big message), idle (memory per idle session)")
	fmessages := fs.Int("fmessages", 50, "filter chains: attachment-heavy messages per variant (clean, 10% .exe) in each mailbox, the most a session downloads")
	cmessages := fs.Int("cmessages", 20, "clamd: messages each session downloads (the first clean ones)")
	clamdSessions := fs.String("clamdsessions", "1,32,256", "clamd: comma-separated numbers of concurrent sessions")
	stripSessions := fs.String("stripsessions", "1,32,256", "strip+tag: comma-separated numbers of concurrent sessions (clean messages)")
	exeSessions := fs.String("exesessions", "1,32", "strip+tag: the levels of -stripsessions at which the 10% .exe variant runs too")
	mixSessions := fs.String("mixsessions", "1,32", fmt.Sprintf("strip+tag: the levels of -stripsessions at which the realistic mix (ordinary mail with the messages of -mixdir interleaved, one after every %d) and the strip corpus (those messages alone) run too (\"\": none)", mixEvery))
	mixDir := fs.String("mixdir", "filters/strip/testdata/corpus", "strip+tag: the strip corpus, a directory of real-world-shaped messages (*.eml), interleaved in the realistic mix and measured alone")
	spamSessions := fs.String("spamsessions", "1,32", "spam: comma-separated numbers of concurrent sessions")
	smessages := fs.Int("smessages", 20, "spam: small messages of the mix in each mailbox, the most a session downloads")
	spamRounds := fs.Int("spamrounds", 1, "spam: runs through the spam chain and to rspamd are one session per worker that downloads (scans) the mix this often, so that both modes scan the same messages (direct and pass-through runs take -duration)")
	retries := fs.Int("retries", 0, "measure a run again, at most this often, when others used more than 10% of the machine during it (on a busy shared machine every run is; 0: mark such runs only)")
	memSessions := fs.String("memsessions", "1,32", "memory: comma-separated numbers of concurrent sessions")
	memStores := fs.String("memstores", strings.Join(memStoreNames, ","), "memory: the stores measured (embedded, redis)")
	memGoBench := fs.Bool("membench", true, "memory: also run the stores' Go benchmarks (go test -bench, from the module's root)")
	bigSize := fs.String("bigsize", "100MB", "rss: size of the big message")
	idle := fs.Int("idle", 10000, "idle: sessions to hold open (capped per path by the fd limit)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c := config{mailboxes: *mailboxes, messages: *messages, repeat: *repeat, out: *out, chart: *chart, popgate: *bin,
		logLevel: *level, idleWait: *idleWait, duration: *duration, warmup: *warmup, nginx: *nginx, nginxMod: *nginxMod,
		fmessages: *fmessages, cmessages: min(*cmessages, *fmessages), idle: *idle, retries: *retries, memGoBench: *memGoBench,
		smessages: *smessages, spamRounds: *spamRounds, mixDir: *mixDir}
	var err error
	if c.sessions, err = intList("sessions", *sessions); err != nil {
		return config{}, err
	}
	if len(c.sessions) == 0 {
		return config{}, errors.New("-sessions: at least one level")
	}
	if c.clamdSessions, err = intList("clamdsessions", *clamdSessions); err != nil {
		return config{}, err
	}
	if c.stripSessions, err = intList("stripsessions", *stripSessions); err != nil {
		return config{}, err
	}
	if c.exeSessions, err = intList("exesessions", *exeSessions); err != nil {
		return config{}, err
	}
	if c.mixSessions, err = intList("mixsessions", *mixSessions); err != nil {
		return config{}, err
	}
	if c.spamSessions, err = intList("spamsessions", *spamSessions); err != nil {
		return config{}, err
	}
	if c.memSessions, err = intList("memsessions", *memSessions); err != nil {
		return config{}, err
	}
	if c.memStores, err = nameList("memstores", *memStores, memStoreNames); err != nil {
		return config{}, err
	}
	if c.quickAck, err = intList("quickack", *quick); err != nil {
		return config{}, err
	}
	if c.chains, err = nameList("chains", *chains, chainNames); err != nil {
		return config{}, err
	}
	if c.has("memory") && (len(c.memSessions) == 0 || len(c.memStores) == 0) {
		return config{}, errors.New("-memsessions and -memstores: at least one each for the memory measurement")
	}
	if c.has("strip+tag") && len(c.stripSessions) == 0 {
		return config{}, errors.New("-stripsessions: at least one level for the strip+tag measurement (the attachment-heavy rows)")
	}
	if c.has("clamd") && len(c.clamdSessions) == 0 {
		return config{}, errors.New("-clamdsessions: at least one level for the clamd measurement")
	}
	if c.has("spam") && len(c.spamSessions) == 0 {
		return config{}, errors.New("-spamsessions: at least one level for the spam measurement")
	}
	if c.targets, err = nameList("targets", *targets, targetNames); err != nil {
		return config{}, err
	}
	if c.has("none") && !slices.Contains(c.targets, "direct") {
		return config{}, errors.New("-targets: direct is the baseline and cannot be left out")
	}
	if c.fmessages < 1 || c.cmessages < 1 || c.smessages < 1 || c.spamRounds < 1 || c.mailboxes < 1 {
		return config{}, errors.New("-fmessages, -cmessages, -smessages, -spamrounds and -mailboxes must be at least 1")
	}
	if c.duration < 100*time.Millisecond || c.warmup < 0 {
		return config{}, errors.New("-duration: at least 100ms; -warmup: not negative")
	}
	if c.idle < 1 {
		return config{}, errors.New("-idle: at least 1")
	}
	bs, err := filters.ParseSize(*bigSize)
	if err != nil || bs < 1000 || bs > 1<<30 {
		return config{}, fmt.Errorf("-bigsize: %q: want a size from 1KB to 1GiB", *bigSize)
	}
	c.bigSize = int(bs)
	sz, err := filters.ParseSize(*size)
	if err != nil {
		return config{}, fmt.Errorf("-size: %v", err)
	}
	if sz > 1<<30 {
		return config{}, errors.New("-size: at most 1GiB")
	}
	c.size = int(sz)
	if c.messages < 1 || c.repeat < 1 {
		return config{}, errors.New("-messages and -repeat must be at least 1")
	}
	if c.chart == "" && c.out != "" {
		c.chart = filepath.Join(filepath.Dir(c.out), "perf-throughput.png")
	}
	return c, nil
}

// dovecotPID is the test Dovecot's master process, whose ended children's CPU
// time is Dovecot's share of a run; 0 if unknown.
var dovecotPID int

// runStats is one measured run: all workers of one configuration, started
// together, each running sessions back to back for the run's duration.
type runStats struct {
	mode     string        // "direct", "popgate", "nginx", "direct+qa", ... (main) or "direct", "popgate", "scan" (chains)
	wall     time.Duration // the whole run, ramp-up included
	window   time.Duration // the measured window (wall without a clock)
	bytes    int64
	msgs     int64
	sessions int     // sessions completed (logins)
	mbps     float64 // message bytes per second, 10^6
	msgps    float64 // messages per second
	retrP50  time.Duration
	retrP99  time.Duration
	setupP50 time.Duration
	setupP99 time.Duration
	cpu      time.Duration // the proxy's CPU time during the run (popgate or nginx)
	client   time.Duration // the harness's CPU time during the run
	dovecot  time.Duration // CPU time of Dovecot's session processes (pop3, pop3-login) of the run
	busy     float64       // share of all CPUs of the machine busy during the run (anyone's work)
	others   time.Duration // machine CPU time during the run not used by Dovecot, client or the proxy
	waited   time.Duration // waited for an idle machine before the run
	idle     bool          // the machine was idle before the run
	retries  int           // disturbed measurements of this run that were discarded
	retrMean time.Duration // mean RETR (or scan) time
	scanner  time.Duration // the scanner's CPU time during the run (filter chains with clamd or rspamd)
	// Scans during the run and their summed time: in a popgate run as
	// popgate measured them (popgate_scan_duration_seconds), in a scan run
	// as the scanner reported them (rspamd's time_real).
	scans     int64
	scanSum   time.Duration
	filterSum time.Duration // a popgate run: the spam filter's time (popgate_filter_duration_seconds)
	// A chain's popgate run: its filtered downloads and the time they
	// spent in each of downloadPhases (popgate_download_phase_seconds).
	downloads int64
	phaseSum  [len(downloadPhases)]time.Duration
}

// maxOthersShare is the share of the machine's CPU time that others may use
// during a run before the run counts as disturbed and is measured again, at
// most -retries times.
const (
	maxOthersShare = 0.10
)

// othersShare is the share of all CPUs used by others during the run.
func (s runStats) othersShare() float64 {
	return s.others.Seconds() / (s.wall.Seconds() * float64(runtime.NumCPU()))
}

func (s runStats) disturbed() bool { return s.othersShare() > maxOthersShare }

// level holds everything the empty-chain comparison measured at one
// concurrency.
type level struct {
	sessions   int
	runs       map[string][]runStats // by mode
	order      []string              // modes in the order they ran
	peakRSSkB  map[string]int64      // popgate, nginx (all processes)
	logLines   int                   // popgate's
	logBytes   int64
	nginxLines int // nginx's error log
	authReqs   int64
}

func run(ctx context.Context, cfg config) error {
	if _, err := os.Stat(cfg.popgate); err != nil {
		return fmt.Errorf("popgate binary: %v (run `make build` first, or pass -popgate)", err)
	}
	upstream := os.Getenv("POPGATE_TEST_POP3")
	if upstream == "" {
		return errors.New("POPGATE_TEST_POP3 is not set: source the test environment first: . \"$(scripts/testenv.sh envfile)\"")
	}
	if slices.Contains(cfg.targets, "nginx") || cfg.has("idle") {
		if err := nginxAvailable(cfg.nginx, cfg.nginxMod); err != nil {
			return fmt.Errorf("%v (scripts/testenv.sh up installs nginx and libnginx-mod-mail; or leave nginx out of -targets and idle out of -chains)", err)
		}
	}
	started := time.Now()
	loadBefore := loadAvg()
	dovecotPID = dovecotMaster()
	if dovecotPID == 0 {
		log.Print("Dovecot's master process not found (POPGATE_TEST_DOVECOT_CONF): its CPU time is not reported")
	}
	log.Printf("fd limit %d (children inherit it)", fdLimit())

	tb := &benchTB{}
	defer func() {
		log.Print("removing the bench users and their Maildirs")
		tb.runCleanups()
	}()
	dir, err := os.MkdirTemp("", "popgate-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	var levels []*level
	if cfg.has("none") {
		if levels, err = runEmptyChain(ctx, cfg, tb, dir, upstream); err != nil {
			return err
		}
	}
	fr, err := runChains(ctx, cfg, tb, dir, upstream)
	if err != nil {
		return err
	}
	var idle *idleResults
	if cfg.has("idle") {
		if idle, err = runIdle(ctx, cfg, tb, dir); err != nil {
			return err
		}
	}

	m := describeMachine(cfg.popgate, runtime.NumCPU(), runtime.Version())
	rep := report{cfg: cfg, m: m, levels: levels, loadBefore: loadBefore, loadAfter: loadAvg(),
		date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), upstream: upstream, chains: fr, idle: idle,
		elapsed: time.Since(started)}
	if cfg.chart != "" {
		if err := rep.writeChart(cfg.chart); err != nil {
			log.Printf("chart: %v", err)
			rep.chartErr = err.Error()
		} else {
			log.Printf("wrote %s", cfg.chart)
		}
	}
	fmt.Print(rep.summary())
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(rep.markdown()), 0o644); err != nil {
			return err
		}
		log.Printf("wrote %s", cfg.out)
	}
	return nil
}

// runEmptyChain is the empty-chain comparison: direct, popgate and nginx at
// each of cfg.sessions.
func runEmptyChain(ctx context.Context, cfg config, tb *benchTB, dir, upstream string) ([]*level, error) {
	msgs := make([][]byte, cfg.messages)
	for i := range msgs {
		m, err := makeMessage(i+1, cfg.size)
		if err != nil {
			return nil, err
		}
		msgs[i] = m
	}
	n := min(cfg.mailboxes, slices.Max(cfg.sessions))
	t0 := time.Now()
	log.Printf("creating %d mailboxes of %d × %d bytes (%.0f MB)", n, cfg.messages, cfg.size,
		float64(n*cfg.messages*cfg.size)/1e6)
	users, err := createMailboxes(tb, n, msgs)
	if err != nil {
		return nil, err
	}
	log.Printf("mailboxes ready in %.1f s", time.Since(t0).Seconds())

	var auth *authResponder
	if slices.Contains(cfg.targets, "nginx") {
		if auth, err = startAuthResponder(upstream); err != nil {
			return nil, err
		}
		defer auth.close()
	}
	var levels []*level
	for _, n := range cfg.sessions {
		lv, err := measureLevel(ctx, cfg, dir, upstream, auth, n, users, msgs)
		if err != nil {
			return nil, err
		}
		levels = append(levels, lv)
	}
	return levels, nil
}

// proxyUnderTest is popgate or nginx as the path of a run.
type proxyUnderTest struct {
	addr string
	cpu  func() time.Duration
}

// measureLevel starts a fresh popgate and nginx (so peak RSS belongs to this
// concurrency), warms up each path once, then runs every mode cfg.repeat
// times, alternating (forward, then backward order against drift).
func measureLevel(ctx context.Context, cfg config, dir, upstream string, auth *authResponder, n int, users []benchUser, msgs [][]byte) (*level, error) {
	lv := &level{sessions: n, runs: map[string][]runStats{}, peakRSSkB: map[string]int64{}}
	paths := map[string]proxyUnderTest{"direct": {addr: upstream, cpu: func() time.Duration { return 0 }}}
	var p *popgateProc
	var ng *nginxProc
	var err error
	if slices.Contains(cfg.targets, "popgate") {
		if p, err = startPopgate(ctx, cfg.popgate, dir, upstream, cfg.logLevel, ""); err != nil {
			return nil, err
		}
		defer p.stop()
		paths["popgate"] = proxyUnderTest{addr: p.addr, cpu: func() time.Duration { d, _ := cpuTime(p.pid()); return d }}
	}
	if slices.Contains(cfg.targets, "nginx") {
		auth.setTarget(upstream)
		before := auth.requests.Load()
		if ng, err = startNginx(ctx, cfg.nginx, cfg.nginxMod, dir, "127.0.0.1:"+portOf(auth.addr), runtime.NumCPU()); err != nil {
			return nil, err
		}
		defer ng.stop()
		defer func() { lv.authReqs = auth.requests.Load() - before }()
		paths["nginx"] = proxyUnderTest{addr: ng.addr, cpu: ng.cpu}
	}
	modes := slices.Clone(cfg.targets)
	if slices.Contains(cfg.quickAck, n) {
		for _, t := range cfg.targets {
			modes = append(modes, t+"+qa")
		}
	}
	session := exactSession(msgs)

	measure := func(mode string, d time.Duration) (runStats, error) {
		target, qa := strings.CutSuffix(mode, "+qa")
		pt := paths[target]
		waited, idle := waitIdle(ctx, cfg.idleWait)
		before := pt.cpu()
		st, err := measureRunWith(withQuickAck(ctx, qa), pt.addr, users, n, d, session)
		if err != nil {
			return runStats{}, fmt.Errorf("%d sessions, %s: %w", n, mode, err)
		}
		st.mode, st.waited, st.idle = mode, waited, idle
		st.cpu = pt.cpu() - before
		st.others = max(0, st.others-st.cpu)
		return st, nil
	}
	// once measures a run; a run during which others used much of the
	// machine is measured again (at most -retries times), after waiting
	// for an idle machine, and marked if it stays disturbed.
	once := func(mode string) (runStats, error) {
		for attempt := 0; ; attempt++ {
			st, err := measure(mode, cfg.duration)
			if err != nil {
				return st, err
			}
			st.retries = attempt
			if !st.disturbed() || attempt >= cfg.retries {
				return st, nil
			}
			log.Printf("%d sessions, %s: others used %.0f%% of the machine during the run; measuring it again",
				n, mode, 100*st.othersShare())
		}
	}

	if cfg.warmup > 0 {
		// The proxies are fresh processes at every level; Dovecot and the
		// page cache are warmed by the first level (and by the proxies).
		warm := slices.DeleteFunc(slices.Clone(cfg.targets), func(t string) bool { return t == "direct" && n != cfg.sessions[0] })
		log.Printf("%d sessions: warm-up (%s)", n, strings.Join(warm, ", "))
		for _, mode := range warm {
			if _, err := measure(mode, cfg.warmup); err != nil {
				return nil, fmt.Errorf("warm-up: %w", err)
			}
		}
	}
	for r := 0; r < cfg.repeat; r++ {
		order := slices.Clone(modes)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, mode := range order {
			st, err := once(mode)
			if err != nil {
				return nil, err
			}
			log.Printf("%d sessions, run %d/%d, %-10s %6.1f MB/s %6.0f msg/s  RETR p50 %s p99 %s  login p50 %s p99 %s  CPU busy %.0f%% (others %.0f%%)",
				n, r+1, cfg.repeat, mode, st.mbps, st.msgps, ms(st.retrP50), ms(st.retrP99), ms(st.setupP50), ms(st.setupP99), 100*st.busy,
				100*st.othersShare())
			lv.order = append(lv.order, mode)
			lv.runs[mode] = append(lv.runs[mode], st)
		}
	}
	if p != nil {
		lv.peakRSSkB["popgate"] = procStatusKB(p.pid(), "VmHWM")
		p.stop()
		lv.logLines, lv.logBytes = p.logStats()
	}
	if ng != nil {
		lv.peakRSSkB["nginx"] = ng.statusKB("VmHWM")
		lv.nginxLines = ng.errorLogLines()
	}
	return lv, nil
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// sessionFunc runs one session of user u against addr, stopping its
// downloads once the clock says the run is over (nil: no limit), adding to
// res.
type sessionFunc func(ctx context.Context, addr string, u benchUser, clock *runClock, res *sessionResult)

// measureRunWith starts n workers at once against addr; worker i uses
// users[i mod len(users)] and runs sess back to back until the run's
// window of d is over (d = 0: one session each). Throughput and RETR
// latency count the RETRs that ended within the window; login latency
// counts every login, the ramp-up's included; CPU counts the whole run.
func measureRunWith(parent context.Context, addr string, users []benchUser, n int, d time.Duration, sess sessionFunc) (runStats, error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	res := make([]sessionResult, n)
	gate := make(chan struct{})
	clock := newRunClock(n, d)
	var wg sync.WaitGroup
	for i := range n {
		u := users[i%len(users)]
		wg.Go(func() {
			<-gate
			for {
				sess(ctx, addr, u, clock, &res[i])
				if res[i].err != nil {
					cancel() // one failure ends the run
					return
				}
				if clock == nil || clock.over() {
					return
				}
			}
		})
	}
	dovecotChildren := childCount(dovecotPID)
	dovecotBefore := dovecotCPU(dovecotPID)
	before := sampleCPU()
	start := time.Now()
	close(gate)
	wg.Wait()
	wall := time.Since(start)
	after := sampleCPU()
	waitDovecotSettled(dovecotPID, dovecotChildren)
	dovecotAfter := dovecotCPU(dovecotPID)
	if err := parent.Err(); err != nil {
		return runStats{}, errors.New("interrupted")
	}
	if err := ctx.Err(); err != nil {
		// Report the worker that failed first, not those closed because of it.
		var first error
		for i := range res {
			if e := res[i].err; e != nil && (first == nil || errors.Is(first, net.ErrClosed) && !errors.Is(e, net.ErrClosed)) {
				first = fmt.Errorf("worker %d (%s): %w", i+1, users[i%len(users)].name, e)
			}
		}
		if first == nil {
			first = err
		}
		return runStats{}, first
	}
	st := runStats{wall: wall, client: after.self - before.self, dovecot: dovecotAfter - dovecotBefore}
	if after.total > before.total {
		st.busy = float64(after.busy-before.busy) / float64(after.total-before.total)
	}
	machineCPU := time.Duration(after.busy-before.busy) * time.Second / time.Duration(clkTck())
	st.others = machineCPU - st.client - st.dovecot // the proxy's share is taken off by the caller
	from, to, windowed := time.Time{}, time.Time{}, false
	if clock != nil {
		from, to, windowed = clock.window()
	}
	var retr, setup []time.Duration
	var wBytes, wMsgs int64
	for i := range res {
		st.bytes += res[i].bytes
		st.msgs += res[i].msgs
		st.sessions += len(res[i].setup)
		setup = append(setup, res[i].setup...)
		for k, t := range res[i].retrEnd {
			if windowed && (t.Before(from) || t.After(to)) {
				continue
			}
			retr = append(retr, res[i].retr[k])
			wBytes += res[i].retrLen[k]
			wMsgs++
		}
	}
	span := wall
	if windowed {
		span = to.Sub(from)
	}
	st.window = span
	st.mbps = float64(wBytes) / span.Seconds() / 1e6
	st.msgps = float64(wMsgs) / span.Seconds()
	st.retrP50, st.retrP99 = percentile(retr, 0.50), percentile(retr, 0.99)
	st.retrMean = mean(retr)
	st.setupP50, st.setupP99 = percentile(setup, 0.50), percentile(setup, 0.99)
	return st, nil
}

// percentile is the nearest-rank percentile (p in (0,1]).
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	k := rank(len(s), p) - 1
	return s[max(0, min(k, len(s)-1))]
}

// rank is the 1-based nearest rank of percentile p among n sorted values.
func rank(n int, p float64) int {
	return int(math.Ceil(float64(n)*p - 1e-9))
}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) + " ms" }

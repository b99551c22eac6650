// Command bench measures popgate against a direct connection to the same
// Dovecot, in the same run: each session logs in to a mailbox of its own
// (-messages × -size, realistic MIME messages), downloads every message with
// RETR and quits; the same sessions run directly against Dovecot and through
// `popgate run` (an empty filter chain). It reports MB/s, p50/p99 RETR
// latency, session-setup latency, popgate's CPU per GB and peak RSS, and
// writes the table to -out (docs/PERFORMANCE.md in `make bench`).
//
// It needs the test environment (scripts/testenv.sh) and its variables:
//
//	make build && . "$(scripts/testenv.sh envfile)" && go run ./scripts/bench -out docs/PERFORMANCE.md
//
// Bench users are made with proxy/testenv (per-user passwd-files, Maildirs
// owned by the mail uid) and removed at the end. Nothing is deleted from a
// mailbox (no DELE), so the mailboxes are made once and reused.
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
	sessions []int
	messages int
	size     int
	repeat   int
	out      string
	popgate  string
	logLevel string
	idleWait time.Duration
	// Filter chains (chains.go).
	chains        []string // of chainNames
	fmessages     int      // attachment-heavy messages per variant and session
	cmessages     int      // of those, downloaded per session through clamd
	clamdSessions []int
	bigSize       int
}

// has reports whether the chain (or measurement) name was asked for.
func (c config) has(name string) bool { return slices.Contains(c.chains, name) }

func main() {
	log.SetFlags(0)
	log.SetPrefix("bench: ")
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

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	sessions := fs.String("sessions", "1,32", "comma-separated numbers of concurrent sessions")
	messages := fs.Int("messages", 200, "messages in each session's mailbox")
	size := fs.String("size", "100KB", `size of each message ("100KB" = 100000 bytes, "100KiB" = 102400)`)
	repeat := fs.Int("repeat", 3, "measured runs of each configuration (direct and popgate alternate; the median is reported)")
	out := fs.String("out", "", "write the report (Markdown) to this file, e.g. docs/PERFORMANCE.md")
	bin := fs.String("popgate", "bin/popgate", "the popgate binary (make build)")
	level := fs.String("loglevel", "warn", "popgate's log level during the benchmark")
	idleWait := fs.Duration("idlewait", 15*time.Second, "before each run, wait up to this long for the machine to be idle (other work skews the results); 0: do not wait")
	chains := fs.String("chains", strings.Join(chainNames, ","), "comma-separated measurements: none (empty chain), strip+tag, clamd, rss (peak RSS with a big message)")
	fmessages := fs.Int("fmessages", 50, "filter chains: attachment-heavy messages per variant (clean, 10% .exe) in each session's mailbox")
	cmessages := fs.Int("cmessages", 20, "clamd: messages each session downloads (the first clean ones)")
	clamdSessions := fs.String("clamdsessions", "1,8", "clamd: comma-separated numbers of concurrent sessions")
	bigSize := fs.String("bigsize", "100MB", "rss: size of the big message")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c := config{messages: *messages, repeat: *repeat, out: *out, popgate: *bin, logLevel: *level, idleWait: *idleWait,
		fmessages: *fmessages, cmessages: min(*cmessages, *fmessages)}
	for _, f := range strings.Split(*sessions, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return config{}, fmt.Errorf("-sessions: %q is not a positive number", f)
		}
		c.sessions = append(c.sessions, n)
	}
	for _, f := range strings.Split(*clamdSessions, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return config{}, fmt.Errorf("-clamdsessions: %q is not a positive number", f)
		}
		c.clamdSessions = append(c.clamdSessions, n)
	}
	for _, f := range strings.Split(*chains, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(chainNames, f) {
			return config{}, fmt.Errorf("-chains: %q is not one of %s", f, strings.Join(chainNames, ", "))
		}
		c.chains = append(c.chains, f)
	}
	if c.fmessages < 1 || c.cmessages < 1 {
		return config{}, errors.New("-fmessages and -cmessages must be at least 1")
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
	return c, nil
}

// dovecotPID is the test Dovecot's master process, whose ended children's CPU
// time is Dovecot's share of a run; 0 if unknown.
var dovecotPID int

// runStats is one measured run: all sessions of one configuration, started
// together.
type runStats struct {
	mode     string // "direct" or "popgate"
	wall     time.Duration
	bytes    int64
	mbps     float64 // message bytes per second, 10^6
	retrP50  time.Duration
	retrP99  time.Duration
	setupP50 time.Duration
	cpu      time.Duration // popgate's CPU time during the run (popgate runs only)
	client   time.Duration // the harness's CPU time during the run
	dovecot  time.Duration // CPU time of Dovecot's session processes (pop3, pop3-login) of the run
	busy     float64       // share of all CPUs of the machine busy during the run (anyone's work)
	others   time.Duration // machine CPU time during the run not used by Dovecot, client or popgate
	waited   time.Duration // waited for an idle machine before the run
	idle     bool          // the machine was idle before the run
	retries  int           // disturbed measurements of this run that were discarded
	retrMean time.Duration // mean RETR (or scan) time
	clamd    time.Duration // clamd's CPU time during the run (filter chains with clamd)
}

// maxOthersShare is the share of the machine's CPU time that others may use
// during a run before the run counts as disturbed and is measured again, at
// most maxRetries times.
const (
	maxOthersShare = 0.10
	maxRetries     = 2
)

// othersShare is the share of all CPUs used by others during the run.
func (s runStats) othersShare() float64 {
	return s.others.Seconds() / (s.wall.Seconds() * float64(runtime.NumCPU()))
}

func (s runStats) disturbed() bool { return s.othersShare() > maxOthersShare }

// level holds everything measured at one concurrency.
type level struct {
	sessions  int
	direct    []runStats
	popgate   []runStats
	order     []string // modes in the order they ran
	peakRSSkB int64
	logLines  int
	logBytes  int64
}

func run(ctx context.Context, cfg config) error {
	if _, err := os.Stat(cfg.popgate); err != nil {
		return fmt.Errorf("popgate binary: %v (run `make build` first, or pass -popgate)", err)
	}
	upstream := os.Getenv("POPGATE_TEST_POP3")
	if upstream == "" {
		return errors.New("POPGATE_TEST_POP3 is not set: source the test environment first: . \"$(scripts/testenv.sh envfile)\"")
	}
	loadBefore := loadAvg()
	dovecotPID = dovecotMaster()
	if dovecotPID == 0 {
		log.Print("Dovecot's master process not found (POPGATE_TEST_DOVECOT_CONF): its CPU time is not reported")
	}

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

	m := describeMachine(cfg.popgate, runtime.NumCPU(), runtime.Version())
	rep := report{cfg: cfg, m: m, levels: levels, loadBefore: loadBefore, loadAfter: loadAvg(),
		date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), upstream: upstream, chains: fr}
	fmt.Print(rep.summary())
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(rep.markdown()), 0o644); err != nil {
			return err
		}
		log.Printf("wrote %s", cfg.out)
	}
	return nil
}

// runEmptyChain is the empty-chain measurement: popgate vs direct at each
// of cfg.sessions.
func runEmptyChain(ctx context.Context, cfg config, tb *benchTB, dir, upstream string) ([]*level, error) {
	msgs := make([][]byte, cfg.messages)
	for i := range msgs {
		m, err := makeMessage(i+1, cfg.size)
		if err != nil {
			return nil, err
		}
		msgs[i] = m
	}
	maxSessions := slices.Max(cfg.sessions)
	t0 := time.Now()
	log.Printf("creating %d mailboxes of %d × %d bytes (%.0f MB)", maxSessions, cfg.messages, cfg.size,
		float64(maxSessions*cfg.messages*cfg.size)/1e6)
	users, err := createMailboxes(tb, maxSessions, msgs)
	if err != nil {
		return nil, err
	}
	log.Printf("mailboxes ready in %.1f s", time.Since(t0).Seconds())

	var levels []*level
	for _, n := range cfg.sessions {
		lv, err := measureLevel(ctx, cfg, dir, upstream, users[:n], msgs)
		if err != nil {
			return nil, err
		}
		levels = append(levels, lv)
	}
	return levels, nil
}

// measureLevel starts a fresh popgate (so its peak RSS belongs to this
// concurrency), warms up both paths once, then runs direct and popgate
// alternately, cfg.repeat times each (ABBA order against drift).
func measureLevel(ctx context.Context, cfg config, dir, upstream string, users []benchUser, msgs [][]byte) (*level, error) {
	p, err := startPopgate(ctx, cfg.popgate, dir, upstream, cfg.logLevel, "")
	if err != nil {
		return nil, err
	}
	defer p.stop()
	lv := &level{sessions: len(users)}
	addrOf := map[string]string{"direct": upstream, "popgate": p.addr}

	measure := func(mode string) (runStats, error) {
		waited, idle := waitIdle(ctx, cfg.idleWait)
		var before time.Duration
		if mode == "popgate" {
			if before, err = cpuTime(p.pid()); err != nil {
				return runStats{}, err
			}
		}
		st, err := measureRun(ctx, addrOf[mode], users, msgs)
		if err != nil {
			return runStats{}, fmt.Errorf("%d sessions, %s: %w", len(users), mode, err)
		}
		st.mode, st.waited, st.idle = mode, waited, idle
		if mode == "popgate" {
			after, err := cpuTime(p.pid())
			if err != nil {
				return runStats{}, err
			}
			st.cpu = after - before
			st.others -= st.cpu
		}
		st.others = max(0, st.others)
		return st, nil
	}
	// once measures a run; a run during which others used much of the
	// machine is measured again (at most maxRetries times), after waiting
	// for an idle machine, and marked if it stays disturbed.
	once := func(mode string) (runStats, error) {
		for attempt := 0; ; attempt++ {
			st, err := measure(mode)
			if err != nil {
				return st, err
			}
			st.retries = attempt
			if !st.disturbed() || attempt == maxRetries {
				return st, nil
			}
			log.Printf("%d sessions, %s: others used %.0f%% of the machine during the run; measuring it again",
				len(users), mode, 100*st.othersShare())
		}
	}

	log.Printf("%d sessions: warm-up (direct, then popgate)", len(users))
	for _, mode := range []string{"direct", "popgate"} {
		if _, err := once(mode); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	for r := 0; r < cfg.repeat; r++ {
		modes := []string{"direct", "popgate"}
		if r%2 == 1 {
			modes = []string{"popgate", "direct"}
		}
		for _, mode := range modes {
			st, err := once(mode)
			if err != nil {
				return nil, err
			}
			log.Printf("%d sessions, run %d/%d, %-7s %6.1f MB/s  RETR p50 %s p99 %s  setup p50 %s  CPU busy %.0f%% (others %.0f%%)",
				len(users), r+1, cfg.repeat, mode, st.mbps, ms(st.retrP50), ms(st.retrP99), ms(st.setupP50), 100*st.busy,
				100*st.othersShare())
			lv.order = append(lv.order, mode)
			if mode == "direct" {
				lv.direct = append(lv.direct, st)
			} else {
				lv.popgate = append(lv.popgate, st)
			}
		}
	}
	lv.peakRSSkB = procStatusKB(p.pid(), "VmHWM")
	p.stop()
	lv.logLines, lv.logBytes = p.logStats()
	return lv, nil
}

// measureRun runs one session per user at once against addr and collects
// what they measured.
func measureRun(parent context.Context, addr string, users []benchUser, msgs [][]byte) (runStats, error) {
	return measureRunWith(parent, addr, users, func(ctx context.Context, addr string, u benchUser, res *sessionResult) {
		runSession(ctx, addr, u, msgs, res)
	})
}

// sessionFunc runs one session of user u against addr.
type sessionFunc func(ctx context.Context, addr string, u benchUser, res *sessionResult)

// measureRunWith runs sess once per user at once against addr.
func measureRunWith(parent context.Context, addr string, users []benchUser, sess sessionFunc) (runStats, error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	res := make([]sessionResult, len(users))
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i, u := range users {
		wg.Go(func() {
			<-gate
			sess(ctx, addr, u, &res[i])
			if res[i].err != nil {
				cancel() // one failure ends the run
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
		// Report the session that failed first, not those closed because of it.
		var first error
		for i := range res {
			if e := res[i].err; e != nil && (first == nil || errors.Is(first, net.ErrClosed) && !errors.Is(e, net.ErrClosed)) {
				first = fmt.Errorf("session %d (%s): %w", i+1, users[i].name, e)
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
	st.others = machineCPU - st.client - st.dovecot // popgate's share is taken off by the caller
	var retr, setup []time.Duration
	for i := range res {
		if res[i].err != nil {
			return runStats{}, res[i].err
		}
		st.bytes += res[i].bytes
		retr = append(retr, res[i].retr...)
		setup = append(setup, res[i].setup)
	}
	st.mbps = float64(st.bytes) / wall.Seconds() / 1e6
	st.retrP50, st.retrP99 = percentile(retr, 0.50), percentile(retr, 0.99)
	st.retrMean = mean(retr)
	st.setupP50 = percentile(setup, 0.50)
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

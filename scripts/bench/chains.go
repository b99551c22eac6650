package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/popgate/popgate/filters/clamav"
)

// chainNames are the measurements of -chains: the empty chain (main.go),
// strip+tag, clamd alone, the spam filter on rspamd (spam.go), the message
// memory (memory.go), the peak RSS with a big message, and the memory per
// idle session (idle.go).
var chainNames = []string{"none", "strip+tag", "clamd", "spam", "memory", "rss", "idle"}

// chainLevel is one filter-chain measurement: one chain, one message
// variant, one concurrency; direct, popgate, and (spam) pass-through and
// (clamd, spam) scanner runs.
type chainLevel struct {
	chain     string // "strip+tag", "clamd" or "spam"
	variant   string
	sessions  int
	messages  int // per session
	direct    []runStats
	pass      []runStats // spam: popgate with the empty chain
	popgate   []runStats
	scan      []runStats // clamd, spam: the same messages sent straight to the scanner
	scanLabel string     // the scan mode's name: "INSTREAM", "/checkv2"
	order     []string
	peakRSSkB int64
	counted   int64 // strip+tag: messages delivered stripped; spam: tagged as spam; over the measured popgate runs
	distinct  int   // strip+tag on real-world messages: how many of the messages were delivered stripped
	logLines  int
}

// rssResult is one big message through popgate.
type rssResult struct {
	chain     string
	size      int
	retr      time.Duration
	cpu       time.Duration
	note      string
	startKB   int64 // VmHWM before the RETR
	peakKB    int64 // VmHWM after it
	spoolPeak int64 // largest spool directory seen during the RETR
}

type clamdscanResult struct {
	files int
	bytes int64
	wall  []time.Duration
	err   string
}

type chainResults struct {
	levels     []*chainLevel
	rss        []rssResult
	maxThreads string
	streamMax  string
	clamdAddr  string
	clamdscan  *clamdscanResult
	size       int
	memory     *memoryResults
	spam       *spamInfo
	mix        *mixInfo // the realistic mix, if measured
}

// clamdConf reads a setting of clamd.conf ($POPGATE_TEST_CLAMD_CONF).
func clamdConf(key string) string {
	b, err := os.ReadFile(os.Getenv("POPGATE_TEST_CLAMD_CONF"))
	if err != nil {
		return ""
	}
	for l := range strings.Lines(string(b)) {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == key {
			return f[1]
		}
	}
	return ""
}

// clamdPID is the test clamd's pid (PidFile), 0 if unknown.
func clamdPID() int { return pidFromFile(clamdConf("PidFile")) }

// pidFromFile is the pid a daemon's pid file names, 0 if there is none or
// no such process.
func pidFromFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if _, err := cpuTime(pid); err != nil {
		return 0
	}
	return pid
}

func hclList(v []string) string {
	q := make([]string, len(v))
	for i, s := range v {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// chainHCL is the configuration added to popgate's for a chain.
// A metrics listener gives popgate's own scan times and where its RETRs'
// time went.
func chainHCL(dir, clamdAddr string, chain []string) (string, error) {
	// rescan = "always": these runs measure the chain itself, every
	// download scanned (the message memory would serve repeats unscanned).
	s, _, err := chainConfig(dir, clamdAddr, chain, "  rescan = \"always\"\n", "")
	return s + metricsHCL, err
}

// metricsHCL is a metrics listener on a free port.
const metricsHCL = "metrics {\n  address = \"127.0.0.1:0\"\n}\n"

// chainConfig is chainHCL with policyExtra added to the policy block and
// avExtra to the clamav filter's; it also returns the quarantine directory
// (where the embedded memory.db is).
func chainConfig(dir, clamdAddr string, chain []string, policyExtra, avExtra string) (string, string, error) {
	qdir, err := os.MkdirTemp(dir, "quarantine-")
	if err != nil {
		return "", "", err
	}
	sdir := filepath.Join(dir, "spool")
	if err := os.MkdirAll(sdir, 0o700); err != nil {
		return "", "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "spool {\n  dir          = %q\n  memory_limit = \"1MB\"\n}\nquarantine {\n  dir = %q\n}\n", sdir, qdir)
	if slices.Contains(chain, "av") {
		fmt.Fprintf(&b, "scanner \"clamav\" \"clamd\" {\n  addresses = [%q]\n  timeout   = \"60s\"\n}\nfilter \"clamav\" \"av\" {\n  scanner = \"clamd\"\n%s}\n", clamdAddr, avExtra)
	}
	fmt.Fprintf(&b, "filter \"strip\" \"dangerous\" {\n  extensions        = %s\n  archive_filenames = [\"*.exe\", \"*.scr\", \"*.js\"]\n}\n", hclList(stripExtensions))
	b.WriteString("filter \"tag\" \"stamp\" {\n  headers = { \"X-Popgate-Scanned\" = \"yes\" }\n}\n")
	fmt.Fprintf(&b, "policy \"default\" {\n  chain  = %s\n%s}\n", hclList(chain), policyExtra)
	return b.String(), qdir, nil
}

// runChains runs the filter-chain measurements asked for in cfg.chains.
func runChains(ctx context.Context, cfg config, tb *benchTB, dir, upstream string) (*chainResults, error) {
	if !cfg.has("strip+tag") && !cfg.has("clamd") && !cfg.has("spam") && !cfg.has("memory") && !cfg.has("rss") {
		return nil, nil
	}
	cr := &chainResults{maxThreads: clamdConf("MaxThreads"), streamMax: clamdConf("StreamMaxLength"), size: cfg.size}
	cr.clamdAddr = os.Getenv("POPGATE_TEST_CLAMD")
	if cfg.has("strip+tag") || cfg.has("clamd") || cfg.has("memory") {
		n := 0
		if cfg.has("strip+tag") {
			n = slices.Max(cfg.stripSessions)
		}
		if cfg.has("clamd") || cfg.has("memory") {
			if cr.clamdAddr == "" {
				return nil, errors.New("POPGATE_TEST_CLAMD is not set")
			}
		}
		if cfg.has("clamd") {
			n = max(n, slices.Max(cfg.clamdSessions))
		}
		if cfg.has("memory") {
			n = max(n, slices.Max(cfg.memSessions))
		}
		clean := make([][]byte, cfg.fmessages)
		mixed := make([][]byte, cfg.fmessages)
		exe := make([]bool, cfg.fmessages)
		for i := range clean {
			var err error
			if clean[i], err = makeAttachMessage(i+1, cfg.size, false); err != nil {
				return nil, err
			}
			exe[i] = i%10 == 3
			if mixed[i], err = makeAttachMessage(100000+i+1, cfg.size, exe[i]); err != nil {
				return nil, err
			}
		}
		var corpus, mix [][]byte
		if cfg.has("strip+tag") && len(cfg.mixSessions) > 0 {
			var err error
			if corpus, err = loadCorpus(cfg.mixDir); err != nil {
				return nil, err
			}
			mix = realisticMix(corpus)
			cr.mix = newMixInfo(mix, corpus)
		}
		t0 := time.Now()
		n = min(n, cfg.mailboxes)
		log.Printf("creating %d mailboxes of 2 × %d attachment-heavy messages, %d of the realistic mix and the %d of the strip corpus",
			n, cfg.fmessages, len(mix), len(corpus))
		users, err := createMailboxes(tb, n, slices.Concat(clean, mixed, mix, corpus))
		if err != nil {
			return nil, err
		}
		log.Printf("mailboxes ready in %.1f s", time.Since(t0).Seconds())
		if cfg.has("strip+tag") {
			for _, s := range cfg.stripSessions {
				for _, v := range []struct {
					name  string
					first int
					msgs  [][]byte
					exe   []bool // attachment-heavy: those with an .exe; nil: real-world messages (mixSpec)
					at    []int  // the levels of -stripsessions it runs at
				}{
					{"clean", 1, clean, make([]bool, len(clean)), cfg.stripSessions},
					{"10% .exe", cfg.fmessages + 1, mixed, exe, cfg.exeSessions},
					{mixVariant, 2*cfg.fmessages + 1, mix, nil, cfg.mixSessions},
					{corpusVariant, 2*cfg.fmessages + len(mix) + 1, corpus, nil, cfg.mixSessions},
				} {
					if len(v.msgs) == 0 || !slices.Contains(v.at, s) {
						continue
					}
					var sp chainSpec
					var err error
					if v.exe == nil {
						sp, err = mixSpec(dir, v.msgs)
					} else {
						sp, err = attachSpec(dir, cr.clamdAddr, []string{"dangerous", "stamp"}, v.msgs, v.exe)
					}
					if err != nil {
						return nil, err
					}
					lv, err := measureChain(ctx, cfg, dir, upstream, sp, v.name, users, s, v.first, v.msgs)
					if err != nil {
						return nil, err
					}
					cr.levels = append(cr.levels, lv)
				}
			}
		}
		if cfg.has("clamd") {
			cm := clean[:cfg.cmessages]
			for _, s := range cfg.clamdSessions {
				sp, err := attachSpec(dir, cr.clamdAddr, []string{"av"}, cm, make([]bool, len(cm)))
				if err != nil {
					return nil, err
				}
				lv, err := measureChain(ctx, cfg, dir, upstream, sp, "clean", users, s, 1, cm)
				if err != nil {
					return nil, err
				}
				cr.levels = append(cr.levels, lv)
			}
			cr.clamdscan = runClamdscan(ctx, dir, cm)
		}
		if cfg.has("memory") {
			mr, err := runMemory(ctx, cfg, dir, upstream, cr.clamdAddr, users, clean)
			if err != nil {
				return nil, err
			}
			cr.memory = mr
		}
	}
	if cfg.has("spam") {
		if err := cr.runSpam(ctx, cfg, tb, dir, upstream); err != nil {
			return nil, err
		}
	}
	if cfg.has("rss") {
		rs, err := measureRSS(ctx, cfg, tb, dir, upstream)
		if err != nil {
			return nil, err
		}
		cr.rss = rs
	}
	return cr, nil
}

// chainSpec is what sets one chain measurement apart: popgate's
// configuration, the check of a message received through it, and the modes
// besides direct and popgate.
type chainSpec struct {
	name    string                         // "strip+tag", "clamd", "spam"
	hcl     string                         // added to popgate's configuration
	through func(k int, body []byte) error // checks message k received through popgate
	counted *atomic.Int64                  // what through counts (strip+tag: stripped messages); reset after the warm-up
	// distinct, if set, is how many of the messages through counted at
	// least once (warm-up included).
	distinct func() int
	// pass adds a mode through a second popgate with the empty chain, the
	// pass-through the chain's cost is measured against.
	pass bool
	// scan, if set, is the scanner alone: the same messages sent straight
	// to it by the harness (mode "scan", labelled scanLabel), as many at
	// once as popgate would have in flight at n sessions.
	scan      func(ctx context.Context, n int, d time.Duration, msgs [][]byte) (runStats, error)
	scanLabel string
	// scannerCPU is the scanner's CPU time so far (nil: unknown).
	scannerCPU func() time.Duration
	// scanKind, if set, is the kind label of popgate_scan_duration_seconds
	// that each popgate run reads from popgate's /metrics (hcl must have a
	// metrics block), with filter's popgate_filter_duration_seconds.
	scanKind, filter string
	// rounds, if set, makes the popgate and scan runs count-based: each
	// session (scan worker) goes through the messages this often, instead
	// of running for cfg.duration. Where scan times differ by message, a
	// window of a few slow scans would hold different messages in the two
	// modes; rounds give both the same ones.
	rounds int
}

// attachSpec is the strip+tag or clamd measurement on the attachment-heavy
// messages msgs (exe: those with an .exe, which strip+tag strips).
func attachSpec(dir, clamdAddr string, chain []string, msgs [][]byte, exe []bool) (chainSpec, error) {
	sp := chainSpec{name: "strip+tag", counted: new(atomic.Int64), pass: true}
	if slices.Contains(chain, "av") {
		sp.pass = false
		sp.name, sp.scanLabel = "clamd", "INSTREAM"
		sp.scan = func(ctx context.Context, n int, d time.Duration, msgs [][]byte) (runStats, error) {
			return measureScanRun(ctx, min(n, scanWorkers), d, msgs, func(ctx context.Context, _ int, m []byte) (time.Duration, error) {
				reply, err := clamdScan(ctx, clamdAddr, m)
				if err == nil && reply != "stream: OK" {
					err = fmt.Errorf("clamd said %q", reply)
				}
				return 0, err
			})
		}
		if pid := clamdPID(); pid != 0 {
			sp.scannerCPU = func() time.Duration { d, _ := cpuTime(pid); return d }
		}
	}
	var err error
	if sp.hcl, err = chainHCL(dir, clamdAddr, chain); err != nil {
		return chainSpec{}, err
	}
	parts := 5 // text, zip, image or exe, pdf … counted below from the original
	if n := bytes.Count(msgs[0], []byte("\r\n--=_att_")); n > 0 {
		parts = n - 1 // boundaries minus the closing one (which also starts "--=_att_")
	}
	sp.through = func(k int, body []byte) error {
		if sp.name == "clamd" {
			if !bytes.Equal(body, msgs[k]) {
				return fmt.Errorf("clamd chain: got %d bytes, not the %d-byte original", len(body), len(msgs[k]))
			}
			return nil
		}
		if exe[k] {
			sp.counted.Add(1)
			return checkStripped(body, parts)
		}
		if len(body) != len(tagPrefix)+len(msgs[k]) || !bytes.HasPrefix(body, tagPrefix) || !bytes.Equal(body[len(tagPrefix):], msgs[k]) {
			return fmt.Errorf("got %d bytes, not the tag header + the %d-byte original", len(body), len(msgs[k]))
		}
		return nil
	}
	return sp, nil
}

// The strip+tag variants on real-world-shaped messages: the realistic mix
// (issue 14's target), ordinary mail with the strip corpus interleaved, and
// the strip corpus alone (reported): the corpus is adversarial, most of it
// is stripped, and each stripped message is quarantined with durable writes
// before delivery, so that row measures the quarantine.
const (
	mixVariant    = "realistic mix"
	corpusVariant = "strip corpus"
)

// realWorld reports whether variant is one of the real-world-shaped ones.
func realWorld(variant string) bool { return variant == mixVariant || variant == corpusVariant }

// mixEvery is how many ordinary messages precede each corpus message in the
// realistic mix.
const mixEvery = 9

// realisticMix is ordinary mail, the small messages of the spam bench
// (makeSpamMixMessage: notes, replies, newsletters, HTML, UTF-8, one in ten
// with a PDF), with the corpus interleaved evenly: mixEvery ordinary
// messages, then one of the corpus, and so on.
func realisticMix(corpus [][]byte) [][]byte {
	out := make([][]byte, 0, (mixEvery+1)*len(corpus))
	for k, c := range corpus {
		for j := range mixEvery {
			out = append(out, makeSpamMixMessage(k*mixEvery+j+1))
		}
		out = append(out, c)
	}
	return out
}

// mixInfo describes the realistic mix for the report.
type mixInfo struct {
	messages, corpus int   // in all, of them from the corpus
	bytes            int64 // in all
	min, max         int   // sizes of the ordinary messages
	corpusMax        int   // the largest of the corpus
}

func newMixInfo(mix, corpus [][]byte) *mixInfo {
	mi := &mixInfo{messages: len(mix), corpus: len(corpus), min: 1 << 30}
	for i, m := range mix {
		mi.bytes += int64(len(m))
		if i%(mixEvery+1) == mixEvery {
			mi.corpusMax = max(mi.corpusMax, len(m))
		} else {
			mi.min, mi.max = min(mi.min, len(m)), max(mi.max, len(m))
		}
	}
	return mi
}

// loadCorpus reads the strip corpus: the messages (*.eml) of dir, in name
// order, with CRLF line breaks (as Dovecot serves them over POP3 whatever
// the file has) and a final line break.
func loadCorpus(dir string) ([][]byte, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil || len(names) == 0 {
		return nil, fmt.Errorf("-mixdir %s: no *.eml messages (%v)", dir, err)
	}
	slices.Sort(names)
	var out [][]byte
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, err
		}
		b = bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
		if !bytes.HasSuffix(b, []byte("\r\n")) {
			b = append(b, "\r\n"...)
		}
		out = append(out, b)
	}
	return out, nil
}

// mixSpec is the strip+tag measurement on real-world-shaped messages (the
// realistic mix, the strip corpus): a message must arrive as the tag header
// followed by the original, or, when the strip rules matched, the tag
// header followed by a message that parses and holds strip's notice
// (counted, and which ones in distinct); the chain's notes may come first.
func mixSpec(dir string, msgs [][]byte) (chainSpec, error) {
	sp := chainSpec{name: "strip+tag", counted: new(atomic.Int64), pass: true}
	stripped := make([]atomic.Bool, len(msgs))
	sp.distinct = func() int {
		n := 0
		for i := range stripped {
			if stripped[i].Load() {
				n++
			}
		}
		return n
	}
	var err error
	if sp.hcl, err = chainHCL(dir, "", []string{"dangerous", "stamp"}); err != nil {
		return chainSpec{}, err
	}
	sp.through = func(k int, body []byte) error {
		// The chain's own notes come first: a signature the change broke,
		// parts it could not read (X-Popgate-Signature, X-Popgate-Warning).
		for bytes.HasPrefix(body, []byte("X-Popgate-Signature: ")) || bytes.HasPrefix(body, []byte("X-Popgate-Warning: ")) {
			i := bytes.Index(body, []byte("\r\n"))
			if i < 0 {
				break
			}
			body = body[i+2:]
		}
		rest, ok := bytes.CutPrefix(body, tagPrefix)
		switch {
		case !ok:
			return fmt.Errorf("message %d: no tag header", k+1)
		case bytes.Equal(rest, msgs[k]):
			return nil
		case !bytes.Contains(rest, []byte("popgate removed an attachment from this message.")):
			return fmt.Errorf("message %d: got %d bytes, neither the tag header + the %d-byte original nor a stripped message", k+1, len(body), len(msgs[k]))
		}
		if _, err := mail.ReadMessage(bytes.NewReader(rest)); err != nil {
			return fmt.Errorf("message %d: stripped message does not parse: %w", k+1, err)
		}
		sp.counted.Add(1)
		stripped[k].Store(true)
		return nil
	}
	return sp, nil
}

// downloadPhases are the phases of popgate_download_phase_seconds, in
// order.
var downloadPhases = [...]string{"upstream_wait", "upstream_read", "filtering", "delivery"}

// measureChain measures one chain on one message variant at one
// concurrency: a fresh popgate (and pass-through popgate), a warm-up of
// each, then cfg.repeat measured runs of each mode in alternating order.
func measureChain(ctx context.Context, cfg config, dir, upstream string, sp chainSpec, variant string,
	users []benchUser, n, first int, msgs [][]byte) (*chainLevel, error) {
	name := sp.name
	p, err := startPopgate(ctx, cfg.popgate, dir, upstream, cfg.logLevel, sp.hcl)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	metricsAddr, _, err := findMetricsAddr(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var pp *popgateProc
	if sp.pass {
		// The metrics listener as the chain's popgate has one: the
		// two differ by the chain alone.
		if pp, err = startPopgate(ctx, cfg.popgate, dir, upstream, cfg.logLevel, metricsHCL); err != nil {
			return nil, err
		}
		defer pp.stop()
	}
	lv := &chainLevel{chain: name, variant: variant, sessions: n, messages: len(msgs), scanLabel: sp.scanLabel}
	direct := filteredSession(first, msgs, func(k int, body []byte) error {
		if !bytes.Equal(body, msgs[k]) {
			return fmt.Errorf("got %d bytes, not the %d-byte original", len(body), len(msgs[k]))
		}
		return nil
	})
	through := filteredSession(first, msgs, sp.through)
	modes := []string{"direct"}
	if sp.pass {
		modes = append(modes, "pass")
	}
	modes = append(modes, "popgate")
	if sp.scan != nil {
		modes = append(modes, "scan")
	}
	scrapeScans := func() (metricSet, error) { return scrape(metricsAddr) }
	// measure runs mode for d, or, with rounds > 0, until each session
	// (worker) went through the messages that often.
	measure := func(mode string, d time.Duration, rounds int) (runStats, error) {
		waited, idle := waitIdle(ctx, cfg.idleWait)
		var st runStats
		var err error
		var proc *popgateProc
		switch mode {
		case "popgate":
			proc = p
		case "pass":
			proc = pp
		}
		var pBefore, cBefore time.Duration
		if proc != nil {
			pBefore, _ = cpuTime(proc.pid())
		}
		if sp.scannerCPU != nil {
			cBefore = sp.scannerCPU()
		}
		var mBefore metricSet
		if mode == "popgate" {
			if mBefore, err = scrapeScans(); err != nil {
				return runStats{}, fmt.Errorf("%s: /metrics: %w", name, err)
			}
		}
		session, scanned := through, msgs
		if rounds > 0 {
			d = 0 // one session per worker, or one pass of each scan worker
			session = func(ctx context.Context, addr string, u benchUser, _ *runClock, res *sessionResult) {
				for r := 0; r < rounds && res.err == nil; r++ {
					through(ctx, addr, u, nil, res)
				}
			}
			scanned = slices.Repeat(msgs, rounds)
		}
		switch mode {
		case "direct":
			st, err = measureRunWith(ctx, upstream, users, n, d, direct)
		case "pass":
			st, err = measureRunWith(ctx, pp.addr, users, n, d, direct)
		case "popgate":
			st, err = measureRunWith(ctx, p.addr, users, n, d, session)
		case "scan":
			st, err = sp.scan(ctx, n, d, scanned)
		}
		if err != nil {
			return runStats{}, fmt.Errorf("%s, %s, %d sessions, %s: %w", name, variant, n, mode, err)
		}
		st.mode, st.waited, st.idle = mode, waited, idle
		if proc != nil {
			pAfter, _ := cpuTime(proc.pid())
			st.cpu = pAfter - pBefore
		}
		if sp.scannerCPU != nil {
			st.scanner = sp.scannerCPU() - cBefore
		}
		if mBefore != nil {
			mAfter, err := scrapeScans()
			if err != nil {
				return runStats{}, fmt.Errorf("%s: /metrics: %w", name, err)
			}
			kind := map[string]string{"kind": sp.scanKind}
			st.scans = int64(mAfter.sum("popgate_scan_duration_seconds_count", kind) - mBefore.sum("popgate_scan_duration_seconds_count", kind))
			st.scanSum = seconds(mAfter.sum("popgate_scan_duration_seconds_sum", kind) - mBefore.sum("popgate_scan_duration_seconds_sum", kind))
			f := map[string]string{"filter": sp.filter}
			st.filterSum = seconds(mAfter.sum("popgate_filter_duration_seconds_sum", f) - mBefore.sum("popgate_filter_duration_seconds_sum", f))
			st.downloads = int64(mAfter.sum("popgate_download_phase_seconds_count", map[string]string{"phase": downloadPhases[0]}) -
				mBefore.sum("popgate_download_phase_seconds_count", map[string]string{"phase": downloadPhases[0]}))
			for i, ph := range downloadPhases {
				l := map[string]string{"phase": ph}
				st.phaseSum[i] = seconds(mAfter.sum("popgate_download_phase_seconds_sum", l) - mBefore.sum("popgate_download_phase_seconds_sum", l))
			}
		}
		st.others = max(0, st.others-st.cpu-st.scanner)
		return st, nil
	}
	once := func(mode string) (runStats, error) {
		rounds := 0
		if mode == "popgate" || mode == "scan" {
			rounds = sp.rounds
		}
		for attempt := 0; ; attempt++ {
			st, err := measure(mode, cfg.duration, rounds)
			if err != nil {
				return st, err
			}
			st.retries = attempt
			if !st.disturbed() || attempt >= cfg.retries {
				return st, nil
			}
			log.Printf("%s, %s, %d sessions, %s: others used %.0f%% of the machine during the run; measuring it again",
				name, variant, n, mode, 100*st.othersShare())
		}
	}
	log.Printf("%s, %s, %d sessions: warm-up", name, variant, n)
	if cfg.warmup > 0 {
		// The fresh popgates only: their runs read the same mailboxes,
		// which warms Dovecot and the page cache for the direct runs too.
		for _, mode := range modes {
			if mode != "popgate" && mode != "pass" {
				continue
			}
			if _, err := measure(mode, cfg.warmup, 0); err != nil {
				return nil, fmt.Errorf("warm-up: %w", err)
			}
		}
	}
	sp.counted.Store(0)
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
			scans := ""
			if st.scans > 0 && st.scanSum > 0 {
				whose := map[string]string{"popgate": "popgate's scans"}[mode]
				if whose == "" {
					whose = "the scanner's own time"
				}
				scans = fmt.Sprintf("  %s: %d, mean %s", whose, st.scans, ms(st.scanSum/time.Duration(st.scans)))
			}
			log.Printf("%s, %s, %d sessions, run %d/%d, %-7s %6.1f MB/s %6.0f msg/s  RETR p50 %s p99 %s mean %s%s  CPU busy %.0f%% (others %.0f%%)",
				name, variant, n, r+1, cfg.repeat, mode, st.mbps, st.msgps, ms(st.retrP50), ms(st.retrP99), ms(st.retrMean), scans,
				100*st.busy, 100*st.othersShare())
			lv.order = append(lv.order, mode)
			switch mode {
			case "direct":
				lv.direct = append(lv.direct, st)
			case "pass":
				lv.pass = append(lv.pass, st)
			case "popgate":
				lv.popgate = append(lv.popgate, st)
			default:
				lv.scan = append(lv.scan, st)
			}
		}
	}
	lv.counted = sp.counted.Load()
	if sp.distinct != nil {
		lv.distinct = sp.distinct()
	}
	lv.peakRSSkB = procStatusKB(p.pid(), "VmHWM")
	p.stop()
	lv.logLines, _ = p.logStats()
	return lv, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// clamdScan sends msg to clamd with INSTREAM (64 KiB chunks, as popgate
// does, on a new connection) and returns clamd's reply.
func clamdScan(ctx context.Context, addr string, msg []byte) (string, error) {
	network, a := "tcp", strings.TrimPrefix(addr, "tcp://")
	if s, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, a = "unix", s
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, a)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	buf := make([]byte, 0, 64<<10+16)
	buf = append(buf, "zINSTREAM\x00"...)
	for off := 0; off < len(msg); off += 64 << 10 {
		chunk := msg[off:min(off+64<<10, len(msg))]
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(chunk)))
		buf = append(buf, chunk...)
		if _, err := conn.Write(buf); err != nil {
			return "", err
		}
		buf = buf[:0]
	}
	if _, err := conn.Write([]byte{0, 0, 0, 0}); err != nil {
		return "", err
	}
	reply, err := io.ReadAll(io.LimitReader(conn, 4096))
	if err != nil && len(reply) == 0 {
		return "", err
	}
	return string(bytes.TrimRight(reply, "\x00\r\n")), nil
}

// scanWorkers caps the concurrent INSTREAM workers of the scan mode at
// popgate's own default (scanner max_concurrent = 8): popgate never scans
// more at once, and clamd's queue (MaxThreads 20 + MaxConnectionQueueLength
// 200) would refuse 256 connections at once.
const scanWorkers = 8

// measureScanRun runs n workers at once, each sending msgs to a scanner
// with scan in order, again and again, until d has passed (d = 0: once),
// timing each scan from connect to the verdict. scan returns the time the
// scanner itself says it took (0: it says nothing).
func measureScanRun(ctx context.Context, n int, d time.Duration, msgs [][]byte,
	scan func(ctx context.Context, worker int, msg []byte) (time.Duration, error)) (runStats, error) {
	times := make([][]time.Duration, n)
	counted := make([]int64, n)
	self := make([]time.Duration, n)
	errs := make([]error, n)
	gate := make(chan struct{})
	var until time.Time
	var wg sync.WaitGroup
	for w := range n {
		wg.Go(func() {
			<-gate
			for {
				for _, m := range msgs {
					if !until.IsZero() && time.Now().After(until) {
						return
					}
					t := time.Now()
					own, err := scan(ctx, w, m)
					if err != nil {
						errs[w] = err
						return
					}
					times[w] = append(times[w], time.Since(t))
					counted[w] += int64(len(m))
					self[w] += own
				}
				if until.IsZero() {
					return
				}
			}
		})
	}
	before := sampleCPU()
	start := time.Now()
	if d > 0 {
		until = start.Add(d)
	}
	close(gate)
	wg.Wait()
	wall := time.Since(start)
	after := sampleCPU()
	if err := errors.Join(errs...); err != nil {
		return runStats{}, err
	}
	st := runStats{wall: wall, client: after.self - before.self}
	if after.total > before.total {
		st.busy = float64(after.busy-before.busy) / float64(after.total-before.total)
	}
	st.others = time.Duration(after.busy-before.busy)*time.Second/time.Duration(clkTck()) - st.client
	var all []time.Duration
	for w, t := range times {
		all = append(all, t...)
		st.bytes += counted[w]
		st.scanSum += self[w]
	}
	st.msgs = int64(len(all))
	st.scans = st.msgs
	st.mbps = float64(st.bytes) / wall.Seconds() / 1e6
	st.msgps = float64(st.msgs) / wall.Seconds()
	st.retrP50, st.retrP99, st.retrMean = percentile(all, 0.50), percentile(all, 0.99), mean(all)
	return st, nil
}

// runClamdscan times `clamdscan --stream` on a directory of the messages,
// for reference (once to warm up, then 3 times).
func runClamdscan(ctx context.Context, dir string, msgs [][]byte) *clamdscanResult {
	r := &clamdscanResult{files: len(msgs)}
	mdir := filepath.Join(dir, "clamdscan")
	if err := os.MkdirAll(mdir, 0o755); err != nil {
		r.err = err.Error()
		return r
	}
	for i, m := range msgs {
		if err := os.WriteFile(filepath.Join(mdir, fmt.Sprintf("msg-%03d.eml", i+1)), m, 0o644); err != nil {
			r.err = err.Error()
			return r
		}
		r.bytes += int64(len(m))
	}
	for k := 0; k < 4; k++ {
		t := time.Now()
		cmd := exec.CommandContext(ctx, "clamdscan", "--stream", "--no-summary", "-c", os.Getenv("POPGATE_TEST_CLAMD_CONF"), mdir)
		out, err := cmd.CombinedOutput()
		d := time.Since(t)
		if err != nil {
			r.err = fmt.Sprintf("%v: %s", err, bytes.TrimSpace(out))
			return r
		}
		if k > 0 {
			r.wall = append(r.wall, d)
		}
	}
	log.Printf("clamdscan --stream: %d files in %s (median)", r.files, ms(medianDur(r.wall)))
	return r
}

// clamdScanMax is the size of the message the rss measurement has clamd
// scan when the big one is beyond the scanner's default max_size (25MB;
// the test clamd's StreamMaxLength is 25M, i.e. MiB).
const clamdScanMax = 24 * 1000 * 1000

// measureRSS passes one big message through popgate, with the empty chain,
// with strip+tag (spool memory_limit 1MB) and, when the test clamd is
// there, with clamd+strip+tag, each in a fresh process, and reads
// popgate's VmHWM. A big message beyond the scanner's max_size (and
// clamd's StreamMaxLength) is not scanned: the clamav filter passes it
// with its warning (oversize = "pass-with-tag"), and a second message of
// clamdScanMax bytes goes through clamd+strip+tag scanned.
func measureRSS(ctx context.Context, cfg config, tb *benchTB, dir, upstream string) ([]rssResult, error) {
	big, err := makeMessage(1, cfg.bigSize)
	if err != nil {
		return nil, err
	}
	msgs := [][]byte{big}
	clamdAddr := os.Getenv("POPGATE_TEST_CLAMD")
	if clamdAddr == "" {
		log.Printf("rss: POPGATE_TEST_CLAMD is not set: no clamd+strip+tag rows")
	} else if len(big) > clamav.DefaultMaxSize {
		scanned, err := makeMessage(2, clamdScanMax)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, scanned)
	}
	t0 := time.Now()
	users, err := createMailboxes(tb, 1, msgs)
	if err != nil {
		return nil, err
	}
	log.Printf("big-message mailbox (%d bytes) ready in %.1f s", len(big), time.Since(t0).Seconds())
	// clamav's warning on a message it did not scan (oversize =
	// "pass-with-tag"), one line in front of the message.
	oversize := []byte("X-Popgate-Warning: not scanned: too large")
	type rssRun struct {
		name  string
		chain []string
		msg   int // index in msgs
		note  string
	}
	runs := []rssRun{{"none", nil, 0, ""}, {"strip+tag", []string{"dangerous", "stamp"}, 0, ""}}
	av := []string{"av", "dangerous", "stamp"}
	switch {
	case len(msgs) > 1:
		runs = append(runs,
			rssRun{"clamd+strip+tag", av, 0, "not scanned: beyond the scanner's max_size and clamd's StreamMaxLength (oversize = \"pass-with-tag\")"},
			rssRun{"clamd+strip+tag", av, 1, "scanned by clamd"})
	case clamdAddr != "":
		runs = append(runs, rssRun{"clamd+strip+tag", av, 0, "scanned by clamd"})
	}
	var out []rssResult
	for _, run := range runs {
		name, extra := run.name, ""
		want := msgs[run.msg]
		if run.chain != nil {
			if extra, _, err = chainConfig(dir, clamdAddr, run.chain, "  rescan = \"always\"\n", "  oversize = \"pass-with-tag\"\n"); err != nil {
				return nil, err
			}
		}
		p, err := startPopgate(ctx, cfg.popgate, dir, upstream, cfg.logLevel, extra)
		if err != nil {
			return nil, err
		}
		r := rssResult{chain: name, size: len(want), note: run.note, startKB: procStatusKB(p.pid(), "VmHWM")}
		sess := filteredSession(run.msg+1, [][]byte{want}, func(_ int, body []byte) error {
			if run.chain == nil {
				if !bytes.Equal(body, want) {
					return fmt.Errorf("got %d bytes, not the %d-byte original", len(body), len(want))
				}
				return nil
			}
			rest, ok := bytes.CutPrefix(body, tagPrefix)
			if slices.Contains(run.chain, "av") && len(want) > clamav.DefaultMaxSize {
				// clamav's warning: "X-Popgate-Warning: not scanned: too large (…)" CRLF.
				if i := bytes.Index(rest, []byte("\r\n")); ok && bytes.HasPrefix(rest, oversize) && i > 0 {
					rest = rest[i+2:]
				} else {
					ok = false
				}
			}
			if !ok || !bytes.Equal(rest, want) {
				return fmt.Errorf("got %d bytes, not the header(s) + the %d-byte original", len(body), len(want))
			}
			return nil
		})
		// Watch the spool directory while the message passes.
		done := make(chan struct{})
		var spoolPeak atomic.Int64
		go func() {
			for {
				select {
				case <-done:
					return
				case <-time.After(20 * time.Millisecond):
				}
				var n int64
				_ = filepath.Walk(filepath.Join(dir, "spool"), func(_ string, fi os.FileInfo, err error) error {
					if err == nil && fi.Mode().IsRegular() {
						n += fi.Size()
					}
					return nil
				})
				if n > spoolPeak.Load() {
					spoolPeak.Store(n)
				}
			}
		}()
		before, _ := cpuTime(p.pid())
		var res sessionResult
		sess(ctx, p.addr, users[0], nil, &res)
		close(done)
		after, _ := cpuTime(p.pid())
		r.peakKB = procStatusKB(p.pid(), "VmHWM")
		p.stop()
		if res.err != nil {
			return nil, fmt.Errorf("rss, %s: %w", name, res.err)
		}
		r.retr, r.cpu, r.spoolPeak = res.retr[0], after-before, spoolPeak.Load()
		log.Printf("rss, %s: RETR of %d bytes in %.2f s, popgate VmHWM %.1f MiB (%.1f MiB before)", name, len(want),
			r.retr.Seconds(), float64(r.peakKB)/1024, float64(r.startKB)/1024)
		out = append(out, r)
	}
	return out, nil
}

func mean(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	var t time.Duration
	for _, x := range d {
		t += x
	}
	return t / time.Duration(len(d))
}

func medianDur(d []time.Duration) time.Duration {
	v := make([]float64, len(d))
	for i, x := range d {
		v[i] = float64(x)
	}
	if len(v) == 0 {
		return 0
	}
	return time.Duration(median(v))
}

package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Targets of issue 5 (reported, not asserted).
const (
	targetRatio      = 0.95 // popgate pass-through ≥ 0.95 × direct
	targetP99Extra   = time.Millisecond
	targetIdleKiB    = 40.0 // per idle session
	targetScaleRatio = 0.9  // 256 sessions ≥ 0.9 × 32 sessions
)

type report struct {
	cfg                   config
	m                     machine
	levels                []*level
	loadBefore, loadAfter string
	date                  string
	upstream              string
	chains                *chainResults
	idle                  *idleResults
	elapsed               time.Duration
	chartErr              string
}

// modeSummary is the median over the measured runs of one mode at one
// concurrency, per metric.
type modeSummary struct {
	mode                 string
	sessions             int
	runs                 int
	mbps, msgps          float64
	minMBps, maxMBps     float64
	retrP50, retrP99     time.Duration
	setupP50, setupP99   time.Duration
	cpuPerGB             float64 // the proxy's CPU seconds per 10^9 bytes (popgate, nginx)
	dovecotGB, clientGB  float64
	logins               int // sessions over the measured runs
	peakRSSkB            int64
	disturbed, discarded int
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func summarizeMode(lv *level, mode string) modeSummary {
	runs := lv.runs[mode]
	r := modeSummary{mode: mode, sessions: lv.sessions, runs: len(runs)}
	if len(runs) == 0 {
		return r
	}
	get := func(f func(runStats) float64) []float64 {
		v := make([]float64, len(runs))
		for i, s := range runs {
			v[i] = f(s)
		}
		return v
	}
	dur := func(f func(runStats) time.Duration) time.Duration {
		return time.Duration(median(get(func(s runStats) float64 { return float64(f(s)) })))
	}
	mb := get(func(s runStats) float64 { return s.mbps })
	r.mbps, r.minMBps, r.maxMBps = median(mb), slices.Min(mb), slices.Max(mb)
	r.msgps = median(get(func(s runStats) float64 { return s.msgps }))
	r.retrP50 = dur(func(s runStats) time.Duration { return s.retrP50 })
	r.retrP99 = dur(func(s runStats) time.Duration { return s.retrP99 })
	r.setupP50 = dur(func(s runStats) time.Duration { return s.setupP50 })
	r.setupP99 = dur(func(s runStats) time.Duration { return s.setupP99 })
	var cpu, dov, cli time.Duration
	var n int64
	for _, s := range runs {
		cpu += s.cpu
		dov += s.dovecot
		cli += s.client
		n += s.bytes
		r.logins += s.sessions
		r.discarded += s.retries
		if s.disturbed() {
			r.disturbed++
		}
	}
	if n > 0 {
		gb := float64(n) / 1e9
		r.cpuPerGB, r.dovecotGB, r.clientGB = cpu.Seconds()/gb, dov.Seconds()/gb, cli.Seconds()/gb
	}
	target, _ := strings.CutSuffix(mode, "+qa")
	r.peakRSSkB = lv.peakRSSkB[target]
	return r
}

func (rp *report) level(n int) *level {
	for _, lv := range rp.levels {
		if lv.sessions == n {
			return lv
		}
	}
	return nil
}

// mbpsOf is the median MB/s of mode at n sessions, 0 if not measured.
func (rp *report) mbpsOf(mode string, n int) float64 {
	lv := rp.level(n)
	if lv == nil || len(lv.runs[mode]) == 0 {
		return 0
	}
	return summarizeMode(lv, mode).mbps
}

func msf(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e6) }

func signedMS(d time.Duration) string { return fmt.Sprintf("%+.2f", float64(d)/1e6) }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**NOT met**"
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.3f", a/b)
}

var modeTitle = map[string]string{"direct": "direct Dovecot", "popgate": "popgate pass-through", "nginx": "nginx mail proxy"}

// table is the main result table (Markdown, also printed to stdout).
func (rp *report) table() string {
	var b strings.Builder
	b.WriteString("| sessions | target | MB/s | msg/s | × direct | RETR p50 ms | RETR p99 ms | p99 Δ vs direct ms | login p50 ms | login p99 ms | proxy CPU s/GB | proxy peak RSS |\n")
	b.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, lv := range rp.levels {
		d := summarizeMode(lv, "direct")
		for _, t := range rp.cfg.targets {
			r := summarizeMode(lv, t)
			cpu, rss, delta := "–", "–", "–"
			if t != "direct" {
				cpu = fmt.Sprintf("%.2f", r.cpuPerGB)
				rss = fmt.Sprintf("%.1f MiB", float64(r.peakRSSkB)/1024)
				delta = signedMS(r.retrP99 - d.retrP99)
			}
			fmt.Fprintf(&b, "| %d | %s | %.1f | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n", lv.sessions, modeTitle[t], r.mbps, r.msgps,
				ratio(r.mbps, d.mbps), msf(r.retrP50), msf(r.retrP99), delta, msf(r.setupP50), msf(r.setupP99), cpu, rss)
		}
	}
	return b.String()
}

// quickAckTable compares each target with and without the client's
// delayed ACKs.
func (rp *report) quickAckTable() string {
	var b strings.Builder
	b.WriteString("| sessions | target | MB/s, delayed ACKs | MB/s, TCP_QUICKACK | change | RETR p50 ms without / with | RETR p99 ms without / with | login p50 ms without / with | × direct without / with | proxy CPU s/GB without / with |\n")
	b.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	any := false
	for _, lv := range rp.levels {
		if len(lv.runs["direct+qa"]) == 0 {
			continue
		}
		dn, dq := summarizeMode(lv, "direct"), summarizeMode(lv, "direct+qa")
		for _, t := range rp.cfg.targets {
			n, q := summarizeMode(lv, t), summarizeMode(lv, t+"+qa")
			if q.runs == 0 {
				continue
			}
			any = true
			cpu := "–"
			if t != "direct" {
				cpu = fmt.Sprintf("%.2f / %.2f", n.cpuPerGB, q.cpuPerGB)
			}
			fmt.Fprintf(&b, "| %d | %s | %.1f | %.1f | %+.0f%% | %s / %s | %s / %s | %s / %s | %s / %s | %s |\n", lv.sessions, modeTitle[t], n.mbps, q.mbps,
				100*(q.mbps/n.mbps-1), msf(n.retrP50), msf(q.retrP50), msf(n.retrP99), msf(q.retrP99), msf(n.setupP50), msf(q.setupP50),
				ratio(n.mbps, dn.mbps), ratio(q.mbps, dq.mbps), cpu)
		}
	}
	if !any {
		return ""
	}
	return b.String()
}

// ratios are the headline ratios (also printed on stdout).
func (rp *report) ratios() string {
	var b strings.Builder
	b.WriteString("| sessions | popgate / direct | popgate / nginx | nginx / direct | popgate / direct (QUICKACK) | popgate / nginx (QUICKACK) | nginx / direct (QUICKACK) |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, lv := range rp.levels {
		m := func(mode string) float64 { return rp.mbpsOf(mode, lv.sessions) }
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s |\n", lv.sessions,
			ratio(m("popgate"), m("direct")), ratio(m("popgate"), m("nginx")), ratio(m("nginx"), m("direct")),
			ratio(m("popgate+qa"), m("direct+qa")), ratio(m("popgate+qa"), m("nginx+qa")), ratio(m("nginx+qa"), m("direct+qa")))
	}
	return b.String()
}

// scaling is the throughput at the highest level against that at 32 (or
// the level below), per target.
func (rp *report) scaling() (string, int, int) {
	var levels []int
	for _, lv := range rp.levels {
		levels = append(levels, lv.sessions)
	}
	if rp.chains != nil {
		for _, c := range rp.chains.levels {
			if !slices.Contains(levels, c.sessions) {
				levels = append(levels, c.sessions)
			}
		}
	}
	slices.Sort(levels)
	if len(levels) < 2 {
		return "", 0, 0
	}
	hi := levels[len(levels)-1]
	lo := levels[len(levels)-2]
	if slices.Contains(levels, 32) && hi > 32 {
		lo = 32
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| target | MB/s at %d | MB/s at %d | %d ÷ %d | ≥ %.1f |\n|---|---:|---:|---:|---|\n", lo, hi, hi, lo, targetScaleRatio)
	row := func(name string, a, c float64) {
		if a == 0 || c == 0 {
			return
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.3f | %s |\n", name, a, c, c/a, verdict(c/a >= targetScaleRatio))
	}
	for _, qa := range []string{"", "+qa"} {
		for _, t := range rp.cfg.targets {
			name := modeTitle[t]
			if qa != "" {
				name += " (QUICKACK)"
			}
			row(name, rp.mbpsOf(t+qa, lo), rp.mbpsOf(t+qa, hi))
		}
	}
	if rp.chains != nil {
		get := func(chain string, n int) float64 {
			for _, c := range rp.chains.summaries(chain) {
				if c.lv.sessions == n && c.lv.variant == "clean" {
					return c.pMBps
				}
			}
			return 0
		}
		row("popgate strip+tag (clean)", get("strip+tag", lo), get("strip+tag", hi))
		row("popgate clamd", get("clamd", lo), get("clamd", hi))
	}
	return b.String(), lo, hi
}

// cpuTable splits the CPU time per GB between the processes of each path.
func (rp *report) cpuTable() string {
	var b strings.Builder
	b.WriteString("| sessions | target | Dovecot s/GB | client s/GB | proxy s/GB | total s/GB | if CPU-bound: × direct | measured × direct |\n|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for _, lv := range rp.levels {
		d := summarizeMode(lv, "direct")
		dt := d.dovecotGB + d.clientGB
		for _, t := range rp.cfg.targets {
			r := summarizeMode(lv, t)
			tot := r.dovecotGB + r.clientGB + r.cpuPerGB
			proxy := "–"
			if t != "direct" {
				proxy = fmt.Sprintf("%.2f", r.cpuPerGB)
			}
			fmt.Fprintf(&b, "| %d | %s | %.2f | %.2f | %s | %.2f | %s | %s |\n", lv.sessions, modeTitle[t], r.dovecotGB, r.clientGB, proxy, tot,
				ratio(dt, tot), ratio(r.mbps, d.mbps))
		}
	}
	return b.String()
}

// targets checks the targets.
func (rp *report) targets() string {
	var b strings.Builder
	b.WriteString("| target | measured | |\n|---|---|---|\n")
	for _, lv := range rp.levels {
		p, d, n := rp.mbpsOf("popgate", lv.sessions), rp.mbpsOf("direct", lv.sessions), rp.mbpsOf("nginx", lv.sessions)
		if p > 0 && d > 0 {
			fmt.Fprintf(&b, "| pass-through ≥ %.2f × direct, %d session(s) | %.3f | %s |\n", targetRatio, lv.sessions, p/d, verdict(p/d >= targetRatio))
		}
		if p > 0 && n > 0 {
			fmt.Fprintf(&b, "| pass-through ahead of nginx, %d session(s) | %.1f vs %.1f MB/s (%.3f) | %s |\n", lv.sessions, p, n, p/n, verdict(p > n))
		}
		pq, nq := rp.mbpsOf("popgate+qa", lv.sessions), rp.mbpsOf("nginx+qa", lv.sessions)
		if pq > 0 && nq > 0 {
			fmt.Fprintf(&b, "| … same, client with TCP_QUICKACK, %d session(s) | %.1f vs %.1f MB/s (%.3f) | %s |\n", lv.sessions, pq, nq, pq/nq, verdict(pq > nq))
		}
		// Issue 14: the relay costs no more CPU per byte than nginx's.
		for _, qa := range []string{"", "+qa"} {
			pc, nc := summarizeMode(lv, "popgate"+qa), summarizeMode(lv, "nginx"+qa)
			if pc.runs == 0 || nc.runs == 0 || nc.cpuPerGB == 0 {
				continue
			}
			what := fmt.Sprintf("pass-through CPU s/GB ≤ nginx's, %d session(s)", lv.sessions)
			if qa != "" {
				what = fmt.Sprintf("… same, client with TCP_QUICKACK, %d session(s)", lv.sessions)
			}
			fmt.Fprintf(&b, "| %s | %.2f vs %.2f s/GB (%.3f) | %s |\n", what, pc.cpuPerGB, nc.cpuPerGB, pc.cpuPerGB/nc.cpuPerGB, verdict(pc.cpuPerGB <= nc.cpuPerGB))
		}
		if p > 0 {
			e := summarizeMode(lv, "popgate").retrP99 - summarizeMode(lv, "direct").retrP99
			fmt.Fprintf(&b, "| p99 RETR added ≤ 1 ms (100 KB, no clamd), %d session(s) | %s ms | %s |\n", lv.sessions, signedMS(e), verdict(e <= targetP99Extra))
		}
	}
	if s, lo, hi := rp.scaling(); s != "" {
		p32, p256 := rp.mbpsOf("popgate", lo), rp.mbpsOf("popgate", hi)
		if p32 > 0 && p256 > 0 {
			fmt.Fprintf(&b, "| pass-through at %d ≥ %.1f × at %d sessions | %.3f | %s |\n", hi, targetScaleRatio, lo, p256/p32, verdict(p256/p32 >= targetScaleRatio))
		}
	}
	b.WriteString(rp.chains.chainTargets())
	b.WriteString(rp.chains.spamTargets())
	if rp.idle != nil {
		for _, r := range rp.idle.results {
			if r.proxy == "popgate" {
				k := r.perSessionKiB()
				fmt.Fprintf(&b, "| ≤ %.0f KiB per idle session (%s) | %.1f KiB (%d sessions: %.0f MiB → %.0f MiB) | %s |\n", targetIdleKiB, r.name, k,
					r.sessions, float64(r.beforeKB)/1024, float64(r.withKB)/1024, verdict(k <= targetIdleKiB))
			}
		}
	}
	return b.String()
}

func (rp *report) idleTable() string {
	if rp.idle == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString("| proxy, state | upstream | sessions | VmRSS before | VmRSS with the sessions | KiB per session | at 10,000 sessions | VmHWM | opened in |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rp.idle.results {
		fmt.Fprintf(&b, "| %s | %s | %d | %.1f MiB | %.1f MiB | **%.1f** | %.0f MiB | %.1f MiB | %.1f s |\n", r.name, r.upstream, r.sessions,
			float64(r.beforeKB)/1024, float64(r.withKB)/1024, r.perSessionKiB(), r.perSessionKiB()*10000/1024+float64(r.beforeKB)/1024,
			float64(r.hwmKB)/1024, r.open.Seconds())
	}
	return b.String()
}

func (rp *report) runs() string {
	var b strings.Builder
	for _, lv := range rp.levels {
		fmt.Fprintf(&b, "%d session(s):", lv.sessions)
		for _, mode := range slices.Sorted(func(yield func(string) bool) {
			for m := range lv.runs {
				if !yield(m) {
					return
				}
			}
		}) {
			r := summarizeMode(lv, mode)
			fmt.Fprintf(&b, " %s %.1f–%.1f MB/s;", mode, r.minMBps, r.maxMBps)
		}
		b.WriteString("\n\n| # | mode | MB/s | msg/s | sessions | RETR p50 ms | RETR p99 ms | login p50 ms | login p99 ms | wall s | proxy CPU s | Dovecot CPU s | client CPU s | others' CPU s | machine busy (others) | idle before | discarded |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
		idx := map[string]int{}
		for i, mode := range lv.order {
			s := lv.runs[mode][idx[mode]]
			idx[mode]++
			cpu := "–"
			if !strings.HasPrefix(mode, "direct") {
				cpu = fmt.Sprintf("%.2f", s.cpu.Seconds())
			}
			idle := fmt.Sprintf("yes (waited %.1f s)", s.waited.Seconds())
			if !s.idle {
				idle = fmt.Sprintf("**no** (waited %.1f s)", s.waited.Seconds())
			}
			others := fmt.Sprintf("%.0f%% (%.0f%%)", 100*s.busy, 100*s.othersShare())
			if s.disturbed() {
				others = fmt.Sprintf("%.0f%% (**%.0f%%**)", 100*s.busy, 100*s.othersShare())
			}
			fmt.Fprintf(&b, "| %d | %s | %.1f | %.0f | %d | %s | %s | %s | %s | %.2f | %s | %.2f | %.2f | %.2f | %s | %s | %d |\n", i+1, mode, s.mbps, s.msgps,
				s.sessions, msf(s.retrP50), msf(s.retrP99), msf(s.setupP50), msf(s.setupP99), s.wall.Seconds(), cpu, s.dovecot.Seconds(),
				s.client.Seconds(), s.others.Seconds(), others, idle, s.retries)
		}
		fmt.Fprintf(&b, "\npopgate logged %d lines (%d bytes) at level %q over these runs and its warm-up; nginx's error log has %d lines; the auth_http responder answered %d requests.\n\n",
			lv.logLines, lv.logBytes, rp.cfg.logLevel, lv.nginxLines, lv.authReqs)
	}
	return b.String()
}

// disturbed lists the measured runs during which others used more than
// maxOthersShare of the machine even after the retries.
func (rp *report) disturbed() []string {
	var out []string
	for _, lv := range rp.levels {
		for mode, runs := range lv.runs {
			for i, s := range runs {
				if s.disturbed() {
					out = append(out, fmt.Sprintf("%d sessions %s run %d (others %.0f%%)", lv.sessions, mode, i+1, 100*s.othersShare()))
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

func (rp *report) warning() string {
	d := rp.disturbed()
	if len(d) == 0 {
		return ""
	}
	total := 0
	for _, lv := range rp.levels {
		total += len(lv.order)
	}
	list := strings.Join(d, "; ")
	if len(d) > 6 {
		list = "see the per-run tables (\"others\" in bold)"
	}
	return fmt.Sprintf("**Warning: others used more than %.0f%% of the machine's CPU during %d of the %d measured runs of this comparison (-retries %d): %s. "+
		"Their numbers are less reliable; rerun on a quiet machine.**\n", 100*maxOthersShare, len(d), total, rp.cfg.retries, list)
}

func (rp *report) summary() string {
	var b strings.Builder
	c := rp.cfg
	fmt.Fprintf(&b, "\npopgate vs direct Dovecot vs nginx: runs of %s, sessions of up to %d messages × %d bytes, median of %d runs each\n\n",
		c.duration, c.messages, c.size, c.repeat)
	if len(rp.levels) > 0 {
		b.WriteString(rp.table())
		b.WriteString("\nratios:\n\n" + rp.ratios())
		if q := rp.quickAckTable(); q != "" {
			b.WriteString("\nwith and without TCP_QUICKACK:\n\n" + q)
		}
	}
	if s, _, _ := rp.scaling(); s != "" {
		b.WriteString("\nscaling:\n\n" + s)
	}
	if t := rp.idleTable(); t != "" {
		b.WriteString("\nidle sessions:\n\n" + t)
	}
	b.WriteString("\ntargets:\n\n" + rp.targets())
	if w := rp.warning(); w != "" {
		b.WriteString("\n" + w)
	}
	b.WriteString(rp.chains.summary())
	fmt.Fprintf(&b, "\nload average before / after: %s / %s; the benchmark took %s\n", rp.loadBefore, rp.loadAfter, rp.elapsed.Round(time.Second))
	return b.String()
}

func (rp *report) markdown() string {
	c := rp.cfg
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# popgate performance\n\n")
	w("Generated by `make bench` (`scripts/bench`) on %s in %s. Do not edit by hand: rerun it.\n\n", rp.date, rp.elapsed.Round(time.Second))
	w("One run measures, against the same Dovecot on the same machine: a **direct** connection to Dovecot, **popgate** as a pass-through relay ")
	w("(empty filter chain), **nginx's mail proxy** (Debian's nginx with its mail module), popgate with the **strip+tag** chain, popgate with **clamd**, popgate with the **spam** filter on rspamd, and a second download through the full chain served by the **message memory**; ")
	w("throughput at %s concurrent sessions, RETR and login latency, CPU per GB, peak RSS for a %d-byte message, and memory per idle session.\n\n",
		joinInts(c.sessions), c.bigSize)

	m := rp.m
	w("## Machine\n\n")
	w("- CPUs: %d × %s; memory %s; Linux %s\n", m.cpus, m.cpuModel, m.memTotal, m.kernel)
	w("- Go: %s; popgate: %s, source commit %s\n", m.goVer, m.popgate, m.commit)
	w("- Dovecot: %s (the test environment of `scripts/testenv.sh`, Maildir, passwd-file users); nginx: %s\n", m.dovecot, nginxVersion(c.nginx))
	w("- **Load average before / after the benchmark: %s / %s.** The machine is shared: other jobs (builds, tests) ran at the same time, so single runs are noisy (see \"All runs\").\n", rp.loadBefore, rp.loadAfter)
	w("- Client, Dovecot, popgate, nginx and clamd all run on this one machine and talk over loopback. fd limit (RLIMIT_NOFILE, hard): %d.\n\n", fdLimit())

	if len(rp.levels) > 0 {
		w("## Throughput and latency: direct, popgate, nginx\n\n")
		w("Runs of %s; every worker runs sessions back to back (connect, USER/PASS, RETR of up to %d messages of %d bytes, QUIT) until the run ends; ", c.duration, c.messages, c.size)
		w("median of %d runs per cell. Clients with delayed ACKs (the Linux default).\n\n", c.repeat)
		if wn := rp.warning(); wn != "" {
			w("%s\n", wn)
		}
		b.WriteString(rp.table())
		w("\n### Ratios\n\n")
		b.WriteString(rp.ratios())
		if q := rp.quickAckTable(); q != "" {
			w("\n### With and without the client's delayed ACKs\n\n")
			w("The same runs with the client setting `TCP_QUICKACK` on its sockets (after connect and again after every read, since Linux clears it by itself): ")
			w("the client then acknowledges every segment at once. A relay that leaves Nagle's algorithm on waits for those ACKs before it sends a short segment (the end of a response), ")
			w("so its throughput depends on the client's ACK policy; a relay with `TCP_NODELAY` should not care.\n\n")
			b.WriteString(q)
			b.WriteString(rp.quickAckNotes())
		}
	}
	if s, lo, hi := rp.scaling(); s != "" {
		w("\n### From %d to %d sessions\n\n", lo, hi)
		b.WriteString(s)
	}
	if rp.cfg.chart != "" {
		w("\n### Chart\n\n")
		if rp.chartErr != "" {
			w("The chart could not be drawn: %s\n", rp.chartErr)
		} else {
			rel := filepath.Base(rp.cfg.chart)
			if c.out != "" {
				if r, err := filepath.Rel(filepath.Dir(c.out), rp.cfg.chart); err == nil {
					rel = r
				}
			}
			base := strings.TrimSuffix(rel, filepath.Ext(rel))
			w("![Throughput against concurrency](%s)\n\n", rel)
			w("Drawn by gnuplot from [`%s.dat`](%s.dat) with [`%s.gp`](%s.gp), both written by the benchmark. ", base, base, base, base)
			w("Solid lines: clients with delayed ACKs; dashed: with TCP_QUICKACK. Strip+tag: the clean attachment-heavy messages; clamd: see its section.\n")
		}
	}
	w("\n## Targets\n\n")
	w("Reported, not asserted: the harness measures, and the numbers above decide.\n\n")
	b.WriteString(rp.targets())

	if rp.idle != nil {
		w("\n## Memory per idle session\n\n")
		w("A fresh proxy process per row; one session is opened and closed first (so lazily made state is in the baseline), VmRSS (/proc/PID/status) is read once it stays put, ")
		w("then the sessions are opened (64 at a time) and left idle, VmRSS is read again once it stays put, every session is checked to be still open, and all are closed. ")
		w("KiB per session = (VmRSS with − VmRSS before) ÷ sessions; for nginx the master and its workers are summed. ")
		w("\"at 10,000 sessions\" = before + 10,000 × KiB per session.\n\n")
		b.WriteString(rp.idleTable())
		w("\n- **greeted**: connected and greeting read, nothing sent (the pre-login state a client sits in while it connects). popgate with a fixed upstream connects to the server at once and relays its greeting, so a greeted session holds two sockets, ")
		w("and the server holds a pre-login connection: Dovecot with its default login mode forks one `pop3-login` process per connection, so these sessions go to a **second Dovecot** the benchmark starts ")
		w("with the test environment's configuration (`!include`, same users and mail) plus `service pop3-login { service_count = 0; client_limit; process_min_avail = 2 }` (high-performance mode), its own port and base_dir. ")
		w("The test environment's Dovecot stays as it is, since the other tests use it.\n")
		w("- **greeted, routed by login**: a listener with a `route` by user: popgate greets by itself and connects upstream only at USER, as nginx always does; one socket per session.\n")
		w("- **logged in**: USER/PASS answered `+OK`, then idle. Dovecot forks a `pop3` process per logged-in session, which would measure Dovecot, so these go to popgate's built-in POP3 server (`internal/pop3server`, in a child process of the benchmark). ")
		w("nginx gets there through its auth_http responder (in the benchmark), which sends it to the same server.\n")
		w("- The fd limit of this machine is %d per process and cannot be raised here (no CAP_SYS_RESOURCE); ", rp.idle.fdLimit)
		w("a session with an upstream connection needs two fds in the proxy, so those rows hold %d sessions (asked: %d).\n", min(rp.idle.requested, (rp.idle.fdLimit-fdMargin)/2), rp.idle.requested)
		if rp.idle.hpErr != "" {
			w("- The second Dovecot did not start (%s): greeted sessions through popgate went to the built-in server.\n", rp.idle.hpErr)
		}
		for _, r := range rp.idle.results {
			if r.serverKB > 0 {
				w("- For reference, the second Dovecot's processes held %.1f MiB with those %d pre-login connections (%.1f MiB before): %.1f KiB per connection.\n",
					float64(r.serverKB)/1024, r.sessions, float64(r.serverBase)/1024, float64(r.serverKB-r.serverBase)/float64(r.sessions))
			}
		}
	}

	if len(rp.levels) > 0 {
		w("\n## Where the CPU goes\n\n")
		w("CPU seconds per 10^9 message bytes over the whole measured runs (login storm included): all of Dovecot's processes but the master (the ended children, pop3 and pop3-login, ")
		w("and the live ones: auth, log, anvil, stats), the harness's client, and the proxy (popgate's process; nginx's master and workers). ")
		w("When the busy share in the per-run tables is near 100%% the run is bound by CPU, and the throughput ratio follows the ratio of the totals (\"if CPU-bound\").\n\n")
		b.WriteString(rp.cpuTable())
	}

	w("\n## What is measured, and how\n\n")
	w("- **Client**: a small Go POP3 client in the harness (bufio, TCP_NODELAY on as Go's default) that reads each RETR response to its terminator and checks the message against the stored one, byte for byte ")
	w("(through strip+tag: the tag header plus the original; stripped messages are parsed as MIME).\n")
	w("- **Workers and sessions**: a level of N sessions runs N workers at once, each running sessions back to back (first a %s warm-up run of each proxy, a fresh process per level, and of direct at the first level): ", c.warmup)
	w("connect, greeting, USER, PASS, RETR 1, 2, … (at most %d; the session quits early when the run's time is up), QUIT. No DELE: mailboxes are reused. ", c.messages)
	w("Each worker's first session waits after its login until all N workers are logged in; then the measured window of %s starts, and the run ends with it. ", c.duration)
	w("So N sessions really download at once, and the login storm at the start (at 256 sessions Dovecot forks 512 processes) does not count as download time; ")
	w("logins later in the window (a worker's next session) are part of it. Without this barrier the first sessions download at full speed while the others wait for their login for tens of seconds. ")
	w("Worker i uses bench mailbox i mod %d: Dovecot does not lock a Maildir for POP3 by default (`pop3_lock_session = no`) and nothing is deleted, so sessions can share mailboxes; ", c.mailboxes)
	w("the test Dovecot allows `mail_max_userip_connections = 10000`, `default_process_limit = 1000`, `service pop3 { process_limit = 1000 }`, enough for 256 sessions. ")
	w("Each mailbox holds %d messages of exactly %d bytes (headers, a text part with dot-stuffed lines, a base64 attachment; CRLF line ends).\n", c.messages, c.size)
	w("- **direct**: the client talks to the test Dovecot. **popgate**: `popgate run` (the real binary) with one plain loopback listener (`max_connections` and `max_connections_per_ip` raised to 20000, `login_timeout = \"10m\"`), ")
	w("upstream `tls = \"none\"`, no filters, log level `%s`. **nginx**: `%s` as a foreground child with its own prefix, configuration, pid file and error log in a temp dir ", c.logLevel, c.nginx)
	w("(`load_module ngx_mail_module.so; daemon off; master_process on; worker_processes %d;`, `mail { auth_http …; proxy on; server { listen 127.0.0.1:PORT; protocol pop3; pop3_auth plain; } }`, ", m.cpus)
	w("nginx's default `proxy_buffer`), and a tiny auth_http responder in the harness that answers every request `Auth-Status: OK`, `Auth-Server: 127.0.0.1`, `Auth-Port:` Dovecot's port. ")
	w("Each level gets a fresh popgate and a fresh nginx (so peak RSS belongs to the level); both are stopped at the end.\n")
	w("- **Order**: the modes of a level alternate, forward then backward (ABBA), %d measured runs each; every figure is the **median over the runs** per metric. ", c.repeat)
	w("Before each run the harness waits (up to `-idlewait`, %s) until the machine is less than %.0f%% busy; a run during which others used more than %.0f%% of the machine's CPU ", c.idleWait, 100*idleShare, 100*maxOthersShare)
	w("(machine CPU time minus the CPU time of Dovecot's processes, the client and the proxy) is marked, and measured again at most %d time(s) (`-retries`); the per-run tables show all of it.\n", c.retries)
	w("- **MB/s** (10^6 bytes) and **msg/s**: bytes and messages of the RETRs that ended within the window, all workers, ÷ the window. ")
	w("**RETR p50/p99**: per RETR within the window, from writing the command to reading the terminating `.`. **login p50/p99**: per session, from connect to the `+OK` of PASS (greeting, USER, PASS), all logins of the run, the initial storm included. ")
	w("**p99 Δ**: the proxy's p99 RETR minus direct p99 at the same level. **proxy CPU s/GB**: utime+stime (/proc/PID/stat) over the measured runs per 10^9 bytes; ")
	w("**peak RSS**: VmHWM (/proc/PID/status) at the end of the level, warm-up included (nginx: summed over its processes).\n")

	w("\n## All runs\n\n")
	b.WriteString(rp.runs())

	b.WriteString(rp.chains.markdown(rp.cfg))
	if rp.chains != nil {
		b.WriteString(rp.chains.memory.markdown(rp.cfg))
	}
	w("## Reproduce\n\n")
	w("```sh\nmake bench   # builds bin/popgate, starts (or reuses) scripts/testenv.sh, runs scripts/bench, writes this file and the chart\n```\n\n")
	w("or, with the test environment already up:\n\n")
	w("```sh\nmake build && . \"$(scripts/testenv.sh envfile)\" && go run ./scripts/bench -out docs/PERFORMANCE.md\n```\n\n")
	w("It needs Dovecot, clamd, rspamd and redis-server (scripts/testenv.sh), nginx with `libnginx-mod-mail`, and gnuplot (`gnuplot-nox`); `scripts/testenv.sh up` installs them as root. ")
	w("Flags (defaults): `-sessions 1,32,256`, `-duration 2s`, `-warmup 1s`, `-repeat 3`, `-mailboxes 32`, `-messages 200`, `-size 100KB` (decimal; `100KiB` for 102400), ")
	w("`-targets direct,popgate,nginx`, `-quickack 1,32` (levels with the TCP_QUICKACK series; `\"\"` for none), `-chains none,strip+tag,clamd,spam,memory,rss,idle` (which measurements), ")
	w("`-fmessages 50`, `-cmessages 20`, `-stripsessions 1,32,256`, `-exesessions 1,32`, `-mixsessions 1,32`, `-mixdir filters/strip/testdata/corpus`, `-clamdsessions 1,32,256`, `-spamsessions 1,32`, `-smessages 20`, `-spamrounds 1`, `-memsessions 1,32`, `-memstores embedded,redis`, `-membench true`, `-bigsize 100MB`, `-idle 10000`, `-popgate bin/popgate`, `-nginx /usr/sbin/nginx`, ")
	w("`-nginxmodule /usr/lib/nginx/modules/ngx_mail_module.so`, `-loglevel warn`, `-idlewait 500ms`, `-retries 0`, `-out FILE`, `-chart FILE` (default: perf-throughput.png next to -out). ")
	w("A quick run: `-sessions 1,32 -quickack 32 -repeat 1 -chains none,idle -idle 2000`. The bench users (per-user passwd-files and Maildirs, made with `internal/testenv`) are removed at the end.\n\n")

	w("## Caveats\n\n")
	w("- **%d cores for everything.** The client, Dovecot (a login and a pop3 process per session), the proxy, clamd and rspamd share them. ", m.cpus)
	w("Through a relay every byte is handled by one more process, and that CPU is taken from Dovecot and the client: ")
	w("on this machine the throughput ratios measure the relays' CPU cost at least as much as their latency. On a real gateway the relay has its own machine and the mail server is elsewhere.\n")
	w("- **Loopback.** No network latency or bandwidth limit: relative overheads look larger than over a real network, and Nagle/delayed-ACK stalls (40 ms) show in full.\n")
	w("- **Logins at 256 sessions.** Dovecot forks a login and a pop3 process per session; at 256 workers starting at once the first logins queue behind each other (see login p99), for every target alike.\n")
	w("- **Warm caches.** The Maildirs fit in the page cache and are read in the warm-up, so Dovecot reads memory, not disk.\n")
	w("- **Noise.** Other work on the shared machine moves single runs a lot (load average above); compare medians and ratios from the same run, not figures across runs.\n")
	w("- **CPU accounting** comes in clock ticks (usually 10 ms), summed over the measured runs.\n")
	return b.String()
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, "/")
}

func ordinal(n int) string {
	switch {
	case n%100 >= 11 && n%100 <= 13:
		return fmt.Sprintf("%dth", n)
	case n%10 == 1:
		return fmt.Sprintf("%dst", n)
	case n%10 == 2:
		return fmt.Sprintf("%dnd", n)
	case n%10 == 3:
		return fmt.Sprintf("%drd", n)
	}
	return fmt.Sprintf("%dth", n)
}

// quickAckNotes points out targets whose throughput depends on the
// client's ACK policy.
func (rp *report) quickAckNotes() string {
	var b strings.Builder
	for _, lv := range rp.levels {
		for _, t := range rp.cfg.targets {
			n, q := summarizeMode(lv, t), summarizeMode(lv, t+"+qa")
			if q.runs == 0 || n.mbps == 0 || q.mbps < 1.5*n.mbps {
				continue
			}
			fmt.Fprintf(&b, "- %s, %d session(s): %.1f× the throughput when the client acknowledges at once (RETR p50 %s ms → %s ms, p99 %s ms → %s ms). ",
				modeTitle[t], lv.sessions, q.mbps/n.mbps, msf(n.retrP50), msf(q.retrP50), msf(n.retrP99), msf(q.retrP99))
			b.WriteString("Stalls of tens of milliseconds per response that vanish with TCP_QUICKACK are the mark of Nagle's algorithm on the relay's client socket meeting the client's delayed ACK (about 40 ms on Linux).\n")
		}
	}
	if b.Len() == 0 {
		return ""
	}
	return "\n" + b.String()
}

package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Targets of the issue: popgate keeps at least 95% of direct throughput and
// adds at most 1 ms to the p99 RETR latency.
const (
	targetRatio    = 0.95
	targetP99Extra = time.Millisecond
)

type report struct {
	cfg                   config
	m                     machine
	levels                []*level
	loadBefore, loadAfter string
	date                  string
	upstream              string
	chains                *chainResults
}

// result is the median over the repeats of each metric of one concurrency.
type result struct {
	sessions                  int
	dMBps, pMBps, ratio       float64
	dP50, pP50, dP99, pP99    time.Duration
	p99Extra                  time.Duration
	dSetup, pSetup            time.Duration
	cpuPerGB                  float64 // popgate CPU seconds per 10^9 bytes relayed
	peakRSSMB                 float64
	pairRatios                []float64
	dMin, dMax, pMin, pMax    float64
	throughputMet, latencyMet bool
	logLines                  int
	logBytes                  int64
	relayedBytes              int64
	// CPU seconds per 10^9 bytes over the measured runs, per path.
	dDovecot, dClient, pDovecot, pClient float64
}

func summarize(lv *level) result {
	r := result{sessions: lv.sessions, logLines: lv.logLines, logBytes: lv.logBytes}
	get := func(runs []runStats, f func(runStats) float64) []float64 {
		v := make([]float64, len(runs))
		for i, s := range runs {
			v[i] = f(s)
		}
		return v
	}
	mbps := func(s runStats) float64 { return s.mbps }
	dm, pm := get(lv.direct, mbps), get(lv.popgate, mbps)
	r.dMBps, r.pMBps = median(dm), median(pm)
	r.dMin, r.dMax, r.pMin, r.pMax = slices.Min(dm), slices.Max(dm), slices.Min(pm), slices.Max(pm)
	r.ratio = r.pMBps / r.dMBps
	dur := func(runs []runStats, f func(runStats) time.Duration) time.Duration {
		return time.Duration(median(get(runs, func(s runStats) float64 { return float64(f(s)) })))
	}
	p50 := func(s runStats) time.Duration { return s.retrP50 }
	p99 := func(s runStats) time.Duration { return s.retrP99 }
	setup := func(s runStats) time.Duration { return s.setupP50 }
	r.dP50, r.pP50 = dur(lv.direct, p50), dur(lv.popgate, p50)
	r.dP99, r.pP99 = dur(lv.direct, p99), dur(lv.popgate, p99)
	r.dSetup, r.pSetup = dur(lv.direct, setup), dur(lv.popgate, setup)
	r.p99Extra = r.pP99 - r.dP99
	var cpu time.Duration
	var bytes int64
	for _, s := range lv.popgate {
		cpu += s.cpu
		bytes += s.bytes
	}
	r.relayedBytes = bytes
	r.cpuPerGB = cpu.Seconds() / (float64(bytes) / 1e9)
	perGB := func(runs []runStats, f func(runStats) time.Duration) float64 {
		var t time.Duration
		var n int64
		for _, s := range runs {
			t += f(s)
			n += s.bytes
		}
		return t.Seconds() / (float64(n) / 1e9)
	}
	dov := func(s runStats) time.Duration { return s.dovecot }
	cli := func(s runStats) time.Duration { return s.client }
	r.dDovecot, r.dClient = perGB(lv.direct, dov), perGB(lv.direct, cli)
	r.pDovecot, r.pClient = perGB(lv.popgate, dov), perGB(lv.popgate, cli)
	r.peakRSSMB = float64(lv.peakRSSkB) / 1024
	for i := range min(len(lv.direct), len(lv.popgate)) {
		r.pairRatios = append(r.pairRatios, lv.popgate[i].mbps/lv.direct[i].mbps)
	}
	r.throughputMet = r.ratio >= targetRatio
	r.latencyMet = r.p99Extra <= targetP99Extra
	return r
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func msf(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e6) }

func signedMS(d time.Duration) string { return fmt.Sprintf("%+.2f", float64(d)/1e6) }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**NOT met**"
}

func (rp *report) results() []result {
	var rs []result
	for _, lv := range rp.levels {
		rs = append(rs, summarize(lv))
	}
	return rs
}

// table is the main result table (Markdown, also printed to stdout).
func (rp *report) table() string {
	var b strings.Builder
	b.WriteString("| sessions | direct MB/s | popgate MB/s | ratio | RETR p50 ms direct / popgate | RETR p99 ms direct / popgate | p99 Δ ms | setup p50 ms direct / popgate | popgate CPU s/GB | popgate peak RSS |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rp.results() {
		fmt.Fprintf(&b, "| %d | %.1f | %.1f | %.3f | %s / %s | %s / %s | %s | %s / %s | %.2f | %.1f MiB |\n",
			r.sessions, r.dMBps, r.pMBps, r.ratio, msf(r.dP50), msf(r.pP50), msf(r.dP99), msf(r.pP99),
			signedMS(r.p99Extra), msf(r.dSetup), msf(r.pSetup), r.cpuPerGB, r.peakRSSMB)
	}
	return b.String()
}

// cpuTable splits the CPU time per GB between the processes of each path.
func (rp *report) cpuTable() string {
	var b strings.Builder
	b.WriteString("| sessions | path | Dovecot s/GB | client s/GB | popgate s/GB | total s/GB |\n|---:|---|---:|---:|---:|---:|\n")
	for _, r := range rp.results() {
		fmt.Fprintf(&b, "| %d | direct | %.2f | %.2f | – | %.2f |\n", r.sessions, r.dDovecot, r.dClient, r.dDovecot+r.dClient)
		fmt.Fprintf(&b, "| %d | popgate | %.2f | %.2f | %.2f | %.2f |\n", r.sessions, r.pDovecot, r.pClient, r.cpuPerGB,
			r.pDovecot+r.pClient+r.cpuPerGB)
	}
	return b.String()
}

func (rp *report) targets() string {
	var b strings.Builder
	b.WriteString("| sessions | throughput ≥ 0.95 × direct | p99 RETR ≤ direct + 1 ms |\n|---:|---|---|\n")
	for _, r := range rp.results() {
		fmt.Fprintf(&b, "| %d | %.3f: %s | %s ms: %s |\n", r.sessions, r.ratio, verdict(r.throughputMet),
			signedMS(r.p99Extra), verdict(r.latencyMet))
	}
	return b.String()
}

func (rp *report) runs() string {
	var b strings.Builder
	for _, lv := range rp.levels {
		r := summarize(lv)
		fmt.Fprintf(&b, "%d session(s): direct %.1f–%.1f MB/s, popgate %.1f–%.1f MB/s; popgate/direct per alternating pair:",
			lv.sessions, r.dMin, r.dMax, r.pMin, r.pMax)
		for _, x := range r.pairRatios {
			fmt.Fprintf(&b, " %.3f", x)
		}
		b.WriteString("\n\n| # | mode | MB/s | RETR p50 ms | RETR p99 ms | setup p50 ms | wall s | popgate CPU s | Dovecot CPU s | client CPU s | others' CPU s | machine busy (others) | idle before | discarded |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
		di, pi := 0, 0
		for i, mode := range lv.order {
			var s runStats
			if mode == "direct" {
				s = lv.direct[di]
				di++
			} else {
				s = lv.popgate[pi]
				pi++
			}
			cpu := "–"
			if mode == "popgate" {
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
			fmt.Fprintf(&b, "| %d | %s | %.1f | %s | %s | %s | %.2f | %s | %.2f | %.2f | %.2f | %s | %s | %d |\n", i+1, mode, s.mbps,
				msf(s.retrP50), msf(s.retrP99), msf(s.setupP50), s.wall.Seconds(), cpu, s.dovecot.Seconds(), s.client.Seconds(),
				s.others.Seconds(), others, idle, s.retries)
		}
		fmt.Fprintf(&b, "\npopgate logged %d lines (%d bytes) at level %q over these runs and its warm-up.\n\n",
			lv.logLines, lv.logBytes, rp.cfg.logLevel)
	}
	return b.String()
}

// disturbed lists the measured runs during which others used more than
// maxOthersShare of the machine even after the retries.
func (rp *report) disturbed() []string {
	var out []string
	for _, lv := range rp.levels {
		for _, runs := range [][]runStats{lv.direct, lv.popgate} {
			for i, s := range runs {
				if s.disturbed() {
					out = append(out, fmt.Sprintf("%d sessions %s run %d (others %.0f%%)", lv.sessions, s.mode, i+1, 100*s.othersShare()))
				}
			}
		}
	}
	return out
}

func (rp *report) warning() string {
	d := rp.disturbed()
	if len(d) == 0 {
		return ""
	}
	return fmt.Sprintf("**Warning: the machine was busy with other work during %d measured run(s) even after %d retries each: %s. "+
		"Their numbers are not reliable; rerun on a quiet machine.**\n", len(d), maxRetries, strings.Join(d, "; "))
}

func (rp *report) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\npopgate vs direct Dovecot: %d messages × %d bytes per session, median of %d runs each\n\n",
		rp.cfg.messages, rp.cfg.size, rp.cfg.repeat)
	b.WriteString(rp.table())
	b.WriteString("\n")
	b.WriteString(rp.targets())
	b.WriteString("\n")
	if w := rp.warning(); w != "" {
		b.WriteString(w + "\n")
	}
	b.WriteString(rp.chains.summary())
	return b.String()
}

func (rp *report) markdown() string {
	c := rp.cfg
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# popgate performance\n\n")
	w("Generated by `make bench` (`scripts/bench`) on %s. Do not edit by hand: rerun it.\n\n", rp.date)

	w("## What is measured\n\n")
	w("Each session connects, reads the greeting, logs in with USER/PASS, downloads every message of a mailbox of its own with RETR, ")
	w("and quits (no DELE: mailboxes are reused across runs). Each mailbox holds %d messages of exactly %d bytes ", c.messages, c.size)
	w("(headers, a text part with a few dot-stuffed lines, a base64 attachment; CRLF line ends, so Dovecot sends them byte for byte). ")
	w("The client is a small Go POP3 client in the harness (bufio, TCP_NODELAY on) that reads each RETR response to its terminator ")
	w("and checks the message against the stored one, byte for byte.\n\n")
	w("The same sessions run **directly** against Dovecot and **through popgate** (`popgate run`, the real binary, one plain loopback listener, ")
	w("upstream `tls = \"none\"`, no filters: an empty chain, so messages stream through without spooling; log level `%s`). ", c.logLevel)
	w("All sessions of a run start together; each concurrency level gets a fresh popgate process.\n\n")
	w("- **MB/s**: message bytes received by all sessions (10^6 bytes) divided by the wall time from the start of the run to the end of its last session (connect, login and QUIT included).\n")
	w("  With one session a run lasts about a tenth of a second and the login (about 10 ms with Dovecot's per-session processes) is a noticeable part of it.\n")
	w("- **RETR p50/p99**: per RETR, from writing the command to reading the terminating `.`; percentiles over all RETRs of a run.\n")
	w("- **setup p50**: from connect to the `+OK` of PASS (greeting, USER, PASS).\n")
	w("- **ratio** = popgate MB/s ÷ direct MB/s; **p99 Δ** = popgate p99 − direct p99.\n")
	w("- **popgate CPU s/GB**: utime+stime of the popgate process (/proc/PID/stat) over the measured runs, per 10^9 bytes relayed; ")
	w("**peak RSS**: its VmHWM (/proc/PID/status) at the end of the level, warm-up included.\n")
	w("- Method: one warm-up run of each path, then %d measured runs of each, alternating direct and popgate in ABBA order; ", c.repeat)
	w("every figure in the table is the **median over the runs** (per metric), so one noisy run does not decide a ratio.\n\n")

	m := rp.m
	w("## Machine\n\n")
	w("- CPUs: %d × %s; memory %s; Linux %s\n", m.cpus, m.cpuModel, m.memTotal, m.kernel)
	w("- Go: %s; popgate: %s, source commit %s\n", m.goVer, m.popgate, m.commit)
	w("- Dovecot: %s (the test environment of `scripts/testenv.sh`, Maildir, passwd-file users)\n", m.dovecot)
	w("- Load average before / after the benchmark: %s / %s\n", rp.loadBefore, rp.loadAfter)
	w("- Client, Dovecot and popgate all run on this one machine and talk over loopback.\n\n")

	w("## Results\n\n")
	w("%d messages × %d bytes per session; median of %d runs per cell.\n\n", c.messages, c.size, c.repeat)
	if wn := rp.warning(); wn != "" {
		w("%s\n", wn)
	}
	b.WriteString(rp.table())
	w("\n## Targets\n\n")
	w("popgate ≥ %.2f × direct throughput, and p99 RETR latency ≤ direct + %.0f ms.\n\n", targetRatio, float64(targetP99Extra)/1e6)
	b.WriteString(rp.targets())
	w("\n## Where the CPU goes\n\n")
	w("CPU seconds per 10^9 message bytes, summed over the measured runs of each path: Dovecot's session processes (pop3 and pop3-login, ")
	w("as the CPU time of the master's ended children; the long-lived auth process is not counted), the harness's client, and popgate. ")
	w("On this machine the run is bound by CPU when the busy share in the per-run tables is near 100%%; then the throughput ratio ")
	w("follows the ratio of the totals, whatever the relay does with latency.\n\n")
	b.WriteString(rp.cpuTable())
	w("\n")
	for _, r := range rp.results() {
		w("- %d session(s): if the runs were bound by CPU alone, popgate would keep direct total ÷ popgate total = **%.2f** of the direct throughput; measured: %.2f.\n",
			r.sessions, (r.dDovecot+r.dClient)/(r.pDovecot+r.pClient+r.cpuPerGB), r.ratio)
	}
	w("\nWith one session the machine is not saturated (see the busy share): the ratio then reflects the latency popgate adds to each RETR, ")
	w("and popgate's CPU figure rests on few clock ticks per run.\n")
	w("\n## All runs\n\n")
	b.WriteString(rp.runs())

	b.WriteString(rp.chains.markdown(rp.cfg))
	w("## Reproduce\n\n")
	w("```sh\nmake bench   # builds bin/popgate, starts (or reuses) scripts/testenv.sh, runs scripts/bench, writes this file\n```\n\n")
	w("or, with the test environment already up:\n\n")
	w("```sh\nmake build && . \"$(scripts/testenv.sh envfile)\" && go run ./scripts/bench -out docs/PERFORMANCE.md\n```\n\n")
	w("Flags: `-sessions 1,32`, `-messages 200`, `-size 100KB` (decimal; `100KiB` for 102400), `-repeat 3`, ")
	w("`-popgate bin/popgate`, `-loglevel warn`, `-idlewait 15s`, `-out FILE`; filter chains: `-chains none,strip+tag,clamd,rss` (which measurements), `-fmessages 50`, `-cmessages 20`, `-clamdsessions 1,8`, `-bigsize 100MB`. The bench users (per-user passwd-files and Maildirs, made with `proxy/testenv`) ")
	w("are removed at the end.\n\n")

	w("## Caveats\n\n")
	w("- **Two cores for everything.** The client, Dovecot (a login and a pop3 process per session) and popgate share %d CPUs. ", m.cpus)
	w("Through popgate every byte is handled by one more process, and that CPU is taken from Dovecot and the client: ")
	w("on this machine the throughput ratio measures popgate's CPU cost at least as much as its latency. ")
	w("On a real gateway popgate has its own machine and the mail server is elsewhere.\n")
	w("- **Loopback.** No network latency or bandwidth limit: relative overheads look larger than over a real network.\n")
	w("- **Warm caches.** The Maildirs (%.0f MB) fit in the page cache and are read once in the warm-up, so Dovecot reads memory, not disk.\n",
		float64(slices.Max(c.sessions)*c.messages*c.size)/1e6)
	w("- **Noise.** Other work on the machine (builds, tests, fuzzers of other people on a shared box) moves single runs a lot. ")
	w("Before each run the harness waits (up to `-idlewait`) until the machine is less than %.0f%% busy, ", 100*idleShare)
	w("and a run during which others used more than %.0f%% of the machine's CPU (machine CPU time minus Dovecot, client and popgate) is measured again, up to %d times; ", 100*maxOthersShare, maxRetries)
	w("the per-run tables show all of this, and a warning above the results names any run that stayed disturbed. ")
	w("With one session a run is short and its p99 rests on few samples (%d RETRs: the p99 is the %s slowest), so compare it with care.\n",
		c.messages, ordinal(c.messages-rank(c.messages, 0.99)+1))
	w("- **CPU accounting** comes in clock ticks (usually 10 ms), summed over the measured runs.\n")
	if rp.chains == nil {
		w("- **Empty chain only.** Filters (clamd scanning, attachment stripping) spool each message and cost far more; they are not measured here.\n")
	} else {
		w("- **Empty chain** in the sections above; the filter chains (which spool each message) are in the \"Filter chains\" sections.\n")
	}
	return b.String()
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

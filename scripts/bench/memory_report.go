package main

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Targets of the message memory (issue 11).
const (
	targetMemRatio       = 0.9 // second download ≥ 0.9 × pass-through
	targetMemEmbeddedP99 = time.Millisecond
	targetMemRedisP99    = 2 * time.Millisecond
	targetMemBytes       = 200 // per message on disk
	targetMemSessions    = 32
)

type memorySummary struct {
	c                         *memoryCell
	dMBps, pMBps, mMBps       float64
	pP50, pP99, mP50, mP99    time.Duration
	dP50, dP99                time.Duration
	memCPUPerGB, passCPUPerGB float64
}

func summarizeMemory(c *memoryCell) memorySummary {
	med := func(runs []runStats, f func(runStats) float64) float64 {
		v := make([]float64, len(runs))
		for i, s := range runs {
			v[i] = f(s)
		}
		return median(v)
	}
	mb := func(s runStats) float64 { return s.mbps }
	p50 := func(s runStats) float64 { return float64(s.retrP50) }
	p99 := func(s runStats) float64 { return float64(s.retrP99) }
	s := memorySummary{c: c, dMBps: med(c.direct, mb), pMBps: med(c.pass, mb), mMBps: med(c.mem, mb)}
	s.dP50, s.dP99 = time.Duration(med(c.direct, p50)), time.Duration(med(c.direct, p99))
	s.pP50, s.pP99 = time.Duration(med(c.pass, p50)), time.Duration(med(c.pass, p99))
	s.mP50, s.mP99 = time.Duration(med(c.mem, p50)), time.Duration(med(c.mem, p99))
	perGB := func(runs []runStats) float64 {
		var cpu time.Duration
		var n int64
		for _, r := range runs {
			cpu += r.cpu
			n += r.bytes
		}
		if n == 0 {
			return 0
		}
		return cpu.Seconds() / (float64(n) / 1e9)
	}
	s.memCPUPerGB, s.passCPUPerGB = perGB(c.mem), perGB(c.pass)
	return s
}

// perRecord is the store's bytes per record: the file (embedded) or Redis's
// used_memory growth; NaN when unknown.
func (c *memoryCell) perRecord() float64 {
	if c.records == 0 {
		return math.NaN()
	}
	switch c.store {
	case "embedded":
		if c.fileBytes > 0 {
			return float64(c.fileBytes) / float64(c.records)
		}
	case "redis":
		if c.redisUsed > 0 {
			return float64(c.redisUsed) / float64(c.records)
		}
	}
	return math.NaN()
}

func lookupsText(m map[string]float64) string {
	var parts []string
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}) {
		if m[k] != 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func (mr *memoryResults) table() string {
	var b strings.Builder
	b.WriteString("| store | sessions | direct MB/s | pass-through MB/s | memory MB/s | × pass-through | ≥ 0.9 | × direct | RETR p50 ms pass-through / memory | RETR p99 ms pass-through / memory | clamd scans (measured) | lookups (measured) | lookup p50 / p99 ms (est.) | popgate CPU s/GB pass-through / memory | memory popgate peak RSS |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|\n")
	for _, c := range mr.cells {
		s := summarizeMemory(c)
		fmt.Fprintf(&b, "| %s | %d | %.1f | %.1f | %.1f | %s | %s | %s | %s / %s | %s / %s | %.0f | %s | %s / %s | %.2f / %.2f | %.1f MiB |\n",
			c.store, c.sessions, s.dMBps, s.pMBps, s.mMBps, ratio(s.mMBps, s.pMBps), verdict(s.pMBps > 0 && s.mMBps/s.pMBps >= targetMemRatio && c.scans == 0),
			ratio(s.mMBps, s.dMBps), msf(s.pP50), msf(s.mP50), msf(s.pP99), msf(s.mP99), c.scans, lookupsText(c.lookups),
			strings.TrimSuffix(msq(c.lookupHist.quantile(0.5)), " ms"), strings.TrimSuffix(msq(c.lookupHist.quantile(0.99)), " ms"),
			s.passCPUPerGB, s.memCPUPerGB, float64(c.peakRSSkB)/1024)
	}
	return b.String()
}

func (mr *memoryResults) storeTable() string {
	var b strings.Builder
	b.WriteString("| store | sessions | warm-up download | writes settled after | records written (failed) | clamd scans in the warm-up | records in the store | store size | bytes per record | |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, c := range mr.cells {
		size, note := "–", ""
		switch c.store {
		case "embedded":
			size = fmt.Sprintf("%d B (memory.db)", c.fileBytes)
			if c.records > 0 {
				note = fmt.Sprintf("in use in leaf pages: %.0f B per record; key + value: %.0f B per record (16-byte key, 4 bytes of last use, the encoded record)",
					float64(c.leafInuse)/float64(c.records), float64(16*c.records+c.valueBytes)/float64(c.records))
			}
		case "redis":
			size = fmt.Sprintf("%d B (used_memory freed by FLUSHDB)", c.redisUsed)
			if len(c.redisSampled) > 0 {
				var t int64
				for _, v := range c.redisSampled {
					t += v
				}
				note = fmt.Sprintf("MEMORY USAGE of %d keys: %.0f B each on average", len(c.redisSampled), float64(t)/float64(len(c.redisSampled)))
			}
		}
		if c.sizeErr != "" {
			note = strings.TrimPrefix(note+"; ", "; ") + "size: " + c.sizeErr
		}
		per := "–"
		if v := c.perRecord(); !math.IsNaN(v) {
			per = fmt.Sprintf("%.0f", v)
		}
		fmt.Fprintf(&b, "| %s | %d | %.1f s | %.1f s | %.0f (%.0f) | %.0f | %d | %s | %s | %s |\n", c.store, c.sessions, c.warmWall.Seconds(),
			c.warmSettle.Seconds(), c.writesOK, c.writesError, c.warmScans, c.records, size, per, note)
	}
	return b.String()
}

func (mr *memoryResults) goBenchTable() string {
	if len(mr.goBench) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("| store | operation | goroutines | ops | ns/op | mean µs | p50 µs | p99 µs | max µs |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, g := range mr.goBench {
		op, conc, _ := strings.Cut(strings.TrimPrefix(g.name, "Store/"), "/")
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %.0f | %.0f | %.0f | %.0f | %.0f |\n", g.pkg, op, strings.TrimPrefix(conc, "c"), g.n, g.nsOp, g.mean, g.p50, g.p99, g.mx)
	}
	return b.String()
}

// targetCell is the cell the latency target is read at: 32 sessions, else
// the highest level measured.
func (mr *memoryResults) targetCell(store string) *memoryCell {
	var best *memoryCell
	for _, c := range mr.cells {
		if c.store != store {
			continue
		}
		if c.sessions == targetMemSessions {
			return c
		}
		if best == nil || c.sessions > best.sessions {
			best = c
		}
	}
	return best
}

func (mr *memoryResults) targets() string {
	var b strings.Builder
	b.WriteString("| target | measured | |\n|---|---|---|\n")
	for _, c := range mr.cells {
		s := summarizeMemory(c)
		fmt.Fprintf(&b, "| second download ≥ %.1f × pass-through with 0 clamd scans, %s store, %d session(s) | %.1f vs %.1f MB/s (%s), %.0f clamd scans | %s |\n",
			targetMemRatio, c.store, c.sessions, s.mMBps, s.pMBps, ratio(s.mMBps, s.pMBps), c.scans,
			verdict(s.pMBps > 0 && s.mMBps/s.pMBps >= targetMemRatio && c.scans == 0))
	}
	for _, st := range []struct {
		store, pkg string
		limit      time.Duration
	}{{"embedded", "boltstore", targetMemEmbeddedP99}, {"redis", "redisstore", targetMemRedisP99}} {
		if c := mr.targetCell(st.store); c != nil {
			h := c.lookupHist
			share := h.atMost(st.limit.Seconds()) // 1 ms is a bucket bound; 2 ms is not (the 1 ms bound is used)
			upper := h.atMost(2.5e-3)
			v := "undecided by the buckets"
			switch {
			case math.IsNaN(share):
				v = "not measured"
			case share >= 0.99:
				v = "met"
			case st.limit == targetMemEmbeddedP99 || upper < 0.99:
				v = "**NOT met**"
			}
			fmt.Fprintf(&b, "| lookup p99 ≤ %s, %s, %d sessions, in popgate (`popgate_memory_seconds{op=\"lookup\"}`: the store's Get, see below) | p99 in the %s bucket (≈ %s interpolated); %.1f%% of %.0f lookups ≤ %s | %s |\n",
				st.limit, st.store, c.sessions, h.bucketOf(0.99), msq(h.quantile(0.99)), 100*share, h.total(), map[bool]string{true: "1 ms", false: "1 ms (2 ms is no bucket bound)"}[st.limit == time.Millisecond], v)
		}
		if p := mr.goBenchP99(st.pkg, "Store/Get/c32"); !math.IsNaN(p) {
			fmt.Fprintf(&b, "| lookup p99 ≤ %s, %s, the store alone (`go test -bench`, Get from 32 goroutines) | %.0f µs | %s |\n",
				st.limit, st.store, p, verdict(p <= float64(st.limit.Microseconds())))
		}
	}
	for _, c := range mr.cells {
		if c.store != "embedded" {
			continue
		}
		if v := c.perRecord(); !math.IsNaN(v) {
			fmt.Fprintf(&b, "| ≤ %d bytes per message on disk, embedded (the %d-session row's memory.db once popgate stopped) | %.0f B (memory.db %d B ÷ %d records, bbolt's pages and free space included; %.0f B per record in use in leaf pages) | %s |\n",
				targetMemBytes, c.sessions, v, c.fileBytes, c.records, float64(c.leafInuse)/float64(max(1, c.records)), verdict(v <= targetMemBytes))
		}
	}
	for _, c := range mr.cells {
		if c.store != "redis" {
			continue
		}
		if v := c.perRecord(); !math.IsNaN(v) {
			fmt.Fprintf(&b, "| for reference: Redis memory per message (after the measured runs at %d session(s); RAM, not disk: no target) | %.0f B (used_memory freed by FLUSHDB: %d B ÷ %d keys) | – |\n",
				c.sessions, v, c.redisUsed, c.records)
		}
	}
	return b.String()
}

func (mr *memoryResults) runsTable(c *memoryCell) string {
	var b strings.Builder
	fmt.Fprintf(&b, "memory, %s store, %d session(s):\n\n| # | mode | MB/s | RETR p50 ms | RETR p99 ms | RETR mean ms | wall s | popgate CPU s | machine busy (others) | discarded |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
		c.store, c.sessions)
	idx := map[string]int{}
	for i, mode := range c.order {
		runs := map[string][]runStats{"direct": c.direct, "popgate": c.pass, "memory": c.mem}[mode]
		s := runs[idx[mode]]
		idx[mode]++
		others := fmt.Sprintf("%.0f%% (%.0f%%)", 100*s.busy, 100*s.othersShare())
		if s.disturbed() {
			others = fmt.Sprintf("%.0f%% (**%.0f%%**)", 100*s.busy, 100*s.othersShare())
		}
		name := map[string]string{"direct": "direct", "popgate": "pass-through", "memory": "full chain + memory"}[mode]
		fmt.Fprintf(&b, "| %d | %s | %.1f | %s | %s | %s | %.2f | %.2f | %s | %d |\n", i+1, name, s.mbps, msf(s.retrP50), msf(s.retrP99),
			msf(s.retrMean), s.wall.Seconds(), s.cpu.Seconds(), others, s.retries)
	}
	fmt.Fprintf(&b, "\nThe memory popgate's metrics listener (%s) was found through %s; it logged %d lines; `popgate_messages_total` (messages through the chain) grew over the measured runs by: %s.\n\n",
		c.metricsAddr, c.metricsFound, c.logLines, lookupsText(c.memMessages))
	return b.String()
}

// summary is printed to stdout.
func (mr *memoryResults) summary() string {
	if mr == nil || len(mr.cells) == 0 {
		return ""
	}
	s := "\nmessage memory (second download through av, dangerous, stamp):\n\n" + mr.table() + "\n" + mr.storeTable() + "\n" + mr.targets()
	if g := mr.goBenchTable(); g != "" {
		s += "\nstores alone (go test -bench):\n\n" + g
	}
	return s
}

// markdown is the "Message memory" section of docs/PERFORMANCE.md.
func (mr *memoryResults) markdown(c config) string {
	if mr == nil || len(mr.cells) == 0 {
		return ""
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("## Message memory\n\n")
	w("A second download of a mailbox popgate has scanned is served by the message memory: the upstream's bytes plus the recorded edits, with no filter run and no clamd call. ")
	w("popgate runs the full chain `%s` (clamd, strip, tag, as above; the policy's default `rescan = \"on-signature-change\"`), a quarantine directory, and `metrics { address = \"127.0.0.1:0\" }`; ", hclList(memoryChain))
	w("the store is either **embedded** (the default: `memory.db` in the quarantine directory, bbolt) or **redis** (`memory { store = \"redis\" redis { address = $POPGATE_TEST_REDIS, db = %d } }`: ", memRedisDB)
	w("a database of the bench's own on the test redis, emptied with FLUSHDB before each row and at the end). A fresh popgate per row.\n\n")
	w("Per row: first a **warm-up download** of every bench mailbox (%d mailboxes × the %d clean attachment-heavy messages, one session per mailbox, all at once), which scans every message and writes its record; ", mr.cells[0].mailboxes, mr.cells[0].messages)
	w("the records are written after the client has its message, so the bench then polls `/metrics` until `popgate_memory_operations_total{op=\"write\"}` stops growing. ")
	w("Then %d measured run(s) of %s of each of three modes in ABBA order, medians per metric: **direct** Dovecot, **pass-through** (a second, fresh popgate with the empty chain, warmed up for %s), and **memory** (the popgate with the full chain). ", c.repeat, c.duration, c.warmup)
	w("Through the memory the client checks every message: `X-Popgate-Scanned: yes` CRLF followed by the original, byte for byte. ")
	w("**clamd scans** is the growth of `popgate_scan_duration_seconds_count` over the measured runs (target: 0); **lookups** the growth of `popgate_memory_operations_total{op=\"lookup\"}` by result.\n\n")
	b.WriteString(mr.table())
	w("\n")
	b.WriteString(mr.storeTable())
	w("\n**Store size.** Embedded: the size of `memory.db` after popgate stopped (so bbolt's page overhead, its meta and freelist pages and any free space are included), ÷ the records in its `records` bucket (read with bbolt, read-only); ")
	w("\"in use in leaf pages\" is bbolt's LeafInuse for that bucket (keys, values, element headers). bbolt grows its file in steps (in these runs to a power of two), so the file's bytes per record depend on where the number of records falls between two steps; the bytes in use are the steadier figure. ")
	w("Redis: after the measured runs, with popgate still connected, `INFO memory` `used_memory` before and after `FLUSHDB SYNC` of the bench's database, ÷ the keys it held (DBSIZE): the records with Redis's per-key overhead; the test redis is shared with tests, so other clients can move it a little; `MEMORY USAGE` of a few keys is the other figure. ")
	w("Redis holds the records in memory; what it writes to disk (RDB, AOF) is not measured.\n\n")
	w("**Lookup latency.** popgate's `popgate_memory_seconds{op=\"lookup\"}` is a histogram (buckets 0.1, 0.25, 0.5, 1, 2.5, 5 ms, …), so its p50 and p99 are **estimates** from the buckets, ")
	w("interpolated linearly inside a bucket as Prometheus's `histogram_quantile` does; 1 ms is a bucket bound, so the share of lookups within 1 ms is exact, but 2 ms is not (between 1 and 2.5 ms the buckets cannot tell). ")
	w("popgate times a lookup as the store's Get call alone (its round trip to Redis, or the bbolt read), from the session that waits for it: at 32 sessions on %d cores that includes the wait for a core. ", runtime.NumCPU())
	w("The stores alone are measured by their Go benchmarks, which the bench runs as well")
	if mr.goBenchCmd != "" {
		w(" (`%s`, from the module's root, against the test redis; %s; `BenchmarkDBBatchPut` is left out: 2000 lone bbolt batches wait 10 ms each). ", mr.goBenchCmd, mr.goBenchMs.Round(time.Second))
		w("Get is one lookup; GetMany100 is what LIST and STAT do for 100 messages; with 32 goroutines on %d cores the latencies include the wait for a core.\n\n", runtime.NumCPU())
		if g := mr.goBenchTable(); g != "" {
			b.WriteString(g)
			w("\n")
		}
		if mr.goBenchErr != "" {
			w("`go test -bench` failed: %s\n\n", strings.ReplaceAll(mr.goBenchErr, "\n", " "))
		}
	} else {
		w(" when `-membench` is on (it was off in this run).\n\n")
	}
	w("### Message memory: targets\n\n")
	b.WriteString(mr.targets())
	w("\n### Message memory: all runs\n\n")
	for _, cell := range mr.cells {
		b.WriteString(mr.runsTable(cell))
	}
	return b.String()
}

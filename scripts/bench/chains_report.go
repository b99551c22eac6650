package main

import (
	"fmt"
	"strings"
	"time"
)

// Targets of the filter chains (issue 14): strip+tag against popgate's
// own pass-through, on attachment-heavy mail and on the realistic mix;
// popgate's overhead beyond clamd's own INSTREAM time at 1 session; the
// peak RSS with a big message.
const (
	targetVsPassAttach   = 0.7
	targetVsPassMix      = 0.85
	targetClamdOverhd    = 0.15
	targetClamdSessions  = 1
	targetPeakRSSBytes   = 64 << 20
	targetChainVsPassMsg = "≥ %.2f × pass-through"
)

type chainSummary struct {
	lv                     *chainLevel
	dMBps, pMBps, ratio    float64
	aMBps, vsPass          float64 // pass-through (strip+tag, spam) and popgate ÷ it
	aCPUPerGB              float64 // pass-through's CPU per GB
	dP50, pP50, dP99, pP99 time.Duration
	dMean, pMean, sMean    time.Duration
	sP50, sP99             time.Duration
	sMBps                  float64
	cpuPerGB               float64 // popgate
	clamdPerGB             float64 // clamd CPU per GB in popgate runs
	overhead, overheadP50  float64
	// With a pass-through mode (spam).
	dMsgps, aMsgps, pMsgps float64
	aP50, aP99, aMean      time.Duration
	// With popgate's scan metrics (spam): per-run means, medians over the
	// runs: popgate's scan time and the filter's time in the popgate runs,
	// the scanner's own reported time in the scan runs.
	inScan, inFilter, sSelf  time.Duration
	cpuPerMsg, scannerPerMsg time.Duration // popgate's and the scanner's CPU per message in the popgate runs
}

func summarizeChain(lv *chainLevel) chainSummary {
	c := chainSummary{lv: lv}
	med := func(runs []runStats, f func(runStats) float64) float64 {
		v := make([]float64, len(runs))
		for i, s := range runs {
			v[i] = f(s)
		}
		if len(v) == 0 {
			return 0
		}
		return median(v)
	}
	mb := func(s runStats) float64 { return s.mbps }
	d := func(f func(runStats) time.Duration) func(runStats) float64 {
		return func(s runStats) float64 { return float64(f(s)) }
	}
	p50 := d(func(s runStats) time.Duration { return s.retrP50 })
	p99 := d(func(s runStats) time.Duration { return s.retrP99 })
	mn := d(func(s runStats) time.Duration { return s.retrMean })
	c.dMBps, c.pMBps, c.sMBps = med(lv.direct, mb), med(lv.popgate, mb), med(lv.scan, mb)
	c.ratio = c.pMBps / c.dMBps
	c.dP50, c.pP50, c.sP50 = time.Duration(med(lv.direct, p50)), time.Duration(med(lv.popgate, p50)), time.Duration(med(lv.scan, p50))
	c.dP99, c.pP99, c.sP99 = time.Duration(med(lv.direct, p99)), time.Duration(med(lv.popgate, p99)), time.Duration(med(lv.scan, p99))
	c.dMean, c.pMean, c.sMean = time.Duration(med(lv.direct, mn)), time.Duration(med(lv.popgate, mn)), time.Duration(med(lv.scan, mn))
	msgps := func(s runStats) float64 { return s.msgps }
	c.dMsgps, c.aMsgps, c.pMsgps = med(lv.direct, msgps), med(lv.pass, msgps), med(lv.popgate, msgps)
	if c.aMBps = med(lv.pass, mb); c.aMBps > 0 {
		c.vsPass = c.pMBps / c.aMBps
	}
	var acpu time.Duration
	var abytes int64
	for _, s := range lv.pass {
		acpu += s.cpu
		abytes += s.bytes
	}
	if abytes > 0 {
		c.aCPUPerGB = acpu.Seconds() / (float64(abytes) / 1e9)
	}
	c.aP50, c.aP99, c.aMean = time.Duration(med(lv.pass, p50)), time.Duration(med(lv.pass, p99)), time.Duration(med(lv.pass, mn))
	perScan := func(f func(runStats) time.Duration) func(runStats) float64 {
		return func(s runStats) float64 { return float64(f(s)) / float64(max(1, s.scans)) }
	}
	c.inScan = time.Duration(med(lv.popgate, perScan(func(s runStats) time.Duration { return s.scanSum })))
	c.inFilter = time.Duration(med(lv.popgate, perScan(func(s runStats) time.Duration { return s.filterSum })))
	c.sSelf = time.Duration(med(lv.scan, perScan(func(s runStats) time.Duration { return s.scanSum })))
	var cpu, cl time.Duration
	var n, msgs int64
	for _, s := range lv.popgate {
		cpu += s.cpu
		cl += s.scanner
		n += s.bytes
		msgs += s.msgs
	}
	if n > 0 {
		c.cpuPerGB = cpu.Seconds() / (float64(n) / 1e9)
		c.clamdPerGB = cl.Seconds() / (float64(n) / 1e9)
		c.cpuPerMsg, c.scannerPerMsg = cpu/time.Duration(msgs), cl/time.Duration(msgs)
	}
	if c.sMean > 0 {
		c.overhead = float64(c.pMean-c.dMean-c.sMean) / float64(c.sMean)
		c.overheadP50 = float64(c.pP50-c.dP50-c.sP50) / float64(c.sP50)
	}
	return c
}

func (cr *chainResults) summaries(chain string) []chainSummary {
	var out []chainSummary
	for _, lv := range cr.levels {
		if lv.chain == chain {
			out = append(out, summarizeChain(lv))
		}
	}
	return out
}

// stripTarget is strip+tag's target for a variant, against the
// pass-through; 0 for the strip corpus, which is reported, not a target.
func stripTarget(variant string) float64 {
	switch variant {
	case mixVariant:
		return targetVsPassMix
	case corpusVariant:
		return 0
	}
	return targetVsPassAttach
}

// stripped is what the client received stripped in each measured popgate
// run of a strip+tag row, and its share of the messages received.
func stripped(lv *chainLevel) string {
	var msgs int64
	for _, s := range lv.popgate {
		msgs += s.msgs
	}
	return fmt.Sprintf("%d (%.1f%%)", lv.counted/int64(max(1, len(lv.popgate))), 100*float64(lv.counted)/float64(max(1, msgs)))
}

// stripTable is the strip+tag table of the real-world-shaped variants
// (realistic mix, strip corpus: rw) or of the attachment-heavy ones.
func (cr *chainResults) stripTable(rw bool) string {
	var b strings.Builder
	b.WriteString("| sessions | messages | direct MB/s | pass-through MB/s | popgate MB/s | × pass-through | target | × direct | RETR p50 ms direct / pass-through / popgate | RETR p99 ms direct / pass-through / popgate | CPU s/GB pass-through / popgate | popgate peak RSS | stripped / run (share) |\n")
	b.WriteString("|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range cr.summaries("strip+tag") {
		if realWorld(c.lv.variant) != rw {
			continue
		}
		target := "reported"
		if t := stripTarget(c.lv.variant); t > 0 {
			target = fmt.Sprintf(targetChainVsPassMsg+": %s", t, verdict(c.vsPass >= t))
		}
		fmt.Fprintf(&b, "| %d | %s | %.1f | %.1f | %.1f | %.3f | %s | %.3f | %s / %s / %s | %s / %s / %s | %.2f / %.2f | %.1f MiB | %s |\n",
			c.lv.sessions, c.lv.variant, c.dMBps, c.aMBps, c.pMBps, c.vsPass, target, c.ratio,
			msf(c.dP50), msf(c.aP50), msf(c.pP50), msf(c.dP99), msf(c.aP99), msf(c.pP99), c.aCPUPerGB, c.cpuPerGB, float64(c.lv.peakRSSkB)/1024,
			stripped(c.lv))
	}
	return b.String()
}

// realWorldLevel is the first strip+tag row of a real-world-shaped
// variant, nil if there is none.
func (cr *chainResults) realWorldLevel(variant string) *chainLevel {
	for _, lv := range cr.levels {
		if lv.chain == "strip+tag" && lv.variant == variant {
			return lv
		}
	}
	return nil
}

// chainTargets are the rows of the filter chains' targets for the
// report's targets: strip+tag against the pass-through, clamd's overhead,
// the peak RSS with a big message through clamd+strip+tag.
func (cr *chainResults) chainTargets() string {
	if cr == nil {
		return ""
	}
	var b strings.Builder
	for _, c := range cr.summaries("strip+tag") {
		measured := fmt.Sprintf("%.1f vs %.1f MB/s (%.3f; %.3f × direct)", c.pMBps, c.aMBps, c.vsPass, c.ratio)
		t := stripTarget(c.lv.variant)
		switch c.lv.variant {
		case corpusVariant:
			fmt.Fprintf(&b, "| strip+tag vs pass-through on the strip corpus alone (%d of %d messages stripped and quarantined before delivery: the quarantine's durable writes; not a target), %d session(s) | %s | reported |\n",
				c.lv.distinct, c.lv.messages, c.lv.sessions, measured)
		case mixVariant:
			fmt.Fprintf(&b, "| strip+tag "+targetChainVsPassMsg+" (realistic mix: %d messages, %d of them stripped), %d session(s) | %s | %s |\n",
				t, c.lv.messages, c.lv.distinct, c.lv.sessions, measured, verdict(c.vsPass >= t))
		default:
			fmt.Fprintf(&b, "| strip+tag "+targetChainVsPassMsg+" (attachment-heavy, %s), %d session(s) | %s | %s |\n",
				t, c.lv.variant, c.lv.sessions, measured, verdict(c.vsPass >= t))
		}
	}
	for _, c := range cr.summaries("clamd") {
		if c.lv.sessions == targetClamdSessions {
			fmt.Fprintf(&b, "| clamd path: overhead beyond clamd's own INSTREAM time ≤ %.0f%%, %d session(s) | %+.0f%% (mean; p50 %+.0f%%) | %s |\n",
				100*targetClamdOverhd, c.lv.sessions, 100*c.overhead, 100*c.overheadP50, verdict(c.overhead <= targetClamdOverhd))
		}
	}
	for _, r := range cr.rss {
		if r.chain == "clamd+strip+tag" {
			fmt.Fprintf(&b, "| peak RSS ≤ 64 MiB, %d-byte message through clamd+strip+tag (%s) | %.1f MiB | %s |\n",
				r.size, r.note, float64(r.peakKB)/1024, verdict(r.peakKB*1024 <= targetPeakRSSBytes))
		}
	}
	return b.String()
}

func (cr *chainResults) clamdTable() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| sessions | direct RETR mean / p50 ms | popgate RETR mean / p50 ms | INSTREAM scan mean / p50 ms | overhead (mean) | overhead (p50) | ≤ %.0f%% at %d session(s) | direct / popgate / scan MB/s | popgate CPU s/GB | clamd CPU s/GB (popgate runs) |\n", 100*targetClamdOverhd, targetClamdSessions)
	b.WriteString("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n")
	for _, c := range cr.summaries("clamd") {
		v := "reported"
		if c.lv.sessions == targetClamdSessions {
			v = verdict(c.overhead <= targetClamdOverhd)
		}
		fmt.Fprintf(&b, "| %d | %s / %s | %s / %s | %s / %s | %+.0f%% | %+.0f%% | %s | %.1f / %.1f / %.1f | %.2f | %.2f |\n",
			c.lv.sessions, msf(c.dMean), msf(c.dP50), msf(c.pMean), msf(c.pP50), msf(c.sMean), msf(c.sP50),
			100*c.overhead, 100*c.overheadP50, v, c.dMBps, c.pMBps, c.sMBps, c.cpuPerGB, c.clamdPerGB)
	}
	return b.String()
}

// phaseTable shows, per chain row, where popgate's filtered RETRs spent
// their time by popgate's own account (popgate_download_phase_seconds over
// the measured popgate runs), beside the client's RETR means.
func (cr *chainResults) phaseTable() string {
	var b strings.Builder
	b.WriteString("| chain | messages | sessions | downloads | direct / pass-through / popgate RETR mean ms | upstream_wait | upstream_read | filtering | delivery | phases' sum |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, lv := range cr.levels {
		var n int64
		var sum [len(downloadPhases)]time.Duration
		var dMeans, ptMeans, pMeans []time.Duration
		for _, st := range lv.popgate {
			n += st.downloads
			for i := range sum {
				sum[i] += st.phaseSum[i]
			}
			pMeans = append(pMeans, st.retrMean)
		}
		for _, st := range lv.direct {
			dMeans = append(dMeans, st.retrMean)
		}
		pass := "–"
		for _, st := range lv.pass {
			ptMeans = append(ptMeans, st.retrMean)
		}
		if len(ptMeans) > 0 {
			pass = msf(medianDur(ptMeans))
		}
		if n == 0 {
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %s / %s / %s |", lv.chain, lv.variant, lv.sessions, n, msf(medianDur(dMeans)), pass, msf(medianDur(pMeans)))
		var total time.Duration
		for _, d := range sum {
			total += d
			fmt.Fprintf(&b, " %s |", msf(d/time.Duration(n)))
		}
		fmt.Fprintf(&b, " %s |\n", msf(total/time.Duration(n)))
	}
	return b.String()
}

func (cr *chainResults) rssTable() string {
	var b strings.Builder
	b.WriteString("| chain | message bytes | clamd | RETR s | popgate CPU s | VmHWM before | VmHWM after | ≤ 64 MiB | spool files peak |\n|---|---:|---|---:|---:|---:|---:|---|---:|\n")
	for _, r := range cr.rss {
		note := r.note
		if note == "" {
			note = "–"
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.2f | %.2f | %.1f MiB | %.1f MiB | %s | %.1f MB |\n", cmpChain(r.chain), r.size, note, r.retr.Seconds(), r.cpu.Seconds(),
			float64(r.startKB)/1024, float64(r.peakKB)/1024, verdict(r.peakKB*1024 <= targetPeakRSSBytes), float64(r.spoolPeak)/1e6)
	}
	return b.String()
}

func cmpChain(c string) string {
	if c == "none" {
		return "empty"
	}
	return c
}

func (cr *chainResults) runsTable(lv *chainLevel) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %s, %d session(s):\n\n| # | mode | MB/s | msg/s | RETR p50 ms | RETR p99 ms | RETR mean ms | scans: mean ms | wall s | popgate CPU s | scanner CPU s | machine busy (others) | discarded |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
		lv.chain, lv.variant, lv.sessions)
	idx := map[string]int{}
	for i, mode := range lv.order {
		runs := map[string][]runStats{"direct": lv.direct, "pass": lv.pass, "popgate": lv.popgate, "scan": lv.scan}[mode]
		s := runs[idx[mode]]
		idx[mode]++
		others := fmt.Sprintf("%.0f%% (%.0f%%)", 100*s.busy, 100*s.othersShare())
		if s.disturbed() {
			others = fmt.Sprintf("%.0f%% (**%.0f%%**)", 100*s.busy, 100*s.othersShare())
		}
		name := map[string]string{"pass": "pass-through", "scan": lv.scanLabel}[mode]
		if name == "" {
			name = mode
		}
		scans := "–"
		if s.scans > 0 && s.scanSum > 0 {
			scans = fmt.Sprintf("%d: %s", s.scans, msf(s.scanSum/time.Duration(s.scans)))
		}
		fmt.Fprintf(&b, "| %d | %s | %.1f | %.0f | %s | %s | %s | %s | %.2f | %.2f | %.2f | %s | %d |\n", i+1, name, s.mbps, s.msgps, msf(s.retrP50), msf(s.retrP99),
			msf(s.retrMean), scans, s.wall.Seconds(), s.cpu.Seconds(), s.scanner.Seconds(), others, s.retries)
	}
	fmt.Fprintf(&b, "\npopgate logged %d lines.\n\n", lv.logLines)
	return b.String()
}

// summary is printed to stdout.
func (cr *chainResults) summary() string {
	if cr == nil {
		return ""
	}
	var b strings.Builder
	if len(cr.summaries("strip+tag")) > 0 {
		b.WriteString("\nstrip+tag chain:\n\n" + cr.stripTable(false) + "\nstrip+tag chain, realistic mix and strip corpus:\n\n" + cr.stripTable(true))
	}
	if len(cr.summaries("clamd")) > 0 {
		b.WriteString("\nclamd chain:\n\n" + cr.clamdTable())
	}
	if len(cr.summaries("spam")) > 0 {
		b.WriteString("\nspam chain (rspamd):\n\n" + cr.spamTable() + "\n" + cr.spamTimeTable())
	}
	if len(cr.rss) > 0 {
		b.WriteString("\npeak RSS with a big message:\n\n" + cr.rssTable())
	}
	b.WriteString(cr.memory.summary())
	return b.String()
}

// markdown is the filter-chain sections of docs/PERFORMANCE.md.
func (cr *chainResults) markdown(c config) string {
	if cr == nil {
		return ""
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("## Filter chains: what is measured\n\n")
	w("Same harness, same client, same Dovecot, same method (workers running sessions back to back, a %s warm-up of the fresh popgate, then %d measured runs of %s each in ABBA order, medians per metric; ", c.warmup, c.repeat, c.duration)
	w("a fresh popgate per table row). A session downloads at most the messages of its variant, then quits and the worker starts the next. The filter chains (the spam filter excepted: see its section) run on **attachment-heavy messages** of exactly %d bytes, made by the harness: ", cr.size)
	w("a text part, a zip of three stored documents (docx, xlsx, odt), a PNG-like image and a PDF-like attachment that takes the rest (all base64). ")
	w("Each bench mailbox (worker i uses mailbox i mod %d) holds %d such messages (**clean**: nothing matches the strip rules, the common case) followed by %d more (**10%% .exe**: ", c.mailboxes, c.fmessages, c.fmessages)
	w("in every tenth message the image is replaced by `setup-N.exe`, which the strip rules remove and quarantine). ")
	w("popgate runs with `spool { memory_limit = \"1MB\" }` and a quarantine directory in a temp dir, and filters as in `examples/demo.hcl`: ")
	w("`filter \"strip\" \"dangerous\"` (extensions %s, `archive_filenames = [\"*.exe\", \"*.scr\", \"*.js\"]` so every zip is listed) and ", strings.Join(stripExtensions, " "))
	w("`filter \"tag\" \"stamp\" { headers = { \"X-Popgate-Scanned\" = \"yes\" } }`.\n\n")
	w("The client checks every message: direct, byte for byte; through strip+tag, a clean message must be `X-Popgate-Scanned: yes` CRLF followed by the original, byte for byte; ")
	w("a stripped one must start with that header, parse as MIME (net/mail, mime/multipart), have as many parts as the original, keep the zip and the PDF, and have no part named `*.exe`. ")
	w("Through the clamd chain (`chain = [\"av\"]`, no tag) messages must arrive unchanged. MB/s counts the bytes of the originals on both paths.\n\n")

	if s := cr.summaries("strip+tag"); len(s) > 0 {
		w("## Filter chains: strip + tag\n\n")
		w("Chain `[\"dangerous\", \"stamp\"]`, no clamd; %d messages per session. Three modes alternate per row: **direct**, **pass-through** (a second, fresh popgate with the empty chain), and **popgate** with the chain. ", c.fmessages)
		w("Target (issue 14): popgate ≥ %.2f × pass-through on attachment-heavy mail (× direct for reference).\n\n", targetVsPassAttach)
		b.WriteString(cr.stripTable(false))
		w("\n**CPU s/GB**: utime+stime of that popgate over the measured runs per 10^9 original bytes; **peak RSS**: VmHWM of the chain's popgate at the end of the row (warm-up included). ")
		w("**stripped / run (share)**: messages the client received stripped in each measured popgate run (all sessions), and their share of the messages it received.\n\n")
		if mix, corpus := cr.realWorldLevel(mixVariant), cr.realWorldLevel(corpusVariant); mix != nil && corpus != nil && cr.mix != nil {
			mi := cr.mix
			w("## Filter chains: strip + tag on a realistic mix and on the strip corpus\n\n")
			w("The same chain and modes on real-world-shaped messages, stored with CRLF line breaks as Dovecot serves them, each mailbox holding them after the attachment-heavy ones; two rows per level:\n\n")
			w("- **realistic mix** (the target row): %d messages (%.0f KB in all) that a session downloads in order: ordinary mail, %d messages of the shapes the spam bench uses (`scripts/bench/spammix.go`: short notes, replies with a quoted thread, newsletters with text and HTML alternatives, an HTML offer, a base64 UTF-8 note, one in ten with a small PDF; %.1f to %.1f KB), ",
				mi.messages, float64(mi.bytes)/1e3, mi.messages-mi.corpus, float64(mi.min)/1e3, float64(mi.max)/1e3)
			w("with the %d messages of the strip corpus (below) interleaved evenly, one after every %d ordinary ones. %d of the %d (%.1f%%) are stripped: more than in real mail, where a few percent of messages at most carry a dangerous attachment.\n",
				mi.corpus, mixEvery, mix.distinct, mix.messages, 100*float64(mix.distinct)/float64(max(1, mix.messages)))
			w("- **strip corpus** (reported, not a target): the %d messages of `%s` alone, in name order: the strip filter's adversarial test corpus (multipart/alternative, forwarded and encoded message/rfc822, S/MIME-signed, Latin-1 and Shift_JIS names, RFC 2231 and 2047 names, LF-only and 8-bit bodies, a missing final boundary, digests, zips (nested, encrypted), a disguised executable, …; `gen_corpus.py` there says how each was made). ",
				corpus.messages, c.mixDir)
			w("%d of the %d are stripped, and popgate quarantines each stripped message with durable writes (an fsync'd file, a rename, a directory fsync) before it delivers it, so this row measures the quarantine's durable writes, their cost per stripped message, far more than the filtering.\n\n",
				corpus.distinct, corpus.messages)
			w("The client checks every message: the tag header and the original byte for byte, or the tag header and a message that parses and holds strip's notice (**stripped / run**: in each measured popgate run, all sessions; share: of the messages the client received in those runs). ")
			w("The messages are small (the ordinary ones up to %.1f KB, the corpus's up to %.1f KB), so these rows are popgate's cost per message more than per byte. Target (issue 14): popgate ≥ %.2f × pass-through on the realistic mix; the strip corpus is reported.\n\n",
				float64(mi.max)/1e3, float64(mi.corpusMax)/1e3, targetVsPassMix)
			b.WriteString(cr.stripTable(true))
			w("\n")
		}
	}
	if s := cr.summaries("clamd"); len(s) > 0 {
		w("## Filter chains: clamd\n\n")
		mt := cr.maxThreads
		if mt == "" {
			mt = "unknown"
		}
		w("Chain `[\"av\"]` against the test clamd (%s; `MaxThreads %s`, `StreamMaxLength %s` in $POPGATE_TEST_CLAMD_CONF; popgate's scanner has the default `max_concurrent = 8`), ", cr.clamdAddr, mt, cr.streamMax)
		w("on the first %d clean attachment-heavy messages of each mailbox. Three modes alternate: **direct** RETR from Dovecot, **popgate** RETR through the clamd chain, ", c.cmessages)
		w("and **INSTREAM**: the harness sends the same messages straight to clamd (as many concurrent workers as sessions but at most %d, popgate's default `max_concurrent` for a scanner, so at most that many scans run at once on either path; a new connection per message, 64 KiB chunks as popgate sends them) ", scanWorkers)
		w("and times connect → verdict. popgate's **overhead** beyond clamd's scan = (popgate RETR − direct RETR − INSTREAM scan) ÷ INSTREAM scan, ")
		w("from the per-run means (and, second column, p50s), medians over the runs; target (issue 14) ≤ %.0f%% at %d session(s). A negative overhead means popgate overlaps work ", 100*targetClamdOverhd, targetClamdSessions)
		w("(for instance fetching from Dovecot while it streams to clamd) or that the INSTREAM runs were slowed by something the others were not.\n\n")
		b.WriteString(cr.clamdTable())
		if cs := cr.clamdscan; cs != nil {
			if cs.err != "" {
				w("\n`clamdscan --stream` reference failed: %s\n", cs.err)
			} else {
				md := medianDur(cs.wall)
				w("\nReference: `clamdscan --stream --no-summary -c $POPGATE_TEST_CLAMD_CONF DIR` on a directory of the same %d messages (%.1f MB) takes %s ms (median of %d, after a warm-up), ",
					cs.files, float64(cs.bytes)/1e6, msf(md), len(cs.wall))
				w("%.2f ms per file, process start-up and connection per file included (clamdscan streams the files one after the other).\n", float64(md)/1e6/float64(cs.files))
			}
		}
		w("\n")
	}
	if t := cr.phaseTable(); strings.Count(t, "\n") > 2 {
		w("## Filter chains: where popgate's RETR time goes\n\n")
		w("popgate's own account of its filtered RETRs in the measured popgate runs of each row above (`popgate_download_phase_seconds`, sum ÷ count over the runs, ms per RETR): ")
		w("**upstream_wait** from the command sent to Dovecot to its status line; **upstream_read** from there to the message's last byte; ")
		w("**filtering** from the last byte to the chain's result (clamd's verdict, the filters, the quarantine's durable write of a stripped message's original); ")
		w("**delivery** from the result to the answer flushed to the client. The client's RETR means (medians over the runs) add the client's side: its command reaching popgate and the answer reaching it.\n\n")
		b.WriteString(t)
		w("\n")
	}
	b.WriteString(cr.spamMarkdown(c))
	if len(cr.rss) > 0 {
		w("## Filter chains: peak RSS with a big message\n\n")
		w("One session RETRs one message of %d bytes (the empty-chain message shape: a base64 PDF-like attachment) through a fresh popgate, ", cr.rss[0].size)
		w("once with the empty chain, once with strip+tag and once with clamd+strip+tag (`chain = [\"av\", \"dangerous\", \"stamp\"]`, `spool { memory_limit = \"1MB\" }`); the client checks it as above. ")
		w("A message beyond the clamav scanner's `max_size` (default 25MB, which the test clamd's `StreamMaxLength %s` allows) is not sent to clamd: the filter passes it with its warning header (`oversize = \"pass-with-tag\"`), so a second message of %d bytes goes through clamd+strip+tag and is scanned. ", cr.streamMax, clamdScanMax)
		w("VmHWM is read from /proc/PID/status before and after the RETR; the spool directory is polled every 20 ms for the largest total file size. Target: VmHWM ≤ 64 MiB.\n\n")
		b.WriteString(cr.rssTable())
		w("\n")
	}
	w("## Filter chains: all runs\n\n")
	for _, lv := range cr.levels {
		b.WriteString(cr.runsTable(lv))
	}
	w("## Filter chains: caveats\n\n")
	w("- The same two cores run the client, Dovecot, popgate and clamd; the strip+tag ratio measures popgate's CPU cost for parsing, zip listing and spooling as much as its latency.\n")
	w("- Other load on the machine moves single runs a lot (see the per-run tables and the load average at the top).\n")
	w("- The clamd comparison runs the INSTREAM client in separate runs, not in the same instant as the RETRs: clamd's scan time depends on the load of the moment. ")
	w("With one session the overhead rests on differences of a few milliseconds. The test clamd's signatures are whatever `scripts/testenv.sh` installed (see `$POPGATE_TEST_CLAMD_CONF`), which sets the scan time.\n")
	w("- Stripped messages are quarantined (fsync'd write + rename + directory fsync) before delivery; the quarantine is on the temp dir's file system, and its durable writes are most of what the strip corpus row measures.\n\n")
	return b.String()
}

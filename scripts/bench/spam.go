package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The spam filter (issue 13): popgate with a chain of one filter "spam" on
// a scanner "rspamd" that points at the test environment's rspamd, on a mix
// of small messages (spammix.go), against direct Dovecot, a pass-through
// popgate, and the same messages posted to rspamd's /checkv2 by the harness
// at the same concurrency: rspamd's own time, which popgate's overhead is
// measured against.

// The spam filter's thresholds in the bench: those of docs/CONFIG.md's
// example. The mix scores below tag_above with the test rspamd (no network),
// so every message passes with its score fields; one that reached subject or
// quarantine would fail the client's check.
const (
	spamTagAbove        = 5
	spamSubjectAbove    = 8
	spamQuarantineAbove = 15
)

// spamInfo describes the spam measurement's setting for the report.
type spamInfo struct {
	addr     string // rspamd's normal worker
	version  string // its Server header
	messages int
	bytes    int64
	min, max int // message sizes
	scores   []float64
	actions  map[string]int
	timeReal []time.Duration // rspamd's own time for each message, one at a time (the probe)
}

// spamHCL is the configuration of the spam chain: the filter on the test
// rspamd (chainHCL adds the metrics listener for popgate's own scan times).
func spamHCL(dir, rspamdAddr string) (string, error) {
	s, err := chainHCL(dir, "", []string{"junk"})
	if err != nil {
		return "", err
	}
	// timeout: 32 sessions queue at rspamd's single normal worker.
	return s + fmt.Sprintf(`scanner "rspamd" "rspamd" {
  addresses = [%q]
  timeout   = "60s"
}
filter "spam" "junk" {
  scanner          = "rspamd"
  tag_above        = %d
  subject_above    = %d
  quarantine_above = %d
}
`, "http://"+rspamdAddr, spamTagAbove, spamSubjectAbove, spamQuarantineAbove), nil
}

// runSpam measures the spam chain at each of cfg.spamSessions.
func (cr *chainResults) runSpam(ctx context.Context, cfg config, tb *benchTB, dir, upstream string) error {
	addr := os.Getenv("POPGATE_TEST_RSPAMD")
	if addr == "" {
		return errors.New("POPGATE_TEST_RSPAMD is not set (scripts/testenv.sh starts rspamd); or leave spam out of -chains")
	}
	msgs := make([][]byte, cfg.smessages)
	si := &spamInfo{addr: addr, messages: len(msgs), min: 1 << 30, actions: map[string]int{}}
	for i := range msgs {
		msgs[i] = makeSpamMixMessage(i + 1)
		si.bytes += int64(len(msgs[i]))
		si.min, si.max = min(si.min, len(msgs[i])), max(si.max, len(msgs[i]))
	}
	cr.spam = si
	// A probe: every message once, one at a time, so that a message the
	// filter would not pass unchanged is found before the runs, and the
	// report can say what rspamd made of the mix.
	rc := newRspamdClient(addr)
	for i, m := range msgs {
		a, err := rc.check(ctx, "bench", m)
		if err != nil {
			return fmt.Errorf("spam: rspamd on message %d: %w", i+1, err)
		}
		if *a.Score >= spamTagAbove {
			return fmt.Errorf("spam: rspamd scores message %d (%s) %.2f, at or above tag_above %d: the mix is meant to pass", i+1,
				spamMixKinds[(i+1)%len(spamMixKinds)], *a.Score, spamTagAbove)
		}
		si.scores = append(si.scores, *a.Score)
		si.actions[a.Action]++
		si.timeReal = append(si.timeReal, a.timeReal)
		si.version = a.version
	}
	log.Printf("spam: rspamd %s at %s: %d messages (%d–%d bytes, %.1f KB in all), scores %.2f–%.2f, %s per message on its own (time_real, one at a time)",
		si.version, addr, len(msgs), si.min, si.max, float64(si.bytes)/1e3, slices.Min(si.scores), slices.Max(si.scores),
		ms(mean(si.timeReal)))

	n := min(slices.Max(cfg.spamSessions), cfg.mailboxes)
	t0 := time.Now()
	log.Printf("creating %d mailboxes of %d small messages", n, len(msgs))
	users, err := createMailboxes(tb, n, msgs)
	if err != nil {
		return err
	}
	log.Printf("mailboxes ready in %.1f s", time.Since(t0).Seconds())
	for _, s := range cfg.spamSessions {
		sp, err := spamSpec(dir, addr, rc, users, msgs)
		if err != nil {
			return err
		}
		sp.rounds = cfg.spamRounds
		lv, err := measureChain(ctx, cfg, dir, upstream, sp, "mix", users, s, 1, msgs)
		if err != nil {
			return err
		}
		cr.levels = append(cr.levels, lv)
	}
	return nil
}

// spamSpec is the spam chain's measurement.
func spamSpec(dir, addr string, rc *rspamdClient, users []benchUser, msgs [][]byte) (chainSpec, error) {
	hcl, err := spamHCL(dir, addr)
	if err != nil {
		return chainSpec{}, err
	}
	sp := chainSpec{name: "spam", hcl: hcl, counted: new(atomic.Int64), pass: true, scanLabel: "/checkv2", scanKind: "rspamd", filter: "junk"}
	sp.through = func(k int, body []byte) error {
		spam, err := checkSpamFields(body, msgs[k])
		if spam {
			sp.counted.Add(1)
		}
		return err
	}
	// popgate sends every scan at once (the rspamd scanner has no
	// max_concurrent), so the harness does too: one worker per session,
	// each in the name of that session's user (Deliver-To).
	sp.scan = func(ctx context.Context, n int, d time.Duration, msgs [][]byte) (runStats, error) {
		return measureScanRun(ctx, n, d, msgs, func(ctx context.Context, w int, m []byte) (time.Duration, error) {
			a, err := rc.check(ctx, users[w%len(users)].name, m)
			return a.timeReal, err
		})
	}
	if pid := rspamdPID(); pid != 0 {
		// The main process and its workers (normal, controller, hs_helper).
		sp.scannerCPU = func() time.Duration { d, _ := cpuTime(pid); return d + dovecotCPU(pid) }
	}
	return sp, nil
}

// checkSpamFields checks a message the spam filter passed: popgate's score
// fields first, then more header fields (rspamd's milter additions), then
// the original byte for byte. It reports whether it was tagged as spam.
func checkSpamFields(body, orig []byte) (spam bool, err error) {
	if len(body) <= len(orig) || !bytes.HasSuffix(body, orig) || !bytes.HasPrefix(body, []byte("X-Spam-Score: ")) {
		return false, fmt.Errorf("got %d bytes, not X-Spam-Score and more header fields + the %d-byte original", len(body), len(orig))
	}
	head := body[:len(body)-len(orig)]
	if !bytes.HasSuffix(head, []byte("\r\n")) {
		return false, errors.New("the added header fields do not end in CRLF")
	}
	for l := range bytes.Lines(head) {
		name, _, ok := bytes.Cut(l, []byte(":"))
		if !(l[0] == ' ' || l[0] == '\t') && (!ok || len(name) == 0 || bytes.ContainsAny(name, " \t")) {
			return false, fmt.Errorf("added line %q is no header field", bytes.TrimRight(l, "\r\n"))
		}
	}
	if !bytes.Contains(head, []byte("\r\nX-Spam-Status: ")) {
		return false, errors.New("no X-Spam-Status field")
	}
	return bytes.Contains(head, []byte("\r\nX-Spam-Status: Yes")), nil
}

// rspamdClient posts messages to rspamd's /checkv2 as popgate's scanner
// does (filters/rspamd): plain net/http, no proxy, no compression, the
// message as the body with its length, Deliver-To naming the mailbox.
type rspamdClient struct {
	url    string
	client *http.Client
	seq    atomic.Int64
}

func newRspamdClient(addr string) *rspamdClient {
	d := &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}
	return &rspamdClient{url: "http://" + addr + "/checkv2", client: &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{Proxy: nil, DialContext: d.DialContext, DisableCompression: true,
			MaxIdleConnsPerHost: 16, IdleConnTimeout: 30 * time.Second},
	}}
}

// rspamdAnswer is what the bench reads of a /checkv2 answer.
type rspamdAnswer struct {
	Score     *float64 `json:"score"`
	Action    string   `json:"action"`
	IsSkipped bool     `json:"is_skipped"`
	TimeReal  float64  `json:"time_real"` // rspamd's own time for the task, seconds
	timeReal  time.Duration
	version   string
}

// check posts msg for mailbox user and reads the whole answer.
func (c *rspamdClient) check(ctx context.Context, user string, msg []byte) (rspamdAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(msg))
	if err != nil {
		return rspamdAnswer{}, err
	}
	req.Header.Set("Deliver-To", user)
	req.Header.Set("Queue-Id", "bench-"+strconv.FormatInt(c.seq.Add(1), 10))
	resp, err := c.client.Do(req)
	if err != nil {
		return rspamdAnswer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return rspamdAnswer{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return rspamdAnswer{}, fmt.Errorf("/checkv2: %s: %.200s", resp.Status, body)
	}
	var a rspamdAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return rspamdAnswer{}, fmt.Errorf("/checkv2: %w: %.200s", err, body)
	}
	if a.Score == nil || a.Action == "" || a.IsSkipped {
		return rspamdAnswer{}, fmt.Errorf("/checkv2: no verdict: %.200s", body)
	}
	a.timeReal = seconds(a.TimeReal)
	a.version = strings.TrimPrefix(resp.Header.Get("Server"), "rspamd/")
	return a, nil
}

// rspamdPID is the test rspamd's main process (its pid file in the test
// environment's directory), 0 if unknown.
func rspamdPID() int {
	return pidFromFile(filepath.Join(os.Getenv("POPGATE_TESTENV_DIR"), "rspamd", "run", "rspamd.pid"))
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/policy/generation"
)

// Exit statuses of `popgate scan`.
const (
	scanOK       = 0 // every message would be delivered (unchanged or changed)
	scanError    = 1 // bad configuration, unreadable message, failed output
	scanUsage    = 2 // bad arguments
	scanWithheld = 3 // some message would be refused (notice or -ERR) or deferred
)

const scanHelp = `usage: popgate scan -c FILE|DIR [--user U] [--client IP] [--listener NAME]
                    [-o OUT] [--json] [--quarantine] MSG.eml…

Runs each message through the chain a POP3 session would run: the policy is
chosen as for a login by U from IP on listener NAME (default: the first
listener), and the chain is built by the same code as the proxy's (real
scanners included). A message file is taken as stored mail and converted to
what a session sees (bare LF line ends become CRLF).

Quarantine: without --quarantine nothing is written to the configured
quarantine; a throwaway store in a temporary directory stands in for it (so
notices look as in a session) and the output says "would be quarantined".
With --quarantine the configured store is used for real.

-o OUT writes what the client would get (the filtered message, or the notice
in place of a refused one); with several messages OUT is a directory and each
result goes to OUT/<basename of the message file>.

Exit status: 0 every message would be delivered (unchanged or changed);
1 an error (bad configuration, unreadable file, output not written);
2 bad arguments; 3 some message would be refused or deferred (and no error).

--json prints one JSON object per message and line, with the fields:
  file, size            the message file, its size in the wire form (CRLF)
  policy                the policy's name ("" when no policy applies)
  user, client, listener, upstream   the login the policy was chosen for
  outcome               "deliver", "refuse" or "defer" (a notice is "deliver"
                        with notice true: the client gets the notice)
  verdict               "clean" (unchanged), "changed", "notice", "refused",
                        "deferred", "failed-open" or "error"
  changed, notice, failed_open   booleans
  reason                why it was refused, deferred or delivered unfiltered
  quarantine_id         the original's id in quarantine ("" if not stored)
  quarantine_dry_run    true when the id is from the throwaway store
  steps                 [{filter, type, action, reason, error, duration_ms,
                        found, where, spam}]
                        found, for a scanner's step: what it found (a
                        signature); where: the part it was in, when the
                        clamav filter scans by parts (scan = "parts")
                        spam, for a spam filter's step: {score, required,
                        action, symbols: [{name, score, options}]} (the
                        scanner's report; required and action are rspamd's)
  delivered_size        bytes the client would get (0 when withheld)
  output                the file -o wrote ("" if none)
  duration_ms           total time of the chain run
  error                 why the message could not be scanned ("" if it was)
`

// ScanResult is one message's report (the --json object).
type ScanResult struct {
	File             string     `json:"file"`
	Size             int64      `json:"size"`
	Policy           string     `json:"policy"`
	User             string     `json:"user"`
	Client           string     `json:"client"`
	Listener         string     `json:"listener"`
	Upstream         string     `json:"upstream"`
	Outcome          string     `json:"outcome"`
	Verdict          string     `json:"verdict"`
	Changed          bool       `json:"changed"`
	Notice           bool       `json:"notice"`
	FailedOpen       bool       `json:"failed_open"`
	Reason           string     `json:"reason"`
	QuarantineID     string     `json:"quarantine_id"`
	QuarantineDryRun bool       `json:"quarantine_dry_run"`
	Steps            []ScanStep `json:"steps"`
	DeliveredSize    int64      `json:"delivered_size"`
	Output           string     `json:"output"`
	DurationMS       float64    `json:"duration_ms"`
	Error            string     `json:"error"`
}

// ScanStep is one filter's verdict.
type ScanStep struct {
	Filter     string    `json:"filter"`
	Type       string    `json:"type"`
	Action     string    `json:"action"`
	Reason     string    `json:"reason"`
	Error      string    `json:"error"`
	DurationMS float64   `json:"duration_ms"`
	Found      string    `json:"found,omitempty"` // what a scanner found
	Where      string    `json:"where,omitempty"` // in which part, when scanned by parts
	Spam       *ScanSpam `json:"spam,omitempty"`
}

// ScanSpam is the spam scanner's report a filter decided with.
type ScanSpam struct {
	Score    float64          `json:"score"`
	Required float64          `json:"required"`
	Action   string           `json:"action"`
	Symbols  []ScanSpamSymbol `json:"symbols"`
}

// ScanSpamSymbol is one rule that matched, the strongest first.
type ScanSpamSymbol struct {
	Name    string   `json:"name"`
	Score   float64  `json:"score"`
	Options []string `json:"options,omitempty"`
}

// scanSpam is the report of a step, nil when it has none.
func scanSpam(sr *filters.ScanResult) *ScanSpam {
	if sr == nil || sr.Spam == nil {
		return nil
	}
	sp := &ScanSpam{Score: sr.Spam.Score, Required: sr.Spam.Required, Action: sr.Spam.Action, Symbols: []ScanSpamSymbol{}}
	for _, sym := range sr.Spam.StrongestSymbols() {
		sp.Symbols = append(sp.Symbols, ScanSpamSymbol{Name: sym.Name, Score: sym.Score, Options: sym.Options})
	}
	return sp
}

func cmdScan(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("scan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, scanHelp+"\nflags:\n")
		fs.PrintDefaults()
	}
	cfgPath := fs.String("c", defaultConfig, "configuration file or directory")
	user := fs.String("user", "", "the login name the policy is chosen for")
	client := fs.String("client", "", "the client IP address the policy is chosen for")
	listener := fs.String("listener", "", "the listener (default: the first one)")
	out := fs.String("o", "", "write what the client would get here (a directory with several messages)")
	asJSON := fs.Bool("json", false, "one JSON object per message")
	realQ := fs.Bool("quarantine", false, "store originals in the configured quarantine (default: a throwaway store)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return scanUsage
	}
	files := fs.Args()
	if len(files) == 0 {
		fmt.Fprintln(stderr, "popgate scan: no message files")
		fs.Usage()
		return scanUsage
	}
	who, err := parseWhoFlags(*user, *client)
	if err != nil {
		fmt.Fprintf(stderr, "popgate scan: %v\n", err)
		return scanUsage
	}
	outDir := ""
	if *out != "" {
		st, err := os.Stat(*out)
		switch {
		case err == nil && st.IsDir():
			outDir = *out
		case len(files) > 1 && errors.Is(err, os.ErrNotExist):
			if err := os.MkdirAll(*out, 0o700); err != nil {
				fmt.Fprintf(stderr, "popgate scan: %v\n", err)
				return scanError
			}
			outDir = *out
		case len(files) > 1:
			fmt.Fprintf(stderr, "popgate scan: -o %s must be a directory when scanning several messages\n", *out)
			return scanUsage
		}
	}

	cfg := load(*cfgPath, stderr)
	if cfg == nil {
		return scanError
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.TimeOnly, NoColor: true}).
		Level(zerolog.WarnLevel).With().Timestamp().Logger()

	// The login, as a session on that listener would present it.
	ex, err := cfg.Explain(who, *listener)
	if err != nil {
		fmt.Fprintf(stderr, "popgate scan: %v\n", err)
		return scanError
	}
	who.Listener, who.Upstream = ex.Listener, ex.Upstream

	// The quarantine: the real one only when asked for.
	opts := generation.Options{Log: log, Version: popgateVersion()}
	dryRun := false
	if *realQ && cfg.Quarantine == nil {
		fmt.Fprintf(stderr, "popgate scan: --quarantine: %s has no quarantine block\n", *cfgPath)
		return scanError
	}
	if cfg.Quarantine != nil && !*realQ {
		dir, err := os.MkdirTemp("", "popgate-scan-quarantine-")
		if err != nil {
			fmt.Fprintf(stderr, "popgate scan: %v\n", err)
			return scanError
		}
		defer os.RemoveAll(dir)
		opts.QuarantineDir, dryRun = dir, true
	}

	// The policy and its chain, as a session would get them.
	var p *policy.Policy
	if len(cfg.Policies) > 0 {
		if p = cfg.Select(who); p == nil {
			fmt.Fprintf(stderr, "popgate scan: %v: a session of user %q on listener %q would be refused at login with -ERR [SYS/PERM]\n",
				generation.ErrNoPolicy, who.User, who.Listener)
			return scanWithheld
		}
	}
	gen, err := generation.Build(cfg, opts)
	if err != nil {
		fmt.Fprintf(stderr, "popgate scan: %v\n", err)
		return scanError
	}
	defer gen.Close()
	var chain *filters.Chain
	if p != nil {
		chain = gen.SessionPolicy(p).Chain
	}
	spool := gen.Spool()
	types := map[string]string{}
	for name, f := range cfg.Filters {
		types[name] = f.Type
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := scanOK
	enc := json.NewEncoder(stdout)
	for i, file := range files {
		r := &ScanResult{File: file, User: who.User, Client: ex.Client, Listener: who.Listener, Upstream: who.Upstream,
			QuarantineDryRun: dryRun, Steps: []ScanStep{}}
		if p != nil {
			r.Policy = p.Name
		}
		target := *out
		if outDir != "" {
			target = filepath.Join(outDir, filepath.Base(file))
		}
		env := &filters.Envelope{
			SessionID: "scan", User: who.User, Listener: who.Listener, Upstream: who.Upstream,
			Command: "RETR", MsgNum: i + 1,
		}
		if who.Client.IsValid() {
			env.Client = netip.AddrPortFrom(who.Client, 0)
		}
		if err := scanOne(ctx, chain, spool, env, file, target, types, r); err != nil {
			r.Error, r.Verdict = err.Error(), "error"
			code = scanError
		} else if r.Outcome != "deliver" || r.Notice {
			if code == scanOK {
				code = scanWithheld
			}
		}
		r.QuarantineDryRun = dryRun && r.QuarantineID != ""
		if *asJSON {
			_ = enc.Encode(r)
		} else {
			writeScanText(stdout, r)
		}
	}
	return code
}

// scanOne runs chain over the message in file and fills r; an error means
// the message could not be scanned (or its result not written).
func scanOne(ctx context.Context, chain *filters.Chain, spool *filters.Spool, env *filters.Envelope, file, target string, types map[string]string, r *ScanResult) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	wire := wireForm(raw)
	sw := spool.NewWriter()
	if _, err := sw.Write(wire); err != nil {
		sw.Abort()
		return err
	}
	in, err := sw.Finish()
	if err != nil {
		return err
	}
	defer in.Remove()
	r.Size = in.Size()

	start := time.Now()
	var res *filters.Result
	if chain.Empty() {
		res = &filters.Result{Outcome: filters.Deliver, Body: in}
	} else {
		res = chain.Run(ctx, env, in)
	}
	r.DurationMS = ms(time.Since(start))
	defer res.Release()

	r.Outcome = res.Outcome.String()
	r.Reason = res.Reason
	r.QuarantineID = res.QuarantineID
	r.Notice = res.Withheld
	r.FailedOpen = res.FailedOpen
	for _, s := range res.Steps {
		st := ScanStep{Filter: s.Filter, Type: types[s.Filter], Action: s.Action.String(), Reason: s.Reason, DurationMS: ms(s.Duration), Spam: scanSpam(s.Scan)}
		if s.Scan != nil {
			st.Found, st.Where = s.Scan.Found, s.Scan.Where
		}
		if s.Filter == "quarantine" && st.Type == "" {
			st.Action = "store"
		}
		if s.Err != nil {
			st.Action, st.Error = "error", s.Err.Error()
		}
		r.Steps = append(r.Steps, st)
	}
	switch {
	case res.Outcome == filters.Refuse:
		r.Verdict = "refused"
	case res.Outcome == filters.Defer:
		r.Verdict = "deferred"
	case res.Withheld:
		r.Verdict = "notice"
	case res.FailedOpen:
		r.Verdict, r.Changed = "failed-open", true
	case !sameBodyValue(res.Body, in):
		r.Verdict, r.Changed = "changed", true
	default:
		r.Verdict = "clean"
	}
	if res.Outcome != filters.Deliver || res.Body == nil {
		return nil
	}
	r.DeliveredSize = res.Body.Size()
	if target == "" {
		return nil
	}
	if err := writeBody(target, res.Body); err != nil {
		return fmt.Errorf("-o: %w", err)
	}
	r.Output = target
	return nil
}

// wireForm is a stored message as a POP3 session's chain sees it: the
// multi-line RETR response, un-dot-stuffed, with CRLF line ends (a bare LF
// becomes CRLF) and a final line end.
func wireForm(raw []byte) []byte {
	b := bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))
	b = bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
	if len(b) > 0 && !bytes.HasSuffix(b, []byte("\r\n")) {
		b = append(b, '\r', '\n')
	}
	return b
}

func writeBody(target string, b filters.Body) error {
	rc, err := b.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// sameBodyValue reports whether a and b are the same Body value, without
// panicking on Body types that are not comparable.
func sameBodyValue(a, b filters.Body) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func writeScanText(w io.Writer, r *ScanResult) {
	if r.Error != "" && r.Outcome == "" {
		fmt.Fprintf(w, "%s: ERROR: %s\n\n", r.File, r.Error)
		return
	}
	fmt.Fprintf(w, "%s (%d bytes)\n", r.File, r.Size)
	pol := r.Policy
	if pol == "" {
		pol = "(none: no policy blocks, relayed unfiltered)"
	}
	client := r.Client
	if client == "" {
		client = "-"
	}
	fmt.Fprintf(w, "  policy     %s (user %q, client %s, listener %s, upstream %s)\n", pol, r.User, client, r.Listener, r.Upstream)
	for _, s := range r.Steps {
		name := s.Filter
		if s.Type != "" {
			name += " (" + s.Type + ")"
		}
		detail := s.Reason
		if s.Error != "" {
			detail = s.Error
		}
		if s.Filter == "quarantine" && s.Error == "" && r.QuarantineDryRun {
			detail = "would be quarantined (dry run; id " + s.Reason + " in a throwaway store)"
		}
		fmt.Fprintf(w, "  step       %-24s %-8s %9.3fms  %s\n", name, s.Action, s.DurationMS, oneLine(detail))
		if s.Found != "" {
			found := oneLine(s.Found)
			if s.Where != "" {
				found += " in " + oneLine(s.Where)
			}
			fmt.Fprintf(w, "             found      %s\n", found)
		}
		if s.Spam != nil {
			writeScanSpam(w, s.Spam)
		}
	}
	outcome := r.Outcome
	switch r.Verdict {
	case "notice":
		outcome += " a notice in place of the message (refused)"
	case "changed":
		outcome += " (changed)"
	case "clean":
		outcome += " (unchanged)"
	case "failed-open":
		outcome += " (FAILED OPEN: delivered unfiltered, with a warning header)"
	case "refused":
		outcome += " (-ERR [SYS/PERM]; the message stays on the server)"
	case "deferred":
		outcome += " (-ERR [SYS/TEMP]; the client retries later)"
	}
	fmt.Fprintf(w, "  outcome    %s\n", outcome)
	if r.Reason != "" {
		fmt.Fprintf(w, "  reason     %s\n", oneLine(r.Reason))
	}
	if r.QuarantineID != "" {
		if r.QuarantineDryRun {
			fmt.Fprintf(w, "  quarantine would be quarantined (dry run; id %s in a throwaway store)\n", r.QuarantineID)
		} else {
			fmt.Fprintf(w, "  quarantine %s\n", r.QuarantineID)
		}
	}
	if r.Output != "" {
		fmt.Fprintf(w, "  output     %s (%d bytes)\n", r.Output, r.DeliveredSize)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "  ERROR      %s\n", r.Error)
	}
	fmt.Fprintf(w, "  total      %.3fms\n\n", r.DurationMS)
}

// writeScanSpam writes a spam report under its step: the score, the
// scanner's own threshold and action, and the symbols, strongest first,
// wrapped.
func writeScanSpam(w io.Writer, sp *ScanSpam) {
	const indent = "               "
	fmt.Fprintf(w, "%sspam       score %.2f, required %.2f, action %s\n", indent, sp.Score, sp.Required, strconv.Quote(mailtext.Visible(sp.Action, 64)))
	if len(sp.Symbols) == 0 {
		fmt.Fprintf(w, "%ssymbols    none\n", indent)
		return
	}
	line := indent + "symbols   "
	for i, sym := range sp.Symbols {
		item := fmt.Sprintf(" %s(%.2f)", mailtext.Visible(sym.Name, 128), sym.Score)
		if i < len(sp.Symbols)-1 {
			item += ","
		}
		if len(line)+len(item) > 100 && strings.TrimSpace(line) != "symbols" {
			fmt.Fprintln(w, line)
			line = indent + "          "
		}
		line += item
	}
	fmt.Fprintln(w, line)
}

// oneLine is reason or detail text for the terminal: white space runs
// collapse, and control and bidi characters show as <U+XXXX>.
func oneLine(s string) string {
	return mailtext.Visible(strings.Join(strings.Fields(s), " "), 2000)
}

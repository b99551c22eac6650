package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/internal/mailtext"
	"github.com/popgate/popgate/policy/generation"
)

// cmdMemory is `popgate memory show|forget`: what popgate remembers of one
// message, and forgetting it (the next download scans it again).
func cmdMemory(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "show" && args[0] != "forget") {
		fmt.Fprintln(stderr, "usage: popgate memory show|forget -c FILE --user LOGIN --uidl UIDL [--upstream NAME] [--json]")
		return 2
	}
	op := args[0]
	fs := flag.NewFlagSet("memory "+op, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", defaultConfig, "configuration file or directory")
	user := fs.String("user", "", "the mailbox: the login name as the upstream knows it")
	uidl := fs.String("uidl", "", "the message's UIDL on the upstream")
	upstream := fs.String("upstream", "", "the upstream block (default: the first listener's)")
	asJSON := fs.Bool("json", false, "show: print the record as JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *user == "" || *uidl == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "popgate memory: --user and --uidl are required")
		return 2
	}
	cfg := load(*cfgPath, stderr)
	if cfg == nil {
		return 1
	}
	if cfg.Memory == nil {
		fmt.Fprintf(stderr, "popgate memory: %s has no message memory (no memory block and no quarantine)\n", *cfgPath)
		return 1
	}
	name := *upstream
	if name == "" && len(cfg.Listeners) > 0 {
		name = cfg.Listeners[0].Upstream
	}
	up := cfg.Upstreams[name]
	if up == nil {
		fmt.Fprintf(stderr, "popgate memory: there is no upstream %q\n", name)
		return 1
	}
	store, err := generation.OpenMemory(cfg.Memory, zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "popgate memory: %v\n", err)
		return 1
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := memory.Key{Upstream: up.Address, Mailbox: *user, UIDL: *uidl}
	rec, err := store.Get(ctx, key)
	if err != nil {
		fmt.Fprintf(stderr, "popgate memory: %v\n", err)
		return 1
	}
	if rec == nil {
		fmt.Fprintf(stderr, "popgate memory: no record of %s's message %s on %s\n", *user, *uidl, name)
		return 1
	}
	if op == "forget" {
		if err := store.Delete(ctx, key); err != nil {
			fmt.Fprintf(stderr, "popgate memory: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "forgot %s's message %s on %s: its next download is scanned\n", *user, *uidl, name)
		return 0
	}
	v := recordView(rec)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return 1
		}
		return 0
	}
	fmt.Fprintf(stdout, "outcome:        %s\n", v.Outcome)
	fmt.Fprintf(stdout, "scanned:        %s\n", v.Scanned)
	fmt.Fprintf(stdout, "size:           %d (LIST %d), sha256 %s\n", v.Size, v.ListSize, v.SHA256)
	fmt.Fprintf(stdout, "delivered size: %d (%d pieces)\n", v.DeliveredSize, v.Pieces)
	if v.QuarantineID != "" {
		fmt.Fprintf(stdout, "quarantine id:  %s\n", v.QuarantineID)
	}
	if v.Reason != "" {
		fmt.Fprintf(stdout, "reason:         %s\n", v.Reason)
	}
	fmt.Fprintf(stdout, "chain:          %s\n", v.Fingerprint)
	fmt.Fprintf(stdout, "signatures:     %s\n", v.Signatures)
	return 0
}

// memoryRecord is a record as `popgate memory show` prints it.
type memoryRecord struct {
	Outcome       string `json:"outcome"`
	Scanned       string `json:"scanned"`
	Size          int64  `json:"size"`
	ListSize      int64  `json:"list_size"`
	SHA256        string `json:"sha256"`
	DeliveredSize int64  `json:"delivered_size"`
	Pieces        int    `json:"pieces"`
	QuarantineID  string `json:"quarantine_id,omitempty"`
	Reason        string `json:"reason,omitempty"`
	Fingerprint   string `json:"chain_fingerprint"`
	Signatures    string `json:"signatures"`
}

func recordView(r *memory.Record) memoryRecord {
	outcome := map[memory.Outcome]string{memory.Deliver: "deliver", memory.Notice: "notice", memory.Refuse: "refuse"}[r.Outcome]
	if r.Outcome == memory.Deliver && r.Pieces != nil {
		outcome = "deliver with edits"
	}
	return memoryRecord{
		Outcome: outcome, Scanned: r.Created.UTC().Format(time.RFC3339), Size: r.Size, ListSize: r.ListSize,
		SHA256: hex.EncodeToString(r.SHA256[:]), DeliveredSize: r.DeliveredSize, Pieces: len(r.Pieces),
		QuarantineID: r.QuarantineID, Reason: mailtext.Visible(r.Reason, 500), Fingerprint: r.Fingerprint,
		Signatures: mailtext.Visible(r.Signatures, 500),
	}
}

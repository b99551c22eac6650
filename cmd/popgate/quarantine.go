package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/policy"
)

// cmdQuarantine browses, recovers and removes quarantined originals:
//
//	popgate quarantine list   [-c FILE | -dir DIR] [-user U] [-limit N]
//	popgate quarantine show   [-c FILE | -dir DIR] ID
//	popgate quarantine export [-c FILE | -dir DIR] [-o FILE] ID
//	popgate quarantine delete [-c FILE | -dir DIR] ID...
//	popgate quarantine purge  [-c FILE | -dir DIR] --older-than D
//	popgate quarantine release [-c FILE] [--to ADDRESS [--login NAME]] [--force] ID
func cmdQuarantine(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: popgate quarantine list|show ID|export ID|release ID|delete ID...|purge --older-than D [-c FILE | -dir DIR]")
		return 2
	}
	sub, args := args[0], args[1:]
	if sub == "release" {
		return quarantineRelease(args, stdout, stderr)
	}
	fs := flag.NewFlagSet("quarantine "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("c", defaultConfig, "configuration whose quarantine block names the directory")
	dir := fs.String("dir", "", "quarantine directory (instead of -c)")
	user := fs.String("user", "", "list: only this user's messages")
	limit := fs.Int("limit", 0, "list: at most this many, newest first")
	out := fs.String("o", "", "export: write the original here instead of standard output")
	olderThan := fs.String("older-than", "", `purge: remove what was quarantined longer ago than this ("30d", "36h", "90m")`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var nargs bool
	switch sub {
	case "list", "purge":
		nargs = fs.NArg() == 0
	case "show", "export":
		nargs = fs.NArg() == 1 && fs.Arg(0) != ""
	case "delete":
		nargs = fs.NArg() > 0
	default:
		fmt.Fprintf(stderr, "popgate quarantine: unknown subcommand %q\n", sub)
		return 2
	}
	if !nargs || (*olderThan != "") != (sub == "purge") {
		fmt.Fprintf(stderr, "popgate quarantine %s: wrong arguments\n", sub)
		return 2
	}
	var age time.Duration
	if sub == "purge" {
		var err error
		if age, err = parseAge(*olderThan); err != nil {
			fmt.Fprintf(stderr, "popgate quarantine purge: --older-than: %v\n", err)
			return 2
		}
	}
	if *dir == "" {
		cfg := load(*config, stderr)
		if cfg == nil {
			return 1
		}

		if cfg.Quarantine == nil {
			fmt.Fprintf(stderr, "popgate quarantine: %s has no quarantine block\n", *config)
			return 1
		}
		*dir = cfg.Quarantine.Dir
	}
	// Read-only first, also for delete and purge: it checks that the store
	// exists, where Open would make an empty one of a mistyped directory.
	store, err := quarantine.OpenReadOnly(*dir, zerolog.Nop())
	if err == nil && (sub == "delete" || sub == "purge") {
		store, err = quarantine.Open(*dir, zerolog.Nop())
	}
	if err != nil {
		fmt.Fprintf(stderr, "popgate quarantine: %v\n", err)
		return 1
	}
	id := fs.Arg(0)
	switch sub {
	case "list":
		metas, err := store.List(quarantine.ListOptions{User: *user, Limit: *limit})
		if err == nil {
			err = quarantine.FormatList(stdout, metas)
		}
		return report(err, stderr)
	case "show":
		m, err := store.Get(id)
		if err == nil {
			err = quarantine.FormatMeta(stdout, m)
		}
		return report(err, stderr)
	case "export":
		return report(export(store, id, *out, stdout), stderr)
	case "delete":
		code := 0
		for _, id := range fs.Args() {
			err := store.Delete(id)
			if err == nil {
				fmt.Fprintf(stdout, "deleted %s\n", id)
			}
			code = max(code, report(err, stderr))
		}
		return code
	}
	before := time.Now().Add(-age)
	res, err := store.Purge(before)
	fmt.Fprintf(stdout, "purged %v quarantined before %s\n", res, before.UTC().Format(time.RFC3339))
	return report(err, stderr)
}

// parseAge parses purge's --older-than: a Go duration ("36h", "90m") or
// whole days ("30d"); it must be positive.
func parseAge(s string) (time.Duration, error) {
	d, err := policy.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q is not a duration; write it like \"30d\", \"36h\" or \"90m\"", s)
	case d <= 0:
		return 0, fmt.Errorf("%q: the age must be greater than zero", s)
	}
	return d, nil
}

// export writes a quarantined original, byte for byte, after checking it
// against its record's size and checksum.
func export(store *quarantine.Store, id, out string, stdout io.Writer) error {
	if err := store.Verify(id); err != nil {
		return err
	}
	r, err := store.Open(id)
	if err != nil {
		return err
	}
	defer r.Close()
	w := stdout
	if out != "" {
		f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	if _, err := io.Copy(w, r); err != nil {
		return fmt.Errorf("export %s: %w", id, err)
	}
	if f, ok := w.(*os.File); ok && out != "" {
		return f.Close()
	}
	return nil
}

func report(err error, stderr io.Writer) int {
	if err != nil {
		fmt.Fprintf(stderr, "popgate quarantine: %v\n", err)
		return 1
	}
	return 0
}

package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/quarantine"
)

// cmdQuarantine browses and recovers quarantined originals:
//
//	popgate quarantine list   [-c FILE | -dir DIR] [-user U] [-limit N]
//	popgate quarantine show   [-c FILE | -dir DIR] ID
//	popgate quarantine export [-c FILE | -dir DIR] [-o FILE] ID
func cmdQuarantine(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: popgate quarantine list|show ID|export ID [-c FILE | -dir DIR]")
		return 2
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("quarantine "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("c", defaultConfig, "configuration whose quarantine block names the directory")
	dir := fs.String("dir", "", "quarantine directory (instead of -c)")
	user := fs.String("user", "", "list: only this user's messages")
	limit := fs.Int("limit", 0, "list: at most this many, newest first")
	out := fs.String("o", "", "export: write the original here instead of standard output")
	if err := fs.Parse(args); err != nil {
		return 2
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
	store, err := quarantine.OpenReadOnly(*dir, zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "popgate quarantine: %v\n", err)
		return 1
	}
	id := fs.Arg(0)
	needID := sub == "show" || sub == "export"
	if needID && (fs.NArg() != 1 || id == "") || !needID && fs.NArg() != 0 {
		fmt.Fprintf(stderr, "popgate quarantine %s: wrong arguments\n", sub)
		return 2
	}
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
	}
	fmt.Fprintf(stderr, "popgate quarantine: unknown subcommand %q\n", sub)
	return 2
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

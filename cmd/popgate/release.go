package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/filters/quarantine/release"
	"github.com/popgate/popgate/policy/generation"
)

// quarantineRelease is `popgate quarantine release [-c FILE] [--to ADDRESS
// [--login NAME]] [--force] ID`: deliver a quarantined original back to the
// mailbox it was taken from, through the upstream's release block.
func quarantineRelease(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quarantine release", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("c", defaultConfig, "configuration file or directory")
	to := fs.String("to", "", "deliver to this address instead of the mailbox's")
	login := fs.String("login", "", "with --to: the login that reads that mailbox through popgate")
	force := fs.Bool("force", false, "deliver even though a release is recorded (after an uncertain one)")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 || *login != "" && *to == "" {
		fmt.Fprintln(stderr, "usage: popgate quarantine release [-c FILE] [--to ADDRESS [--login NAME]] [--force] ID")
		return 2
	}
	id := fs.Arg(0)
	cfg := load(*config, stderr)
	if cfg == nil {
		return 1
	}
	if cfg.Quarantine == nil {
		fmt.Fprintf(stderr, "popgate quarantine: %s has no quarantine block\n", *config)
		return 1
	}
	log := zerolog.New(stderr).Level(zerolog.WarnLevel)
	store, err := quarantine.Open(cfg.Quarantine.Dir, log)
	if err != nil {
		return report(err, stderr)
	}
	keys, err := release.LoadOrCreateKeys(generation.ReleaseKeyFile(cfg, ""))
	if err != nil {
		return report(err, stderr)
	}
	mailers, err := generation.Mailers(cfg)
	if err != nil {
		return report(err, stderr)
	}
	r := generation.NewReleaser(cfg, store, keys, mailers, log, nil)

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	res, err := r.Release(ctx, id, release.Request{To: *to, Login: *login, Force: *force, Actor: "cli"})
	switch {
	case errors.Is(err, release.ErrUncertain):
		fmt.Fprintf(stderr, "popgate quarantine: %v\n  look at the mailbox; if it did not arrive: popgate quarantine release --force %s\n", err, id)
		return 1
	case err != nil:
		return report(err, stderr)
	case res.Already:
		fmt.Fprintf(stdout, "%s was released before (%s to %s): nothing delivered\n", id, res.At.UTC().Format(time.RFC3339), res.Recipient)
	default:
		fmt.Fprintf(stdout, "released %s to %s\n", id, res.Recipient)
	}
	return 0
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/filters/rspamd"
)

const spamLearnUsage = "usage: popgate spam learn [-c FILE] --spam|--ham [--scanner NAME] [--user LOGIN] [--id QUARANTINE_ID]... [MSG.eml...]"

// cmdSpam is `popgate spam learn`: teach rspamd, through the controller of
// an rspamd scanner block, that messages are spam or ham: quarantined
// originals (--id) or message files.
func cmdSpam(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "learn" {
		fmt.Fprintln(stderr, spamLearnUsage)
		return 2
	}
	fs := flag.NewFlagSet("spam learn", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("c", defaultConfig, "configuration file or directory")
	spam := fs.Bool("spam", false, "the messages are spam")
	ham := fs.Bool("ham", false, "the messages are ham (not spam)")
	scanner := fs.String("scanner", "", `the rspamd scanner block whose controller learns (needed when several name one)`)
	user := fs.String("user", "", "for message files: the login whose mailbox they are from (rspamd's Deliver-To, for per-user Bayes)")
	var ids []string
	fs.Func("id", "a quarantined original to learn from (repeatable)", func(s string) error {
		ids = append(ids, s)
		return nil
	})
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *spam == *ham || len(ids)+fs.NArg() == 0 {
		fmt.Fprintln(stderr, spamLearnUsage)
		return 2
	}
	cfg := load(*config, stderr)
	if cfg == nil {
		return 1
	}
	ctl, name, err := rspamd.FindController(cfg.Scanners, *scanner)
	if err != nil {
		fmt.Fprintf(stderr, "popgate spam learn: %s: %v\n", *config, err)
		return 1
	}
	var store *quarantine.Store
	if len(ids) > 0 {
		if cfg.Quarantine == nil {
			fmt.Fprintf(stderr, "popgate spam learn: %s has no quarantine block for --id\n", *config)
			return 1
		}
		if store, err = quarantine.OpenReadOnly(cfg.Quarantine.Dir, zerolog.Nop()); err != nil {
			fmt.Fprintf(stderr, "popgate spam learn: %v\n", err)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	class := "ham"
	if *spam {
		class = "spam"
	}
	code := 0
	learn := func(what string, body filters.Body, login string, err error) {
		if err == nil {
			err = ctl.Learn(ctx, body, *spam, login)
		}
		switch {
		case err == nil:
			fmt.Fprintf(stdout, "learned %s as %s\n", what, class)
		case rspamd.NotLearned(err):
			fmt.Fprintf(stdout, "not learned %s: %v\n", what, err)
		default:
			fmt.Fprintf(stderr, "popgate spam learn: %s: %v\n", what, err)
			code = 1
		}
	}
	fmt.Fprintf(stdout, "teaching %s through the controller of scanner %q (%s)\n", class, name, ctl.Addr())
	for _, id := range ids {
		body, m, err := store.Original(id)
		learn(id, body, m.User, err)
	}
	for _, file := range fs.Args() {
		body, err := messageFile(file)
		learn(file, body, *user, err)
	}
	return code
}

// openedBody is a filters.Body over a message file popgate does not own:
// Open opens it afresh, Remove leaves it.
type openedBody struct {
	open func() (io.ReadCloser, error)
	size int64
}

func (b *openedBody) Open() (io.ReadCloser, error) { return b.open() }
func (b *openedBody) Size() int64                  { return b.size }
func (b *openedBody) Remove() error                { return nil }

// messageFile is a message file, as it is (rspamd reads LF and CRLF
// alike).
func messageFile(path string) (*openedBody, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	return &openedBody{open: func() (io.ReadCloser, error) { return os.Open(path) }, size: st.Size()}, nil
}

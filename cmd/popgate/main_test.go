package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/policy/generation"
)

// Unit tests of the command line, run in-process; the end-to-end suite
// drives the built binary against the real servers.

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, {"-help"}} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 0 || !strings.Contains(out.String(), "usage:") || errOut.Len() != 0 {
			t.Errorf("popgate %s: exit %d, stdout %q, stderr %q", args[0], code, out.String(), errOut.String())
		}
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "usage:") {
		t.Errorf("an unknown command: exit %d, stderr %q", code, errOut.String())
	}
}

func TestVersionIsNamed(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"version"}, &out, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	first, _, _ := strings.Cut(out.String(), "\n")
	if first == "popgate dev" || first == "popgate " || !strings.HasPrefix(first, "popgate ") {
		t.Errorf("version line %q names no release or revision", first)
	}
	defer func(v string) { version = v }(version)
	version = "v1.2.3"
	if got := popgateVersion(); got != "v1.2.3" {
		t.Errorf("a stamped version reads %q", got)
	}
}

// check and --explain decode the configuration only: a clamd that cannot
// be reached costs them nothing.
func TestCheckWithClamdUnreachable(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, fmt.Sprintf(`scanner "clamav" "farm" { addresses = ["tcp://192.0.2.1:3310", "unix://%s/no-such.sock"] }
filter "clamav" "av" { scanner = "farm" }
quarantine { dir = %q }
policy "all" { chain = ["av"] }
`, dir, filepath.Join(dir, "q")))
	for _, args := range [][]string{
		{"check", "-c", cfg},
		{"check", "-c", cfg, "--explain", "ann@example.com"},
	} {
		var out, errOut bytes.Buffer
		start := time.Now()
		code := run(args, &out, &errOut)
		if code != 0 || errOut.Len() != 0 {
			t.Errorf("%v: exit %d\n%s%s", args, code, out.String(), errOut.String())
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%v took %v: it waited for clamd", args, took)
		}
		if len(args) > 3 && !strings.Contains(out.String(), "scanners:   farm (clamav)") {
			t.Errorf("--explain does not name the scanner the chain uses:\n%s", out.String())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "q")); !os.IsNotExist(err) {
		t.Errorf("check created the quarantine directory (%v)", err)
	}
}

// popgate memory shows and forgets what the embedded store holds of a
// message.
func TestMemoryShowForget(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, fmt.Sprintf(`filter "tag" "stamp" { headers = { "X-Scanned" = "yes" } }
quarantine { dir = %q }
policy "all" { chain = ["stamp"] }
`, filepath.Join(dir, "q")))
	loaded := load(cfg, io.Discard)
	store, err := generation.OpenMemory(loaded.Memory, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	key := memory.Key{Upstream: "127.0.0.1:110", Mailbox: "ann", UIDL: "u-1"}
	rec := &memory.Record{ListSize: 10, Size: 10, Outcome: memory.Deliver, DeliveredSize: 27, Fingerprint: "abcd",
		Pieces: []filters.Piece{{Data: []byte("X-Scanned: yes\r\n")}, {Off: 0, Len: 10}}, Created: time.Now().UTC().Truncate(time.Second)}
	if err := store.Put(context.Background(), key, rec); err != nil {
		t.Fatal(err)
	}
	store.Close()

	run1 := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(append([]string{"memory"}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	code, out, errOut := run1("show", "-c", cfg, "--user", "ann", "--uidl", "u-1")
	if code != 0 || !strings.Contains(out, "outcome:        deliver with edits") || !strings.Contains(out, "delivered size: 27 (2 pieces)") {
		t.Fatalf("show: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut = run1("forget", "-c", cfg, "--user", "ann", "--uidl", "u-1"); code != 0 || !strings.Contains(out, "forgot") {
		t.Fatalf("forget: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut = run1("show", "-c", cfg, "--user", "ann", "--uidl", "u-1"); code != 1 || !strings.Contains(errOut, "no record") {
		t.Errorf("show after forget: exit %d, %q", code, errOut)
	}
	if code, _, _ = run1("show", "-c", cfg); code != 2 {
		t.Errorf("show without --user/--uidl: exit %d, want 2", code)
	}
}

// writeConfig writes a configuration of one listener and one upstream plus
// blocks into dir and returns its path.
func writeConfig(t *testing.T, dir, blocks string) string {
	t.Helper()
	path := filepath.Join(dir, "popgate.hcl")
	src := `
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}
upstream "mail" { address = "127.0.0.1:110" }
` + blocks
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// popgate quarantine delete and purge remove originals from a store the
// daemon may be using; list and show tell a released message.
func TestQuarantineDeletePurge(t *testing.T) {
	dir := t.TempDir()
	qdir := filepath.Join(dir, "q")
	cfg := writeConfig(t, dir, fmt.Sprintf("quarantine { dir = %q }\n", qdir))
	store, err := quarantine.Open(qdir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	put := func() string {
		id, err := store.Store(context.Background(), &filters.Envelope{User: "ann"}, filters.BytesBody([]byte("Subject: x\r\n\r\nbody\r\n")), nil)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	run1 := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(append([]string{"quarantine"}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	old1, old2 := put(), put()
	time.Sleep(time.Second)
	a, b, c := put(), put(), put()

	if _, err := store.ClaimRelease(c, quarantine.ReleaseState{State: quarantine.Released, Actor: "cli", Recipient: "ann@example.org"}); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run1("list", "-dir", qdir)
	if code != 0 || !strings.Contains(out, "RELEASE") || !regexp.MustCompile(c+`.* released `).MatchString(out) {
		t.Errorf("list: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut = run1("show", "-c", cfg, c); code != 0 || !strings.Contains(out, "ann@example.org") || !strings.Contains(out, "released") {
		t.Errorf("show: exit %d\n%s%s", code, out, errOut)
	}

	if code, out, errOut = run1("delete", "-c", cfg, a); code != 0 || out != "deleted "+a+"\n" {
		t.Errorf("delete: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut = run1("delete", "-dir", qdir, a); code != 1 || !strings.Contains(errOut, "no such id") {
		t.Errorf("delete again: exit %d, %q", code, errOut)
	}
	code, out, errOut = run1("delete", "-dir", qdir, "../etc/passwd", b, c)
	if code != 1 || out != "deleted "+b+"\ndeleted "+c+"\n" || !strings.Contains(errOut, "invalid id") {
		t.Errorf("delete with a bad id: exit %d\n%s%s", code, out, errOut)
	}
	for _, id := range []string{a, b, c} {
		if _, err := store.Get(id); !errors.Is(err, quarantine.ErrNotFound) {
			t.Errorf("%s after delete: %v", id, err)
		}
	}

	for _, args := range [][]string{
		{"purge", "-dir", qdir},
		{"purge", "-dir", qdir, "--older-than", "0"},
		{"purge", "-dir", qdir, "--older-than", "0d"},
		{"purge", "-dir", qdir, "--older-than", "-1h"},
		{"purge", "-dir", qdir, "--older-than", "a week"},
		{"purge", "-dir", qdir, "--older-than", "1d", old1},
		{"list", "-dir", qdir, "--older-than", "1d"},
		{"delete", "-dir", qdir},
		{"frob", "-dir", qdir},
	} {
		if code, _, errOut := run1(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%q)", args, code, errOut)
		}
	}
	keep := put()
	code, out, errOut = run1("purge", "-dir", qdir, "--older-than", "700ms")
	if code != 0 || !strings.HasPrefix(out, "purged 2 records, 0 orphaned messages, 0 release states quarantined before ") {
		t.Errorf("purge: exit %d\n%s%s", code, out, errOut)
	}
	for _, id := range []string{old1, old2} {
		if _, err := store.Get(id); !errors.Is(err, quarantine.ErrNotFound) {
			t.Errorf("%s after purge: %v", id, err)
		}
	}
	if err := store.Verify(keep); err != nil {
		t.Errorf("a newer message after purge: %v", err)
	}
	if code, out, _ = run1("purge", "-c", cfg, "--older-than", "30d"); code != 0 || !strings.HasPrefix(out, "purged 0 records") {
		t.Errorf("purge of nothing: exit %d\n%s", code, out)
	}

	// A mistyped directory is an error, not a new empty store.
	missing := filepath.Join(dir, "no-such-quarantine")
	for _, args := range [][]string{{"delete", "-dir", missing, keep}, {"purge", "-dir", missing, "--older-than", "1d"}} {
		if code, _, errOut := run1(args...); code != 1 {
			t.Errorf("%v: exit %d (%q)", args, code, errOut)
		}
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("delete or purge created %s (%v)", missing, err)
	}
}

// parseAge never panics, and what it accepts is a positive duration.
func FuzzParseAge(f *testing.F) {
	for _, s := range []string{"30d", "36h", "90m", "1h30m", "0", "0d", "-1h", "65536d", "1.5d", "d", "+3d", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := parseAge(s); err == nil && d <= 0 {
			t.Errorf("parseAge(%q) = %v", s, d)
		}
	})
}

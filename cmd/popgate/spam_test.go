package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/internal/testenv"
)

// popgate spam learn against the real rspamd controller.
func TestSpamLearn(t *testing.T) {
	env := testenv.Rspamd(t)
	dir := t.TempDir()
	qdir := filepath.Join(dir, "q")
	cfg := writeConfig(t, dir, fmt.Sprintf(`quarantine { dir = %q }
scanner "rspamd" "nolearn" { addresses = [%q] }
scanner "rspamd" "local" {
  addresses           = [%q]
  controller          = %q
  controller_password = %q
}
`, qdir, env.Addr, env.Addr, env.Controller, env.Password))
	store, err := quarantine.Open(qdir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	msg := func() []byte {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		tok := hex.EncodeToString(b)
		return []byte("From: Shop <offers@example.net>\r\nTo: ann@example.org\r\nSubject: Offer " + tok + "\r\n" +
			"Message-ID: <" + tok + "@example.net>\r\nDate: " + time.Now().Format(time.RFC1123Z) + "\r\n\r\n" +
			strings.Repeat("Buy cheap watches and pills today, limited offer for you only. ", 4) + tok + "\r\n")
	}
	id, err := store.Store(context.Background(), &filters.Envelope{User: "ann"}, filters.BytesBody(msg()), nil)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "spam.eml")
	if err := os.WriteFile(file, msg(), 0o600); err != nil {
		t.Fatal(err)
	}
	run1 := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(append([]string{"spam", "learn"}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}

	code, out, errOut := run1("-c", cfg, "--spam", "--id", id, file)
	if code != 0 || !strings.Contains(out, `controller of scanner "local"`) ||
		!strings.Contains(out, "learned "+id+" as spam") || !strings.Contains(out, "learned "+file+" as spam") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	// Again: rspamd knows them; reported, not a failure.
	code, out, errOut = run1("-c", cfg, "--scanner", "local", "--spam", "--id", id, file)
	if code != 0 || strings.Count(out, "not learned") != 2 || !strings.Contains(out, "already learned") {
		t.Fatalf("again: exit %d\n%s%s", code, out, errOut)
	}
	// A missing file and a missing id fail; the rest is still learned.
	code, out, errOut = run1("-c", cfg, "--ham", "--id", "20260101T000000.000000Z-aaaaaaaaaa", filepath.Join(dir, "none.eml"), file)
	if code != 1 || !strings.Contains(out, "learned "+file+" as ham") || strings.Count(errOut, "popgate spam learn: ") != 2 ||
		!strings.Contains(errOut, "no such id") {
		t.Fatalf("with failures: exit %d\n%s%s", code, out, errOut)
	}

	for _, c := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"-c", cfg, file}, 2, "usage"},
		{[]string{"-c", cfg, "--spam", "--ham", file}, 2, "usage"},
		{[]string{"-c", cfg, "--spam"}, 2, "usage"},
		{[]string{"-c", cfg, "--spam", "--scanner", "nolearn", file}, 1, `scanner "nolearn" names no controller`},
		{[]string{"-c", cfg, "--spam", "--scanner", "other", file}, 1, `no rspamd scanner "other"`},
	} {
		if code, _, errOut := run1(c.args...); code != c.code || !strings.Contains(errOut, c.err) {
			t.Errorf("%v: exit %d, %q; want %d and %q", c.args, code, errOut, c.code, c.err)
		}
	}
	var out2, errOut2 bytes.Buffer
	if code := run([]string{"spam", "forget"}, &out2, &errOut2); code != 2 {
		t.Errorf("spam forget: exit %d", code)
	}
}

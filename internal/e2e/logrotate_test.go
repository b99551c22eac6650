package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// TestLogRotation: logrotate, run with examples/popgate.logrotate (its
// path and postrotate command pointed at this popgate process), renames the
// log file and signals SIGUSR1; popgate writes on into a new file under
// the old name, and nothing more into the renamed one. SIGHUP reopens the
// file as well (and reloads). No line is lost: every session's lines are in
// one of the files.
func TestLogRotation(t *testing.T) {
	d := testenv.Dovecot(t)
	logrotate := testenv.LookPath(t, "logrotate")
	u, _ := newMailbox(t, d, [][]byte{crlf([]byte("Subject: rotate\n\nbody\n"))})
	dir := t.TempDir()
	logFile := filepath.Join(dir, "popgate.log")
	p := startPopgate(t, dovecotConfig(d, configOpts{upstreamTLS: "none", logFile: logFile}), logFile, "plain", "pop3s")
	// The harness's probes of both listeners end before anything rotates.
	p.waitEvents("the probes' session ends", func(evs []logEvent) bool { return count(evs, "session end") == 2 })

	example, err := os.ReadFile("../../examples/popgate.logrotate")
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer(
		"/var/log/popgate/popgate.log", logFile,
		"create 0640 popgate popgate", "create 0640",
		"systemctl kill --kill-whom=main --signal=USR1 popgate.service", fmt.Sprintf("kill -USR1 %d", p.cmd.Process.Pid),
	).Replace(string(example))
	if !strings.Contains(conf, "kill -USR1") {
		t.Fatal("examples/popgate.logrotate no longer has the postrotate command this test replaces")
	}
	confFile := filepath.Join(dir, "logrotate.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	session := func() {
		c := dialPOP(t, p.addr("plain"))
		c.ok("USER " + u.Name)
		c.ok("PASS " + u.Password)
		c.ok("STAT")
		c.ok("QUIT")
	}
	session()
	p.waitEvents("the first session's end", func(evs []logEvent) bool { return count(evs, "session end") == 3 })

	// -f: rotate now, whatever the schedule says.
	runClient(t, 30*time.Second, nil, logrotate, "-f", "-s", filepath.Join(dir, "state"), confFile)
	rotated := logFile + ".1"
	p.waitEvents("log file reopened", func(evs []logEvent) bool { return count(evs, "log file reopened") == 1 })
	before, err := os.ReadFile(rotated)
	if err != nil {
		t.Fatalf("logrotate did not rename the log: %v", err)
	}
	if !bytes.Contains(before, []byte(`"message":"login"`)) {
		t.Errorf("the rotated file lacks the first session's lines")
	}

	session()
	p.waitEvents("the second session's end in the new file", func(evs []logEvent) bool { return count(evs, "session end") == 1 })
	if after, _ := os.ReadFile(rotated); !bytes.Equal(after, before) {
		t.Errorf("popgate wrote %d more bytes into the rotated file after SIGUSR1", len(after)-len(before))
	}

	// SIGHUP reopens too.
	if err := os.Rename(logFile, logFile+".2"); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	p.waitEvents("reopen and reload on SIGHUP", func(evs []logEvent) bool {
		return count(evs, "log file reopened") == 1 && count(evs, "configuration reloaded") == 1
	})

	// The rotated files are popgate's output too: the secrets scan reads them.
	for _, f := range []string{rotated, logFile + ".2"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		registry.Lock()
		registry.outputs = append(registry.outputs, collectedOutput{t.Name(), "rotated log file " + filepath.Base(f), b})
		registry.Unlock()
		if found := findSecrets(b, secretsSnapshot()); len(found) > 0 {
			t.Errorf("%s contains secrets: %s", f, strings.Join(found, ", "))
		}
	}
}

// count is how many of evs have message msg.
func count(evs []logEvent, msg string) int {
	n := 0
	for _, e := range evs {
		if e.str("message") == msg {
			n++
		}
	}
	return n
}

package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// runPopgate runs the popgate binary to completion and returns its stdout,
// stderr and exit status.
func runPopgate(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	o, e, err := runClientErr(t, 30*time.Second, nil, popgateBin, args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("popgate %s: %v", strings.Join(args, " "), err)
	}
	if bytes.Contains(e, []byte("DATA RACE")) {
		t.Errorf("data race in popgate %s:\n%s", strings.Join(args, " "), e)
	}
	return string(o), string(e), code
}

// `popgate check` reports every error as file:line:col with a snippet and
// exits 1; a valid file exits 0. `popgate run` refuses the same bad file.
func TestCheck(t *testing.T) {
	t.Parallel()
	const bad = "testdata/check_two_errors.hcl"
	out, errOut, code := runPopgate(t, "check", "-c", bad)
	if code != 1 {
		t.Errorf("check of a file with two errors exited %d, want 1", code)
	}
	all := out + errOut
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^testdata/check_two_errors\.hcl:5:18: error: .*"ten minutes".*\n\s+5 \|   idle_timeout = "ten minutes"\n\s+\|\s+\^{13}\n`),
		regexp.MustCompile(`(?m)^testdata/check_two_errors\.hcl:10:13: error: .*"ssl".*\n\s+10 \|   tls     = "ssl"\n\s+\|\s+\^{5}\n`),
		regexp.MustCompile(`(?m)^2 errors, 0 warnings$`),
	} {
		if !want.MatchString(all) {
			t.Errorf("check output does not match %s:\n%s", want, all)
		}
	}
	if n := strings.Count(all, ": error: "); n != 2 {
		t.Errorf("%d errors reported, want 2:\n%s", n, all)
	}
	if strings.Contains(all, "OK") {
		t.Errorf("check of a bad file says OK:\n%s", all)
	}

	// run refuses the file with the same diagnostics, before listening.
	out, errOut, code = runPopgate(t, "run", "-c", bad)
	if code != 1 || !strings.Contains(errOut, bad+":5:18: error:") || !strings.Contains(errOut, bad+":10:13: error:") {
		t.Errorf("run with a bad file: exit %d, stdout %q, stderr:\n%s", code, out, errOut)
	}
	if strings.Contains(errOut, "listening") {
		t.Errorf("run with a bad file started listening:\n%s", errOut)
	}

	const good = "testdata/check_valid.hcl"
	out, errOut, code = runPopgate(t, "check", "-c", good)
	if code != 0 {
		t.Errorf("check of a valid file exited %d, want 0; stderr:\n%s", code, errOut)
	}
	if want := good + ": OK (2 listeners, 1 upstreams)\n"; out != want {
		t.Errorf("check of a valid file printed %q, want %q", out, want)
	}
	if errOut != "" {
		t.Errorf("check of a valid file without warnings wrote to stderr: %q", errOut)
	}
}

// `popgate version` names popgate, the Go version it was built with and the
// versions of its dependencies as go.mod pins them.
func TestVersion(t *testing.T) {
	t.Parallel()
	out, errOut, code := runPopgate(t, "version")
	if code != 0 || errOut != "" {
		t.Fatalf("version: exit %d, stderr %q", code, errOut)
	}
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[0], "popgate ") {
		t.Errorf("first line %q does not name popgate", lines[0])
	}
	// TestMain built the binary with the toolchain running this test.
	if want := runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH; len(lines) < 2 || lines[1] != want {
		t.Errorf("Go version line %q, want %q", lines[1], want)
	}
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range []string{"github.com/hashicorp/hcl/v2", "github.com/rs/zerolog"} {
		m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(dep) + `\s+(v\S+)`).FindStringSubmatch(string(gomod))
		if m == nil {
			t.Fatalf("go.mod does not require %s", dep)
		}
		if want := "  " + dep + " " + m[1]; !strings.Contains(out, want+"\n") {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
}

// startDemo runs `popgate demo` on free ports with its quarantine in a temp
// dir and POPGATE_DEMO_CLAMD unset, so that it starts a clamd of its own,
// and waits for its instructions. stop sends sig and waits for the exit.
func startDemo(t *testing.T) (text string, qdir string, stop func(sig os.Signal) error, stderr *syncBuffer) {
	t.Helper()
	qdir = t.TempDir()
	cmd := exec.Command(popgateBin, "demo", "-listen", "127.0.0.1:0", "-mailbox", "127.0.0.1:0")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "POPGATE_DEMO_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "POPGATE_DEMO_QUARANTINE="+qdir)
	var stdout syncBuffer
	stderr = &syncBuffer{}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop = func(sig os.Signal) error {
		if stopped {
			return nil
		}
		if err := cmd.Process.Signal(sig); err != nil {
			return err
		}
		select {
		case err := <-done:
			stopped = true
			return err
		case <-time.After(10 * time.Second):
			return fmt.Errorf("demo still running 10s after %v", sig)
		}
	}
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-done
		}
		registry.Lock()
		registry.procs++
		registry.outputs = append(registry.outputs, collectedOutput{t.Name(), "demo stderr", stderr.Bytes()},
			collectedOutput{t.Name(), "demo stdout", stdout.Bytes()})
		registry.Unlock()
	})

	// clamd takes about a second to start; the demo waits up to 30s for it.
	deadline := time.After(45 * time.Second)
	for !strings.Contains(stdout.String(), "Press Ctrl-C to stop.") {
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("demo exited (%v); stdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		case <-deadline:
			t.Fatalf("demo printed no instructions within 45s; stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	text = stdout.String()
	if strings.Contains(text, "Scanning: OFF") {
		// Fails under POPGATE_REQUIRE_INTEGRATION=1 (CI installs clamav-daemon).
		testenv.Require(t, "popgate demo started no clamd:\n"+text)
	}
	return text, qdir, stop, stderr
}

// demoClamdRe matches the line about the clamd the demo started.
var demoClamdRe = regexp.MustCompile(`(?m)^  clamd \(started for the demo\):\s+unix://(/\S+)/clamd\.sock\s+pid (\d+),`)

// demoClamdPid checks the demo's clamd runs and returns its pid and dir.
func demoClamdPid(t *testing.T, text string) (int, string) {
	t.Helper()
	m := demoClamdRe.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("the demo does not say it started a clamd:\n%s", text)
	}
	var pid int
	fmt.Sscan(m[2], &pid)
	if !clamdRuns(pid, m[1]) {
		t.Fatalf("the demo's clamd, pid %d with its files in %s, does not run", pid, m[1])
	}
	if env := os.Getenv("POPGATE_TESTENV_DIR"); env != "" && strings.HasPrefix(m[1], env) {
		t.Fatalf("the demo's clamd uses the test environment's dir %s", m[1])
	}
	return pid, m[1]
}

// clamdRuns reports whether pid is a live clamd whose command line names dir.
func clamdRuns(pid int, dir string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 && f[0] == "Z" {
		return false
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return bytes.Contains(cmdline, []byte("clamd")) && bytes.Contains(cmdline, []byte(dir))
}

// `popgate demo` on free ports, with the clamd it starts for itself: every
// command it prints works, and shows what the demo says it shows — message
// 3 (EICAR as report.txt) withheld by the clamd filter with a notice naming
// the signature, message 2's .exe cut out by the strip rules, message 1
// tagged. Ctrl-C (SIGINT) stops the demo and its clamd.
func TestDemo(t *testing.T) {
	t.Parallel()
	curl := testenv.LookPath(t, "curl")
	text, qdir, stop, stderr := startDemo(t)
	m := regexp.MustCompile(`popgate \(examples/demo\.hcl\):\s+(127\.0\.0\.1:\d+)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("demo does not print popgate's address:\n%s", text)
	}
	addr := m[1]
	if strings.HasSuffix(addr, ":0") {
		t.Fatalf("demo printed the unbound address %s", addr)
	}
	if !strings.Contains(text, "Scanning: on") {
		t.Fatalf("the demo does not say it scans:\n%s", text)
	}
	clamdPid, clamdDir := demoClamdPid(t, text)
	checkREADMEDemo(t, text)

	mailbox := demoMailbox(t, text)
	if len(mailbox) < 3 || !bytes.Contains(mailbox[2].Data, []byte(`filename="report.txt"`)) ||
		!bytes.Contains(mailbox[2].Data, []byte("Content-Type: text/plain; charset=us-ascii; name=\"report.txt\"")) {
		t.Fatalf("the demo's message 3 is not the EICAR file as report.txt (text/plain): %q", mailbox)
	}
	var list, uidl strings.Builder
	for i, msg := range mailbox {
		fmt.Fprintf(&list, "%d %d\r\n", i+1, len(msg.Data))
		fmt.Fprintf(&uidl, "%d %s\r\n", i+1, msg.UIDL)
	}
	ran := map[string]bool{}
	var quarantineCmds []string
	comment := regexp.MustCompile(`\s+#\s.*$`)
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, popgateBin+" quarantine ") {
			quarantineCmds = append(quarantineCmds, comment.ReplaceAllString(line, ""))
			continue
		}
		if !strings.HasPrefix(line, "curl ") {
			continue
		}
		line = comment.ReplaceAllString(line, "")
		if !strings.Contains(line, "pop3://"+addr+"/") {
			t.Errorf("printed curl command does not use popgate's address %s: %s", addr, line)
			continue
		}
		url := regexp.MustCompile(`pop3://\S+/(\d*)`).FindStringSubmatch(line)[1]
		var key string
		switch {
		case strings.Contains(line, "|"):
			key = "dialogue"
		case strings.Contains(line, "-X UIDL"):
			key = "uidl"
		case url == "":
			key = "list"
		default:
			key = "retr " + url
		}
		ran[key] = true
		t.Run(key, func(t *testing.T) {
			var out []byte
			if key == "dialogue" {
				out = runClient(t, 30*time.Second, nil, "/bin/sh", "-c", line)
			} else {
				args := strings.Fields(line)[1:]
				out = runClient(t, 30*time.Second, nil, curl, append([]string{"-sS", "--max-time", "25"}, args...)...)
			}
			switch key {
			case "dialogue":
				if !regexp.MustCompile(`(?m)^< \+OK`).Match(out) {
					t.Errorf("the raw dialogue shows no server +OK lines:\n%s", out)
				}
			case "uidl":
				if string(out) != uidl.String() {
					t.Errorf("UIDL: %q, want %q", out, uidl.String())
				}
			case "list":
				if string(out) != list.String() {
					t.Errorf("list: %q, want %q", out, list.String())
				}
			default:
				var n int
				fmt.Sscan(url, &n)
				if n < 1 || n > len(mailbox) {
					t.Fatalf("the demo prints a command for message %d of %d", n, len(mailbox))
				}
				want := mailbox[n-1].Data
				switch n {
				case 1: // clean: the original with the tag in front
					tags := "X-Popgate-Scanned: yes\r\nX-Popgate-Verdict: av=pass (clean); dangerous=pass\r\n"
					if !bytes.Equal(out, append([]byte(tags), want...)) {
						t.Errorf("message 1 through the demo: %q, want the original tagged", out)
					}
				case 2: // the .exe is cut out by the strip rules, a notice part names it
					if bytes.Contains(out, []byte("TVqQ")) || !bytes.Contains(out, []byte("removed an attachment")) ||
						!bytes.Contains(out, []byte("invoice.pdf.exe")) || !bytes.Contains(out, []byte("Reason: rule dangerous: extension exe")) {
						t.Errorf("message 2 through the demo: %q", out)
					}
				case 3: // EICAR as report.txt: withheld by clamd ("av"), a notice naming the signature
					if !bytes.Contains(out, []byte("message withheld")) || !bytes.Contains(out, []byte("X-Popgate-Quarantine-ID: ")) ||
						!bytes.Contains(out, []byte("  - av: reject (virus: Eicar-Test-Signature.UNOFFICIAL)")) ||
						bytes.Contains(out, []byte("dangerous: reject")) ||
						bytes.Contains(out, []byte("EICAR-STANDARD")) || bytes.Contains(out, []byte("WDVPIVAlQEFQ")) {
						t.Errorf("message 3 through the demo: %q", out)
					}
				}
			}
		})
	}
	for _, want := range []string{"list", "retr 1", "retr 2", "retr 3", "uidl", "dialogue"} {
		if !ran[want] {
			t.Errorf("the demo prints no curl command for %s:\n%s", want, text)
		}
	}

	// The printed quarantine commands, as printed (ID: the EICAR message's):
	// both originals the demo changed are there; the withheld one exports
	// byte-identical to what the mailbox held.
	if len(quarantineCmds) != 2 || !strings.Contains(quarantineCmds[0], " quarantine list -dir "+qdir) ||
		!strings.Contains(quarantineCmds[1], " quarantine export -dir "+qdir+" ID") {
		t.Fatalf("the demo's quarantine commands %q, want list and export with -dir %s", quarantineCmds, qdir)
	}
	qlist := runClient(t, 30*time.Second, nil, "/bin/sh", "-c", quarantineCmds[0])
	ids := regexp.MustCompile(`(?m)^(\d{8}T\S+)\s.*refuse\s+-\s+virus: Eicar-Test-Signature`).FindSubmatch(qlist)
	if ids == nil || bytes.Count(qlist, []byte("\n")) != 3 {
		t.Fatalf("quarantine list:\n%s", qlist)
	}
	orig := runClient(t, 30*time.Second, nil, "/bin/sh", "-c", strings.TrimSuffix(quarantineCmds[1], "ID")+string(ids[1]))
	if !bytes.Equal(orig, mailbox[2].Data) {
		t.Fatalf("exported original differs from the mailbox's message 3:\n%q", orig)
	}

	// Ctrl-C: the demo exits 0 and its clamd is gone, with its temp dir.
	if err := stop(syscall.SIGINT); err != nil {
		t.Errorf("demo after SIGINT: %v, want exit status 0; stderr:\n%s", err, stderr.String())
	}
	if clamdRuns(clamdPid, clamdDir) {
		t.Errorf("the demo's clamd (pid %d) still runs after the demo exited", clamdPid)
	}
	if _, err := os.Stat(clamdDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the demo's clamd dir %s is still there (%v)", clamdDir, err)
	}
	if strings.Contains(stderr.String(), "DATA RACE") {
		t.Errorf("data race in popgate demo:\n%s", stderr.String())
	}
}

// checkREADMEDemo compares README.md's copy of the demo's instructions (the
// text block of "## The demo") with what the demo printed, up to what varies:
// addresses, the socket, pid and version of its clamd, the quarantine dir and
// the binary's path.
func checkREADMEDemo(t *testing.T, printed string) {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)\n## The demo\n.*?\n```text\n(.*?)```\n").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no text block in a section \"## The demo\"")
	}
	norm := func(s string) string {
		for _, r := range []struct{ re, with string }{
			{`127\.0\.0\.1:\d+`, "ADDR"},
			{`unix:///\S+`, "SOCK"},
			{`pid \d+`, "pid N"},
			{`ClamAV [0-9.]+`, "ClamAV V"},
			{`-dir \S+`, "-dir DIR"},
			{`(?m)^(\s+)\S*popgate quarantine`, "${1}popgate quarantine"},
		} {
			s = regexp.MustCompile(r.re).ReplaceAllString(s, r.with)
		}
		return s
	}
	if got, want := norm(printed), norm(string(m[1])); got != want {
		t.Errorf("README.md's demo block differs from what the demo prints:\n--- printed\n%s\n--- README.md\n%s", got, want)
	}
}

// A demo killed with SIGKILL cannot stop its clamd: the kernel does
// (Pdeathsig), so not even then is a clamd left running.
func TestDemoKilledTakesClamdAlong(t *testing.T) {
	t.Parallel()
	text, _, stop, _ := startDemo(t)
	pid, dir := demoClamdPid(t, text)
	if err := stop(syscall.SIGKILL); err == nil {
		t.Fatal("demo killed with SIGKILL exited 0")
	}
	deadline := time.Now().Add(10 * time.Second)
	for clamdRuns(pid, dir) {
		if time.Now().After(deadline) {
			t.Fatalf("the demo's clamd (pid %d) still runs 10s after the demo was killed", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = os.RemoveAll(dir) // what the killed demo could not remove
}

// demoMessage is a message of the demo's sample mailbox.
type demoMessage struct {
	UIDL string
	Data []byte
}

// demoMailbox reads the demo's sample mailbox straight from its built-in
// mailbox server (whose address and login the demo prints), bypassing
// popgate: what popgate serves is compared with it. (The suite is not in
// package main, so it cannot call cmd/popgate's demoMailbox.)
func demoMailbox(t *testing.T, text string) []demoMessage {
	t.Helper()
	m := regexp.MustCompile(`sample mailbox server \(built in\):\s+(\S+)\s+user "([^"]*)" password "([^"]*)"`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("demo does not print its mailbox server's address and login:\n%s", text)
	}
	p := dialPOP(t, m[1])
	p.ok("USER " + m[2])
	p.ok("PASS " + m[3])
	p.ok("UIDL")
	var msgs []demoMessage
	for l := range strings.Lines(p.multi()) {
		f := strings.Fields(l)
		if len(f) != 2 {
			t.Fatalf("demo mailbox UIDL line %q", l)
		}
		msgs = append(msgs, demoMessage{UIDL: f[1]})
	}
	for i := range msgs {
		p.ok(fmt.Sprintf("RETR %d", i+1))
		msgs[i].Data = unstuff([]byte(p.multi()))
	}
	p.ok("QUIT")
	if len(msgs) == 0 {
		t.Fatal("the demo's mailbox is empty")
	}
	return msgs
}

package e2e

// The fault cases that need a popgate process of their own: the quarantine
// directory read-only or full, the spool directory full, SIGTERM and SIGHUP
// in the middle of a download. They count into TestFaultMatrix's summary.

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// mountTmpfs mounts a tmpfs of the given size (as "64k") on a new
// directory and unmounts it when the test ends. It returns "" when it
// cannot mount (not root, no CAP_SYS_ADMIN), saying why in the log.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Logf("cannot mount a tmpfs (%v: %s): falling back to an injected fault", err, bytes.TrimSpace(out))
		return ""
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// memoryElsewhere is a memory block that keeps the message memory out of
// the quarantine's directory (its default place), whose file system the
// quarantine cases break.
func memoryElsewhere(t *testing.T) string {
	return fmt.Sprintf("memory {\n  path = %s\n}\n", hclString(filepath.Join(t.TempDir(), "memory.db")))
}

// avConfigWith is avConfig (the real clamd, the av, dangerous and stamp
// filters) plus extra top-level blocks.
func avConfigWith(t *testing.T, d *testenv.DovecotEnv, qdir, extra string) string {
	return avConfig(t, d, avOpts{quarantine: qdir}) + extra
}

// procCase runs one process case as a subtest and counts it.
func procCase(t *testing.T, tally *faultTally, name string, f func(t *testing.T) (lost, trunc, unscan int, note string)) {
	t.Run(name, func(t *testing.T) {
		lost, trunc, unscan, note := f(t)
		tally.add("process/"+name, lost, trunc, unscan, note)
	})
}

// quarantineReadOnly: the quarantine's file system turns read-only after
// popgate started. The virus cannot be quarantined, so it is deferred
// (-ERR [SYS/TEMP]), never delivered; clean messages are delivered tagged.
func quarantineReadOnly(t *testing.T, d *testenv.DovecotEnv, _ *testenv.ClamdEnv, tally *faultTally) {
	procCase(t, tally, "quarantine-read-only", func(t *testing.T) (int, int, int, string) {
		mnt := mountTmpfs(t, "1m")
		qdir := filepath.Join(cmpOr(mnt, t.TempDir()), "q")
		p := startPopgate(t, avConfigWith(t, d, qdir, memoryElsewhere(t)), "", "plain")
		how := "tmpfs remounted read-only"
		if mnt != "" {
			if out, err := exec.Command("mount", "-o", "remount,ro", mnt).CombinedOutput(); err != nil {
				t.Fatalf("remount read-only: %v: %s", err, out)
			}
		} else {
			// Root ignores permission bits: make msg/ a file instead.
			how = "FALLBACK: msg/ replaced by a file (no mount)"
			msgDir := filepath.Join(qdir, "msg")
			if err := os.Remove(msgDir); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(msgDir, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		mb := faultMailbox(t, d, "qro", true)
		s := standardSession(t, p.addr("plain"), mb.u, len(mb.msgs), clientOpts{})
		if e := s.errs[4]; !strings.HasPrefix(e, tempFailPrefix) {
			t.Errorf("RETR of the virus with a read-only quarantine: %q, want %s", e, tempFailPrefix)
		}
		if len(s.complete) != 3 || !s.quitOK {
			t.Errorf("clean messages: %d delivered, QUIT %v; want 3 and QUIT", len(s.complete), s.quitOK)
		}
		waitDovecotIdle(t, d, mb.u)
		lost, trunc, unscan, _ := judge(t, mb, true, s)
		return lost, trunc, unscan, how + "; " + describe(t, []*faultSession{s}, mb)
	})
}

// bigVirusMsg is the EICAR file next to a large clean attachment: larger
// than the tiny file systems below.
func bigVirusMsg(t *testing.T, tag string) []byte {
	var raw bytes.Buffer
	for i := 0; raw.Len() < 150_000; i++ {
		fmt.Fprintf(&raw, "%s %07d filler of a large attachment\r\n", tag, i)
	}
	return multipartMsg("bigvirus-"+tag, "two attachments", textPart("see both\n"),
		attachment("application/pdf", "big.pdf", raw.Bytes()),
		attachment("application/octet-stream", "eicar.com", []byte(testenv.EICAR)))
}

// quarantineDiskFull: the quarantine is a 64 KiB file system and the virus
// message is larger. It is deferred, nothing half-written is left, and the
// file system is empty again.
func quarantineDiskFull(t *testing.T, d *testenv.DovecotEnv, _ *testenv.ClamdEnv, tally *faultTally) {
	procCase(t, tally, "quarantine-disk-full", func(t *testing.T) (int, int, int, string) {
		mnt := mountTmpfs(t, "64k")
		how := "tmpfs of 64 KiB"
		qdir := ""
		if mnt != "" {
			qdir = filepath.Join(mnt, "q")
		} else {
			how = "FALLBACK: no mount; msg/ replaced by a file"
			qdir = filepath.Join(t.TempDir(), "q")
		}
		p := startPopgate(t, avConfigWith(t, d, qdir, memoryElsewhere(t)), "", "plain")
		if mnt == "" {
			msgDir := filepath.Join(qdir, "msg")
			_ = os.Remove(msgDir)
			_ = os.WriteFile(msgDir, []byte("x"), 0o600)
		}
		msgs := [][]byte{cleanMsg("qfull"), bigVirusMsg(t, "qfull")}
		if v := clamdVerdict(t, testenv.Clamd(t).Addr(), msgs[1]); v != testenv.EICARFound {
			t.Fatalf("the test clamd says %q for the big virus message", v)
		}
		u, paths := newMailbox(t, d, msgs)
		mb := &stored{u: u, paths: paths, msgs: msgs, virus: map[int]bool{2: true}}
		s := standardSession(t, p.addr("plain"), u, 2, clientOpts{})
		if e := s.errs[2]; !strings.HasPrefix(e, tempFailPrefix) {
			t.Errorf("RETR of the virus with a full quarantine: %q, want %s", e, tempFailPrefix)
		}
		if s.complete[1] == nil || !s.quitOK {
			t.Errorf("the clean message was not delivered (QUIT %v)", s.quitOK)
		}
		for _, sub := range []string{"tmp", "msg", "meta"} {
			if ents, err := os.ReadDir(filepath.Join(qdir, sub)); mnt != "" && (err != nil || len(ents) != 0) {
				t.Errorf("quarantine %s/ after the failed store: %d entries (%v), want none", sub, len(ents), err)
			}
		}
		waitDovecotIdle(t, d, u)
		lost, trunc, unscan, _ := judge(t, mb, true, s)
		return lost, trunc, unscan, how + "; " + describe(t, []*faultSession{s}, mb)
	})
}

// spoolDiskFull: the spool is a 64 KiB file system with memory_limit
// 16 KB; a large message cannot be spooled. It is deferred, the session
// goes on, the small ones are delivered.
func spoolDiskFull(t *testing.T, d *testenv.DovecotEnv, _ *testenv.ClamdEnv, tally *faultTally) {
	procCase(t, tally, "spool-disk-full", func(t *testing.T) (int, int, int, string) {
		mnt := mountTmpfs(t, "64k")
		if mnt == "" {
			testenv.Require(t, "cannot mount a tmpfs for the spool (needs root)")
		}
		p := startPopgate(t, avConfigWith(t, d, filepath.Join(t.TempDir(), "q"),
			fmt.Sprintf("spool {\n  dir = %s\n  memory_limit = \"16KB\"\n}\n", hclString(mnt))), "", "plain")
		mb := faultMailbox(t, d, "spoolfull", true)
		s := standardSession(t, p.addr("plain"), mb.u, len(mb.msgs), clientOpts{})
		// The session goes on: a full spool is no reason to hang up.
		if e := s.errs[2]; e != tempFailPrefix+" message could not be checked, try again later" {
			t.Errorf("RETR of a message larger than the spool: %q, want %s message could not be checked…", e, tempFailPrefix)
		}
		if len(s.complete) != 3 || !s.quitOK {
			t.Errorf("small messages: %d delivered, QUIT %v (%v); want 3 and QUIT", len(s.complete), s.quitOK, s.ended)
		}
		if ents, err := os.ReadDir(mnt); err != nil || len(ents) != 0 {
			t.Errorf("spool after the failure: %d entries (%v), want none", len(ents), err)
		}
		waitDovecotIdle(t, d, mb.u)
		lost, trunc, unscan, _ := judge(t, mb, true, s)
		return lost, trunc, unscan, "tmpfs of 64 KiB; " + describe(t, []*faultSession{s}, mb)
	})
}

// slowReader dials addr with a small receive buffer, so that popgate's
// writes block on it.
func slowReader(t *testing.T, addr string) *faultClient {
	t.Helper()
	c, err := smallBufferDialer.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	return &faultClient{t: t, c: c, r: bufio.NewReaderSize(c, 16<<10), s: &faultSession{
		complete: map[int][]byte{}, partial: map[int][]byte{}, errs: map[int]string{},
	}}
}

// hugeMsg is a clean message of about size bytes of plain text.
func hugeMsg(tag string, size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: big@example.com\r\nTo: u@example.com\r\nSubject: big " + tag + "\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "line %07d of a big message\r\n.dot line %d\r\n", i, i)
	}
	return b.Bytes()
}

// readSlowly reads a RETR answer's data 16 KiB at a time with pauses;
// after `after` bytes it calls at once, then reads on slowly while slow()
// holds, then at full speed. The data stays dot-stuffed; the result says
// whether the terminator came.
func readSlowly(fc *faultClient, after int, at func(), slow func() bool) ([]byte, bool) {
	var got []byte
	buf := make([]byte, 16<<10)
	fired := false
	for {
		n, err := fc.r.Read(buf)
		got = append(got, buf[:n]...)
		if bytes.HasSuffix(got, []byte("\r\n.\r\n")) {
			return got[:len(got)-3], true
		}
		if err != nil {
			return got, false
		}
		if !fired && len(got) >= after {
			fired = true
			at()
		}
		switch {
		case !fired:
			time.Sleep(10 * time.Millisecond)
		case slow():
			// 400 KB/s: the message cannot be through before popgate
			// exits, however slowly it does on a busy machine.
			time.Sleep(40 * time.Millisecond)
		}
	}
}

func unstuff(b []byte) []byte {
	var out []byte
	for l := range bytes.Lines(b) {
		if len(l) > 0 && l[0] == '.' {
			l = l[1:]
		}
		out = append(out, l...)
	}
	return out
}

// sigtermMidDownload: SIGTERM while a client downloads a large message
// slowly after DELE 1. popgate drains for its shutdown timeout, then
// closes: the client never sees a terminator, nothing is deleted.
func sigtermMidDownload(t *testing.T, d *testenv.DovecotEnv, _ *testenv.ClamdEnv, tally *faultTally) {
	procCase(t, tally, "SIGTERM-mid-download", func(t *testing.T) (int, int, int, string) {
		msgs := [][]byte{cleanMsg("sigterm"), hugeMsg("sigterm", 6<<20)}
		u, paths := newMailbox(t, d, msgs)
		mb := &stored{u: u, paths: paths, msgs: msgs}
		p := startPopgate(t, dovecotConfig(d, configOpts{upstreamTLS: "none", shutdownTimeout: "1s"}), "", "plain")
		fc := slowReader(t, p.addr("plain"))
		if !fc.greet() || !fc.login(u) || !fc.retr(1, 0) || !fc.dele(1) {
			t.Fatalf("session: %v", fc.s.ended)
		}
		if _, ok := fc.cmd("RETR 2"); !ok {
			t.Fatalf("RETR 2: %v", fc.s.ended)
		}
		data, complete := readSlowly(fc, 256<<10, func() { p.signal(syscall.SIGTERM) }, func() bool { return !exited(p) })
		if complete {
			fc.s.complete[2] = unstuff(data)
			t.Errorf("the client got the whole %d-byte message: SIGTERM did not cut it, the case tests nothing", len(data))
		} else {
			fc.s.partial[2] = data
		}
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			t.Fatal("popgate still running 15 s after SIGTERM")
		}
		if p.waitErr != nil {
			t.Errorf("popgate exited with %v after SIGTERM, want 0", p.waitErr)
		}
		waitDovecotIdle(t, d, u)
		lost, trunc, unscan, _ := judge(t, mb, false, fc.s)
		return lost, trunc, unscan, fmt.Sprintf("got %d of %d bytes, no terminator; ", len(data), len(crlf(msgs[1]))) + describe(t, []*faultSession{fc.s}, mb)
	})
}

// sighupMidDownload: SIGHUP (a reload) while a client downloads a large
// filtered message slowly. The download completes byte for byte under the
// old configuration, DELE+QUIT deletes exactly what was received, and a new
// session works under the new generation.
func sighupMidDownload(t *testing.T, d *testenv.DovecotEnv, _ *testenv.ClamdEnv, tally *faultTally) {
	procCase(t, tally, "SIGHUP-mid-download", func(t *testing.T) (int, int, int, string) {
		msgs := [][]byte{cleanMsg("sighup"), hugeMsg("sighup", 3<<20), eicarCases(t, "sighup")[0].msg}
		u, paths := newMailbox(t, d, msgs)
		mb := &stored{u: u, paths: paths, msgs: msgs, virus: map[int]bool{3: true}}
		p := startPopgate(t, avConfigWith(t, d, filepath.Join(t.TempDir(), "q"), ""), "", "plain")
		fc := slowReader(t, p.addr("plain"))
		if !fc.greet() || !fc.login(u) || !fc.retr(1, 0) {
			t.Fatalf("session: %v", fc.s.ended)
		}
		if _, ok := fc.cmd("RETR 2"); !ok {
			t.Fatalf("RETR 2: %v", fc.s.ended)
		}
		data, complete := readSlowly(fc, 256<<10, func() {
			p.signal(syscall.SIGHUP)
			p.waitEvents("the reload", func(evs []logEvent) bool {
				return slices.ContainsFunc(evs, func(e logEvent) bool { return e.str("message") == "configuration reloaded" })
			})
		}, func() bool { return false })
		if complete {
			fc.s.complete[2] = unstuff(data)
		} else {
			fc.s.partial[2] = data
			t.Errorf("the download was cut by the reload after %d bytes", len(data))
		}
		if !fc.retr(3, 0) {
			t.Fatalf("RETR 3 after the reload: %v", fc.s.ended)
		}
		for _, n := range []int{1, 2} {
			fc.dele(n)
		}
		fc.quit()
		// A new session after the reload: the virus is still withheld.
		s2 := standardSession(t, p.addr("plain"), u, 1, clientOpts{noDele: true})
		if s2.complete[1] == nil {
			t.Errorf("a session after the reload got no message: %v", s2.ended)
		}
		waitDovecotIdle(t, d, u)
		lost, trunc, unscan, _ := judge(t, mb, true, fc.s)
		if left := u.Files(t); len(left) != 1 || left[0] != paths[2] {
			t.Errorf("Maildir after DELE 1, DELE 2, QUIT: %v, want only the virus message", left)
		}
		return lost, trunc, unscan, describe(t, []*faultSession{fc.s}, mb)
	})
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

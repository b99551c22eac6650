package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/popgate/popgate/examples"
)

// demoClamd is the clamd `popgate demo` runs for itself, the way
// scripts/testenv.sh runs the test clamd: the project's own signature
// database (examples/clamd: the EICAR test file only, no download), a
// configuration of its own in a temp dir and a unix socket there — no port
// to collide with a system clamd or the test environment's. It is the
// demo's child (its own process group, so a terminal's Ctrl-C reaches
// popgate, which stops it in order; SIGKILL if popgate dies first).
type demoClamd struct {
	Addr    string // unix:///…/clamd.sock
	Pid     int
	Version string // "ClamAV 1.4.6", from clamd --version
	Dir     string // config, database, socket and log; removed by Stop
	cmd     *exec.Cmd
	exited  chan struct{}
}

// clamdBin finds clamd: on PATH, or where Debian's clamav-daemon (and a
// source install) put it, since /usr/sbin is not on every user's PATH.
func clamdBin() (string, error) {
	if p, err := exec.LookPath("clamd"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/clamd", "/usr/local/sbin/clamd"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("clamd is not installed (no clamd on PATH, in /usr/sbin or /usr/local/sbin; Debian package clamav-daemon)")
}

// startDemoClamd starts clamd and waits up to wait for it to answer PING
// (about half a second with this database). On error nothing is left
// running and the temp dir is gone; the error says why, with the end of
// clamd's log when it ran.
func startDemoClamd(wait time.Duration) (*demoClamd, error) {
	bin, err := clamdBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "popgate-demo-clamd-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "clamd.sock")
	if len(sock) > 100 { // sun_path is 108 bytes; a long TMPDIR does not fit
		_ = os.RemoveAll(dir)
		if dir, err = os.MkdirTemp("/tmp", "popgate-demo-clamd-"); err != nil {
			return nil, err
		}
		sock = filepath.Join(dir, "clamd.sock")
	}
	c := &demoClamd{Addr: "unix://" + sock, Dir: dir, exited: make(chan struct{})}
	fail := func(err error) (*demoClamd, error) {
		c.Stop()
		return nil, err
	}
	db := filepath.Join(dir, "db")
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return fail(err)
	}
	sigs, _ := fs.Sub(examples.ClamdSignatures, "clamd")
	if err := os.CopyFS(db, sigs); err != nil {
		return fail(fmt.Errorf("writing the signature database: %w", err))
	}
	conf := filepath.Join(dir, "clamd.conf")
	// StreamMaxLength mirrors demo.hcl's max_size.
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`# Written by popgate demo; removed when it stops.
Foreground yes
LogFile %[1]s/clamd.log
LogTime yes
DatabaseDirectory %[1]s/db
TemporaryDirectory %[1]s/tmp
LocalSocket %[2]s
LocalSocketMode 600
StreamMaxLength 25M
MaxThreads 4
ReadTimeout 60
CommandReadTimeout 10
SelfCheck 3600
`, dir, sock)), 0o600); err != nil {
		return fail(err)
	}
	if out, err := exec.Command(bin, "--version").Output(); err == nil {
		c.Version, _, _ = strings.Cut(strings.TrimSpace(string(out)), "/")
	}
	out, err := os.Create(filepath.Join(dir, "clamd.out"))
	if err != nil {
		return fail(err)
	}
	defer out.Close()
	c.cmd = exec.Command(bin, "-c", conf)
	c.cmd.Stdin, c.cmd.Stdout, c.cmd.Stderr = nil, out, out
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		c.cmd = nil
		return fail(fmt.Errorf("starting %s: %w", bin, err))
	}
	c.Pid = c.cmd.Process.Pid
	go func() { _ = c.cmd.Wait(); close(c.exited) }()

	deadline := time.Now().Add(wait)
	for !clamdPing(sock) {
		select {
		case <-c.exited:
			return fail(fmt.Errorf("%s exited at start: %s", bin, c.logTail()))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("%s does not answer PING on %s after %v: %s", bin, sock, wait, c.logTail()))
		}
	}
	return c, nil
}

// clamdPing reports whether clamd answers PONG on the unix socket.
func clamdPing(sock string) bool {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("zPING\x00")); err != nil {
		return false
	}
	buf := make([]byte, 16)
	n, _ := conn.Read(buf)
	return string(buf[:n]) == "PONG\x00"
}

// logTail is the last lines clamd wrote, on one line.
func (c *demoClamd) logTail() string {
	var b []byte
	for _, f := range []string{"clamd.out", "clamd.log"} {
		data, _ := os.ReadFile(filepath.Join(c.Dir, f))
		b = append(b, data...)
	}
	lines := strings.Split(strings.TrimSpace(string(bytes.ToValidUTF8(b, nil))), "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return "nothing in its log"
	}
	return strings.Join(lines, " | ")
}

// Stop ends clamd (SIGTERM, SIGKILL after 5 s), waits for it and removes
// its temp dir. It may be called more than once.
func (c *demoClamd) Stop() {
	if c.cmd != nil {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(5 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	}
	if c.Dir != "" {
		_ = os.RemoveAll(c.Dir)
	}
}

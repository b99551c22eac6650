package policy

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// sockets counts the sockets this process holds open.
func sockets(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// assertPure runs decode and checks that it left no goroutine and no
// socket behind: decoding a configuration must not start anything.
func assertPure(t *testing.T, decode func()) {
	t.Helper()
	before, running := sockets(t), goleak.IgnoreCurrent()
	decode()
	if err := goleak.Find(running); err != nil {
		t.Errorf("decoding started goroutines: %v", err)
	}
	if after := sockets(t); after != before {
		t.Errorf("decoding left %d sockets open (before: %d)", after, before)
	}
}

// Decoding every example configuration starts no goroutine and opens no
// socket (`popgate check` and --explain run the decoder on production
// files, with production clamd addresses in them).
func TestDecodeExamplesIsPure(t *testing.T) {
	t.Setenv("POPGATE_TLS_CERT", filepath.Join(certDir, "cert.pem"))
	t.Setenv("POPGATE_TLS_KEY", filepath.Join(certDir, "key.pem"))
	t.Setenv("POPGATE_CA_FILE", filepath.Join(certDir, "ca.pem"))
	paths, err := filepath.Glob(filepath.Join("..", "examples", "*.hcl"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			assertPure(t, func() {
				if _, diags := Load(p); diags.HasErrors() {
					t.Fatal(diags)
				}
			})
		})
	}
}

// A scanner block whose clamd answers is decoded without a single
// connection to it: the decode step only checks the settings.
func TestDecodeDoesNotConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
			accepted <- struct{}{}
		}
	}()
	src := fmt.Sprintf(`
listener "pop3" {
  address  = "127.0.0.1:0"
  upstream = "mail"
}
upstream "mail" { address = "127.0.0.1:110" }
scanner "clamav" "local" {
  addresses       = ["tcp://%s"]
  health_interval = "1s"
}
filter "clamav" "av" { scanner = "local" }
quarantine { dir = "%s" }
policy "all" { chain = ["av"] }
`, ln.Addr(), t.TempDir())
	assertPure(t, func() {
		cfg, diags := LoadBytes("pure.hcl", []byte(src))
		if diags.HasErrors() {
			t.Fatal(render(diags, cfg.Files))
		}
		if len(cfg.Scanners) != 1 || cfg.Scanners[0].Type != "clamav" || len(cfg.Policies[0].Filters) != 1 ||
			strings.Join(cfg.Policies[0].Filters[0].Uses, ",") != "local" {
			t.Fatalf("decoded %+v", cfg)
		}
	})
	select {
	case <-accepted:
		t.Fatal("decoding the configuration connected to clamd")
	case <-time.After(300 * time.Millisecond):
	}
}

package e2e

import (
	"bufio"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// commandTap relays TCP connections to a server and records the command
// lines clients send it: a wiretap between popgate and the real Dovecot,
// which shows what popgate asked of the server.
type commandTap struct {
	ln   net.Listener
	mu   sync.Mutex
	cmds []string
}

func startCommandTap(t *testing.T, server string) *commandTap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tap := &commandTap{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", server)
			if err != nil {
				c.Close()
				continue
			}
			wg.Go(func() { _, _ = io.Copy(c, s); c.Close() })
			wg.Go(func() {
				sc := bufio.NewScanner(io.TeeReader(c, s))
				for sc.Scan() {
					tap.mu.Lock()
					tap.cmds = append(tap.cmds, strings.TrimSuffix(sc.Text(), "\r"))
					tap.mu.Unlock()
				}
				_, _ = io.Copy(s, c) // a line over the scanner's limit
				s.Close()
			})
		}
	})
	return tap
}

func (tap *commandTap) count(cmd string) int {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	n := 0
	for _, c := range tap.cmds {
		if strings.EqualFold(c, cmd) {
			n++
		}
	}
	return n
}

// A client that lists UIDLs before it downloads (mpop) costs Dovecot one
// listing, not two: popgate takes the UIDLs its filtered downloads carry
// (in logs, quarantine records and the message memory) from the listing
// it relays, and they are Dovecot's.
func TestClientUIDLListingReused(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	mpop := testenv.LookPath(t, "mpop")
	tap := startCommandTap(t, d.Addr)
	cfg := avConfig(t, d, avOpts{quarantine: t.TempDir(), rescan: "always"})
	if !strings.Contains(cfg, hclString(d.Addr)) {
		t.Fatal("the configuration does not name Dovecot's address")
	}
	p := startPopgate(t, strings.Replace(cfg, hclString(d.Addr), hclString(tap.ln.Addr().String()), 1), "", "plain")

	msgs := corpus("uidl")
	u, _ := newMailbox(t, d, msgs)
	dir := t.TempDir()
	maildir := newMaildir(t, dir)
	host, port, _ := net.SplitHostPort(p.addr("plain"))
	runClient(t, 60*time.Second, nil, mpop, append(mpopArgs(t, host, port, u, dir, maildir, true), "-Q", "--auth=user", "--tls=off")...)

	if got := readMaildir(t, maildir); len(got) != len(msgs) {
		t.Fatalf("mpop stored %d messages, want %d", len(got), len(msgs))
	}
	want := map[int]string{}
	for l := range strings.Lines(directUIDL(t, d, u)) {
		if f := strings.Fields(l); len(f) == 2 {
			want[len(want)+1] = f[1]
		}
	}
	evs := p.waitFiltered(len(msgs))
	var got []int
	for _, e := range evs {
		n := evMsg(e)
		got = append(got, n)
		if e.str("uidl") != want[n] || want[n] == "" {
			t.Errorf("message %d was filtered with UIDL %q, Dovecot lists %q", n, e.str("uidl"), want[n])
		}
	}
	slices.Sort(got)
	if len(got) != len(msgs) || got[0] != 1 || got[len(got)-1] != len(msgs) {
		t.Errorf("filtered messages %v, want 1..%d", got, len(msgs))
	}
	// The tap saw popgate's session only (directUIDL dials Dovecot itself).
	if n := tap.count("UIDL"); n != 1 {
		t.Errorf("Dovecot was asked for %d UIDL listings, want 1 (the client's)", n)
	}
	if n := tap.count("RETR 1"); n != 1 {
		t.Errorf("the tap saw RETR 1 %d times, want 1", n)
	}
}

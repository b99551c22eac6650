package e2e

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// genConfig is a configuration whose policy tags every message with gen.
func genConfig(d *testenv.DovecotEnv, gen string) string {
	return dovecotConfig(d, configOpts{upstreamTLS: "none"}) + fmt.Sprintf(`
filter "tag" "gen" {
  headers = { "X-Generation" = %s }
}
policy "default" {
  chain = ["gen"]
}
`, hclString(gen))
}

// SIGHUP under load: sessions download continuously while good and bad
// configurations alternate. No session is dropped, every message arrives
// whole, each session keeps the generation it logged in under, a session
// that starts after a good reload gets it, and a bad file never takes
// effect.
func TestReloadUnderLoad(t *testing.T) {
	d := testenv.Dovecot(t)
	msgs := [][]byte{crlf([]byte("Subject: one\n\nfirst\n")), crlf([]byte("Subject: two\n\n" + strings.Repeat("line of text\n", 20000)))}
	u, _ := newMailbox(t, d, msgs)
	p := startPopgate(t, genConfig(d, "g0"), "", "plain", "pop3s")
	path := p.cmd.Args[len(p.cmd.Args)-1]

	// retrieve logs in and downloads every message n times, checking each
	// carries the generation the session logged in under.
	retrieve := func(n int) (string, error) {
		c := dialPOP(t, p.addr("plain"))
		defer c.c.Close()
		c.ok("USER " + u.Name)
		c.ok("PASS " + u.Password)
		gen := ""
		for range n {
			for i, m := range msgs {
				c.ok(fmt.Sprintf("RETR %d", i+1))
				body := c.multi()
				first, rest, _ := strings.Cut(body, "\r\n")
				g, ok := strings.CutPrefix(first, "X-Generation: ")
				if !ok || rest != strings.ReplaceAll(string(m), "\r\n.", "\r\n..") {
					return gen, fmt.Errorf("message %d: not the tagged original: %.80q", i+1, body)
				}
				if gen == "" {
					gen = g
				} else if g != gen {
					return gen, fmt.Errorf("generation changed inside a session: %s then %s", gen, g)
				}
			}
		}
		c.ok("QUIT")
		return gen, nil
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 16)
	for range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := retrieve(3); err != nil {
					errs <- err
					return
				}
			}
		})
	}

	good := 0
	for i := 1; i <= 50; i++ {
		cfg := genConfig(d, fmt.Sprintf("g%d", i))
		if i%2 == 0 {
			cfg += "policy \"broken\" {\n  chain = [\"missing\"]\n}\n" // refused
		}
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		p.signal(syscall.SIGHUP)
		want := "configuration reloaded"
		if i%2 == 0 {
			want = "reload refused: the configuration has errors; the running one stays in force"
		} else {
			good++
		}
		p.waitEvents(want, func(evs []logEvent) bool {
			n := 0
			for _, e := range evs {
				if e.str("message") == want {
					n++
				}
			}
			return n == map[bool]int{true: i / 2, false: good}[i%2 == 0]
		})
		latest := fmt.Sprintf("g%d", 2*good-1)
		gen, err := retrieve(1)
		if err != nil {
			t.Fatal(err)
		}
		if gen != latest {
			t.Fatalf("after reload %d a new session got %s, want %s", i, gen, latest)
		}
		time.Sleep(20 * time.Millisecond) // let the background sessions span reloads
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	evs := p.events()
	ends := 0
	for _, e := range evs {
		// Sessions that logged in (the harness's readiness probes do not).
		if e.str("message") == "session end" && e.str("user") != "" {
			ends++
			if end := e.str("end"); end != "quit" {
				t.Errorf("a session ended with %q during reloads", end)
			}
		}
	}
	if ends < 50 {
		t.Fatalf("only %d sessions ran", ends)
	}
}

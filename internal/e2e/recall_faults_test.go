package e2e

// The message memory under faults (issue 11): Redis down, slow, cut or
// answering garbage between two downloads, and the embedded file truncated
// or overwritten while popgate is stopped. Each case downloads a mailbox
// without DELE (so records are written), injects the fault, downloads and
// deletes it, and is judged as the fault matrix judges: nothing lost,
// nothing truncated, nothing unscanned.
//
//	memory faults: N cases, 0 lost, 0 truncated, 0 unscanned

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// memoryFaultCase is one fault of the memory's store.
type memoryFaultCase struct {
	name string
	// redis: the faults of every connection to Redis once the first
	// download is done (nil with down: the relay is closed).
	redis []testenv.Fault
	down  bool
	// file corrupts the embedded store's file while popgate is stopped.
	file func(t *testing.T, path string)
}

func memoryFaultCases() []memoryFaultCase {
	return []memoryFaultCase{
		{name: "redis down", down: true},
		{name: "redis slow", redis: []testenv.Fault{{Dir: testenv.ToClient, Action: testenv.Delay, Delay: 2 * time.Second}}},
		{name: "redis hung", redis: []testenv.Fault{{Dir: testenv.ToClient, Action: testenv.Stall}}},
		{name: "redis cut mid-reply", redis: []testenv.Fault{{Dir: testenv.ToClient, Offset: 3, Action: testenv.Cut}}},
		{name: "redis garbage", redis: []testenv.Fault{{Dir: testenv.ToClient, Action: testenv.Corrupt, Data: []byte("%%%garbage\r\n$-7\r\n")}}},
		{name: "embedded file truncated", file: func(t *testing.T, path string) {
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, st.Size()/3); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "embedded file garbage", file: func(t *testing.T, path string) {
			b := []byte(strings.Repeat("popgate memory garbage ", 2000))
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
}

func TestMemoryFaults(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	testenv.Clamd(t)
	tally := &faultTally{}
	for _, tc := range memoryFaultCases() {
		t.Run(tc.name, func(t *testing.T) {
			var redis *testenv.Relay
			qdir := filepath.Join(t.TempDir(), "quarantine")
			cfg := avConfig(t, d, avOpts{quarantine: qdir})
			if tc.file == nil {
				redis = testenv.NewRelay(t, testenv.Redis(t))
				cfg += fmt.Sprintf("memory {\n  store   = \"redis\"\n  timeout = \"300ms\"\n  redis {\n    address = %s\n  }\n}\n", hclString(redis.Addr()))
			}
			mb := faultMailbox(t, d, "memfault", true)
			nmsgs := len(mb.msgs)
			p := startPopgate(t, cfg, "", "plain")
			first := standardSession(t, p.addr("plain"), mb.u, nmsgs, clientOpts{noDele: true})
			time.Sleep(500 * time.Millisecond) // the records are written after the answers
			if tc.file != nil {
				p.stop(10 * time.Second)
				tc.file(t, filepath.Join(qdir, "memory.db"))
				p = startPopgate(t, cfg, "", "plain")
			} else if tc.down {
				redis.Close()
			} else {
				redis.SetFaults(tc.redis...)
			}
			second := standardSession(t, p.addr("plain"), mb.u, nmsgs, clientOpts{})
			waitDovecotIdle(t, d, mb.u)
			lost, trunc, unscan, _ := judge(t, mb, true, first, second)
			if len(second.complete) != nmsgs {
				t.Errorf("the second download got %d of %d messages whole (errors %v)", len(second.complete), nmsgs, second.errs)
			}
			note := fmt.Sprintf("%d of %d delivered", len(second.complete), nmsgs)
			if tc.file != nil {
				if !strings.Contains(string(p.logBytes())+p.output(), "corrupt") {
					t.Errorf("popgate did not say it set the damaged memory file aside:\n%s", p.output())
				}
				if _, err := os.Stat(filepath.Join(qdir, "memory.db")); err != nil {
					t.Errorf("no new memory file: %v", err)
				}
			}
			tally.add(tc.name, lost, trunc, unscan, note)
		})
	}
	line := fmt.Sprintf("memory faults: %d cases, %d lost, %d truncated, %d unscanned", tally.cases, tally.lost, tally.trunc, tally.unscan)
	for _, l := range tally.lines {
		t.Log(l)
	}
	reportSummary(t, line)
}

package e2e

// The message memory (issue 11) end to end: the real binary, Dovecot and
// clamd; a mailbox downloaded, popgate restarted with clamd out of reach,
// the mailbox downloaded again.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// memoryMailbox is a clean message, one with the EICAR file, one with an
// .exe attachment strip removes, and a second clean one.
func memoryMailbox() [][]byte {
	return [][]byte{
		cleanMsg("mem1"),
		multipartMsg("mem-eicar", "the test file", textPart("see attached\n"),
			attachment("application/octet-stream", "eicar.com", []byte(testenv.EICAR))),
		multipartMsg("mem-exe", "your invoice", textPart("invoice attached\n"),
			attachment("application/octet-stream", "invoice.pdf.exe", []byte(fakeEXE))),
		cleanMsg("mem2"),
	}
}

// downloadAll is one session of a raw POP3 client: LIST, then RETR of every
// message (TOP 1 0 of each first when top is set), QUIT. It returns the
// LIST sizes and the messages as received (dot-unstuffed).
func downloadAll(t *testing.T, addr string, u *testenv.User, top bool) ([]int64, [][]byte) {
	t.Helper()
	return retrieveSession(t, addr, u, top, false)
}

// downloadAndDelete is downloadAll without TOP, with DELE of every message
// before QUIT: a client that does not leave mail on the server.
func downloadAndDelete(t *testing.T, addr string, u *testenv.User) [][]byte {
	t.Helper()
	_, msgs := retrieveSession(t, addr, u, false, true)
	return msgs
}

func retrieveSession(t *testing.T, addr string, u *testenv.User, top, dele bool) ([]int64, [][]byte) {
	t.Helper()
	p := dialPOP(t, addr)
	p.ok("USER " + u.Name)
	p.ok("PASS " + u.Password)
	p.ok("LIST")
	var sizes []int64
	for l := range strings.Lines(p.multi()) {
		f := strings.Fields(l)
		n, _ := strconv.ParseInt(f[1], 10, 64)
		sizes = append(sizes, n)
	}
	var msgs [][]byte
	for i := range sizes {
		if top {
			p.ok(fmt.Sprintf("TOP %d 0", i+1))
			p.multi()
		}
		p.ok(fmt.Sprintf("RETR %d", i+1))
		var m []byte
		for l := range strings.Lines(p.multi()) {
			m = append(m, strings.TrimPrefix(l, ".")...)
		}
		msgs = append(msgs, m)
		if dele {
			p.ok(fmt.Sprintf("DELE %d", i+1))
		}
	}
	p.ok("QUIT")
	return sizes, msgs
}

func quarantineRecords(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "meta"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(entries)
}

func TestMemoryRemembers(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	clamd := testenv.Clamd(t)
	relay := testenv.NewRelay(t, clamd.Addr()) // clamd, until the relay goes
	qdir := filepath.Join(t.TempDir(), "quarantine")
	cfg := avConfig(t, d, avOpts{quarantine: qdir, clamd: "tcp://" + relay.Addr()})
	u, _ := newMailbox(t, d, memoryMailbox())

	p := startPopgate(t, cfg, "", "plain")
	sizes1, first := downloadAll(t, p.addr("plain"), u, false)
	if len(first) != 4 {
		t.Fatalf("%d messages", len(first))
	}
	if _, ok := isNotice(first[1]); !ok {
		t.Fatalf("message 2 is not a notice:\n%s", first[1])
	}
	if bytes.Contains(first[2], []byte("TVqQ")) || !bytes.Contains(first[0], []byte("X-Popgate-Scanned: yes")) {
		t.Fatalf("the first download is not filtered")
	}
	records := quarantineRecords(t, qdir)
	if records != 2 { // the virus and the stripped attachment's original
		t.Fatalf("%d quarantine records after the first download, want 2", records)
	}
	// popgate remembers after answering: let the writes land.
	time.Sleep(300 * time.Millisecond)
	p.stop(10 * time.Second)

	// clamd out of reach: anything scanned now would be deferred.
	relay.Close()
	p = startPopgate(t, cfg, "", "plain")
	sizes2, second := downloadAll(t, p.addr("plain"), u, true)
	for i := range first {
		if !bytes.Equal(first[i], second[i]) {
			t.Errorf("message %d differs between downloads:\n--- first\n%s\n--- second\n%s", i+1, first[i], second[i])
		}
		if sizes2[i] != int64(len(second[i])) {
			t.Errorf("message %d: LIST says %d, RETR gave %d octets", i+1, sizes2[i], len(second[i]))
		}
	}
	if sizes1[0] == sizes2[0] {
		t.Errorf("LIST of a tagged message: %d before and after, want the delivered size the second time", sizes1[0])
	}
	if n := quarantineRecords(t, qdir); n != records {
		t.Errorf("%d quarantine records after the second download, want still %d", n, records)
	}
}

// Two popgates behind a balancer share the memory through Redis: a mailbox
// downloaded through one is served by the other without a scan (its clamd
// is out of reach), byte for byte, with the delivered sizes in LIST.
func TestMemorySharedByInstances(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	redis := testenv.Redis(t)
	memoryBlock := fmt.Sprintf("memory {\n  store = \"redis\"\n  redis {\n    address = %s\n  }\n}\n", hclString(redis))
	qdir := filepath.Join(t.TempDir(), "quarantine") // shared, as issue 12 will have it
	a := startPopgate(t, avConfig(t, d, avOpts{quarantine: qdir})+memoryBlock, "", "plain")
	gone := testenv.NewRelay(t, testenv.Clamd(t).Addr())
	gone.Close()
	b := startPopgate(t, avConfig(t, d, avOpts{quarantine: qdir, clamd: "tcp://" + gone.Addr()})+memoryBlock, "", "plain")
	u, _ := newMailbox(t, d, memoryMailbox())

	_, first := downloadAll(t, a.addr("plain"), u, false)
	time.Sleep(300 * time.Millisecond) // the records are written after the answers
	records := quarantineRecords(t, qdir)
	sizes, second := downloadAll(t, b.addr("plain"), u, true)
	for i := range first {
		if !bytes.Equal(first[i], second[i]) {
			t.Errorf("message %d through the second instance differs:\n--- first\n%s\n--- second\n%s", i+1, first[i], second[i])
		}
		if sizes[i] != int64(len(second[i])) {
			t.Errorf("message %d: the second instance's LIST says %d, RETR gave %d octets", i+1, sizes[i], len(second[i]))
		}
	}
	if n := quarantineRecords(t, qdir); n != records || records != 2 {
		t.Errorf("quarantine records: %d after the first instance, %d after the second; want 2 and 2", records, n)
	}
}

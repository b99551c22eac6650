package proxy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/memory"
)

// mapStore is a memory.Store in a map; fail makes every call fail.
type mapStore struct {
	mu   sync.Mutex
	m    map[memory.Key][]byte
	fail atomic.Bool
	puts atomic.Int32
}

var errStoreDown = errors.New("store down")

func (s *mapStore) Get(_ context.Context, k memory.Key) (*memory.Record, error) {
	if s.fail.Load() {
		return nil, errStoreDown
	}
	s.mu.Lock()
	b, ok := s.m[k]
	s.mu.Unlock()
	if !ok {
		return nil, nil
	}
	return memory.Decode(b)
}

func (s *mapStore) GetMany(ctx context.Context, ks []memory.Key) ([]*memory.Record, error) {
	out := make([]*memory.Record, len(ks))
	for i, k := range ks {
		r, err := s.Get(ctx, k)
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}

func (s *mapStore) Put(_ context.Context, k memory.Key, r *memory.Record) error {
	if s.fail.Load() {
		return errStoreDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[memory.Key][]byte{}
	}
	s.m[k] = memory.Encode(r)
	s.puts.Add(1)
	return nil
}

func (s *mapStore) Delete(_ context.Context, ks ...memory.Key) error {
	if s.fail.Load() {
		return errStoreDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range ks {
		delete(s.m, k)
	}
	return nil
}

func (s *mapStore) Close() error { return nil }

func (s *mapStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// stampChain is a chain whose one filter counts its runs and adds a header
// field that says which run it was: a message served from memory carries
// the field of the run that remembered it.
func stampChain(runs *atomic.Int32) *filters.Chain {
	f := funcFilter(func(_ context.Context, _ *filters.Envelope, b filters.Body) (filters.Verdict, error) {
		n := runs.Add(1)
		field := fmt.Sprintf("X-Run: %d", n)
		return filters.Verdict{Action: filters.Replace, Body: filters.PrependHeader(b, field),
			Edits: filters.HeaderPieces(b, field), KeepsOriginal: true}, nil
	})
	return &filters.Chain{Filters: []filters.Filter{f}}
}

func memoryProxy(t *testing.T, up string, store memory.Store, runs *atomic.Int32, fp string) (string, *Memory) {
	t.Helper()
	return memoryProxyWith(t, up, &Memory{Store: store, Fingerprint: fp}, runs)
}

// memoryProxyWith runs popgate with mem, which must be complete: sessions
// read it from other goroutines.
func memoryProxyWith(t *testing.T, up string, mem *Memory, runs *atomic.Int32) (string, *Memory) {
	t.Helper()
	chain := stampChain(runs)
	_, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
		o.PolicyFor = func(SessionInfo) (*SessionPolicy, error) {
			return &SessionPolicy{Name: "mem", Chain: chain, FilterTOP: true, Memory: mem}, nil
		}
	})
	return addr, mem
}

// session logs in, runs the commands given, and returns their answers:
// each a status line, and for multi-line answers the body after it.
func memSession(t *testing.T, addr string, cmds ...string) []string {
	t.Helper()
	c := dialClient(t, addr)
	c.line()
	c.login(testUser, testPass)
	var out []string
	for _, cmd := range cmds {
		st := c.cmd(cmd)
		verb, _, _ := strings.Cut(cmd, " ")
		multi := strings.HasPrefix(st, "+OK") && (verb == "RETR" || verb == "TOP" || (verb == "LIST" && !strings.Contains(cmd, " ")))
		if multi {
			st += "\n" + c.body()
		}
		out = append(out, st)
	}
	c.expectOK("QUIT")
	return out
}

func listSizes(t *testing.T, listing string) []int {
	t.Helper()
	var sizes []int
	_, body, _ := strings.Cut(listing, "\n")
	for l := range strings.Lines(body) {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

func TestMemoryServesSecondDownload(t *testing.T) {
	mail, up := startMailServer(t, mailConfig())
	store := &mapStore{}
	var runs atomic.Int32
	addr, mem := memoryProxy(t, up, store, &runs, "fp1")

	first := memSession(t, addr, "LIST", "RETR 1", "RETR 2", "RETR 3")
	mem.Wait()
	if runs.Load() != 3 || store.len() != 3 {
		t.Fatalf("first download: %d chain runs, %d records; want 3 and 3", runs.Load(), store.len())
	}
	second := memSession(t, addr, "LIST", "STAT", "LIST 2", "TOP 1 1", "RETR 1", "RETR 2", "RETR 3")
	mem.Wait()
	if runs.Load() != 3 {
		t.Errorf("second download ran the chain %d more times", runs.Load()-3)
	}
	for i, want := range first[1:] {
		if got := second[4+i]; got != want {
			t.Errorf("RETR %d differs:\nfirst  %q\nsecond %q", i+1, want, got)
		}
	}
	sizes := listSizes(t, second[0])
	total := 0
	for i, n := range sizes {
		retr := first[1+i]
		_, body, _ := strings.Cut(retr, "\n")
		delivered := len(unstuff(body))
		if n != delivered {
			t.Errorf("LIST %d says %d, RETR delivers %d octets", i+1, n, delivered)
		}
		if !strings.HasPrefix(retr, fmt.Sprintf("+OK %d octets", delivered)) {
			t.Errorf("RETR %d status %q, want %d octets", i+1, strings.SplitN(retr, "\n", 2)[0], delivered)
		}
		total += n
	}
	if want := fmt.Sprintf("+OK 3 %d", total); second[1] != want {
		t.Errorf("STAT %q, want %q", second[1], want)
	}
	if want := fmt.Sprintf("+OK 2 %d", sizes[1]); second[2] != want {
		t.Errorf("LIST 2 %q, want %q", second[2], want)
	}
	if top := second[3]; !strings.Contains(top, "X-Run: 1\r\nSubject: one\r\n\r\nhello\r\n") || strings.Contains(top, "two dots") {
		t.Errorf("TOP 1 1 from memory: %q", top)
	}

	// The upstream changes message 2 under its UIDL (same size): it is
	// scanned again, never served from the old record.
	old := mail.Mailbox(testUser)[1].Data
	changed := []byte(strings.Replace(string(old), "a long line", "A LONG LINE", 1))
	mail.SetMessage(testUser, "u2", changed)
	third := memSession(t, addr, "RETR 2")
	mem.Wait()
	if runs.Load() != 4 || !strings.Contains(third[0], "X-Run: 4") || !strings.Contains(third[0], "A LONG LINE") {
		t.Errorf("a changed message under the same UIDL was not scanned again (%d runs): %.80q", runs.Load(), third[0])
	}

	// DELE and a committed QUIT forget the message.
	memSession(t, addr, "DELE 1")
	mem.Wait()
	if store.len() != 2 {
		t.Errorf("%d records after DELE 1 and QUIT, want 2", store.len())
	}
}

// unstuff undoes dot-stuffing of a received body (CRLF lines).
func unstuff(body string) string {
	var b strings.Builder
	for l := range strings.Lines(body) {
		b.WriteString(strings.TrimPrefix(l, "."))
	}
	return b.String()
}

// A store that fails costs a scan, never a pass; and a record of another
// chain is not used.
func TestMemoryFailuresScan(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	store := &mapStore{}
	var runs atomic.Int32
	addr, mem := memoryProxy(t, up, store, &runs, "fp1")
	memSession(t, addr, "RETR 1")
	mem.Wait()

	store.fail.Store(true)
	got := memSession(t, addr, "LIST", "RETR 1")
	if runs.Load() != 2 || !strings.Contains(got[1], "X-Run: 2") {
		t.Errorf("with the store down: %d runs, got %.40q", runs.Load(), got[1])
	}
	store.fail.Store(false)

	addr2, mem2 := memoryProxy(t, up, store, &runs, "fp2")
	memSession(t, addr2, "RETR 1")
	mem2.Wait()
	if runs.Load() != 3 {
		t.Errorf("a record of another chain was used (%d runs)", runs.Load())
	}
}

// A deliverable verdict made under other signatures, or too long ago, is
// scanned again when the policy says so.
func TestMemoryRescan(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	store := &mapStore{}
	var runs atomic.Int32
	var sigs atomic.Value
	sigs.Store("db-1")
	addr, mem := memoryProxyWith(t, up, &Memory{Store: store, Fingerprint: "fp",
		Signatures: func() string { return sigs.Load().(string) }, Rescan: Rescan{OnSignatureChange: true}}, &runs)
	memSession(t, addr, "RETR 1")
	mem.Wait()
	memSession(t, addr, "RETR 1")
	mem.Wait()
	if runs.Load() != 1 {
		t.Fatalf("same signatures: %d runs, want 1", runs.Load())
	}
	sigs.Store("db-2")
	memSession(t, addr, "RETR 1")
	mem.Wait()
	if runs.Load() != 2 {
		t.Errorf("new signatures: %d runs, want 2", runs.Load())
	}
	addr, mem = memoryProxyWith(t, up, &Memory{Store: store, Fingerprint: "fp", Rescan: Rescan{After: time.Nanosecond}}, &runs)
	time.Sleep(time.Millisecond)
	memSession(t, addr, "RETR 1")
	mem.Wait()
	if runs.Load() != 3 {
		t.Errorf("rescan after a duration: %d runs, want 3", runs.Load())
	}
}

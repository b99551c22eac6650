package redisstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/internal/memorytest"
	"github.com/popgate/popgate/internal/testenv"
)

// newStore makes a Store on addr with a key prefix of its own (the test
// redis is shared), removing its keys when the test ends.
func newStore(t testing.TB, addr string, o Options) *Store {
	t.Helper()
	o.Address = addr
	if o.KeyPrefix == "" {
		o.KeyPrefix = testPrefix(t)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func testPrefix(t testing.TB) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	prefix := "popgate:test:" + hex.EncodeToString(b) + ":"
	t.Cleanup(func() { cleanup(t, prefix) })
	return prefix
}

// cleanup deletes the keys under prefix on the test redis.
func cleanup(t testing.TB, prefix string) {
	addr := testenv.Redis(t)
	if addr == "" {
		return
	}
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx := context.Background()
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if len(keys) > 0 {
		c.Del(ctx, keys...)
	}
}

func rawClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestNewOptions(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without an address: no error")
	}
	s, err := New(Options{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.o.Timeout != DefaultTimeout || s.o.Retention != DefaultRetention || s.o.KeyPrefix != DefaultKeyPrefix || s.renewAfter != 24*time.Hour {
		t.Fatalf("defaults: %+v, renew after %v", s.o, s.renewAfter)
	}
	h := memorytest.Key("", 1).Hash()
	if k := s.key(h); !strings.HasPrefix(k, "popgate:mem:v1:") || len(k) != len("popgate:mem:v1:")+2*memory.HashSize {
		t.Fatalf("key %q", k)
	}
}

func TestConformance(t *testing.T) {
	s := newStore(t, testenv.Redis(t), Options{})
	memorytest.Conformance(t, s, "")
}

// TestTwoStores: Stores on one redis (two popgate instances) see each
// other's records and deletions.
func TestTwoStores(t *testing.T) {
	addr := testenv.Redis(t)
	prefix := testPrefix(t)
	a := newStore(t, addr, Options{KeyPrefix: prefix})
	b := newStore(t, addr, Options{KeyPrefix: prefix})
	ctx := context.Background()
	if err := a.Put(ctx, memorytest.Key("", 1), memorytest.Tagged(1)); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Get(ctx, memorytest.Key("", 1)); err != nil || !memorytest.Equal(got, memorytest.Tagged(1)) {
		t.Fatalf("b.Get = %+v, %v", got, err)
	}
	if err := b.Put(ctx, memorytest.Key("", 2), memorytest.Clean(2)); err != nil {
		t.Fatal(err)
	}
	rs, err := a.GetMany(ctx, []memory.Key{memorytest.Key("", 1), memorytest.Key("", 2)})
	if err != nil || !memorytest.Equal(rs[0], memorytest.Tagged(1)) || !memorytest.Equal(rs[1], memorytest.Clean(2)) {
		t.Fatalf("a.GetMany = %v, %v", rs, err)
	}
	if err := b.Delete(ctx, memorytest.Key("", 1)); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Get(ctx, memorytest.Key("", 1)); got != nil || err != nil {
		t.Fatalf("a.Get after b.Delete = %v, %v", got, err)
	}
	// Another prefix is another memory.
	c := newStore(t, addr, Options{})
	if got, err := c.Get(ctx, memorytest.Key("", 2)); got != nil || err != nil {
		t.Fatalf("other prefix: %v, %v", got, err)
	}
}

// TestRetentionTTL: Put sets the TTL; Get and GetMany renew it, at most once
// per renewal interval per Store; redis forgets an unused record.
func TestRetentionTTL(t *testing.T) {
	addr := testenv.Redis(t)
	raw := rawClient(t, addr)
	s := newStore(t, addr, Options{Retention: time.Hour})
	ctx := context.Background()
	k := memorytest.Key("", 1)
	key := s.key(k.Hash())
	if err := s.Put(ctx, k, memorytest.Clean(1)); err != nil {
		t.Fatal(err)
	}
	ttl := func() time.Duration {
		t.Helper()
		d, err := raw.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := ttl(); d < 59*time.Minute || d > time.Hour {
		t.Fatalf("TTL after Put %v", d)
	}
	// The key's TTL runs down (as if time passed).
	shorten := func() {
		t.Helper()
		if err := raw.PExpire(ctx, key, 10*time.Second).Err(); err != nil {
			t.Fatal(err)
		}
	}
	shorten()
	// Within the renewal interval (a quarter of the retention here): no
	// renewal, a plain GET.
	if r, err := s.Get(ctx, k); err != nil || r == nil {
		t.Fatal(r, err)
	}
	if d := ttl(); d > 10*time.Second {
		t.Fatalf("TTL renewed by a Get within the renewal interval: %v", d)
	}
	// Later: renewed, by Get...
	base := time.Now()
	s.now = func() time.Time { return base.Add(16 * time.Minute) }
	if r, err := s.Get(ctx, k); err != nil || r == nil {
		t.Fatal(r, err)
	}
	if d := ttl(); d < 59*time.Minute {
		t.Fatalf("TTL after a due Get %v", d)
	}
	// ...and by GetMany (missing keys stay missing).
	shorten()
	s.now = func() time.Time { return base.Add(32 * time.Minute) }
	missing := memorytest.Key("", 2)
	rs, err := s.GetMany(ctx, []memory.Key{missing, k})
	if err != nil || rs[0] != nil || rs[1] == nil {
		t.Fatal(rs, err)
	}
	if d := ttl(); d < 59*time.Minute {
		t.Fatalf("TTL after a due GetMany %v", d)
	}
	if n, err := raw.Exists(ctx, s.key(missing.Hash())).Result(); err != nil || n != 0 {
		t.Fatalf("GetMany made a missing key exist: %d, %v", n, err)
	}
	// Not due again right after.
	shorten()
	if _, err := s.GetMany(ctx, []memory.Key{k}); err != nil {
		t.Fatal(err)
	}
	if d := ttl(); d > 10*time.Second {
		t.Fatalf("TTL renewed twice in an interval: %v", d)
	}

	// A short retention: redis forgets the record.
	s2 := newStore(t, addr, Options{Retention: 200 * time.Millisecond})
	if err := s2.Put(ctx, k, memorytest.Clean(1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	if r, err := s2.Get(ctx, k); r != nil || err != nil {
		t.Fatalf("Get after the retention = %v, %v", r, err)
	}
}

// TestBadValue: a stored value that does not decode is an error for Get
// and a miss for GetMany (logged), never a panic; so is a key of another
// type.
func TestBadValue(t *testing.T) {
	addr := testenv.Redis(t)
	raw := rawClient(t, addr)
	var logs bytes.Buffer
	s := newStore(t, addr, Options{Log: zerolog.New(&logs)})
	ctx := context.Background()
	k := memorytest.Key("", 1)
	if err := raw.Set(ctx, s.key(k.Hash()), "\x01garbage", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Get(ctx, k); r != nil || err == nil {
		t.Fatalf("Get of garbage = %v, %v", r, err)
	}
	if rs, err := s.GetMany(ctx, []memory.Key{k}); err != nil || rs[0] != nil {
		t.Fatalf("GetMany of garbage = %v, %v", rs, err)
	}
	if !strings.Contains(logs.String(), "does not decode") {
		t.Fatalf("log: %q", logs.String())
	}
	// A list where a string should be: WRONGTYPE for GET, nil for MGET.
	k2 := memorytest.Key("", 2)
	if err := raw.RPush(ctx, s.key(k2.Hash()), "x").Err(); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Get(ctx, k2); r != nil || err == nil {
		t.Fatalf("Get of a list = %v, %v", r, err)
	}
	if rs, err := s.GetMany(ctx, []memory.Key{k2}); err != nil || rs[0] != nil {
		t.Fatalf("GetMany of a list = %v, %v", rs, err)
	}
}

// faultStore is a Store that reaches redis through a fault relay; the
// records are written directly.
func faultStore(t *testing.T) (*Store, *Store, *testenv.Relay) {
	addr := testenv.Redis(t)
	relay := testenv.NewRelay(t, addr)
	prefix := testPrefix(t)
	direct := newStore(t, addr, Options{KeyPrefix: prefix})
	s := newStore(t, relay.Addr(), Options{KeyPrefix: prefix, Timeout: 200 * time.Millisecond})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if err := direct.Put(ctx, memorytest.Key("", i), memorytest.Clean(i)); err != nil {
			t.Fatal(err)
		}
	}
	return s, direct, relay
}

// within runs f and checks it took at most d.
func within(t *testing.T, d time.Duration, what string, f func() error) error {
	t.Helper()
	start := time.Now()
	err := f()
	took := time.Since(start)
	t.Logf("%s: %v after %v", what, err, took.Round(time.Millisecond))
	if took > d {
		t.Errorf("%s took %v, want at most %v", what, took, d)
	}
	return err
}

// works checks that s serves Get and GetMany again.
func works(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	if r, err := s.Get(ctx, memorytest.Key("", 1)); err != nil || !memorytest.Equal(r, memorytest.Clean(1)) {
		t.Fatalf("Get after the fault = %+v, %v", r, err)
	}
	if rs, err := s.GetMany(ctx, []memory.Key{memorytest.Key("", 0), memorytest.Key("", 2)}); err != nil || rs[0] == nil || rs[1] == nil {
		t.Fatalf("GetMany after the fault = %v, %v", rs, err)
	}
}

func TestFaultDown(t *testing.T) {
	// Nothing listens: connection refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	t.Run("refused", func(t *testing.T) { failFast(t, newStore(t, addr, Options{Timeout: 200 * time.Millisecond})) })
	// Through the fault relay: it accepts, cannot reach redis and closes.
	t.Run("relay", func(t *testing.T) {
		relay := testenv.NewRelay(t, addr)
		failFast(t, newStore(t, relay.Addr(), Options{Timeout: 200 * time.Millisecond}))
	})
	// redis comes up: the same Store works.
	t.Run("up again", func(t *testing.T) {
		relay := testenv.NewRelay(t, addr)
		s, direct, _ := faultStore(t)
		s = newStore(t, relay.Addr(), Options{KeyPrefix: s.o.KeyPrefix, Timeout: 200 * time.Millisecond})
		failFast(t, s)
		relay.SetTarget(direct.o.Address)
		works(t, s)
	})
}

// failFast checks that every operation of s fails within 300ms.
func failFast(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	for _, op := range []struct {
		name string
		f    func() error
	}{
		{"Get", func() error { _, err := s.Get(ctx, memorytest.Key("", 1)); return err }},
		{"GetMany", func() error { _, err := s.GetMany(ctx, []memory.Key{memorytest.Key("", 1)}); return err }},
		{"Put", func() error { return s.Put(ctx, memorytest.Key("", 1), memorytest.Clean(1)) }},
		{"Delete", func() error { return s.Delete(ctx, memorytest.Key("", 1)) }},
	} {
		if err := within(t, 300*time.Millisecond, op.name+" with redis down", op.f); err == nil {
			t.Fatalf("%s with redis down: no error", op.name)
		}
	}
}

func TestFaultSlow(t *testing.T) {
	s, _, relay := faultStore(t)
	ctx := context.Background()
	// Every connection's replies come a second late (s has no connection
	// yet: the relay's faults apply to new connections).
	relay.SetFaults(testenv.Fault{Dir: testenv.ToClient, Action: testenv.Delay, Delay: time.Second})
	for i := 0; i < 3; i++ {
		err := within(t, 350*time.Millisecond, "Get from a slow redis", func() error {
			_, err := s.Get(ctx, memorytest.Key("", 1))
			return err
		})
		if err == nil {
			t.Fatal("Get from a slow redis: no error")
		}
		err = within(t, 350*time.Millisecond, "GetMany from a slow redis", func() error {
			_, err := s.GetMany(ctx, []memory.Key{memorytest.Key("", 1)})
			return err
		})
		if err == nil {
			t.Fatal("GetMany from a slow redis: no error")
		}
	}
	if relay.Fired() == 0 {
		t.Fatal("the delay never fired")
	}
	relay.SetFaults()
	works(t, s)
}

func TestFaultCutMidReply(t *testing.T) {
	s, _, relay := faultStore(t)
	ctx := context.Background()
	relay.SetFaults(testenv.Fault{Dir: testenv.ToClient, After: memorytest.Clean(1).Fingerprint, Action: testenv.Cut})
	if r, err := s.Get(ctx, memorytest.Key("", 1)); err == nil {
		t.Fatalf("Get cut mid-reply = %+v, no error", r)
	} else {
		t.Logf("Get cut mid-reply: %v", err)
	}
	if rs, err := s.GetMany(ctx, []memory.Key{memorytest.Key("", 0), memorytest.Key("", 1)}); err == nil {
		t.Fatalf("GetMany cut mid-reply = %v, no error", rs)
	} else {
		t.Logf("GetMany cut mid-reply: %v", err)
	}
	if relay.Fired() == 0 {
		t.Fatal("the cut never fired")
	}
	relay.SetFaults()
	works(t, s)
}

func TestFaultGarbageReply(t *testing.T) {
	enc := memory.Encode(memorytest.Clean(1))
	bulk := fmt.Sprintf("$%d\r\n", len(enc))
	for _, tc := range []struct {
		name  string
		fault testenv.Fault
	}{
		// The record's version byte changed: a reply that is valid redis
		// but not a record.
		{"bad record", testenv.Fault{Dir: testenv.ToClient, After: bulk, Offset: int64(len(bulk)), Action: testenv.Corrupt, Data: []byte{9}}},
		// The reply's type byte changed: not RESP.
		{"bad type", testenv.Fault{Dir: testenv.ToClient, After: bulk, Action: testenv.Corrupt, Data: []byte("?")}},
		// An integer where a string was, then the record's bytes as RESP.
		{"integer", testenv.Fault{Dir: testenv.ToClient, After: bulk, Action: testenv.Corrupt, Data: []byte(":")}},
		// A length longer than what follows: the client waits for more.
		{"long length", testenv.Fault{Dir: testenv.ToClient, After: bulk, Action: testenv.Corrupt, Data: []byte("$999")}},
		// Noise from the first byte on, the greeting included.
		{"noise", testenv.Fault{Dir: testenv.ToClient, Action: testenv.Corrupt, Data: bytes.Repeat([]byte{0xff, '*', '9', '\r', '\n'}, 40)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _, relay := faultStore(t)
			ctx := context.Background()
			relay.SetFaults(tc.fault)
			err := within(t, 350*time.Millisecond, "Get", func() error {
				r, err := s.Get(ctx, memorytest.Key("", 1))
				if err == nil && memorytest.Equal(r, memorytest.Clean(1)) {
					return nil
				}
				if err == nil {
					t.Errorf("Get with a garbage reply = %+v, no error", r)
				}
				return err
			})
			if err == nil {
				t.Fatal("Get with a garbage reply: the right record, no error")
			}
			err = within(t, 350*time.Millisecond, "GetMany", func() error {
				rs, err := s.GetMany(ctx, []memory.Key{memorytest.Key("", 0), memorytest.Key("", 1), memorytest.Key("", 2)})
				if err == nil {
					for i, r := range rs {
						if r != nil && !memorytest.Equal(r, memorytest.Clean(i)) {
							t.Errorf("GetMany with a garbage reply: entry %d = %+v", i, r)
						}
					}
				}
				return err
			})
			if err == nil {
				t.Log("GetMany with a garbage reply: no error (a garbage record counted as missing)")
			}
			if relay.Fired() == 0 {
				t.Fatal("the fault never fired")
			}
			relay.SetFaults()
			works(t, s)
		})
	}
}

// TestFaultRestart: redis stops (the Store fails fast) and starts again on
// the same port, empty (the Store reconnects by itself).
func TestFaultRestart(t *testing.T) {
	testenv.Redis(t) // the skip-or-fail rule: redis-server is part of the environment
	bin := testenv.LookPath(t, "redis-server")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	start := func() *exec.Cmd {
		t.Helper()
		cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no", "--dir", dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				_ = c.Close()
				return cmd
			}
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("redis-server on %s did not start", addr)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	stop := func(cmd *exec.Cmd) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	cmd := start()
	t.Cleanup(func() { stop(cmd) })
	s := newStore(t, addr, Options{KeyPrefix: "popgate:test:restart:"})
	ctx := context.Background()
	// Several pooled connections.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Put(ctx, memorytest.Key("", i), memorytest.Clean(i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if r, err := s.Get(ctx, memorytest.Key("", 1)); err != nil || r == nil {
		t.Fatal(r, err)
	}
	stop(cmd)
	if err := within(t, 300*time.Millisecond, "Get with redis stopped", func() error {
		_, err := s.Get(ctx, memorytest.Key("", 1))
		return err
	}); err == nil {
		t.Fatal("Get with redis stopped: no error")
	}
	cmd = start()
	// The first call after the restart already works: stale pooled
	// connections are noticed and replaced within the call.
	firstOK := 0
	for i := 0; i < 10; i++ {
		r, err := s.Get(ctx, memorytest.Key("", 1))
		if err != nil {
			t.Logf("Get %d after the restart: %v", i, err)
			continue
		}
		if r != nil {
			t.Fatalf("Get after the restart of an empty redis = %+v", r)
		}
		if firstOK == 0 {
			firstOK = i + 1
		}
	}
	t.Logf("first successful call after the restart: #%d", firstOK)
	if firstOK != 1 {
		t.Errorf("the first call after the restart failed (first success: #%d)", firstOK)
	}
	if err := s.Put(ctx, memorytest.Key("", 1), memorytest.Clean(1)); err != nil {
		t.Fatal(err)
	}
	works2 := func() {
		rs, err := s.GetMany(ctx, []memory.Key{memorytest.Key("", 1), memorytest.Key("", 2)})
		if err != nil || !memorytest.Equal(rs[0], memorytest.Clean(1)) || rs[1] != nil {
			t.Fatalf("GetMany after the restart = %v, %v", rs, err)
		}
	}
	works2()
}

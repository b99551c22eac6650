// Package memorytest holds what the tests of every memory.Store share:
// sample records of the two common shapes and a conformance test.
package memorytest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/memory"
)

// Created is the creation time of the sample records.
var Created = time.Date(2026, 11, 25, 10, 30, 0, 0, time.UTC)

// Clean is the record of a message delivered unchanged (Pieces nil), with
// short strings of a realistic length: a 16-character fingerprint and a
// signature version.
func Clean(i int) *memory.Record {
	size := int64(20000 + i%50000)
	return &memory.Record{
		ListSize:      size + 412,
		Size:          size,
		SHA256:        sha256.Sum256([]byte(fmt.Sprint("clean", i))),
		Outcome:       memory.Deliver,
		DeliveredSize: size,
		Fingerprint:   "3f9a1c0de2b47781",
		Signatures:    "clamav:27845",
		Created:       Created,
	}
}

// TaggedLiteral is the literal piece of Tagged: a rewritten Subject and the
// header fields the tag filter adds, 150 bytes.
var TaggedLiteral = []byte(padTo("Subject: [SPAM] Your invoice for November is ready\r\n"+
	"X-Popgate-Tag: spam; score=7.2\r\nX-Popgate-Original-Subject: Your invoice for November is ready\r\n", 150))

func padTo(s string, n int) string {
	for len(s) < n {
		s = "X" + s
	}
	return s[:n]
}

// Tagged is the record of a message the tag filter changed: the original up
// to the Subject, one literal piece of 150 bytes, the rest of the original.
func Tagged(i int) *memory.Record {
	r := Clean(i)
	r.SHA256 = sha256.Sum256([]byte(fmt.Sprint("tagged", i)))
	subj := int64(700 + i%300)
	r.Pieces = []filters.Piece{
		{Off: 0, Len: subj},
		{Data: bytes.Clone(TaggedLiteral)},
		{Off: subj + 60, Len: r.Size - subj - 60},
	}
	r.DeliveredSize = filters.PiecesSize(r.Pieces)
	r.Reason = "tag: spam"
	return r
}

// Normalize returns r as a store gives it back: Created in whole seconds,
// UTC; a literal piece's Off and Len zero.
func Normalize(r *memory.Record) *memory.Record {
	if r == nil {
		return nil
	}
	c := *r
	c.Created = time.Unix(r.Created.Unix(), 0).UTC()
	if r.Pieces != nil {
		c.Pieces = make([]filters.Piece, len(r.Pieces))
		for i, p := range r.Pieces {
			if p.Data != nil {
				p.Off, p.Len = 0, 0
			}
			c.Pieces[i] = p
		}
	}
	return &c
}

// Equal reports whether got is what a store should give back for want.
func Equal(got, want *memory.Record) bool {
	return reflect.DeepEqual(Normalize(got), Normalize(want))
}

// Key is a key of the tests, unique per prefix and i.
func Key(prefix string, i int) memory.Key {
	return memory.Key{Upstream: "127.0.0.1:110", Mailbox: prefix + "alice", UIDL: fmt.Sprintf("%08X%08X", i, 4711)}
}

// Conformance runs the behaviour every Store shares: put, get, get many,
// overwrite, delete, keys that differ only in where a field ends, an invalid
// record refused, and concurrent use. prefix makes the keys unique to this
// run (a shared redis).
func Conformance(t *testing.T, s memory.Store, prefix string) {
	t.Helper()
	ctx := context.Background()
	if r, err := s.Get(ctx, Key(prefix, 0)); r != nil || err != nil {
		t.Fatalf("Get of a missing key = %v, %v; want nil, nil", r, err)
	}
	for i := 0; i < 10; i++ {
		r := Clean(i)
		if i%2 == 1 {
			r = Tagged(i)
		}
		if err := s.Put(ctx, Key(prefix, i), r); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	for i := 0; i < 10; i++ {
		want := Clean(i)
		if i%2 == 1 {
			want = Tagged(i)
		}
		got, err := s.Get(ctx, Key(prefix, i))
		if err != nil || !Equal(got, want) {
			t.Fatalf("Get %d = %+v, %v; want %+v", i, got, err, want)
		}
	}
	// GetMany: one entry per key, in order, nil for the missing, duplicates too.
	ks := []memory.Key{Key(prefix, 3), Key(prefix, 100), Key(prefix, 0), Key(prefix, 3)}
	rs, err := s.GetMany(ctx, ks)
	if err != nil || len(rs) != 4 || !Equal(rs[0], Tagged(3)) || rs[1] != nil || !Equal(rs[2], Clean(0)) || !Equal(rs[3], Tagged(3)) {
		t.Fatalf("GetMany = %v, %v", rs, err)
	}
	if rs, err := s.GetMany(ctx, nil); err != nil || len(rs) != 0 {
		t.Fatalf("GetMany(nil) = %v, %v", rs, err)
	}
	// Overwrite.
	if err := s.Put(ctx, Key(prefix, 0), Tagged(0)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, Key(prefix, 0)); err != nil || !Equal(got, Tagged(0)) {
		t.Fatalf("Get after overwrite = %+v, %v", got, err)
	}
	// Keys are exact: moving a byte from one field to the next is another key.
	a := memory.Key{Upstream: "u", Mailbox: "ab", UIDL: "c" + prefix}
	b := memory.Key{Upstream: "u", Mailbox: "a", UIDL: "bc" + prefix}
	if err := s.Put(ctx, a, Clean(1)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, b); got != nil || err != nil {
		t.Fatalf("Get of a shifted key = %v, %v", got, err)
	}
	// Delete: several at once, missing ones are fine.
	if err := s.Delete(ctx, Key(prefix, 0), Key(prefix, 1), Key(prefix, 999), a); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := s.Delete(ctx); err != nil {
		t.Fatalf("Delete(): %v", err)
	}
	rs, err = s.GetMany(ctx, []memory.Key{Key(prefix, 0), Key(prefix, 1), Key(prefix, 2), a})
	if err != nil || rs[0] != nil || rs[1] != nil || !Equal(rs[2], Clean(2)) || rs[3] != nil {
		t.Fatalf("GetMany after Delete = %v, %v", rs, err)
	}
	// A record that could not be read back is refused, not stored.
	bad := Clean(5)
	bad.Pieces = []filters.Piece{{Off: 10, Len: bad.Size}}
	if err := s.Put(ctx, Key(prefix, 5), bad); err == nil {
		t.Fatal("Put of a record with a piece beyond the original: no error")
	}
	if got, err := s.Get(ctx, Key(prefix, 5)); err != nil || !Equal(got, Tagged(5)) {
		t.Fatalf("Get after a refused Put = %+v, %v; want the old record", got, err)
	}
	if err := s.Put(ctx, Key(prefix, 5), nil); err == nil {
		t.Fatal("Put(nil): no error")
	}

	// Concurrent puts, gets and deletes (run under -race).
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				k := Key(fmt.Sprintf("%sc%d-", prefix, g), i)
				want := Tagged(i)
				if err := s.Put(ctx, k, want); err != nil {
					errs <- err
					return
				}
				got, err := s.Get(ctx, k)
				if err != nil || !Equal(got, want) {
					errs <- fmt.Errorf("concurrent Get %v = %+v, %v", k, got, err)
					return
				}
				if i%3 == 0 {
					if err := s.Delete(ctx, k); err != nil {
						errs <- err
						return
					}
				}
				if _, err := s.GetMany(ctx, []memory.Key{k, Key(prefix, 2)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

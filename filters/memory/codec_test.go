package memory_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/internal/memorytest"
)

func TestRecordSizes(t *testing.T) {
	clean := memory.Encode(memorytest.Clean(1))
	tagged := memory.Encode(memorytest.Tagged(1))
	t.Logf("encoded record: clean %d bytes, tagged (one literal of %d bytes, two runs) %d bytes",
		len(clean), len(memorytest.TaggedLiteral), len(tagged))
	if len(clean) >= 90 {
		t.Errorf("clean record is %d bytes, want well under 100", len(clean))
	}
	if len(tagged) >= 250 {
		t.Errorf("tagged record is %d bytes, want under 250", len(tagged))
	}
	// The fixed part: version, SHA-256, outcome, piece count, four empty
	// strings and the sizes and time of the smallest values.
	if n := len(memory.Encode(&memory.Record{Outcome: memory.Refuse, Created: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)})); n != 1+1+1+32+1+1+1+4+1 {
		t.Errorf("minimal record is %d bytes", n)
	}
}

func TestRoundTrip(t *testing.T) {
	notice := memorytest.Clean(2)
	notice.Outcome = memory.Notice
	notice.Pieces = []filters.Piece{{Data: []byte("This message was withheld.\r\n")}}
	notice.DeliveredSize = 28
	notice.QuarantineID = "20261125T103000.123456Z-k3j4h5g6f7"
	notice.Reason = "clamav: Eicar-Test-Signature.UNOFFICIAL"
	refuse := memorytest.Clean(3)
	refuse.Outcome, refuse.DeliveredSize = memory.Refuse, 0
	for name, r := range map[string]*memory.Record{
		"clean":    memorytest.Clean(1),
		"tagged":   memorytest.Tagged(1),
		"notice":   notice,
		"refuse":   refuse,
		"zero":     {Outcome: memory.Deliver},
		"empty":    {Outcome: memory.Deliver, Pieces: []filters.Piece{}}, // an empty message, not the original
		"emptylit": {Outcome: memory.Deliver, Pieces: []filters.Piece{{Data: []byte{}}}},
		"runs back": {Outcome: memory.Deliver, Size: 100, Pieces: []filters.Piece{
			{Off: 90, Len: 10}, {Off: 0, Len: 100}, {Off: 100, Len: 0}, {Off: 5, Len: 0}}},
		"subsecond":     {Outcome: memory.Deliver, Created: time.Date(2030, 1, 2, 3, 4, 5, 999, time.Local)},
		"negative time": {Outcome: memory.Deliver, Created: time.Unix(-5, 0)},
		"big": {Outcome: memory.Deliver, ListSize: math.MaxInt64, Size: math.MaxInt64, DeliveredSize: math.MaxInt64,
			Pieces: []filters.Piece{{Off: math.MaxInt64, Len: 0}, {Off: 0, Len: math.MaxInt64}}},
		"utf8 and binary strings": {Outcome: memory.Notice, Reason: "Grüße\x00\xff", Fingerprint: strings.Repeat("f", 300)},
	} {
		t.Run(name, func(t *testing.T) {
			if err := r.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			b := memory.Encode(r)
			got, err := memory.Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !memorytest.Equal(got, r) {
				t.Fatalf("Decode(Encode(r)) = %+v\nwant %+v", got, r)
			}
			if (got.Pieces == nil) != (r.Pieces == nil) {
				t.Fatalf("nil Pieces not kept: %v vs %v", got.Pieces, r.Pieces)
			}
			if b2 := memory.Encode(got); !bytes.Equal(b2, b) {
				t.Fatalf("Encode(Decode(b)) != b")
			}
			if !got.Created.Equal(time.Unix(r.Created.Unix(), 0)) || got.Created.Location() != time.UTC {
				t.Fatalf("Created %v, want %v in UTC", got.Created, r.Created)
			}
			// The record owns its bytes.
			for i := range b {
				b[i] = 0xAA
			}
			if !memorytest.Equal(got, r) {
				t.Fatal("decoded record changed with its input")
			}
		})
	}
	// The zero Time comes back as the zero Time.
	got, err := memory.Decode(memory.Encode(&memory.Record{Outcome: memory.Deliver}))
	if err != nil || !got.Created.IsZero() || got.Created != (time.Time{}) {
		t.Fatalf("zero Created: %v, %v", got.Created, err)
	}
}

func TestValidate(t *testing.T) {
	mod := func(f func(r *memory.Record)) *memory.Record {
		r := memorytest.Tagged(1)
		f(r)
		return r
	}
	for name, r := range map[string]*memory.Record{
		"nil":              nil,
		"no outcome":       mod(func(r *memory.Record) { r.Outcome = 0 }),
		"unknown outcome":  mod(func(r *memory.Record) { r.Outcome = 4 }),
		"negative size":    mod(func(r *memory.Record) { r.Size = -1 }),
		"negative list":    mod(func(r *memory.Record) { r.ListSize = -1 }),
		"negative deliv":   mod(func(r *memory.Record) { r.DeliveredSize = -1 }),
		"negative off":     mod(func(r *memory.Record) { r.Pieces[0].Off = -1 }),
		"negative len":     mod(func(r *memory.Record) { r.Pieces[0].Len = -1 }),
		"run past end":     mod(func(r *memory.Record) { r.Pieces[2].Len++ }),
		"run starts after": mod(func(r *memory.Record) { r.Pieces[2] = filters.Piece{Off: r.Size + 1} }),
		"overflow":         mod(func(r *memory.Record) { r.Pieces[2] = filters.Piece{Off: 1, Len: math.MaxInt64} }),
		"too many pieces":  mod(func(r *memory.Record) { r.Pieces = make([]filters.Piece, memory.MaxPieces+1) }),
		"too many literal bytes": mod(func(r *memory.Record) {
			r.Pieces = []filters.Piece{{Data: make([]byte, memory.MaxLiteralBytes/2)}, {Data: make([]byte, memory.MaxLiteralBytes/2+1)}}
		}),
	} {
		t.Run(name, func(t *testing.T) {
			if err := r.Validate(); err == nil {
				t.Fatal("Validate: no error")
			}
			if r == nil {
				return
			}
			// What Validate refuses, Decode refuses too.
			if got, err := memory.Decode(memory.Encode(r)); err == nil || got != nil || !errors.Is(err, memory.ErrMalformed) {
				t.Fatalf("Decode(Encode(invalid)) = %+v, %v", got, err)
			}
		})
	}
	ok := mod(func(r *memory.Record) {
		r.Pieces = []filters.Piece{{Data: make([]byte, memory.MaxLiteralBytes)}}
		r.Pieces = append(r.Pieces, make([]filters.Piece, memory.MaxPieces-1)...)
	})
	if err := ok.Validate(); err != nil {
		t.Fatalf("record at the limits: %v", err)
	}
	if _, err := memory.Decode(memory.Encode(ok)); err != nil {
		t.Fatalf("Decode of a record at the limits: %v", err)
	}
}

func TestDecodeMalformed(t *testing.T) {
	good := memory.Encode(memorytest.Tagged(1))
	// Every proper prefix is an error, so is every extension.
	for i := 0; i < len(good); i++ {
		if r, err := memory.Decode(good[:i]); err == nil || r != nil {
			t.Fatalf("Decode of %d of %d bytes: %+v, %v", i, len(good), r, err)
		}
	}
	if _, err := memory.Decode(append(bytes.Clone(good), 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	// head is a valid start up to and including the outcome.
	head := func(size uint64) []byte {
		b := []byte{1}
		b = binary.AppendUvarint(b, size) // Size
		b = binary.AppendVarint(b, 0)     // ListSize - Size
		b = append(b, make([]byte, 32)...)
		return append(b, byte(memory.Deliver))
	}
	tail := []byte{0, 0, 0, 0, 0, 0} // delivered size, four empty strings, created 0
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	if _, err := memory.Decode(cat(head(100), []byte{0}, tail)); err != nil {
		t.Fatalf("the base of the cases does not decode: %v", err)
	}
	for name, b := range map[string][]byte{
		"empty":                nil,
		"version 0":            cat([]byte{0}, head(100)[1:], []byte{0}, tail),
		"version 2":            cat([]byte{2}, head(100)[1:], []byte{0}, tail),
		"outcome 0":            cat(head(100)[:len(head(100))-1], []byte{0, 0}, tail),
		"outcome 9":            cat(head(100)[:len(head(100))-1], []byte{9, 0}, tail),
		"overlong varint":      cat([]byte{1, 0xe4, 0x00}, head(100)[2:], []byte{0}, tail),
		"list size negative":   cat([]byte{1, 100}, binary.AppendVarint(nil, -101), head(100)[3:], []byte{0}, tail),
		"list size wraps":      cat([]byte{1}, uv(math.MaxInt64), binary.AppendVarint(nil, 1), head(100)[3:], []byte{0}, tail),
		"delivered negative":   cat(head(100), []byte{0}, binary.AppendVarint(nil, -101), tail[1:]),
		"size beyond int64":    cat([]byte{1}, uv(math.MaxUint64), head(100)[2:], []byte{0}, tail),
		"11-byte varint":       cat([]byte{1}, bytes.Repeat([]byte{0xff}, 10), []byte{1}),
		"huge piece count":     cat(head(100), uv(1<<62), tail),
		"piece count over max": cat(head(100), uv(memory.MaxPieces+2), make([]byte, 3*memory.MaxPieces), tail),
		"count beyond input":   cat(head(100), uv(5), []byte{0, 0, 0}, tail),
		"unknown tag":          cat(head(100), uv(2), []byte{2, 0, 0}, tail),
		"literal beyond input": cat(head(100), uv(2), []byte{1}, uv(1<<40), tail),
		"literal too big":      cat(head(100), uv(3), []byte{1}, uv(memory.MaxLiteralBytes), make([]byte, memory.MaxLiteralBytes), []byte{1, 1, 0}, tail),
		"run past size":        cat(head(100), uv(2), []byte{0, 0}, uv(101), tail),
		"run offset past size": cat(head(100), uv(2), []byte{0}, binary.AppendVarint(nil, 101), []byte{0}, tail),
		"run offset negative":  cat(head(100), uv(3), []byte{0, 0, 10, 0}, binary.AppendVarint(nil, -11), []byte{0}, tail),
		"run offset min int64": cat(head(100), uv(2), []byte{0}, binary.AppendVarint(nil, math.MinInt64), []byte{0}, tail),
		"run offset max int64": cat(head(math.MaxInt64), uv(3), []byte{0, 0}, uv(math.MaxInt64), []byte{0}, binary.AppendVarint(nil, math.MaxInt64), []byte{0}, tail),
		"string beyond input":  cat(head(100), []byte{0, 0, 0, 0, 0, 50, 'x'}, []byte{0}),
		"created missing":      cat(head(100), []byte{0}, tail[:5]),
		"created overlong":     cat(head(100), []byte{0}, tail[:5], []byte{0x80, 0x00}),
	} {
		t.Run(name, func(t *testing.T) {
			r, err := memory.Decode(b)
			if err == nil || r != nil || !errors.Is(err, memory.ErrMalformed) {
				t.Fatalf("Decode = %+v, %v; want an ErrMalformed", r, err)
			}
			if testing.Verbose() {
				t.Log(err)
			}
		})
	}
}

// FuzzRecord holds Decode to three promises: it never panics (nor allocates
// beyond its input); whatever it accepts is valid and is exactly what Encode
// writes for the result (one stored form per record); and every valid record,
// here built from the fuzz input, comes back from Decode(Encode(r)) equal.
func FuzzRecord(f *testing.F) {
	f.Add(memory.Encode(memorytest.Clean(1)))
	f.Add(memory.Encode(memorytest.Tagged(1)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		// 1. Decode of arbitrary bytes.
		if r, err := memory.Decode(b); err == nil {
			if verr := r.Validate(); verr != nil {
				t.Fatalf("Decode accepted an invalid record: %v", verr)
			}
			if e := memory.Encode(r); !bytes.Equal(e, b) {
				t.Fatalf("Encode(Decode(b)) = %x, b = %x", e, b)
			}
		} else if !errors.Is(err, memory.ErrMalformed) || r != nil {
			t.Fatalf("Decode error %v (record %v)", err, r)
		}
		// 2. A valid record built from the same bytes.
		r := recordFrom(b)
		if err := r.Validate(); err != nil {
			t.Fatalf("recordFrom built an invalid record: %v", err)
		}
		e := memory.Encode(r)
		got, err := memory.Decode(e)
		if err != nil {
			t.Fatalf("Decode(Encode(r)): %v\nr = %+v", err, r)
		}
		if !memorytest.Equal(got, r) {
			t.Fatalf("Decode(Encode(r)) = %+v\nwant %+v", got, r)
		}
		if !bytes.Equal(memory.Encode(got), e) {
			t.Fatal("Encode is not stable")
		}
	})
}

// recordFrom builds a valid record from b, drawing each field from the
// bytes (zeros once they run out).
func recordFrom(b []byte) *memory.Record {
	next := func() byte {
		if len(b) == 0 {
			return 0
		}
		c := b[0]
		b = b[1:]
		return c
	}
	num := func() int64 {
		// Small, medium or extreme values.
		switch k := next(); k % 4 {
		case 0:
			return int64(next())
		case 1:
			return int64(next())<<16 | int64(next())<<8 | int64(next())
		case 2:
			return math.MaxInt64 - int64(next())
		default:
			var v uint64
			for i := 0; i < 8; i++ {
				v = v<<8 | uint64(next())
			}
			return int64(v >> 1)
		}
	}
	str := func() string {
		n := int(next() % 40)
		s := make([]byte, n)
		for i := range s {
			s[i] = next()
		}
		return string(s)
	}
	r := &memory.Record{
		ListSize: num(),
		Size:     num(),
		Outcome:  memory.Outcome(1 + next()%3),
	}
	for i := range r.SHA256 {
		r.SHA256[i] = next()
	}
	if np := next(); np%5 != 0 {
		r.Pieces = []filters.Piece{}
		for i := 0; i < int(np%16); i++ {
			if next()%3 == 0 {
				d := []byte(str())
				if next()%2 == 0 {
					// Off and Len of a literal are not kept.
					return withLiteralNoise(r, d, num())
				}
				r.Pieces = append(r.Pieces, filters.Piece{Data: d})
				continue
			}
			off := num()
			if r.Size > 0 {
				off %= r.Size + 1
			} else {
				off = 0
			}
			n := num() % (r.Size - off + 1)
			if r.Size-off+1 <= 0 { // Size-off == MaxInt64
				n = num()
			}
			r.Pieces = append(r.Pieces, filters.Piece{Off: off, Len: n})
		}
	}
	r.DeliveredSize = num()
	r.QuarantineID, r.Reason, r.Fingerprint, r.Signatures = str(), str(), str(), str()
	r.Created = time.Unix(num()%(1<<40)-(1<<39), int64(next())).In(time.FixedZone("x", 3600))
	return r
}

func withLiteralNoise(r *memory.Record, d []byte, n int64) *memory.Record {
	r.Pieces = append(r.Pieces, filters.Piece{Off: n, Len: -n, Data: d})
	return r
}

func TestKeyHash(t *testing.T) {
	a := memory.Key{Upstream: "u", Mailbox: "ab", UIDL: "c"}
	b := memory.Key{Upstream: "u", Mailbox: "a", UIDL: "bc"}
	c := memory.Key{Upstream: "u", Mailbox: "a\x00b", UIDL: "c"}
	d := memory.Key{Upstream: "u", Mailbox: "a", UIDL: "b\x00c"}
	// Stores keep records under this name: it never changes within a
	// version of the key prefix or file layout.
	golden := memory.Key{Upstream: "mail.example.org:995", Mailbox: "alice", UIDL: "00000001a1b2c3d4"}.Hash()
	if got := hex.EncodeToString(golden[:]); got != "3675df0eb7e1753b7875553a9304676f" {
		t.Fatalf("Hash changed: %s", got)
	}
	seen := map[[memory.HashSize]byte]memory.Key{}
	for _, k := range []memory.Key{a, b, c, d, {}, {UIDL: "u"}, {Upstream: "u"}} {
		h := k.Hash()
		if o, dup := seen[h]; dup {
			t.Fatalf("%q and %q hash alike", k, o)
		}
		seen[h] = k
		if k.Hash() != h {
			t.Fatal("Hash is not stable")
		}
	}
}

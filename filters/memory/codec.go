package memory

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/popgate/popgate/filters"
)

// The stored form of a Record (Encode, Decode), version 1. Every store
// keeps this and nothing else, so a record written by one popgate is read by
// another (a shared redis) and a format change is a new version byte:
//
//	version        byte (1)
//	Size           uvarint
//	ListSize       zigzag varint, ListSize minus Size
//	SHA256         32 bytes
//	Outcome        byte (1 Deliver, 2 Notice, 3 Refuse)
//	pieces         uvarint: 0 when Pieces is nil, else 1 + the number of pieces, then each:
//	  tag 0 (a run of the original): zigzag varint Off minus the end of the previous run of
//	                                 the original (0 at first), uvarint Len
//	  tag 1 (literal):               uvarint length, the bytes
//	DeliveredSize  zigzag varint, DeliveredSize minus its usual value: filters.PiecesSize of
//	               the pieces, else 0 for Refuse, else Size (wrapping int64 arithmetic)
//	QuarantineID, Reason, Fingerprint, Signatures: each uvarint length, the bytes
//	Created        zigzag varint, unix seconds minus createdEpoch (sub-second precision is
//	               not kept; Decode gives the time in UTC)
//
// The encoding is canonical: Decode accepts only what Encode writes (no
// overlong varints, no trailing bytes, known tags and outcomes), so a record
// has one stored form. A literal piece keeps only its Data (Off and Len mean
// nothing for it).
const formatVersion = 1

// createdEpoch (2025-01-01 UTC, in unix seconds) makes Created a 4-byte
// varint for years to come.
const createdEpoch = 1735689600

// usualDelivered is what DeliveredSize is for most records, so that it is
// stored as a difference of (mostly) zero.
func usualDelivered(r *Record) int64 {
	switch {
	case r.Pieces != nil:
		return filters.PiecesSize(r.Pieces)
	case r.Outcome == Refuse:
		return 0
	default:
		return r.Size
	}
}

// Bounds Decode (and Validate) enforce, whatever the input claims.
const (
	// MaxPieces is the most pieces a record may hold.
	MaxPieces = 10000
	// MaxLiteralBytes is the most bytes all literal pieces of a record may
	// hold together.
	MaxLiteralBytes = 1 << 20
)

const (
	tagOriginal = 0
	tagLiteral  = 1
)

// ErrMalformed is wrapped by every error of Decode about its input.
var ErrMalformed = errors.New("memory: malformed record")

// Validate reports whether r can be stored and read back: sizes not
// negative, a known Outcome, at most MaxPieces pieces and MaxLiteralBytes
// literal bytes, and every run of the original (a piece with nil Data)
// within the original (0 <= Off, 0 <= Len, Off+Len <= Size). Decode checks
// the same of what it reads; stores refuse to Put a record that fails it.
func (r *Record) Validate() error {
	if r == nil {
		return errors.New("memory: nil record")
	}
	if r.ListSize < 0 || r.Size < 0 || r.DeliveredSize < 0 {
		return fmt.Errorf("memory: negative size (list %d, size %d, delivered %d)", r.ListSize, r.Size, r.DeliveredSize)
	}
	if r.Outcome < Deliver || r.Outcome > Refuse {
		return fmt.Errorf("memory: unknown outcome %d", r.Outcome)
	}
	if len(r.Pieces) > MaxPieces {
		return fmt.Errorf("memory: %d pieces (at most %d)", len(r.Pieces), MaxPieces)
	}
	var lit int
	for i, p := range r.Pieces {
		if p.Data != nil {
			lit += len(p.Data)
			if lit > MaxLiteralBytes {
				return fmt.Errorf("memory: more than %d literal bytes", MaxLiteralBytes)
			}
			continue
		}
		if p.Off < 0 || p.Len < 0 || p.Off > r.Size || p.Len > r.Size-p.Off {
			return fmt.Errorf("memory: piece %d (off %d, len %d) outside the original (size %d)", i, p.Off, p.Len, r.Size)
		}
	}
	return nil
}

// Encode returns r's stored form. It does not check r: a record that fails
// Validate is encoded as given and Decode then refuses it.
func Encode(r *Record) []byte {
	n := 1 + 3*binary.MaxVarintLen64 + 32 + 1 + binary.MaxVarintLen64 + 4*binary.MaxVarintLen64 +
		len(r.QuarantineID) + len(r.Reason) + len(r.Fingerprint) + len(r.Signatures) + binary.MaxVarintLen64
	for _, p := range r.Pieces {
		n += 1 + 2*binary.MaxVarintLen64 + len(p.Data)
	}
	b := make([]byte, 0, n)
	b = append(b, formatVersion)
	b = binary.AppendUvarint(b, uint64(r.Size))
	b = binary.AppendVarint(b, r.ListSize-r.Size)
	b = append(b, r.SHA256[:]...)
	b = append(b, byte(r.Outcome))
	if r.Pieces == nil {
		b = append(b, 0)
	} else {
		b = binary.AppendUvarint(b, uint64(len(r.Pieces))+1)
		var end int64 // where the previous run of the original ended
		for _, p := range r.Pieces {
			if p.Data != nil {
				b = append(b, tagLiteral)
				b = binary.AppendUvarint(b, uint64(len(p.Data)))
				b = append(b, p.Data...)
				continue
			}
			b = append(b, tagOriginal)
			b = binary.AppendVarint(b, p.Off-end)
			b = binary.AppendUvarint(b, uint64(p.Len))
			end = p.Off + p.Len
		}
	}
	b = binary.AppendVarint(b, r.DeliveredSize-usualDelivered(r))
	for _, s := range [...]string{r.QuarantineID, r.Reason, r.Fingerprint, r.Signatures} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendVarint(b, r.Created.Unix()-createdEpoch)
	return b
}

// decoder reads b front to back; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, a ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
	}
}

func (d *decoder) byte1(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail("%s: truncated", what)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("%s: truncated or overlong varint", what)
		return 0
	}
	// Canonical: the shortest form only (0x80 0x00 is not a way to write 0).
	if n != uvarintLen(v) {
		d.fail("%s: non-minimal varint", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// size reads a uvarint that must fit an int64.
func (d *decoder) size(what string) int64 {
	v := d.uvarint(what)
	if v > math.MaxInt64 {
		d.fail("%s: %d out of range", what, v)
		return 0
	}
	return int64(v)
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("%s: truncated or overlong varint", what)
		return 0
	}
	if n != uvarintLen(uint64(v<<1)^uint64(v>>63)) {
		d.fail("%s: non-minimal varint", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes reads a length-prefixed run; the length is bounded by what is left.
func (d *decoder) bytes(what string) []byte {
	n := d.uvarint(what + " length")
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("%s: length %d, %d bytes left", what, n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// Decode parses a stored form written by Encode. Any input that is not
// exactly such a form (truncated, trailing bytes, an unknown version, tag or
// outcome, a non-minimal varint, a count or length beyond what is left or
// beyond MaxPieces and MaxLiteralBytes, a run outside the original) is an
// error wrapping ErrMalformed; Decode never panics and allocates no more
// than about the size of its input. The record owns its memory (b may be
// reused afterwards).
func Decode(b []byte) (*Record, error) {
	d := &decoder{b: b}
	if v := d.byte1("version"); d.err == nil && v != formatVersion {
		return nil, fmt.Errorf("%w: version %d (this popgate reads %d)", ErrMalformed, v, formatVersion)
	}
	r := &Record{}
	r.Size = d.size("size")
	r.ListSize = r.Size + d.varint("list size")
	if d.err == nil && r.ListSize < 0 {
		d.fail("list size %d", r.ListSize)
	}
	if d.err == nil {
		if len(d.b) < 32 {
			d.fail("sha256: truncated")
		} else {
			copy(r.SHA256[:], d.b[:32])
			d.b = d.b[32:]
		}
	}
	r.Outcome = Outcome(d.byte1("outcome"))
	if d.err == nil && (r.Outcome < Deliver || r.Outcome > Refuse) {
		d.fail("unknown outcome %d", r.Outcome)
	}
	if np := d.uvarint("piece count"); d.err == nil && np > 0 {
		np--
		// Every piece takes at least 2 bytes: a count beyond half of what
		// is left is a lie, whatever MaxPieces allows.
		if np > MaxPieces || np > uint64(len(d.b))/2 {
			d.fail("%d pieces (at most %d, %d bytes left)", np, MaxPieces, len(d.b))
		} else {
			r.Pieces = make([]filters.Piece, 0, np)
			var end int64
			lit := 0
			for i := uint64(0); i < np && d.err == nil; i++ {
				switch tag := d.byte1("piece tag"); {
				case d.err != nil:
				case tag == tagLiteral:
					data := d.bytes("literal")
					if d.err != nil {
						break
					}
					lit += len(data)
					if lit > MaxLiteralBytes {
						d.fail("more than %d literal bytes", MaxLiteralBytes)
						break
					}
					r.Pieces = append(r.Pieces, filters.Piece{Data: append([]byte{}, data...)})
				case tag == tagOriginal:
					delta := d.varint("piece offset")
					n := d.size("piece length")
					if d.err != nil {
						break
					}
					// end is within [0, Size]: no overflow below.
					if (delta > 0 && delta > r.Size-end) || (delta < 0 && delta < -end) {
						d.fail("piece %d starts outside the original (size %d)", i, r.Size)
						break
					}
					off := end + delta
					if n > r.Size-off {
						d.fail("piece %d (off %d, len %d) ends outside the original (size %d)", i, off, n, r.Size)
						break
					}
					r.Pieces = append(r.Pieces, filters.Piece{Off: off, Len: n})
					end = off + n
				default:
					d.fail("unknown piece tag %d", tag)
				}
			}
		}
	}
	if r.DeliveredSize = usualDelivered(r) + d.varint("delivered size"); d.err == nil && r.DeliveredSize < 0 {
		d.fail("delivered size %d", r.DeliveredSize)
	}
	r.QuarantineID = string(d.bytes("quarantine id"))
	r.Reason = string(d.bytes("reason"))
	r.Fingerprint = string(d.bytes("fingerprint"))
	r.Signatures = string(d.bytes("signatures"))
	created := d.varint("created")
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	// In UTC; the zero Time's seconds give the zero Time back.
	r.Created = time.Unix(created+createdEpoch, 0).UTC()
	return r, nil
}

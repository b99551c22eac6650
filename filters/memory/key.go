package memory

import (
	"crypto/sha256"
	"encoding/binary"
)

// HashSize is the size of a Key's Hash.
const HashSize = 16

// Hash is the fixed-size name stores keep a record under: SHA-256 of the
// upstream, the mailbox and the UIDL, truncated to 16 bytes. Each field is
// prefixed with its length (rather than separated by NUL), so no two keys
// share an input, whatever bytes a login name holds. 128 bits make a
// collision between two of a store's keys practically impossible; and a
// record found is used only for a message of the same size and SHA-256.
func (k Key) Hash() [HashSize]byte {
	var buf [256]byte
	b := buf[:0]
	for _, f := range [...]string{k.Upstream, k.Mailbox, k.UIDL} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	sum := sha256.Sum256(b)
	return [HashSize]byte(sum[:HashSize])
}

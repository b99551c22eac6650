package quarantine

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"time"
)

// ErrInvalidID is returned for an id that is not one Store makes (anything
// that could name another file: "..", slashes, …).
var ErrInvalidID = errors.New("quarantine: invalid id")

// ErrNotFound is returned for a well-formed id that is not in the store.
var ErrNotFound = errors.New("quarantine: no such id")

// idTimeLayout is the time part of an id: UTC, microseconds, sortable.
const idTimeLayout = "20060102T150405.000000Z"

const idRandLen = 10 // base32 characters: 50 random bits

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newID returns a new id for time t, like 20261125T103000.123456Z-k3j4h5g6f7:
// ids sort by time as strings, and the random part makes them unique.
func newID(t time.Time) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("quarantine: id: %w", err)
	}
	return t.UTC().Format(idTimeLayout) + "-" + idEncoding.EncodeToString(b[:])[:idRandLen], nil
}

// validID reports whether id has the form of the ids Store makes. Only such
// ids are ever turned into file names.
func validID(id string) bool {
	const n = len(idTimeLayout) + 1 + idRandLen
	if len(id) != n || id[len(idTimeLayout)] != '-' {
		return false
	}
	for i := 0; i < len(idTimeLayout); i++ {
		c, l := id[i], idTimeLayout[i]
		switch {
		case l >= '0' && l <= '9':
			if c < '0' || c > '9' {
				return false
			}
		case c != l: // the literal 'T', '.', 'Z'
			return false
		}
	}
	if _, err := time.Parse(idTimeLayout, id[:len(idTimeLayout)]); err != nil {
		return false
	}
	for i := len(idTimeLayout) + 1; i < n; i++ {
		if c := id[i]; !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

func checkID(id string) error {
	if !validID(id) {
		return fmt.Errorf("%w %s", ErrInvalidID, trimID(id))
	}
	return nil
}

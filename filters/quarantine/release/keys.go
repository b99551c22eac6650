package release

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// MinKeyLen is the shortest release key accepted, in bytes.
const MinKeyLen = 32

// Keys are the secrets derived from the configuration's release key: one
// for the marks on released copies, one for release links, so that a value
// signed for one use is never valid for the other.
type Keys struct {
	mark, link []byte
}

// NewKeys derives Keys from a release key of at least MinKeyLen bytes.
func NewKeys(key []byte) (Keys, error) {
	if len(key) < MinKeyLen {
		return Keys{}, fmt.Errorf("release key: %d bytes, want at least %d", len(key), MinKeyLen)
	}
	derive := func(use string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte("popgate release key v1\x00" + use))
		return m.Sum(nil)
	}
	return Keys{mark: derive("mark"), link: derive("link")}, nil
}

// LoadKeys reads a release key file (its bytes, without a trailing newline)
// and derives Keys from it.
func LoadKeys(path string) (Keys, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Keys{}, fmt.Errorf("release key: %w", err)
	}
	return NewKeys(bytes.TrimRight(b, "\r\n"))
}

// LoadOrCreateKeys is LoadKeys, but first creates the key file with a new
// random key when it does not exist (mode 0600). Instances sharing a
// quarantine directory share its default key file: the file appears
// atomically (written aside, then linked into place, which fails when
// another instance was first), so they all end up with the same key.
func LoadOrCreateKeys(path string) (Keys, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := createKey(path); err != nil {
			return Keys{}, fmt.Errorf("release key: %w", err)
		}
	}
	return LoadKeys(path)
}

func createKey(path string) error {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".release-key-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.WriteString(hex.EncodeToString(key[:]) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// Valid reports whether k holds keys (the zero Keys do not).
func (k Keys) Valid() bool { return len(k.mark) > 0 }

// linkMACLen is the truncated MAC of a link: 128 bits.
const linkMACLen = 16

var linkEncoding = base64.RawURLEncoding

// Errors of ParseLink. Their text is safe to show to the user.
var (
	ErrLinkInvalid = errors.New("this release link is not valid")
	ErrLinkExpired = errors.New("this release link has expired")
)

// Link returns the token of a release link for quarantine id, valid until
// expires: the id, the expiry and a MAC over both, URL-safe.
func (k Keys) Link(id string, expires time.Time) string {
	b := make([]byte, 8, 8+len(id)+linkMACLen)
	binary.BigEndian.PutUint64(b, uint64(expires.Unix()))
	b = append(b, id...)
	return linkEncoding.EncodeToString(append(b, k.linkMAC(b)...))
}

// ParseLink checks a link token and returns the quarantine id it names and
// its expiry. An altered token is ErrLinkInvalid, an expired one (at now)
// ErrLinkExpired.
func (k Keys) ParseLink(token string, now time.Time) (id string, expires time.Time, err error) {
	if !k.Valid() || len(token) > 256 {
		return "", time.Time{}, ErrLinkInvalid
	}
	b, err := linkEncoding.DecodeString(token)
	if err != nil || len(b) < 8+1+linkMACLen {
		return "", time.Time{}, ErrLinkInvalid
	}
	body, mac := b[:len(b)-linkMACLen], b[len(b)-linkMACLen:]
	if !hmac.Equal(mac, k.linkMAC(body)) {
		return "", time.Time{}, ErrLinkInvalid
	}
	expires = time.Unix(int64(binary.BigEndian.Uint64(body)), 0)
	if !now.Before(expires) {
		return "", expires, ErrLinkExpired
	}
	return string(body[8:]), expires, nil
}

func (k Keys) linkMAC(b []byte) []byte {
	m := hmac.New(sha256.New, k.link)
	m.Write(b)
	return m.Sum(nil)[:linkMACLen]
}

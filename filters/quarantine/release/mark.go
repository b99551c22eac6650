package release

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

// MarkField is the header field a released copy carries on top of the
// original.
const MarkField = "X-Popgate-Released"

// maxMarkHeader bounds how much of a message's header Recognize reads
// looking for the mark.
const maxMarkHeader = 256 << 10

var markEncoding = base64.RawURLEncoding

// Mark returns the header field (with CRLF) that goes on top of original
// quarantine id when it is released for login: it names the id and the
// filters that held it, and carries a MAC over those, the login and the
// SHA-256 of the original, which follows the field byte for byte.
//
// Why it cannot be forged: the MAC's key never leaves popgate (the release
// key), so a sender can copy a mark but not make one; a copied mark over
// any other content, or for another login, fails the check, since the MAC
// covers the exact bytes below it. Whatever a delivery adds above the mark
// (Return-Path, Received, Delivered-To) is outside what it covers.
func (k Keys) Mark(id string, held []string, login string, original [sha256.Size]byte) string {
	filtersList := strings.Join(held, ",")
	return fmt.Sprintf("%s: id=%s; filters=%s; mac=%s\r\n", MarkField, id, filtersList,
		markEncoding.EncodeToString(k.markMAC(id, filtersList, login, original)))
}

func (k Keys) markMAC(id, filtersList, login string, original [sha256.Size]byte) []byte {
	m := hmac.New(sha256.New, k.mark)
	fmt.Fprintf(m, "popgate released v1\x00%s\x00%s\x00%s\x00", id, filtersList, strings.ToLower(login))
	m.Write(original[:])
	return m.Sum(nil)
}

// Recognized is a released copy Recognize vouched for.
type Recognized struct {
	ID string
	// Filters held the original; the released copy passes them.
	Filters []string
}

// errNoMark: the message carries no (well-formed) mark on top.
var errNoMark = errors.New("no release mark")

// Recognize looks for the topmost release mark in the header of body and
// checks it for login. It returns (nil, nil) for a message without a mark
// or with one that does not check out (a forgery, another user's copy,
// altered content); an error only when the body cannot be read.
func (k Keys) Recognize(ctx context.Context, body filters.Body, login string) (*Recognized, error) {
	if !k.Valid() {
		return nil, nil
	}
	r, err := body.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	br := markReaders.Get().(*bufio.Reader)
	br.Reset(mailtext.NewReader(ctx, r))
	defer func() { br.Reset(nil); markReaders.Put(br) }()
	value, err := findMark(br)
	if errors.Is(err, errNoMark) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	id, filtersList, mac, ok := parseMark(value)
	if !ok {
		return nil, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, br); err != nil {
		return nil, err
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if !hmac.Equal(mac, k.markMAC(id, filtersList, login, sum)) {
		return nil, nil
	}
	return &Recognized{ID: id, Filters: strings.Split(filtersList, ",")}, nil
}

// markReaders are Recognize's header readers: every filtered message is
// looked at for a mark.
var markReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// findMark reads header fields from br until the mark field, which it
// consumes whole (its value is returned), leaving br at the first byte
// after it. errNoMark when the header ends first, is too long, or the
// mark is folded (Mark never folds it).
func findMark(br *bufio.Reader) (string, error) {
	read := 0
	for read < maxMarkHeader {
		line, err := br.ReadSlice('\n')
		read += len(line)
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer is no mark of ours; skip it.
			for errors.Is(err, bufio.ErrBufferFull) && read < maxMarkHeader {
				line, err = br.ReadSlice('\n')
				read += len(line)
			}
			if err != nil {
				return "", nonEOF(err)
			}
			continue
		}
		if err != nil {
			return "", nonEOF(err)
		}
		text := bytes.TrimRight(line, "\r\n")
		if len(text) == 0 {
			return "", errNoMark // end of the header
		}
		name, value, ok := bytes.Cut(text, []byte(":"))
		if !ok || !bytes.EqualFold(name, []byte(MarkField)) {
			continue
		}
		if next, _ := br.Peek(1); len(next) == 1 && (next[0] == ' ' || next[0] == '\t') {
			return "", errNoMark
		}
		return string(bytes.TrimSpace(value)), nil
	}
	return "", errNoMark
}

func nonEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return errNoMark
	}
	return err
}

// parseMark splits "id=ID; filters=A,B; mac=MAC".
func parseMark(v string) (id, filtersList string, mac []byte, ok bool) {
	parts := strings.Split(v, ";")
	if len(parts) != 3 {
		return "", "", nil, false
	}
	var vals [3]string
	for i, key := range []string{"id", "filters", "mac"} {
		k, val, found := strings.Cut(strings.TrimSpace(parts[i]), "=")
		if !found || k != key || val == "" {
			return "", "", nil, false
		}
		vals[i] = val
	}
	mac, err := markEncoding.DecodeString(vals[2])
	if err != nil || len(mac) != sha256.Size {
		return "", "", nil, false
	}
	return vals[0], vals[1], mac, true
}

// Released makes Keys a filters.Recognizer for a chain: a released copy in
// the mailbox of env.User passes the filters its mark names.
func (k Keys) Released(ctx context.Context, env *filters.Envelope, in filters.Body) (string, []string, error) {
	login := ""
	if env != nil {
		login = env.User
	}
	r, err := k.Recognize(ctx, in, login)
	if r == nil || err != nil {
		return "", nil, err
	}
	return r.ID, r.Filters, nil
}

var _ filters.Recognizer = Keys{}

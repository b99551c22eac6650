package mailtext

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"net/mail"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message/charset"
)

// maxExpansion bounds a charset conversion: its UTF-8 output may have at
// most maxExpansion times the input's bytes, plus maxExpansionSlack. No
// real charset comes near (a single-byte charset makes at most three bytes
// of one); the bound is there so that a broken decoder cannot run away.
const (
	maxExpansion      = 8
	maxExpansionSlack = 16
)

var errConversion = errors.New("mailtext: charset conversion failed")

// convert converts b from charset cs to UTF-8 with the charsets go-message
// knows; an unknown charset, a failing conversion, output that is not
// valid UTF-8 or that is over the expansion bound is an error.
func convert(cs string, b []byte) (string, error) {
	switch strings.ToLower(strings.TrimSpace(cs)) {
	case "utf-8", "utf8", "us-ascii", "ascii":
		return string(b), nil
	}
	r, err := charset.Reader(cs, bytes.NewReader(b))
	if err != nil {
		return "", err
	}
	limit := int64(maxExpansion*len(b) + maxExpansionSlack)
	out, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil || int64(len(out)) > limit || !utf8.Valid(out) {
		return "", errConversion
	}
	return string(out), nil
}

// ToUTF8 converts b from charset cs to UTF-8 (RFC 2231 parameter values,
// say). An empty, unknown or failing charset, and ASCII input, leave the
// bytes as they are: the result is untrusted text, possibly not valid
// UTF-8, to be matched or passed through [Text] or [Visible].
func ToUTF8(cs string, b []byte) string {
	if strings.TrimSpace(cs) == "" || isASCII(b) {
		return string(b)
	}
	s, err := convert(cs, b)
	if err != nil {
		return string(b)
	}
	return s
}

func isASCII[T ~string | ~[]byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// wordDecoder decodes RFC 2047 encoded words in any charset go-message
// knows, each word's conversion bounded as in ToUTF8. It is never changed
// after initialisation, so sharing it is safe.
var wordDecoder = &mime.WordDecoder{CharsetReader: func(cs string, r io.Reader) (io.Reader, error) {
	b, err := io.ReadAll(r) // one word's decoded bytes: shorter than the word
	if err != nil {
		return nil, err
	}
	s, err := convert(cs, b)
	if err != nil {
		return nil, err
	}
	return strings.NewReader(s), nil
}}

// DecodeWords decodes the RFC 2047 encoded words of a header value (and of
// parameter values, where clients put them although the RFC does not allow
// it). Text without "=?" is returned as it is, without work; text whose
// words cannot be decoded (an unknown charset, a failing conversion) is
// returned as it is, as a client would show it.
//
// The result is untrusted text: encoded words may decode to anything, CR,
// LF, NUL, escape sequences and bidi overrides included, and the text
// outside them may be invalid UTF-8. Pass it through [Text], [Visible] or
// [HeaderText] before it goes anywhere.
func DecodeWords(s string) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	d, err := wordDecoder.DecodeHeader(s)
	if err != nil {
		return s
	}
	return d
}

// addressParser parses address lists decoding encoded words as DecodeWords.
var addressParser = &mail.AddressParser{WordDecoder: wordDecoder}

// ParseAddressList parses an RFC 5322 address list, decoding the encoded
// words of display names as [DecodeWords] does. The names and addresses
// are untrusted text, to be cleaned like DecodeWords' result.
func ParseAddressList(s string) ([]*mail.Address, error) {
	return addressParser.ParseList(s)
}

// EncodeWords returns s as it may stand in an unstructured header value,
// the one rule for non-ASCII text in a header field: s itself when it is
// printable ASCII (tabs allowed) that cannot be mistaken for an encoded
// word; else RFC 2047 encoded words in utf-8, Q or B, whichever is shorter.
// Printable ASCII with "=?" in it is encoded too (in B words), so that text
// from a message, a file name say, cannot smuggle its own encoded words,
// which a reader would decode, into a header popgate writes.
//
// EncodeWords does not clean s: pass untrusted text through [Text] first,
// so that what a reader decodes has no control or invisible characters.
func EncodeWords(s string) string {
	plain := true
	for i := 0; plain && i < len(s); i++ {
		if c := s[i]; (c < ' ' || c > '~') && c != '\t' {
			plain = false
		}
	}
	if plain && !strings.Contains(s, "=?") {
		return s
	}
	if plain {
		// mime's encoders leave printable ASCII as it is: encode it here,
		// in B words of at most 45 bytes (60 encoded, 72 with the frame).
		var words []string
		for s != "" {
			n := min(45, len(s))
			words = append(words, "=?utf-8?b?"+base64.StdEncoding.EncodeToString([]byte(s[:n]))+"?=")
			s = s[n:]
		}
		return strings.Join(words, " ")
	}
	q := mime.QEncoding.Encode("utf-8", s)
	b := mime.BEncoding.Encode("utf-8", s)
	if len(b) < len(q) {
		return b
	}
	return q
}

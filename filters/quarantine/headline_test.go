package quarantine

import (
	"context"
	"errors"
	"testing"

	"github.com/popgate/popgate/filters"
)

func TestHeadline(t *testing.T) {
	s := openStore(t)
	msg := "From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\n" +
		"Subject: =?utf-8?b?UmVjaG51bmc=?=\r\n  \u202eexe.pdf\r\n" +
		"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n\r\nbody\r\n"
	id, err := s.Store(context.Background(), nil, filters.BytesBody([]byte(msg)), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Headline(id)
	if err != nil {
		t.Fatal(err)
	}
	// Decoded; the bidi override is not passed on.
	want := Headline{From: "Jürgen <j@example.org>", Subject: "Rechnung exe.pdf", Date: "Mon, 02 Jan 2006 15:04:05 +0000"}
	if got != want {
		t.Errorf("Headline = %+v, want %+v", got, want)
	}
	if _, err := s.Headline("20060102T150405.000000Z-abcdefghij"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing id: %v, want ErrNotFound", err)
	}
	if _, err := s.Headline("../meta/x"); !errors.Is(err, ErrInvalidID) {
		t.Errorf("bad id: %v, want ErrInvalidID", err)
	}
}

package main

import (
	"bytes"
	"slices"
	"testing"
)

// The realistic mix is the ordinary messages with one corpus message after
// every mixEvery, in order.
func TestRealisticMix(t *testing.T) {
	corpus := [][]byte{[]byte("c1\r\n"), []byte("c2\r\n"), []byte("c3\r\n")}
	mix := realisticMix(corpus)
	if len(mix) != (mixEvery+1)*len(corpus) {
		t.Fatalf("%d messages, want %d", len(mix), (mixEvery+1)*len(corpus))
	}
	ordinary := 0
	for i, m := range mix {
		if i%(mixEvery+1) == mixEvery {
			if c := corpus[i/(mixEvery+1)]; !bytes.Equal(m, c) {
				t.Errorf("message %d is %q, want corpus message %q", i+1, m, c)
			}
			continue
		}
		ordinary++
		if want := makeSpamMixMessage(ordinary); !bytes.Equal(m, want) {
			t.Errorf("message %d is not ordinary message %d", i+1, ordinary)
		}
	}
	mi := newMixInfo(mix, corpus)
	if mi.messages != len(mix) || mi.corpus != len(corpus) || mi.corpusMax != 4 || mi.min > mi.max || mi.min < 100 {
		t.Errorf("mixInfo %+v", *mi)
	}
}

// mixSpec's check takes the tag header and the original, or a stripped
// message with strip's notice (counted, and which one), and nothing else.
func TestMixSpecCheck(t *testing.T) {
	msgs := [][]byte{makeSpamMixMessage(1), []byte("Subject: exe\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhi\r\n--b--\r\n")}
	sp, err := mixSpec(t.TempDir(), msgs)
	if err != nil {
		t.Fatal(err)
	}
	stripped := slices.Concat(tagPrefix, []byte("Subject: exe\r\nContent-Type: text/plain\r\n\r\npopgate removed an attachment from this message.\r\n"))
	for _, c := range []struct {
		k    int
		body []byte
		ok   bool
	}{
		{0, slices.Concat(tagPrefix, msgs[0]), true},
		{0, slices.Concat([]byte("X-Popgate-Warning: x\r\n"), tagPrefix, msgs[0]), true},
		{0, msgs[0], false},
		{0, slices.Concat(tagPrefix, msgs[0][1:]), false},
		{1, stripped, true},
		{1, stripped, true},
	} {
		if err := sp.through(c.k, c.body); (err == nil) != c.ok {
			t.Errorf("message %d, %.40q…: err %v, want ok %v", c.k+1, c.body, err, c.ok)
		}
	}
	if n, d := sp.counted.Load(), sp.distinct(); n != 2 || d != 1 {
		t.Errorf("counted %d, distinct %d; want 2, 1", n, d)
	}
}

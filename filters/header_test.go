package filters

import (
	"io"
	"testing"
)

func TestPrependHeader(t *testing.T) {
	const orig = "Subject: hi\r\n\r\nbody\r\n"
	tests := []struct {
		name, field, want string
	}{
		{"one field", "X-A: 1", "X-A: 1\r\n" + orig},
		{"two fields with CRLF", "X-A: 1\r\nX-B: 2", "X-A: 1\r\nX-B: 2\r\n" + orig},
		{"LF becomes CRLF", "X-A: 1\nX-B: 2", "X-A: 1\r\nX-B: 2\r\n" + orig},
		{"bare CR becomes CRLF", "X-A: 1\rX-B: 2", "X-A: 1\r\nX-B: 2\r\n" + orig},
		{"folded field", "X-A: one\r\n two", "X-A: one\r\n two\r\n" + orig},
		{"trailing CRLF is not doubled", "X-A: 1\r\n", "X-A: 1\r\n" + orig},
		{"empty line cannot end the header", "X-A: 1\r\n\r\nX-B: 2", "X-A: 1\r\nX-B: 2\r\n" + orig},
		{"empty field adds nothing", "", orig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &tbody{data: []byte(orig)}
			b := PrependHeader(in, tt.field)
			if got := string(readBody(t, b)); got != tt.want {
				t.Errorf("content %q, want %q", got, tt.want)
			}
			if b.Size() != int64(len(tt.want)) {
				t.Errorf("Size = %d, want %d", b.Size(), len(tt.want))
			}
			if err := b.Remove(); err != nil {
				t.Fatal(err)
			}
			if in.Removes() != 0 {
				t.Errorf("removing the wrapper removed the wrapped body")
			}
			if _, err := b.Open(); err == nil {
				t.Errorf("Open after Remove succeeded")
			}
			if got := string(readBody(t, in)); got != orig {
				t.Errorf("wrapped body now reads %q", got)
			}
		})
	}
}

func TestPrependHeaderReaderCloseAndErrors(t *testing.T) {
	in := &tbody{data: []byte("body")}
	b := PrependHeader(in, "X-A: 1")
	r, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	if in.OpenReaders() != 1 {
		t.Fatalf("open readers of the wrapped body = %d, want 1", in.OpenReaders())
	}
	r.Close()
	if in.OpenReaders() != 0 {
		t.Errorf("closing the wrapper's reader left the wrapped reader open")
	}
	in.Remove()
	if _, err := b.Open(); err == nil {
		t.Errorf("Open succeeded over a removed body")
	}
}

func TestPrependHeaderOverSpoolFile(t *testing.T) {
	dir := t.TempDir()
	w := (&Spool{Dir: dir, MemoryLimit: -1}).NewWriter()
	io.WriteString(w, "Subject: x\r\n\r\nbody")
	in, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	b := PrependHeader(in, "X-A: 1")
	b.Remove()
	if len(dirNames(t, dir)) != 1 {
		t.Fatalf("wrapper Remove deleted the wrapped spool file")
	}
	in.Remove()
	assertDirEmpty(t, dir)
}

package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
)

// BenchmarkRelayRETR measures the pass-through relay of one RETR of a
// 100 KB message over real loopback sockets: client → popgate → a server
// that answers from memory. Client and server allocate nothing per RETR, so
// the allocations reported are the relay's; a CPU profile (-cpuprofile)
// shows the relay's cycles next to the kernel's.
func BenchmarkRelayRETR(b *testing.B) {
	resp := relayBenchResponse(100000)
	addr := startMemoryUpstream(b, resp)
	_, paddr, _ := startProxy(b, addr, nil)
	c := dialClient(b, paddr)
	c.line() // greeting
	c.login("u", "p")
	cmd := []byte("RETR 1\r\n")
	b.SetBytes(int64(len(resp)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.conn.Write(cmd); err != nil {
			b.Fatal(err)
		}
		if n := readResponse(b, c.r); n != len(resp) {
			b.Fatalf("response of %d bytes, want %d", n, len(resp))
		}
	}
}

// relayBenchResponse is a RETR response as a server sends it: status line,
// dot-stuffed text, a base64 attachment, terminator; size bytes in all.
func relayBenchResponse(size int) []byte {
	var b bytes.Buffer
	b.WriteString("+OK message follows\r\nFrom: a@example.com\r\nTo: b@example.net\r\nSubject: report\r\n")
	b.WriteString("Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n")
	for i := range 40 {
		b.WriteString("The quick brown fox jumps over the lazy dog. Numbers: 3.14159, 2.71828.\r\n")
		if i%10 == 0 {
			b.WriteString(".. a line that was dot-stuffed\r\n")
		}
	}
	b.WriteString("--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	const line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
	for b.Len() < size-len(line)-13 {
		b.WriteString(line)
	}
	b.WriteString(strings.Repeat("A", size-b.Len()-13) + "\r\n--b1--\r\n.\r\n")
	return b.Bytes()
}

// readResponse reads one multi-line response to its terminator and returns
// its length, without allocating.
func readResponse(tb testing.TB, r *bufio.Reader) int {
	n := 0
	for {
		line, err := r.ReadSlice('\n')
		n += len(line)
		if err != nil {
			tb.Fatalf("after %d bytes: %v", n, err)
		}
		if len(line) == 3 && line[0] == '.' {
			return n
		}
	}
}

var okLine = []byte("+OK\r\n")

// startMemoryUpstream runs a minimal POP3 server: any USER and PASS is
// accepted, and every RETR gets resp.
func startMemoryUpstream(tb testing.TB, resp []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = io.WriteString(conn, "+OK ready\r\n")
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadSlice('\n')
					if err != nil {
						return
					}
					out := okLine
					switch {
					case bytes.HasPrefix(line, []byte("RETR")):
						out = resp
					case bytes.HasPrefix(line, []byte("QUIT")):
						_, _ = conn.Write(out)
						return
					}
					if _, err := conn.Write(out); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

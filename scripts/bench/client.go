package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"time"
)

// pop3Client is a minimal POP3 client for the benchmark: one bufio.Reader
// over the connection (TCP_NODELAY is Go's default), commands written in one
// write each, multi-line responses scanned chunk by chunk.
type pop3Client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	body []byte // the last RETR body, dot-unstuffed
}

const sessionDeadline = 10 * time.Minute // a hung server fails the run instead of hanging it

func dialPOP3(ctx context.Context, addr string) (*pop3Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(sessionDeadline))
	c := &pop3Client{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), w: bufio.NewWriterSize(conn, 512)}
	if _, err := c.status(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	return c, nil
}

func (c *pop3Client) close() error { return c.conn.Close() }

// status reads one status line and requires +OK.
func (c *pop3Client) status() ([]byte, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(line, []byte("+OK")) {
		return nil, fmt.Errorf("server said %q", bytes.TrimRight(line, "\r\n"))
	}
	return line, nil
}

// command sends one command line and reads its status line.
func (c *pop3Client) command(format string, args ...any) error {
	fmt.Fprintf(c.w, format, args...)
	c.w.WriteString("\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	_, err := c.status()
	return err
}

// retr downloads message n into c.body and returns the time from writing the
// command to reading the terminator.
func (c *pop3Client) retr(n int) (time.Duration, error) {
	c.w.WriteString("RETR ")
	c.w.WriteString(strconv.Itoa(n))
	c.w.WriteString("\r\n")
	start := time.Now()
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	if _, err := c.status(); err != nil {
		return 0, fmt.Errorf("RETR %d: %w", n, err)
	}
	body, err := readMultiline(c.r, c.body[:0])
	c.body = body
	if err != nil {
		return 0, fmt.Errorf("RETR %d body: %w", n, err)
	}
	return time.Since(start), nil
}

var lineDot = []byte("\n.")

// readMultiline reads the rest of a multi-line response up to and including
// its ".\r\n" terminator, appending the dot-unstuffed data to dst. It works on
// the reader's buffer in chunks and looks only for lines that start with "."
// (base64 has none), so it costs little CPU next to the servers it measures.
func readMultiline(r *bufio.Reader, dst []byte) ([]byte, error) {
	lineStart := true // the first body byte starts a line
	for {
		if r.Buffered() == 0 {
			if _, err := r.Peek(1); err != nil {
				return dst, err
			}
		}
		b, _ := r.Peek(r.Buffered())
		if lineStart && b[0] == '.' {
			p, err := r.Peek(3)
			if len(p) < 3 {
				return dst, err
			}
			if p[1] == '\r' && p[2] == '\n' {
				_, _ = r.Discard(3)
				return dst, nil
			}
			_, _ = r.Discard(1) // a stuffed dot
			lineStart = false
			continue
		}
		n := len(b)
		if i := bytes.Index(b, lineDot); i >= 0 {
			n = i + 1 // up to and including the LF
		}
		dst = append(dst, b[:n]...)
		lineStart = b[n-1] == '\n'
		_, _ = r.Discard(n)
	}
}

// sessionResult is what one client session measured.
type sessionResult struct {
	setup time.Duration   // connect until PASS answered +OK
	retr  []time.Duration // one per RETR
	bytes int64           // message bytes received (dot-unstuffed)
	err   error
}

// runSession logs in as u, downloads messages 1..len(want) checking each
// against want byte for byte, and quits. It never sends DELE.
func runSession(ctx context.Context, addr string, u benchUser, want [][]byte, res *sessionResult) {
	filteredSession(1, want, func(k int, body []byte) error {
		if len(body) != len(want[k]) {
			return fmt.Errorf("got %d bytes, want %d", len(body), len(want[k]))
		}
		if !bytes.Equal(body, want[k]) {
			return fmt.Errorf("%d bytes as expected but the content differs", len(want[k]))
		}
		return nil
	})(ctx, addr, u, res)
}

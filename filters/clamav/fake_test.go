package clamav

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// eicar is the 68-byte EICAR test file.
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// fakeSig is what the fake clamd reports for a stream that holds EICAR.
const fakeSig = "Eicar-Test-Signature"

// fakeMode is how a fake clamd misbehaves. The zero value is a correct
// clamd: PONG to PING; for INSTREAM it reads the whole stream and answers
// "stream: Eicar-Test-Signature FOUND" when it holds EICAR, else "stream: OK".
type fakeMode struct {
	// PING
	pingClose bool          // close the connection without a reply (also for RELOAD)
	pingHang  bool          // never answer
	pingReply string        // answer this instead of PONG
	pingDelay time.Duration // answer after this long
	// INSTREAM
	hangAfterAccept bool          // read nothing, answer nothing
	hangAfter       int64         // > 0: stop reading after this many stream bytes
	closeAfter      int64         // > 0: close the connection after this many stream bytes
	sizeLimit       int64         // > 0: like StreamMaxLength: past it, answer the size-limit ERROR and close
	earlyReply      string        // answer this right after the command (and keep reading)
	reply           string        // answer this (raw, the terminator not added) after the stream
	replyDelay      time.Duration // wait this long before answering
	readRate        int64         // > 0: read at most this many bytes per second
	// In a session (IDSESSION): close the connection after each reply, as
	// a clamd that restarts or times idle sessions out.
	closeAfterReply bool
	// In a session: number the replies wrong (one more than due).
	misnumber bool
	// Answer this after the stream, numbered in a session and terminated.
	answerWith string
	// Answer IDSESSION as an unknown command, as something that only looks
	// like clamd.
	noSessions bool
	onBytes    func(n int64) // called as stream bytes arrive (total so far)
	// then, when set, is the mode of every INSTREAM after the first
	// after ones (counted from the fake's start): a clamd that fails in
	// the middle of a message scanned part by part.
	then  *fakeMode
	after int64
}

// fakeClamd is an in-process clamd on a loopback TCP port or a unix socket,
// with fault injection. Its goroutines end with Close (a test cleanup).
type fakeClamd struct {
	t       testing.TB
	network string
	address string
	url     string

	mode atomic.Pointer[fakeMode]

	mu      sync.Mutex
	ln      net.Listener
	conns   map[net.Conn]struct{}
	release chan struct{} // closed by Close: hung handlers give up
	closed  bool
	wg      sync.WaitGroup

	accepted    atomic.Int64 // connections
	streams     atomic.Int64 // INSTREAM commands
	ended       atomic.Int64 // streams that got their end marker
	pings       atomic.Int64
	sessions    atomic.Int64 // sessions (IDSESSION) that carried a scan
	scanConns   atomic.Int64 // connections that carried a scan
	inflight    atomic.Int64 // INSTREAM sessions in progress
	maxInflight atomic.Int64
	lastStream  atomic.Int64  // bytes of the last stream received
	connClosed  chan struct{} // a stream connection was closed by the client before its end
}

func newFake(t testing.TB, network string) *fakeClamd {
	t.Helper()
	f := &fakeClamd{t: t, network: network, conns: make(map[net.Conn]struct{}), release: make(chan struct{}), connClosed: make(chan struct{}, 100)}
	f.mode.Store(&fakeMode{})
	switch network {
	case "tcp":
		f.address = "127.0.0.1:0"
	case "unix":
		dir, err := os.MkdirTemp("", "pgclam")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		f.address = filepath.Join(dir, "clamd.sock")
	}
	f.start()
	if network == "tcp" {
		f.address = f.ln.Addr().String()
	}
	f.url = network + "://" + f.address
	if network == "unix" {
		f.url = "unix://" + f.address
	}
	t.Cleanup(f.Close)
	return f
}

func (f *fakeClamd) set(m fakeMode) { f.mode.Store(&m) }

func (f *fakeClamd) start() {
	f.t.Helper()
	if f.network == "unix" {
		os.Remove(f.address)
	}
	var ln net.Listener
	var err error
	for range 50 { // a restarted TCP port can be busy for a moment
		if ln, err = net.Listen(f.network, f.address); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		f.t.Fatalf("fake clamd: %v", err)
	}
	f.mu.Lock()
	if f.closed { // a restart raced with Close
		f.mu.Unlock()
		ln.Close()
		return
	}
	f.ln = ln
	f.wg.Add(1)
	f.mu.Unlock()
	go f.serve(ln)
}

// stop closes the listener and every connection, like a clamd that exits.
func (f *fakeClamd) stop() {
	f.mu.Lock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
}

// restart is stop, then a new listener on the same address.
func (f *fakeClamd) restart() {
	f.stop()
	f.start()
}

func (f *fakeClamd) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	close(f.release)
	f.mu.Unlock()
	f.stop()
	f.wg.Wait()
}

func (f *fakeClamd) serve(ln net.Listener) {
	defer f.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			c.Close()
			return
		}
		f.conns[c] = struct{}{}
		f.mu.Unlock()
		f.accepted.Add(1)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() {
				f.mu.Lock()
				delete(f.conns, c)
				f.mu.Unlock()
				c.Close()
			}()
			f.handle(c)
		}()
	}
}

// hang waits until Close.
func (f *fakeClamd) hang() { <-f.release }

// handle serves one connection: one command, or in a session (IDSESSION)
// commands until one fails or the client ends it, each reply numbered.
func (f *fakeClamd) handle(c net.Conn) {
	br := bufio.NewReader(c)
	inSession, sent, first := false, 0, true
	for {
		prefix, err := br.ReadByte()
		if err != nil {
			return
		}
		term := byte(0)
		switch prefix {
		case 'z':
		case 'n':
			term = '\n'
		default:
			c.Write([]byte("UNKNOWN COMMAND\n"))
			return
		}
		cmd, err := br.ReadString(term)
		if err != nil {
			return
		}
		cmd = strings.TrimSuffix(cmd, string(term))
		m := f.mode.Load() // as set when the command came
		if first && cmd == "INSTREAM" {
			f.scanConns.Add(1)
			if inSession {
				f.sessions.Add(1)
			}
		}
		if cmd != "IDSESSION" {
			first = false
		}
		if cmd == "IDSESSION" && m.noSessions {
			c.Write([]byte("UNKNOWN COMMAND\n"))
			return
		}
		if cmd == "IDSESSION" && !inSession {
			inSession = true
			continue
		}
		if cmd == "END" && inSession {
			return
		}
		sent++
		answer := func(s string) { c.Write(append([]byte(s), term)) }
		if inSession {
			n := sent
			if m.misnumber {
				n++
			}
			answer = func(s string) { c.Write(append([]byte(strconv.Itoa(n)+": "+s), term)) }
		}
		if !f.command(c, br, m, cmd, answer, inSession) || !inSession || m.closeAfterReply {
			return
		}
	}
}

// command answers one command; false when the connection must end.
func (f *fakeClamd) command(c net.Conn, br *bufio.Reader, m *fakeMode, cmd string, answer func(string), inSession bool) bool {
	switch cmd {
	case "PING":
		f.pings.Add(1)
		switch {
		case m.pingClose:
			return false
		case m.pingHang:
			f.hang()
			return false
		}
		if m.pingDelay > 0 {
			select {
			case <-time.After(m.pingDelay):
			case <-f.release:
				return false
			}
		}
		if m.pingReply != "" {
			answer(m.pingReply)
		} else {
			answer("PONG")
		}
	case "VERSION":
		answer("ClamAV 1.4.6/27433/Thu Dec  3 09:24:02 2026")
	case "RELOAD":
		if m.pingClose {
			return false
		}
		answer("RELOADING")
	case "INSTREAM":
		return f.instream(c, br, m, answer, inSession)
	default:
		answer(cmd + ": Unknown command ERROR")
	}
	return true
}

// instream answers INSTREAM; false when the connection must end.
func (f *fakeClamd) instream(c net.Conn, br *bufio.Reader, m *fakeMode, answer func(string), inSession bool) bool {
	if k := f.streams.Add(1); m.then != nil && k > m.after {
		m = m.then
	}
	n := f.inflight.Add(1)
	var leave sync.Once
	done := func() { leave.Do(func() { f.inflight.Add(-1) }) }
	defer done()
	for {
		old := f.maxInflight.Load()
		if n <= old || f.maxInflight.CompareAndSwap(old, n) {
			break
		}
	}
	if m.hangAfterAccept {
		f.hang()
		return false
	}
	if m.earlyReply != "" {
		c.Write([]byte(m.earlyReply))
	}
	var data bytes.Buffer
	var total int64
	var hdr [4]byte
	readStream := func(p []byte) error {
		for len(p) > 0 {
			k := len(p)
			if m.readRate > 0 {
				k = min(k, int(m.readRate/20)+1) // at most 50 ms worth at a time
			}
			if m.hangAfter > 0 && total+int64(k) > m.hangAfter {
				k = int(m.hangAfter - total)
			}
			if m.closeAfter > 0 && total+int64(k) > m.closeAfter {
				k = int(m.closeAfter - total)
			}
			if k > 0 {
				if _, err := io.ReadFull(br, p[:k]); err != nil {
					return err
				}
				data.Write(p[:k])
				total += int64(k)
				f.lastStream.Store(total)
				p = p[k:]
				if m.onBytes != nil {
					m.onBytes(total)
				}
			}
			if m.hangAfter > 0 && total >= m.hangAfter {
				f.hang()
				return errors.New("hung")
			}
			if m.closeAfter > 0 && total >= m.closeAfter {
				return errors.New("closed mid-stream")
			}
			if m.readRate > 0 {
				select {
				case <-time.After(time.Duration(k) * time.Second / time.Duration(m.readRate)):
				case <-f.release:
					return errors.New("released")
				}
			}
		}
		return nil
	}
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			f.noteClosed()
			return false
		}
		size := int64(binary.BigEndian.Uint32(hdr[:]))
		if size == 0 {
			break
		}
		if m.sizeLimit > 0 && total+size > m.sizeLimit {
			// clamd: the reply, then close (with unread data: a reset).
			answer("INSTREAM size limit exceeded. ERROR")
			return false
		}
		if err := readStream(make([]byte, size)); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				f.noteClosed()
			}
			return false
		}
	}
	f.ended.Add(1)
	if m.replyDelay > 0 && inSession {
		select { // the client sends nothing before the reply
		case <-time.After(m.replyDelay):
		case <-f.release:
			return false
		}
	} else if m.replyDelay > 0 {
		gone := make(chan struct{})
		go func() { // notices the client closing the connection
			defer close(gone)
			if _, err := br.ReadByte(); err != nil {
				f.noteClosed()
			}
		}()
		select {
		case <-time.After(m.replyDelay):
		case <-gone:
			return false
		case <-f.release:
			c.Close()
			<-gone
			return false
		}
	}
	done() // before the reply: the client's scan ends only after this
	switch {
	case m.reply != "":
		c.Write([]byte(m.reply))
	case m.answerWith != "":
		answer(m.answerWith)
	case bytes.Contains(data.Bytes(), []byte(eicar)):
		answer("stream: " + fakeSig + " FOUND")
	default:
		answer("stream: OK")
	}
	return true
}

// noteClosed records that a client closed a stream connection before its end.
func (f *fakeClamd) noteClosed() {
	select {
	case f.connClosed <- struct{}{}:
	default:
	}
}

// deadAddress is a TCP address where nothing listens.
func deadAddress(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "tcp://" + addr
}

// leakCheck records the number of goroutines and, in a cleanup that runs
// after every cleanup registered later (fakes, scanners), waits for it to
// come back, failing with all stacks otherwise.
func leakCheck(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > base {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutine leak: %d goroutines, %d at the start\n%s", n, base, buf)
		}
	})
}

// testConfig is a Config with short timeouts for the fakes.
func testConfig(addrs ...string) Config {
	return Config{
		Addresses:      addrs,
		Timeout:        2 * time.Second,
		MinTimeout:     500 * time.Millisecond,
		MaxSize:        10 << 20,
		HealthInterval: time.Hour, // tests that need health checks set it
		PingTimeout:    300 * time.Millisecond,
		DialTimeout:    500 * time.Millisecond,
	}
}

func newTestScanner(t testing.TB, cfg Config) *Scanner {
	t.Helper()
	s, err := NewScanner(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitFor polls cond for up to d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

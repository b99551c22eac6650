package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/popgate/popgate/proxy/pop3"
)

// upstreamBufSize is the upstream reader's buffer, which a relayed response
// is written to the client from: a read's worth moves in one write, so the
// bigger, the fewer system calls (and wakeups of the client) per message;
// loopback and LAN segments reach 64 KiB. Held only while a response moves
// (bufpool.go).
const upstreamBufSize = 64 << 10

// writeBufSize is the client writer's buffer, for the small writes of a
// response; a bigger write goes out directly (bufpool.go).
const writeBufSize = 32 << 10

// commandBufSize is the upstream write buffer: only commands go that way
// (a longer AUTH line is written straight through).
const commandBufSize = 1 << 10

// upstreamConn is a connected, greeted (and, if configured, TLS-protected)
// POP3 server connection.
type upstreamConn struct {
	raw      *idleConn
	conn     net.Conn // raw, or TLS over raw
	r        *bufio.Reader
	w        *bufio.Writer
	greeting []byte // the server's greeting line, without its line end
	// refusesCleartext: the upstream requires TLS for logins and this
	// connection is not TLS (login.go).
	refusesCleartext bool
}

// errUpstreamProtocol marks a server that broke the protocol (as opposed to
// one that could not be reached).
var errUpstreamProtocol = errors.New("upstream protocol error")

// dialSettings are the session's part of a connection to a server.
type dialSettings struct {
	writeTimeout time.Duration
	rx, tx       Adder // byte counters
	// proxyHeader, when set, is sent before anything else (Upstream
	// ProxyProtocol), so the server sees the real client.
	proxyHeader *proxyproto.Header
}

// dialUpstream connects to addr, reads the greeting and sets up TLS as u
// says. The greeting is returned untouched so APOP keeps working.
func dialUpstream(ctx context.Context, d *net.Dialer, u *Upstream, addr string, ds dialSettings) (*upstreamConn, error) {
	ctx, cancel := context.WithTimeout(ctx, u.ConnectTimeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", addr, err)
	}
	raw := &idleConn{Conn: c, readTimeout: u.Timeout, writeTimeout: ds.writeTimeout, rxc: ds.rx, txc: ds.tx}
	uc := &upstreamConn{raw: raw, conn: raw}
	fail := func(err error) (*upstreamConn, error) {
		_ = c.Close()
		uc.release()
		return nil, fmt.Errorf("upstream %s: %w", addr, err)
	}
	if ds.proxyHeader != nil {
		if _, err := ds.proxyHeader.WriteTo(raw); err != nil {
			return fail(fmt.Errorf("PROXY header: %w", err))
		}
	}
	if u.TLSMode == TLSImplicit {
		if err := uc.startTLS(ctx, u, addr); err != nil {
			return fail(err)
		}
	}
	uc.r = newPooledReader(uc.conn)
	uc.w = bufio.NewWriterSize(uc.conn, commandBufSize)

	line, err := pop3.ReadLine(uc.r, u.MaxStatusLine)
	if err != nil {
		return fail(fmt.Errorf("greeting: %w", err))
	}
	if _, err := pop3.ParseStatus(line); err != nil {
		return fail(fmt.Errorf("%w: greeting: %v", errUpstreamProtocol, err))
	}
	uc.greeting = append([]byte(nil), line...)

	if u.TLSMode == TLSStartTLS {
		if _, err := uc.w.WriteString("STLS\r\n"); err != nil {
			return fail(err)
		}
		if err := uc.w.Flush(); err != nil {
			return fail(err)
		}
		line, err := pop3.ReadLine(uc.r, u.MaxStatusLine)
		if err != nil {
			return fail(fmt.Errorf("STLS: %w", err))
		}
		st, err := pop3.ParseStatus(line)
		if err != nil || !st.OK {
			return fail(fmt.Errorf("%w: STLS refused: %q", errUpstreamProtocol, line))
		}
		// Anything after the +OK arrived in plaintext and could have been
		// injected by a man in the middle (RFC 2595 §3.1, CVE-2011-0411).
		if n := uc.r.Buffered(); n > 0 {
			return fail(fmt.Errorf("%w: %d plaintext bytes after STLS response", errUpstreamProtocol, n))
		}
		if err := uc.startTLS(ctx, u, addr); err != nil {
			return fail(err)
		}
		uc.r.Reset(uc.conn)
		uc.w.Reset(uc.conn)
	}
	return uc, nil
}

func (uc *upstreamConn) startTLS(ctx context.Context, u *Upstream, addr string) error {
	cfg := &tls.Config{}
	if u.TLS != nil {
		cfg = u.TLS.Clone()
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return err
		}
		cfg.ServerName = host
	}
	if cfg.MinVersion < tls.VersionTLS12 {
		cfg.MinVersion = tls.VersionTLS12
	}
	if u.RootCAs != nil {
		cfg.RootCAs = u.RootCAs()
	}
	tc := tls.Client(uc.raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	uc.conn = tc
	return nil
}

// idle gives the reader's buffer back while the server has nothing more to
// say (see bufpool.go); busy takes one before the next command is relayed.
func (uc *upstreamConn) idle() {
	if uc.r != nil && uc.r.Buffered() == 0 {
		putReader(uc.r)
		uc.r = nil
	}
}

func (uc *upstreamConn) busy() {
	if uc.r == nil {
		uc.r = newPooledReader(uc.conn)
	}
}

// release gives the reader's buffer back for good; the session's goroutine
// calls it once the connection is closed.
func (uc *upstreamConn) release() {
	if uc.r != nil {
		putReader(uc.r)
		uc.r = nil
	}
}

// close drops the connection without QUIT: the server then keeps every
// message (RFC 1939 §6: only QUIT enters the UPDATE state).
func (uc *upstreamConn) close() error { return uc.conn.Close() }

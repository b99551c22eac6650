package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/pires/go-proxyproto"
)

// readProxyHeader reads the PROXY protocol header a trusted load balancer
// sends first, and makes the addresses it names the session's. Bytes the
// balancer sent behind the header (a TLS ClientHello) stay readable.
func (s *session) readProxyHeader() error {
	pp := s.cfg.ProxyProtocol
	timeout := pp.Timeout
	if timeout <= 0 {
		timeout = DefaultProxyHeaderTimeout
	}
	if err := s.raw.Conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	br := bufio.NewReaderSize(s.raw.Conn, clientBufSize)
	h, err := proxyproto.Read(br)
	if err != nil {
		if errors.Is(err, proxyproto.ErrNoProxyProtocol) {
			return errors.New("no PROXY protocol header from a trusted source")
		}
		return fmt.Errorf("PROXY protocol header: %w", err)
	}
	if err := s.raw.Conn.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	if br.Buffered() > 0 {
		s.raw.pre = br
	}
	if h.Command.IsLocal() {
		return nil // a health check: the connection's own addresses stand
	}
	src, dst, ok := h.TCPAddrs()
	if !ok {
		return fmt.Errorf("PROXY protocol header for transport %#x: only TCP is served", byte(h.TransportProtocol))
	}
	s.client = addrPort(src)
	s.local = addrPort(dst)
	s.setLogger()
	return nil
}

// proxySignatures are the first five bytes of a PROXY header, v1 and v2.
var proxySignatures = [][]byte{proxyproto.SIGV1, proxyproto.SIGV2[:5]}

// sentProxyHeader tells whether the client's first bytes are a PROXY
// header, which only a trusted source may send, once. Every POP3 command is
// at least five bytes long, so peeking at five never waits on a real client.
func (s *session) sentProxyHeader() bool {
	b, err := s.cr.Peek(5)
	if err != nil {
		return false
	}
	for _, sig := range proxySignatures {
		if bytes.Equal(b, sig) {
			return true
		}
	}
	return false
}

package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST (IPv6)
// from <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>.
const soOriginalDst = 80

// originalDestination returns where an intercepted client connection was
// headed: with TPROXY its local address is that destination; REDIRECT and
// DNAT rewrote it, and conntrack remembers.
func (s *session) originalDestination() (netip.AddrPort, error) {
	if s.cfg.TProxy {
		return addrPort(s.raw.Conn.LocalAddr()), nil
	}
	return originalDestination(s.raw.Conn)
}

// setTransparent sets IP_TRANSPARENT (and IPV6_TRANSPARENT) on a listening
// socket, so that TPROXY can hand it connections to foreign addresses.
func setTransparent(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		if network != "tcp4" {
			// A dual-stack socket takes IPv6 connections too.
			err6 := unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			if serr != nil {
				serr = err6
			}
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("IP_TRANSPARENT for TPROXY (needs CAP_NET_ADMIN): %w", err)
	}
	return nil
}

// originalDestination returns where a connection redirected by netfilter
// (iptables/nftables REDIRECT or DNAT) was originally headed.
func originalDestination(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, errors.New("original destination: not a TCP connection")
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	local := addrPort(tc.LocalAddr())
	var dst netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		if local.Addr().Is4() {
			dst, serr = originalDst4(int(fd))
		} else {
			dst, serr = originalDst6(int(fd))
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination (is the connection redirected by netfilter?): %w", err)
	}
	return dst, nil
}

func originalDst4(fd int) (netip.AddrPort, error) {
	// The kernel fills a sockaddr_in (16 bytes); IPv6Mreq is a 20-byte
	// buffer the x/sys API lets us pass through getsockopt.
	mreq, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, soOriginalDst)
	if err != nil {
		return netip.AddrPort{}, err
	}
	raw := mreq.Multiaddr
	port := binary.BigEndian.Uint16(raw[2:4])
	addr := netip.AddrFrom4([4]byte(raw[4:8]))
	return netip.AddrPortFrom(addr, port), nil
}

func originalDst6(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	size := uint32(unsafe.Sizeof(sa))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(unix.SOL_IPV6), soOriginalDst,
		uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return netip.AddrPort{}, syscall.Errno(errno)
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	addr := netip.AddrFrom16(sa.Addr).Unmap()
	return netip.AddrPortFrom(addr, port), nil
}

// refuseLoop rejects connections that would make popgate dial itself: one
// made straight to a transparent listener (not redirected), and one that is
// popgate's own upstream connection caught by a redirect rule. Either would
// otherwise loop until every connection slot is gone.
func (s *Server) refuseLoop(dst, client netip.AddrPort) error {
	if s.ports.has(client.Port()) && isLocalAddr(client.Addr()) {
		return fmt.Errorf("connection from popgate's own upstream connection %s (redirect rule catches popgate itself): refusing to loop", client)
	}
	for _, bl := range s.lns {
		la := addrPort(bl.ln.Addr())
		if la.Port() != dst.Port() {
			continue
		}
		if la.Addr() == dst.Addr() || la.Addr().IsUnspecified() && isLocalAddr(dst.Addr()) {
			return fmt.Errorf("original destination %s is popgate's own listener %s: refusing to loop", dst, bl.cfg.Name)
		}
	}
	return nil
}

func isLocalAddr(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if pfx, err := netip.ParsePrefix(ia.String()); err == nil && pfx.Addr().Unmap() == a {
			return true
		}
	}
	return false
}

// outPorts records the local ports of popgate's own transparent upstream
// connections. A redirect rule that also catches those connections sends
// them back to popgate; their source port then gives them away.
type outPorts struct {
	mu    sync.Mutex
	ports map[uint16]int
}

// control returns a net.Dialer Control hook that binds the socket before
// connect, so its port is known (and recorded in *port) before the
// connection can arrive back at a listener.
func (o *outPorts) control(port *uint16) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var err error
		cerr := c.Control(func(fd uintptr) {
			var sa unix.Sockaddr = &unix.SockaddrInet4{}
			if network == "tcp6" {
				sa = &unix.SockaddrInet6{}
			}
			if err = unix.Bind(int(fd), sa); err != nil {
				return
			}
			var got unix.Sockaddr
			if got, err = unix.Getsockname(int(fd)); err != nil {
				return
			}
			switch a := got.(type) {
			case *unix.SockaddrInet4:
				*port = uint16(a.Port)
			case *unix.SockaddrInet6:
				*port = uint16(a.Port)
			}
			o.mu.Lock()
			if o.ports == nil {
				o.ports = map[uint16]int{}
			}
			o.ports[*port]++
			o.mu.Unlock()
		})
		if cerr != nil {
			return cerr
		}
		return err
	}
}

func (o *outPorts) release(port uint16) {
	if port == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ports[port]--; o.ports[port] <= 0 {
		delete(o.ports, port)
	}
}

func (o *outPorts) has(port uint16) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ports[port] > 0
}

package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawIO does a TCP connection's reads and writes as raw system calls
// (syscall.RawSyscall) inside syscall.RawConn's Read and Write, which wait
// for readiness on the runtime's poller and honour the deadlines as
// net.TCPConn does.
//
// Why: the socket is non-blocking, so these calls never block, but Go's
// ordinary syscall path (entersyscall) wakes the runtime's sysmon thread
// whenever the process was idle. A relay goes idle a few times per message
// (waiting for the client's command, for the server's answer), so every
// message cost a sysmon wakeup, its 20 µs polling, and its sleep again:
// about 30% of popgate's CPU time in pass-through.
//
// A read and a write may run at once (as on a net.Conn): each has its own
// state.
type rawIO struct {
	conn *net.TCPConn
	rc   syscall.RawConn

	rp   []byte // the buffer of the current read
	rn   int
	rerr syscall.Errno

	iov  [2][]byte // the buffers of the current write
	vec  [2]syscall.Iovec
	wn   int
	werr syscall.Errno

	read, writev func(fd uintptr) bool // bound once: no allocation per call
}

func newRawIO(c *net.TCPConn) *rawIO {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawIO{conn: c, rc: rc}
	r.read, r.writev = r.doRead, r.doWritev
	return r
}

func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rp, r.rn, r.rerr = p, 0, 0
	err := r.rc.Read(r.read)
	n, errno := r.rn, r.rerr
	r.rp = nil
	switch {
	case err != nil:
		return 0, r.opError("read", err)
	case errno != 0:
		return 0, r.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (r *rawIO) doRead(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.rp[0])), uintptr(len(r.rp)))
		switch e {
		case 0:
			r.rn = int(n)
			raceAcquireIO(fd)
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			r.rerr = e
		}
		return true
	}
}

func (r *rawIO) Write(p []byte) (int, error) { return r.writeOut("write", p, nil) }

// writeBuffers writes a and b in one writev(2) (more when the socket fills).
func (r *rawIO) writeBuffers(a, b []byte) (int, error) { return r.writeOut("writev", a, b) }

// writeOut writes all of a and then b, naming op in its errors.
func (r *rawIO) writeOut(op string, a, b []byte) (int, error) {
	r.iov, r.wn, r.werr = [2][]byte{a, b}, 0, 0
	err := r.rc.Write(r.writev)
	n, errno := r.wn, r.werr
	// Hold no buffer once done: an idle session keeps none (bufpool.go).
	r.iov, r.vec = [2][]byte{}, [2]syscall.Iovec{}
	switch {
	case err != nil:
		return n, r.opError(op, err)
	case errno != 0:
		return n, r.opError(op, errno)
	}
	return n, nil
}

// doWritev writes what is left of r.iov, waiting (false) whenever the
// socket is full.
func (r *rawIO) doWritev(fd uintptr) bool {
	raceReleaseIO(fd)
	for {
		// The iovecs of what is left after r.wn bytes.
		k, skip := 0, r.wn
		for _, b := range r.iov {
			if skip >= len(b) {
				skip -= len(b)
				continue
			}
			b = b[skip:]
			skip = 0
			r.vec[k] = syscall.Iovec{Base: &b[0]}
			r.vec[k].SetLen(len(b))
			k++
		}
		if k == 0 {
			return true
		}
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&r.vec[0])), uintptr(k))
		switch e {
		case 0:
			r.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.werr = e
			return true
		}
	}
}

// opError words a failure as net.TCPConn's Read and Write do: a
// *net.OpError around the system call's error, or around RawConn's own
// (deadline, closed), which it names "raw-read" or "raw-write".
func (r *rawIO) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		oe.Op = op
		return oe
	}
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: "tcp", Source: r.conn.LocalAddr(), Addr: r.conn.RemoteAddr(), Err: err}
}

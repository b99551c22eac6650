package proxy

import (
	"bufio"
	"net"
	"time"
)

// idleConn enforces idle timeouts on a connection: every Read must make
// progress within readTimeout and every Write within writeTimeout, so a
// response that keeps flowing never times out but a stalled peer does. It
// also counts bytes. It is used from one goroutine (Close excepted).
type idleConn struct {
	net.Conn
	readTimeout  time.Duration
	writeTimeout time.Duration
	readSet      time.Time // when the read deadline was last pushed
	writeSet     time.Time // likewise for the write deadline
	rx, tx       int64
	rxc, txc     Adder // the observer's counters of rx and tx
	// pre holds bytes read ahead of the PROXY header's end; they are read
	// before the connection's own.
	pre *bufio.Reader
	// until, when set, caps every read deadline: a limit that input
	// trickling in cannot push back (the login deadline).
	until time.Time
	rio   *rawIO // for a TCP connection: made on first use (rawio_linux.go)
	plain bool   // Conn is not TCP: no rawIO
}

// rawIO returns the connection's rawIO, nil if it has none.
func (c *idleConn) rawIO() *rawIO {
	if c.rio == nil && !c.plain {
		if tc, ok := c.Conn.(*net.TCPConn); ok {
			c.rio = newRawIO(tc)
		}
		c.plain = c.rio == nil
	}
	return c.rio
}

// deadlineSlack is how stale a deadline may get before it is pushed again;
// it saves a timer update per read or write on busy connections at the cost
// of timeouts firing up to this much early.
const deadlineSlack = 250 * time.Millisecond

func (c *idleConn) Read(p []byte) (int, error) {
	if c.pre != nil {
		if c.pre.Buffered() > 0 {
			n, _ := c.pre.Read(p) // buffered: never touches the connection
			c.received(n)
			return n, nil
		}
		c.pre = nil
	}
	if c.readTimeout > 0 {
		now := time.Now()
		if now.Sub(c.readSet) > deadlineSlack {
			c.readSet = now
			d := now.Add(c.readTimeout)
			if !c.until.IsZero() && c.until.Before(d) {
				d = c.until
			}
			if err := c.Conn.SetReadDeadline(d); err != nil {
				return 0, err
			}
		}
	}
	var n int
	var err error
	if r := c.rawIO(); r != nil {
		n, err = r.Read(p)
	} else {
		n, err = c.Conn.Read(p)
	}
	c.received(n)
	return n, err
}

func (c *idleConn) received(n int) {
	if n > 0 {
		c.rx += int64(n)
		c.rxc.Add(float64(n))
	}
}

func (c *idleConn) Write(p []byte) (int, error) {
	if err := c.pushWriteDeadline(); err != nil {
		return 0, err
	}
	var n int
	var err error
	if r := c.rawIO(); r != nil {
		n, err = r.Write(p)
	} else {
		n, err = c.Conn.Write(p)
	}
	c.sent(int64(n))
	return n, err
}

// writeBuffers writes a, then b: one writev(2) on a TCP connection.
func (c *idleConn) writeBuffers(a, b []byte) (int, error) {
	if err := c.pushWriteDeadline(); err != nil {
		return 0, err
	}
	var n int
	var err error
	if r := c.rawIO(); r != nil {
		n, err = r.writeBuffers(a, b)
	} else {
		var m int64
		v := net.Buffers{a, b}
		m, err = v.WriteTo(c.Conn)
		n = int(m)
	}
	c.sent(int64(n))
	return n, err
}

func (c *idleConn) pushWriteDeadline() error {
	if c.writeTimeout > 0 {
		now := time.Now()
		if now.Sub(c.writeSet) > deadlineSlack {
			c.writeSet = now
			return c.Conn.SetWriteDeadline(now.Add(c.writeTimeout))
		}
	}
	return nil
}

func (c *idleConn) sent(n int64) {
	if n > 0 {
		c.tx += n
		c.txc.Add(float64(n))
	}
}

// setReadTimeout changes the idle limit and applies it from now.
func (c *idleConn) setReadTimeout(d time.Duration) {
	c.readTimeout = d
	c.readSet = time.Time{}
}

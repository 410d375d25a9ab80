package transfer

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"sync"
)

// bulkSize is how much a bulkConn reads or gathers per system call: TLS
// 1.3 reads and writes records of at most 16 KiB, one call each, and on a
// virtual machine each call costs more than the copy of its bytes.
const bulkSize = 256 << 10

// bulkConn is a TCP connection under TLS that reads ahead in bulkSize
// reads and, while a transfer streams (bulk), gathers TLS's records and
// writes them in bulkSize writes: at the end of each of the stream's own
// writes (Flush) and whenever that much is waiting. Outside bulk it
// writes through, so that nothing else TLS or HTTP sends waits.
type bulkConn struct {
	net.Conn
	r *bufio.Reader

	mu   sync.Mutex // TLS may send an alert from another goroutine
	bulk bool
	out  []byte
}

func newBulkConn(c net.Conn) *bulkConn {
	return &bulkConn{Conn: c, r: bufio.NewReaderSize(c, bulkSize)}
}

func (c *bulkConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bulkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.bulk {
		return c.Conn.Write(p)
	}
	if len(c.out)+len(p) > bulkSize {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) >= bulkSize {
			return c.Conn.Write(p)
		}
	}
	if c.out == nil {
		c.out = make([]byte, 0, bulkSize)
	}
	c.out = append(c.out, p...)
	return len(p), nil
}

// Flush writes what was gathered.
func (c *bulkConn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

func (c *bulkConn) flushLocked() error {
	if len(c.out) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.out)
	c.out = c.out[:0]
	return err
}

// setBulk starts or ends gathering; ending it writes what was gathered.
func (c *bulkConn) setBulk(on bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bulk = on
	if on {
		return nil
	}
	return c.flushLocked()
}

// bulkListener hands out its connections as bulkConns.
type bulkListener struct{ net.Listener }

func (l bulkListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newBulkConn(c), nil
}

type bulkConnKey struct{}

// withBulkConn is the server's ConnContext: a request's context holds the
// bulkConn beneath its TLS connection.
func withBulkConn(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		if bc, ok := tc.NetConn().(*bulkConn); ok {
			return context.WithValue(ctx, bulkConnKey{}, bc)
		}
	}
	return ctx
}

// bulkConnOf returns the bulkConn of a request's connection, or nil.
func bulkConnOf(ctx context.Context) *bulkConn {
	bc, _ := ctx.Value(bulkConnKey{}).(*bulkConn)
	return bc
}

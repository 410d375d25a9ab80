package stream

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"os"
	"testing"
)

// patternSource is size bytes, of which every other 1 MiB is data (the
// same random MiB) and the rest holes: half data, as a volume that is half
// full. Reading it costs a copy, as reading the page cache does.
type patternSource struct {
	pattern []byte
	size    int64
}

func (s *patternSource) ReadAt(p []byte, off int64) (int, error) {
	for n := 0; n < len(p); {
		n += copy(p[n:], s.pattern[(off+int64(n))%int64(len(s.pattern)):])
	}
	return len(p), nil
}

func (s *patternSource) NextData(off int64) (Extent, bool, error) {
	e := Extent{Off: off / (2 * mib) * 2 * mib, Len: mib}
	if e.End() <= off {
		e.Off += 2 * mib
	}
	return e, e.Off < s.size, nil
}

// nullTarget drops what it is given.
type nullTarget struct{}

func (nullTarget) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }
func (nullTarget) Zero(int64, int64) error                { return nil }
func (nullTarget) Sync() error                            { return nil }

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(b *testing.B) (client, server net.Conn) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		b.Fatal("accept failed")
	}
	return client, server
}

// BenchmarkSendReceive moves 1 GiB with 512 MiB of data; MB/s is data.
func BenchmarkSendReceive(b *testing.B) {
	const size = 1 << 30
	pattern := make([]byte, mib)
	rand.Read(pattern)
	mem := &patternSource{pattern: pattern, size: size}
	transports := []struct {
		name string
		pair func(b *testing.B) (io.WriteCloser, io.ReadCloser)
	}{
		{"pipe", func(*testing.B) (io.WriteCloser, io.ReadCloser) {
			r, w := io.Pipe()
			return w, r
		}},
		{"tcp", func(b *testing.B) (io.WriteCloser, io.ReadCloser) { return tcpPair(b) }},
	}
	for _, tr := range transports {
		b.Run("memory/"+tr.name, func(b *testing.B) {
			benchTransfer(b, mem, nullTarget{}, size, tr.pair)
		})
	}
	b.Run("files/tcp", func(b *testing.B) {
		src := makeFile(b, size, patternOps(size))
		dst, err := os.Create(src + ".copy")
		if err != nil {
			b.Fatal(err)
		}
		defer dst.Close()
		if err := dst.Truncate(size); err != nil {
			b.Fatal(err)
		}
		benchTransfer(b, FileSource(openFile(b, src), size), FileTarget(dst), size, transports[1].pair)
	})
}

// patternOps writes random data in every other MiB.
func patternOps(size int64) []op {
	var ops []op
	for off := int64(0); off < size; off += 2 * mib {
		ops = append(ops, op{'r', off, mib})
	}
	return ops
}

func benchTransfer(b *testing.B, src BlockSource, dst BlockTarget, size int64, pair func(b *testing.B) (io.WriteCloser, io.ReadCloser)) {
	b.SetBytes(size / 2)
	b.ReportAllocs()
	for b.Loop() {
		w, r := pair(b)
		done := make(chan error, 1)
		go func() {
			_, err := Send(context.Background(), w, src, size, 0, DefaultSegment, nil)
			w.Close()
			done <- err
		}()
		st, err := Receive(context.Background(), r, dst, size, 0, DefaultSegment, nil, nil)
		r.Close()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		if err != nil {
			b.Fatal(err)
		}
		if st.DataBytes != size/2 {
			b.Fatalf("%d bytes of data", st.DataBytes)
		}
	}
}

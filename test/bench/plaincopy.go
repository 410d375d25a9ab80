package main

// The floor of the transfer part: the same bytes that flashpv moves from one
// node to another, copied over plain TCP by the smallest program that can,
// run as a hidden subcommand of the bench inside each node's network
// namespace. It sends only the data extents of the file (as flashpv does),
// without TLS, hashes or segments, and the receiver syncs once at the end.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/fscopy"
)

// plainCopyCommand is the hidden subcommand: bench plain-copy send ADDR
// FILE SIZE, or bench plain-copy recv ADDR FILE SIZE.
const plainCopyCommand = "plain-copy"

// plainChunk is the size of each read and write, flashpv's largest frame.
const plainChunk = 1 << 20

// plainCopyStats is what each side prints when done (one JSON line).
type plainCopyStats struct {
	DataBytes int64   `json:"data_bytes"`
	WireBytes int64   `json:"wire_bytes"`
	Seconds   float64 `json:"seconds"`
	// RunQueueSec is how long the process waited for a CPU.
	RunQueueSec float64 `json:"run_queue_sec"`
}

// runPlainCopy runs one side of a plain copy. The receiver first prints
// the address it listens on, then both print their stats.
func runPlainCopy(args []string) error {
	if len(args) != 4 {
		return fmt.Errorf("usage: %s send|recv ADDR FILE SIZE", plainCopyCommand)
	}
	var size int64
	if _, err := fmt.Sscan(args[3], &size); err != nil || size < 0 {
		return fmt.Errorf("size %q", args[3])
	}
	var st plainCopyStats
	var err error
	switch args[0] {
	case "send":
		var conn net.Conn
		if conn, err = net.DialTimeout("tcp", args[1], 10*time.Second); err != nil {
			return err
		}
		st, err = plainSend(conn.(*net.TCPConn), args[2], size)
	case "recv":
		var lis net.Listener
		if lis, err = net.Listen("tcp", args[1]); err != nil {
			return err
		}
		fmt.Println(lis.Addr().String())
		st, err = plainReceive(lis, args[2], size)
	default:
		return fmt.Errorf("unknown side %q", args[0])
	}
	if err != nil {
		return err
	}
	st.RunQueueSec = runQueueSeconds("self")
	return json.NewEncoder(os.Stdout).Encode(st)
}

// plainSend sends the data extents of path's first size bytes: a header
// (the size), then per extent its offset, length and bytes, and a zero
// length at the end. It returns once the receiver has synced and closed.
func plainSend(conn *net.TCPConn, path string, size int64) (plainCopyStats, error) {
	defer conn.Close()
	f, err := os.Open(path)
	if err != nil {
		return plainCopyStats{}, err
	}
	defer f.Close()
	// As flashpv's source does: each extent is read front to back.
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
	start := time.Now()
	w := bufio.NewWriterSize(conn, 256<<10)
	var st plainCopyStats
	var hdr [16]byte
	put := func(a, b int64) error {
		binary.BigEndian.PutUint64(hdr[:8], uint64(a))
		binary.BigEndian.PutUint64(hdr[8:], uint64(b))
		_, err := w.Write(hdr[:])
		st.WireBytes += int64(len(hdr))
		return err
	}
	if err := put(size, 0); err != nil {
		return st, err
	}
	buf := make([]byte, plainChunk)
	it := fscopy.DataExtents(f, 0, size)
	for {
		a, b, ok, err := it.Next()
		if err != nil {
			return st, err
		}
		if !ok {
			break
		}
		for off := a; off < b; {
			p := buf[:min(b-off, plainChunk)]
			if _, err := f.ReadAt(p, off); err != nil {
				return st, fmt.Errorf("reading %s at %d: %w", path, off, err)
			}
			if err := put(off, int64(len(p))); err != nil {
				return st, err
			}
			if _, err := w.Write(p); err != nil {
				return st, err
			}
			st.DataBytes += int64(len(p))
			st.WireBytes += int64(len(p))
			off += int64(len(p))
		}
	}
	if err := put(0, 0); err != nil {
		return st, err
	}
	if err := w.Flush(); err != nil {
		return st, err
	}
	if err := conn.CloseWrite(); err != nil {
		return st, err
	}
	// The receiver closes after its sync: the copy is durable then.
	var ack [1]byte
	if n, err := io.ReadFull(conn, ack[:]); n != 1 {
		return st, fmt.Errorf("no acknowledgement from the receiver: %w", err)
	}
	st.Seconds = time.Since(start).Seconds()
	return st, nil
}

// plainReceive accepts one sender and writes what it sends into path, made
// size bytes long and allocated in full first (as flashpv's new volume is
// before its transfer starts), then syncs it. Its time runs from the
// connection to the end of the sync.
func plainReceive(lis net.Listener, path string, size int64) (plainCopyStats, error) {
	defer lis.Close()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return plainCopyStats{}, err
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		return plainCopyStats{}, fmt.Errorf("allocating %s: %w", path, err)
	}
	conn, err := lis.Accept()
	if err != nil {
		return plainCopyStats{}, err
	}
	defer conn.Close()
	start := time.Now()
	st, err := plainWrite(bufio.NewReaderSize(conn, 256<<10), f, size)
	if err != nil {
		return st, err
	}
	if err := f.Sync(); err != nil {
		return st, err
	}
	st.Seconds = time.Since(start).Seconds()
	_, err = conn.Write([]byte{1})
	return st, err
}

// plainWrite writes the extents read from r into f, checking each against
// size.
func plainWrite(r io.Reader, f *os.File, size int64) (plainCopyStats, error) {
	var st plainCopyStats
	var hdr [16]byte
	read := func() (int64, int64, error) {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return 0, 0, err
		}
		st.WireBytes += int64(len(hdr))
		return int64(binary.BigEndian.Uint64(hdr[:8])), int64(binary.BigEndian.Uint64(hdr[8:])), nil
	}
	sent, _, err := read()
	if err != nil {
		return st, fmt.Errorf("header: %w", err)
	}
	if sent != size {
		return st, fmt.Errorf("the sender has %d bytes, the receiver expects %d", sent, size)
	}
	buf := make([]byte, plainChunk)
	for {
		off, n, err := read()
		if err != nil {
			return st, fmt.Errorf("extent header: %w", err)
		}
		if n == 0 {
			return st, nil
		}
		if n < 0 || n > plainChunk || off < 0 || off+n > size {
			return st, fmt.Errorf("extent [%d, %d) outside [0, %d)", off, off+n, size)
		}
		p := buf[:n]
		if _, err := io.ReadFull(r, p); err != nil {
			return st, fmt.Errorf("data at %d: %w", off, err)
		}
		if _, err := f.WriteAt(p, off); err != nil {
			return st, err
		}
		st.DataBytes += n
		st.WireBytes += n
	}
}

// plainCopy copies the snapshot's data extents from the source node to a
// file on the target node's pool filesystem, each side in its node's
// network namespace, and removes the copy.
func (s *transferSetup) plainCopy(ctx context.Context, r *transferRound) error {
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	dst := filepath.Join(s.dstDir, "flashpv-bench-plain-copy")
	os.Remove(dst)
	defer os.Remove(dst)
	if err := s.src.coldFile(s.snapFile); err != nil {
		return err
	}
	size := strconv.FormatInt(s.size, 10)
	side := func(n *clusterNode, args ...string) *exec.Cmd {
		return exec.CommandContext(ctx, "nsenter", append([]string{"-t", n.holder, "-n", "--", s.exe, plainCopyCommand}, args...)...)
	}
	recv := side(s.dst, "recv", net.JoinHostPort(s.dst.ip, "0"), dst, size)
	var recvErr bytes.Buffer
	recv.Stderr = &recvErr
	out, err := recv.StdoutPipe()
	if err != nil {
		return err
	}
	if err := recv.Start(); err != nil {
		return err
	}
	// A receiver left waiting (the sender failed) is ended.
	defer func() {
		if recv.ProcessState == nil {
			recv.Process.Kill()
			recv.Wait()
		}
	}()
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		recv.Wait()
		return fmt.Errorf("plain copy receiver on %s: %s", s.dst.name, recvErr.Bytes())
	}
	addr := lines.Text()
	send := side(s.src, "send", addr, s.snapFile, size)
	sent, err := send.CombinedOutput()
	if err != nil {
		return fmt.Errorf("plain copy sender on %s: %v: %s", s.src.name, err, sent)
	}
	var st plainCopyStats
	if !lines.Scan() || json.Unmarshal(lines.Bytes(), &st) != nil {
		recv.Wait()
		return fmt.Errorf("plain copy receiver on %s: %s", s.dst.name, recvErr.Bytes())
	}
	if err := recv.Wait(); err != nil {
		return fmt.Errorf("plain copy receiver on %s: %v: %s", s.dst.name, err, recvErr.Bytes())
	}
	cpu := func(c *exec.Cmd) float64 { return (c.ProcessState.UserTime() + c.ProcessState.SystemTime()).Seconds() }
	r.PlainDataBytes, r.PlainWireBytes, r.PlainSec = st.DataBytes, st.WireBytes, st.Seconds
	r.PlainMBps = float64(st.DataBytes) / 1e6 / st.Seconds
	r.PlainSendCPU, r.PlainRecvCPU = cpu(send), cpu(recv)
	r.PlainRecvWait = st.RunQueueSec
	if err := json.Unmarshal(lastLine(sent), &st); err == nil {
		r.PlainSendWait = st.RunQueueSec
	}
	return nil
}

// lastLine is the last non-empty line of out.
func lastLine(out []byte) []byte {
	out = bytes.TrimSpace(out)
	if i := bytes.LastIndexByte(out, '\n'); i >= 0 {
		return out[i+1:]
	}
	return out
}

package tree

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// entry is what an entry frame says of one directory entry.
type entry struct {
	mode         uint32 // st_mode
	uid, gid     uint32
	atime, mtime unix.Timespec
	size         int64
	path         string
	link         string // a symlink's target
	xattrs       []xattr
}

type xattr struct {
	name  string
	value []byte
}

func (e *entry) typ() uint32 { return e.mode & unix.S_IFMT }

// encode appends the entry frame's payload to b.
func (e *entry) encode(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, e.mode)
	b = binary.BigEndian.AppendUint32(b, e.uid)
	b = binary.BigEndian.AppendUint32(b, e.gid)
	for _, ts := range []unix.Timespec{e.atime, e.mtime} {
		b = binary.BigEndian.AppendUint64(b, uint64(ts.Sec))
		b = binary.BigEndian.AppendUint32(b, uint32(ts.Nsec))
	}
	b = binary.BigEndian.AppendUint64(b, uint64(e.size))
	b = appendString16(b, e.path)
	b = appendString16(b, e.link)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.xattrs)))
	for _, x := range e.xattrs {
		b = append(b, byte(len(x.name)))
		b = append(b, x.name...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(x.value)))
		b = append(b, x.value...)
	}
	return b
}

func appendString16(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// decoder reads a payload front to back; a read past its end sets short.
type decoder struct {
	b     []byte
	short bool
}

func (d *decoder) take(n int) []byte {
	if d.short || n > len(d.b) {
		d.short = true
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u8() int { p := d.take(1); return int(at(p, 0)) }

func (d *decoder) u16() int {
	if p := d.take(2); p != nil {
		return int(binary.BigEndian.Uint16(p))
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) timespec() unix.Timespec {
	s, ns := d.u64(), d.u32()
	return unix.Timespec{Sec: int64(s), Nsec: int64(ns)}
}

// done fails unless the payload was read exactly to its end.
func (d *decoder) done(what string) error {
	switch {
	case d.short:
		return fmt.Errorf("%w: %s frame too short", errProtocol, what)
	case len(d.b) > 0:
		return fmt.Errorf("%w: %d bytes after the %s frame's fields", errProtocol, len(d.b), what)
	}
	return nil
}

func at(p []byte, i int) byte {
	if i < len(p) {
		return p[i]
	}
	return 0
}

// decodeEntry reads and checks an entry frame's payload. The path is not
// checked here: the root's is empty.
func decodeEntry(p []byte) (entry, error) {
	d := &decoder{b: p}
	var e entry
	e.mode, e.uid, e.gid = d.u32(), d.u32(), d.u32()
	e.atime, e.mtime = d.timespec(), d.timespec()
	size := d.u64()
	e.path = string(d.take(d.u16()))
	e.link = string(d.take(d.u16()))
	n := d.u16()
	if n > MaxXattrs {
		return e, fmt.Errorf("%w: entry %q has %d extended attributes", errProtocol, e.path, n)
	}
	for i := 0; i < n && !d.short; i++ {
		name := string(d.take(d.u8()))
		vlen := d.u32()
		if vlen > MaxXattrValue {
			return e, fmt.Errorf("%w: entry %q: extended attribute %q of %d bytes", errProtocol, e.path, name, vlen)
		}
		// A copy: the payload's buffer takes the next frame, and a regular
		// file's attributes are set after its data frames.
		e.xattrs = append(e.xattrs, xattr{name: name, value: bytes.Clone(d.take(int(vlen)))})
	}
	if err := d.done("entry"); err != nil {
		return e, err
	}
	if size > MaxFileSize {
		return e, fmt.Errorf("%w: entry %q of %d bytes", errProtocol, e.path, size)
	}
	e.size = int64(size)
	return e, e.check()
}

// check refuses what no honest sender sends: a type flashpv does not copy,
// stray mode bits, impossible times, a size or link that does not go with
// the type, malformed attribute names.
func (e *entry) check() error {
	switch e.typ() {
	case unix.S_IFDIR, unix.S_IFREG, unix.S_IFLNK, unix.S_IFIFO:
	case unix.S_IFCHR, unix.S_IFBLK:
		return fmt.Errorf("%w: %q is a device node; device nodes and sockets are not copied between nodes", ErrUnsupported, e.path)
	case unix.S_IFSOCK:
		return fmt.Errorf("%w: %q is a socket; device nodes and sockets are not copied between nodes", ErrUnsupported, e.path)
	default:
		return fmt.Errorf("%w: entry %q of unknown type %#o", errProtocol, e.path, e.typ())
	}
	switch {
	case e.mode&^(unix.S_IFMT|0o7777) != 0:
		return fmt.Errorf("%w: entry %q has mode %#o", errProtocol, e.path, e.mode)
	case !validTime(e.atime) || !validTime(e.mtime):
		return fmt.Errorf("%w: entry %q has an invalid time", errProtocol, e.path)
	case e.size != 0 && e.typ() != unix.S_IFREG:
		return fmt.Errorf("%w: entry %q has a size but is no regular file", errProtocol, e.path)
	case e.typ() == unix.S_IFLNK && (e.link == "" || len(e.link) > MaxLink || strings.IndexByte(e.link, 0) >= 0):
		return fmt.Errorf("%w: symlink %q has a target of %d bytes or with a NUL", errProtocol, e.path, len(e.link))
	case e.link != "" && e.typ() != unix.S_IFLNK:
		return fmt.Errorf("%w: entry %q has a link target but is no symlink", errProtocol, e.path)
	}
	for _, x := range e.xattrs {
		if err := checkXattrName(x.name); err != nil {
			return fmt.Errorf("entry %q: %w", e.path, err)
		}
	}
	return nil
}

// validTime refuses the special nanosecond values (UTIME_NOW, UTIME_OMIT)
// and anything else no file has.
func validTime(ts unix.Timespec) bool { return ts.Nsec >= 0 && ts.Nsec < 1e9 }

// decodeLink reads a hard link frame's payload: its path and the path of
// the earlier entry it names, both checked.
func decodeLink(p []byte) (path, target string, err error) {
	d := &decoder{b: p}
	path = string(d.take(d.u16()))
	target = string(d.take(d.u16()))
	if err := d.done("hardlink"); err != nil {
		return "", "", err
	}
	if err := checkPath(path); err != nil {
		return "", "", err
	}
	if err := checkPath(target); err != nil {
		return "", "", fmt.Errorf("hardlink %q: %w", path, err)
	}
	if path == target {
		return "", "", fmt.Errorf("%w: hardlink %q to itself", errProtocol, path)
	}
	return path, target, nil
}

func encodeLink(b []byte, path, target string) []byte {
	return appendString16(appendString16(b, path), target)
}

package pool

import (
	"context"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Capacity reports the pool's space.
func (p *ImagePool) Capacity(context.Context) (Capacity, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.capacity()
}

func (p *ImagePool) available() (int64, error) {
	c, err := p.capacity()
	return c.Available, err
}

// capacity computes what is free for new reservations: the filesystem's free
// space, minus the part of every image that is reserved but not backed by
// blocks (holes punched by discards from inside the volume), minus the
// reserve. Holes can appear at any time, so this is measured, not cached.
func (p *ImagePool) capacity() (Capacity, error) {
	// Images being allocated count with the part not allocated yet. They are
	// looked at before the filesystem's free space: blocks allocated between
	// the two looks are then counted twice, never not at all.
	var unbacked int64
	for key, c := range p.creating {
		var st unix.Stat_t
		if err := unix.Stat(p.ImagePath(key), &st); err != nil {
			unbacked += c.size
		} else {
			unbacked += max(c.size-st.Blocks*512, 0)
		}
	}
	// What shares blocks reserves its whole size (see Volume.Shared and
	// Snapshot.Shared).
	shared := map[string]bool{}
	p.vmu.RLock()
	for key, v := range p.vols {
		shared[key] = v.Shared
	}
	for _, s := range p.snaps {
		if s.Shared {
			unbacked += s.SizeBytes
		}
	}
	p.vmu.RUnlock()
	var sfs unix.Statfs_t
	if err := p.statfs(p.dir, &sfs); err != nil {
		return Capacity{}, err
	}
	// One open directory, names unsorted, stats relative to it: this runs
	// at every create and capacity poll, over every volume of the pool.
	d, err := os.Open(p.dir)
	if err != nil {
		return Capacity{}, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return Capacity{}, err
	}
	dfd := int(d.Fd())
	var c Capacity
	for _, n := range names {
		if key, ok := strings.CutSuffix(n, metaSuffix); ok && keyRE.MatchString(key) {
			c.Volumes++
			continue
		}
		key, ok := strings.CutSuffix(n, imageSuffix)
		if _, busy := p.creating[key]; !ok || !keyRE.MatchString(key) || busy {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue // removed meanwhile
		}
		c.Allocated += st.Size
		if shared[key] {
			unbacked += st.Size
		} else if missing := st.Size - st.Blocks*512; missing > 0 {
			unbacked += missing
		}
	}
	bsize := int64(sfs.Bsize)
	c.Total = max(int64(sfs.Blocks)*bsize-p.reserve, 0)
	c.Available = max(int64(sfs.Bavail)*bsize-unbacked-p.reserve, 0)
	return c, nil
}

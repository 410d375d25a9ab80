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
	// Creates in flight are looked at before the filesystem's free space:
	// blocks allocated between the two looks are then counted twice, never
	// not at all.
	unbacked, inFlight, shared := p.unbackedClaims()
	var sfs unix.Statfs_t
	if err := p.statfs(p.dir, &sfs); err != nil {
		return Capacity{}, err
	}
	c, unbackedImages, err := p.scanImages(inFlight, shared)
	if err != nil {
		return Capacity{}, err
	}
	unbacked += unbackedImages
	bsize := int64(sfs.Bsize)
	c.Total = max(int64(sfs.Blocks)*bsize-p.reserve, 0)
	c.Available = max(int64(sfs.Bavail)*bsize-unbacked-p.reserve, 0)
	// Files filling a filesystem's inode table (where it has one: btrfs
	// reports none) leave free blocks no new volume can use: it needs
	// inodes for its image and its metadata.
	if sfs.Files > 0 && sfs.Ffree < inodesPerVolume {
		c.Available = 0
	}
	return c, nil
}

// unbackedClaims returns what creates in flight and snapshots sharing
// blocks reserve beyond the blocks they hold, the keys of the creates in
// flight (scanImages leaves their images out) and which recorded volumes
// share blocks.
func (p *ImagePool) unbackedClaims() (unbacked int64, inFlight, shared map[string]bool) {
	// Creates in flight count with the part of their claim not backed by
	// blocks yet. One whose volume or snapshot is recorded already (it
	// leaves the in-flight set only once it has p.mu) counts with the
	// recorded ones, as what it is now: counting it here as well would
	// refuse creates that fit, and a shared copy here would count only
	// its growth.
	inFlight = map[string]bool{}
	var backing []claim        // in-flight claims with a file, looked at below
	shared = map[string]bool{} // what shares blocks reserves its whole size (Volume.Shared, Snapshot.Shared)
	p.vmu.RLock()
	for key, c := range p.creating {
		if p.recorded(key) {
			continue
		}
		inFlight[key] = true
		unbacked += c.size
		if c.file != "" {
			backing = append(backing, c)
		}
	}
	for key, v := range p.vols {
		shared[key] = v.Shared
	}
	for _, s := range p.snaps {
		if s.Shared {
			unbacked += s.SizeBytes
		}
	}
	p.vmu.RUnlock()
	for _, c := range backing {
		var st unix.Stat_t
		if unix.Stat(c.file, &st) == nil {
			unbacked -= min(st.Blocks*512, c.size)
		}
	}
	return unbacked, inFlight, shared
}

// scanImages counts the pool's volumes (by their metadata) and the bytes
// its images take, and returns the part of those images not backed by
// blocks: all of one that shares blocks, the holes of the others. Images
// of creates in flight are unbackedClaims' to count.
func (p *ImagePool) scanImages(inFlight, shared map[string]bool) (Capacity, int64, error) {
	// One open directory, names unsorted, stats relative to it: this runs
	// at every create and capacity poll, over every volume of the pool.
	d, err := os.Open(p.dir)
	if err != nil {
		return Capacity{}, 0, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return Capacity{}, 0, err
	}
	dfd := int(d.Fd())
	var c Capacity
	var unbacked int64
	for _, n := range names {
		if key, ok := strings.CutSuffix(n, metaSuffix); ok && keyRE.MatchString(key) {
			c.Volumes++
			continue
		}
		key, ok := strings.CutSuffix(n, imageSuffix)
		if !ok || !keyRE.MatchString(key) || inFlight[key] {
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
	return c, unbacked, nil
}

// inodesPerVolume is what a new volume or snapshot takes of the pool
// filesystem's inodes at most: its data and its metadata's temp file, which
// is renamed into place.
const inodesPerVolume = 2

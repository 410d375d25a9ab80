package pool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/durable"
	"github.com/flashpv/flashpv/pkg/xfsquota"
)

// FirstProjectID is where quota pools start numbering XFS projects, well
// above the small IDs administrators give by hand in /etc/projid.
const FirstProjectID = 1 << 20

// QuotaPool is one `quota` pool: a directory on XFS mounted with prjquota.
// Each volume is a subdirectory in its own project, whose hard limit is the
// volume's size; pods get the directory bind-mounted, so the data path is
// the filesystem's own. Metadata files sit next to the directories, as in
// image pools.
type QuotaPool struct {
	dirPool
	root *os.File // the pool directory, for quotactl_fd
}

// OpenQuota opens a quota pool. A directory that is not on XFS with project
// quotas enforced gives an error wrapping ErrUnusable.
func OpenQuota(name, dir string, reserve int64) (*QuotaPool, error) {
	real, lock, err := openDir(name, dir)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*QuotaPool, error) {
		lock.Close()
		return nil, err
	}
	if err := xfsquota.Check(real); err != nil {
		if errors.Is(err, xfsquota.ErrNotEnforced) {
			return fail(fmt.Errorf("%w: pool %s: %v", ErrUnusable, name, err))
		}
		return fail(fmt.Errorf("pool %s: %w", name, err))
	}
	root, err := os.Open(real)
	if err != nil {
		return fail(err)
	}
	p := &QuotaPool{dirPool: newDirPool(name, real, reserve, lock), root: root}
	p.releasable = false // root pins the filesystem
	err = loadDir(&p.mirror, real)
	if err == nil {
		err = loadSnapshots(&p.mirror, real)
	}
	if err == nil {
		err = p.collectGarbage()
	}
	if err == nil {
		err = p.collectSnapshotGarbage(p.removeTree)
	}
	if err != nil {
		root.Close()
		return fail(fmt.Errorf("pool %s: %w", name, err))
	}
	return p, nil
}

func (p *QuotaPool) Kind() Kind { return KindQuota }

// Layout: volumes are directories of the pool's XFS.
func (p *QuotaPool) Layout() Layout { return Layout{Directory: true, FsType: "xfs"} }

// Close releases the pool's directory lock.
func (p *QuotaPool) Close() error {
	p.root.Close()
	return p.dirPool.Close()
}

// Probe checks that the directory can be written and quotas are still on.
func (p *QuotaPool) Probe(ctx context.Context) error {
	return p.probeWith(ctx, func() error { return xfsquota.Check(p.dir) })
}

// VolumeDir is the directory of the volume with the given key.
func (p *QuotaPool) VolumeDir(key string) string { return filepath.Join(p.dir, key) }

// collectGarbage finishes what a crash interrupted: a volume directory
// without metadata is a create that never finished or a delete that did
// (metadata goes first), so it is removed and its project's limit cleared.
func (p *QuotaPool) collectGarbage() error {
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if probeLeftover(n) {
			if err := os.Remove(filepath.Join(p.dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			continue
		}
		if key, ok := strings.CutSuffix(n, metaSuffix+tmpSuffix); ok && keyRE.MatchString(key) {
			if err := os.Remove(filepath.Join(p.dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			continue
		}
		if !keyRE.MatchString(n) || !e.IsDir() {
			continue
		}
		if _, ok := p.vols[n]; ok {
			continue
		}
		if _, ok := p.bad[n]; ok {
			continue // its metadata exists but is unreadable: keep the data
		}
		klog.InfoS("Removing leftover of an interrupted operation", "pool", p.name, "dir", n)
		if err := p.removeDir(n); err != nil {
			return err
		}
	}
	return nil
}

// removeDir deletes a volume directory and frees its project. RemoveAll
// never follows symlinks out of the directory.
func (p *QuotaPool) removeDir(key string) error {
	return p.removeTree(p.VolumeDir(key))
}

// removeTree deletes a volume's or snapshot's directory and frees its
// project.
func (p *QuotaPool) removeTree(dir string) error {
	var project uint32
	if f, err := os.Open(dir); err == nil {
		project, _, _ = xfsquota.Project(f)
		f.Close()
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := unix.Syncfs(int(p.root.Fd())); err != nil {
		return err
	}
	if project >= FirstProjectID {
		p.awaitProjectEmpty(project)
		if err := xfsquota.SetLimit(p.root, project, 0, 0); err != nil {
			return err
		}
	}
	return durable.SyncDir(p.dir)
}

// awaitProjectEmpty waits, briefly, until the usage of a removed tree's
// project reads zero. XFS frees unlinked inodes in a background worker
// (deferred inactivation, Linux 5.19 on) and charges their blocks back to
// the project only then; syncfs does not wait for it, a quota read only
// nudges it. An ID whose usage is not zero yet is merely skipped by
// freeProject, so giving up after the wait loses nothing.
func (p *QuotaPool) awaitProjectEmpty(project uint32) {
	deadline := time.Now().Add(projectSettleWait)
	for {
		q, err := xfsquota.Get(p.root, project)
		if err != nil || (q.BlockUsed == 0 && q.InodeUsed == 0) {
			return
		}
		if time.Now().After(deadline) {
			klog.InfoS("A removed tree's project still shows usage", "pool", p.name, "project", project, "bytes", q.BlockUsed, "inodes", q.InodeUsed)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// projectSettleWait bounds awaitProjectEmpty.
const projectSettleWait = 5 * time.Second

// Create makes a volume directory with its own project and limit.
func (p *QuotaPool) Create(ctx context.Context, s Spec) (*Volume, bool, error) {
	return p.create(ctx, s, Content{})
}

// create makes a volume directory with its own project and limit, filled
// with a copy of c when c names a source.
func (p *QuotaPool) create(ctx context.Context, s Spec, c Content) (*Volume, bool, error) {
	if err := ValidateName(s.Name); err != nil {
		return nil, false, err
	}
	if s.SizeBytes <= 0 {
		return nil, false, fmt.Errorf("%w: size must be positive", ErrInvalid)
	}
	if s.Mode != ModeFilesystem {
		return nil, false, fmt.Errorf("%w: quota pool %s holds Filesystem volumes only, not Block", ErrInvalid, p.name)
	}
	if s.FsType != "xfs" {
		return nil, false, fmt.Errorf("%w: quota pool %s is XFS; fsType %q cannot be given", ErrInvalid, p.name, s.FsType)
	}
	key := KeyForName(s.Name)
	var project uint32
	existing, err := p.begin(key, s, func() (claim, error) {
		// A directory without metadata is what an interrupted create or
		// delete of this very name left: finish removing it.
		if _, err := os.Lstat(p.VolumeDir(key)); err == nil {
			if err := p.removeDir(key); err != nil {
				return claim{}, err
			}
		}
		need := s.SizeBytes
		if c.Volume != nil {
			if err := p.idle(c.Volume.Key()); err != nil {
				return claim{}, err
			}
			if p.reflink {
				need += c.Volume.SizeBytes // the source shares its blocks too
			}
		}
		cp, err := p.capacity()
		if err != nil {
			return claim{}, err
		}
		if need > cp.Available {
			return claim{}, fmt.Errorf("%w %s: %d bytes requested, %d available", ErrNoSpace, p.name, need, cp.Available)
		}
		project, err = p.freeProject()
		return claim{size: s.SizeBytes, project: project}, err
	})
	if existing != nil || err != nil {
		return existing, false, err
	}
	defer p.done(key)
	dir := p.VolumeDir(key)
	undo := func(err error) (*Volume, bool, error) {
		os.RemoveAll(dir)
		xfsquota.SetLimit(p.root, project, 0, 0)
		return nil, false, err
	}
	if err := p.makeProjectDir(dir, project, s.SizeBytes); err != nil {
		return undo(err)
	}
	if c.ID() != "" {
		if err := p.fill(ctx, dir, c); err != nil {
			return undo(err)
		}
	}
	v := newVolume(p.name, key, s, p.Layout())
	v.ProjectID = project
	v.Shared = c.ID() != "" && p.reflink
	if err := writeVolume(&p.mirror, p.metaPath(key), key, v); err != nil {
		return undo(err)
	}
	return v, true, nil
}

// freeProject picks the lowest project ID from FirstProjectID on that no
// volume has and that owns nothing on the filesystem: an ID is reused only
// once everything of its deleted volume is gone, and an ID something else
// on the filesystem uses is never taken.
func (p *QuotaPool) freeProject() (uint32, error) {
	used := map[uint32]bool{}
	p.vmu.RLock()
	for _, v := range p.vols {
		used[v.ProjectID] = true
	}
	for _, sn := range p.snaps {
		used[sn.ProjectID] = true
	}
	p.vmu.RUnlock()
	for _, c := range p.creating {
		used[c.project] = true
	}
	for id := uint32(FirstProjectID); id < FirstProjectID+1<<24; id++ {
		if used[id] {
			continue
		}
		q, err := xfsquota.Get(p.root, id)
		if err != nil {
			return 0, err
		}
		if q.Unused() {
			return id, nil
		}
	}
	return 0, fmt.Errorf("%w %s: no free project ID", ErrNoSpace, p.name)
}

// Delete removes a volume: metadata first (then it no longer exists; a
// crash leaves a directory that Open removes), the directory, its limit.
func (p *QuotaPool) Delete(_ context.Context, key string) error {
	return p.remove(key, func() error { return p.removeDir(key) })
}

// Expand raises the volume's limit, which takes effect at once.
func (p *QuotaPool) Expand(_ context.Context, key string, size int64) (*Volume, error) {
	return p.grow(key, size, func(v *Volume) error {
		c, err := p.capacity()
		if err != nil {
			return err
		}
		if grow := size - v.SizeBytes; grow > c.Available {
			return fmt.Errorf("%w %s: %d more bytes requested, %d available", ErrNoSpace, p.name, grow, c.Available)
		}
		return xfsquota.SetLimit(p.root, v.ProjectID, size, 0)
	})
}

// Capacity reports the pool's space.
func (p *QuotaPool) Capacity(context.Context) (Capacity, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.capacity()
}

// capacity promises what no volume can take: the filesystem's free space
// minus, for every volume, the part of its limit it has not used yet.
func (p *QuotaPool) capacity() (Capacity, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(p.dir, &sfs); err != nil {
		return Capacity{}, err
	}
	unused := p.reserved()
	vols, err := p.List()
	if err != nil {
		return Capacity{}, err
	}
	var c Capacity
	for _, v := range vols {
		q, err := xfsquota.Get(p.root, v.ProjectID)
		if err != nil {
			return Capacity{}, err
		}
		if v.Shared {
			// Its shared blocks are charged to it already, and each
			// takes a new one when written.
			unused += v.SizeBytes
		} else {
			unused += max(v.SizeBytes-q.BlockUsed, 0)
		}
		c.Allocated += v.SizeBytes
		c.Volumes++
	}
	snaps, err := p.ListSnapshots()
	if err != nil {
		return Capacity{}, err
	}
	for _, sn := range snaps {
		if sn.Shared {
			unused += sn.SizeBytes
		}
	}
	bsize := int64(sfs.Bsize)
	c.Total = max(int64(sfs.Blocks)*bsize-p.reserve, 0)
	c.Available = max(int64(sfs.Bavail)*bsize-unused-p.reserve, 0)
	return c, nil
}

// Usage returns the bytes a volume's project uses.
func (p *QuotaPool) Usage(_ context.Context, v *Volume) (int64, error) {
	q, err := xfsquota.Get(p.root, v.ProjectID)
	return q.BlockUsed, err
}

// Check finds volume directories that are gone, left their project, or lost
// their limit.
func (p *QuotaPool) Check(_ context.Context, vols []*Volume) map[string][]Problem {
	return checkEach(vols, p.check)
}

func (p *QuotaPool) check(v *Volume) []Problem {
	f, err := os.Open(p.VolumeDir(v.Key()))
	if errors.Is(err, fs.ErrNotExist) {
		return []Problem{{DataLoss: true, Reason: "DirectoryMissing", Message: fmt.Sprintf("the directory of volume %s is gone from pool %s", v.ID, p.name)}}
	}
	if err != nil {
		return []Problem{{Reason: "DirectoryUnreadable", Message: err.Error()}}
	}
	defer f.Close()
	var out []Problem
	if id, inherit, err := xfsquota.Project(f); err != nil || id != v.ProjectID || !inherit {
		out = append(out, Problem{Reason: "ProjectChanged", Message: fmt.Sprintf("volume %s: directory is in project %d (inherit %v), want %d: %v", v.ID, id, inherit, v.ProjectID, err)})
	}
	if q, err := xfsquota.Get(p.root, v.ProjectID); err != nil || q.BlockLimit < v.SizeBytes {
		out = append(out, Problem{Reason: "QuotaLimitLost", Message: fmt.Sprintf("volume %s: project %d has a limit of %d bytes, want %d: %v", v.ID, v.ProjectID, q.BlockLimit, v.SizeBytes, err)})
	}
	return out
}

// Package xfsquota sets and reads XFS project quotas through the kernel's own
// interfaces: FS_IOC_FSGETXATTR/FS_IOC_FSSETXATTR give a directory its
// project, and quotactl_fd(2) with the XFS quota commands sets and reads a
// project's limits and usage.
//
// The kernel interfaces are used rather than xfs_quota(8): no process per
// call (each volume operation would otherwise exec it once or twice), errors
// come back as errnos instead of text to parse, and quotactl_fd works on any
// open file of the filesystem, so the driver never has to find the block
// device behind a mount (which a containerised driver may not see).
package xfsquota

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ioctls and flags of struct fsxattr (linux/fs.h).
const (
	fsIocFsGetXattr   = 0x801c581f // _IOR('X', 31, struct fsxattr)
	fsIocFsSetXattr   = 0x401c5820 // _IOW('X', 32, struct fsxattr)
	xflagProjInherit  = 0x00000200 // FS_XFLAG_PROJINHERIT
	prjQuota          = 2          // PRJQUOTA
	qXGetQuota        = 'X'<<8 + 3 // Q_XGETQUOTA
	qXSetQLim         = 'X'<<8 + 4 // Q_XSETQLIM
	qXGetQStatV       = 'X'<<8 + 8 // Q_XGETQSTATV
	fsDquotVersion    = 1          // FS_DQUOT_VERSION
	fsProjQuota       = 2          // FS_PROJ_QUOTA
	fsDqISoft         = 1 << 0
	fsDqIHard         = 1 << 1
	fsDqBSoft         = 1 << 2
	fsDqBHard         = 1 << 3
	fsQuotaPdqAcct    = 1 << 4 // FS_QUOTA_PDQ_ACCT
	fsQuotaPdqEnfd    = 1 << 5 // FS_QUOTA_PDQ_ENFD
	fsQStatVVersion1  = 1
	basicBlock        = 512 // quota block counts are in 512-byte units
	sysQuotactlFd     = 443 // quotactl_fd(2), Linux 5.14
	xfsSuperMagic     = 0x58465342
	qstatvFlagsOffset = 2
)

// fsxattr is struct fsxattr.
type fsxattr struct {
	Xflags     uint32
	Extsize    uint32
	Nextents   uint32
	Projid     uint32
	Cowextsize uint32
	Pad        [8]byte
}

// diskQuota is struct fs_disk_quota (linux/dqblk_xfs.h), 112 bytes.
type diskQuota struct {
	Version      int8
	Flags        int8
	Fieldmask    uint16
	ID           uint32
	BlkHardlimit uint64
	BlkSoftlimit uint64
	InoHardlimit uint64
	InoSoftlimit uint64
	Bcount       uint64
	Icount       uint64
	Itimer       int32
	Btimer       int32
	Iwarns       uint16
	Bwarns       uint16
	ItimerHi     int8
	BtimerHi     int8
	RtbtimerHi   int8
	Padding2     int8
	RtbHardlimit uint64
	RtbSoftlimit uint64
	Rtbcount     uint64
	Rtbtimer     int32
	Rtbwarns     uint16
	Padding3     int16
	Padding4     [8]byte
}

var _ [112 - unsafe.Sizeof(diskQuota{})]struct{}
var _ [unsafe.Sizeof(diskQuota{}) - 112]struct{}

// Quota is one project's limits and usage, in bytes and inodes (0: no limit).
type Quota struct {
	BlockLimit, BlockUsed int64
	InodeLimit, InodeUsed int64
}

// ErrNotEnforced: the filesystem is not XFS with project quotas accounted and
// enforced (mounted with prjquota).
var ErrNotEnforced = errors.New("project quotas are not enforced")

func quotactl(f *os.File, cmd, id int, addr unsafe.Pointer) error {
	qcmd := uintptr(cmd<<8 | prjQuota)
	_, _, e := unix.Syscall6(sysQuotactlFd, f.Fd(), qcmd, uintptr(id), uintptr(addr), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// Check tells whether the filesystem holding dir can give volumes project
// quotas: it must be XFS, mounted with prjquota (accounting and enforcement).
func Check(dir string) error {
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return err
	}
	if sfs.Type != xfsSuperMagic {
		return fmt.Errorf("%w: %s is not on XFS (filesystem magic %#x)", ErrNotEnforced, dir, sfs.Type)
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	var statv [256]byte // struct fs_quota_statv is 160 bytes; room to spare
	statv[0] = fsQStatVVersion1
	if err := quotactl(f, qXGetQStatV, 0, unsafe.Pointer(&statv[0])); err != nil {
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("%w on %s: %v", ErrNotEnforced, dir, err)
		}
		return fmt.Errorf("reading the quota state of %s: %w", dir, err)
	}
	flags := *(*uint16)(unsafe.Pointer(&statv[qstatvFlagsOffset]))
	if flags&fsQuotaPdqAcct == 0 || flags&fsQuotaPdqEnfd == 0 {
		return fmt.Errorf("%w on %s: mount the filesystem with -o prjquota", ErrNotEnforced, dir)
	}
	return nil
}

// Project returns the project ID of an open directory and whether new files
// in it inherit that project.
func Project(f *os.File) (id uint32, inherit bool, err error) {
	var x fsxattr
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFsGetXattr, uintptr(unsafe.Pointer(&x))); e != 0 {
		return 0, false, fmt.Errorf("FS_IOC_FSGETXATTR %s: %w", f.Name(), e)
	}
	return x.Projid, x.Xflags&xflagProjInherit != 0, nil
}

// SetProject puts an open directory in project id, inherited by everything
// created in it.
func SetProject(f *os.File, id uint32) error {
	var x fsxattr
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFsGetXattr, uintptr(unsafe.Pointer(&x))); e != 0 {
		return fmt.Errorf("FS_IOC_FSGETXATTR %s: %w", f.Name(), e)
	}
	x.Projid = id
	x.Xflags |= xflagProjInherit
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFsSetXattr, uintptr(unsafe.Pointer(&x))); e != 0 {
		return fmt.Errorf("FS_IOC_FSSETXATTR %s: %w", f.Name(), e)
	}
	return nil
}

// SetLimit sets project id's hard (and soft) limits on the filesystem of f:
// bytes are rounded up to 512-byte blocks; 0 removes a limit.
func SetLimit(f *os.File, id uint32, bytes, inodes int64) error {
	blocks := uint64((bytes + basicBlock - 1) / basicBlock)
	q := diskQuota{
		Version: fsDquotVersion, Flags: fsProjQuota, ID: id,
		Fieldmask:    fsDqBSoft | fsDqBHard | fsDqISoft | fsDqIHard,
		BlkHardlimit: blocks, BlkSoftlimit: blocks,
		InoHardlimit: uint64(inodes), InoSoftlimit: uint64(inodes),
	}
	if err := quotactl(f, qXSetQLim, int(id), unsafe.Pointer(&q)); err != nil {
		return fmt.Errorf("setting the quota of project %d: %w", id, err)
	}
	return nil
}

// Get reads project id's limits and usage on the filesystem of f. A project
// the filesystem has never seen reads as all zeros.
func Get(f *os.File, id uint32) (Quota, error) {
	var q diskQuota
	if err := quotactl(f, qXGetQuota, int(id), unsafe.Pointer(&q)); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Quota{}, nil
		}
		return Quota{}, fmt.Errorf("reading the quota of project %d: %w", id, err)
	}
	return Quota{
		BlockLimit: int64(q.BlkHardlimit) * basicBlock, BlockUsed: int64(q.Bcount) * basicBlock,
		InodeLimit: int64(q.InoHardlimit), InodeUsed: int64(q.Icount),
	}, nil
}

// Unused reports whether nothing on the filesystem belongs to project id and
// no limit is set for it, so a new volume may take it.
func (q Quota) Unused() bool { return q == Quota{} }

//go:build vmselftest

// Package vmself checks the VM harness (hack/vm) end to end. It is no test of
// flashpv: hack/vm/selftest.sh builds it with the vmselftest tag and runs it
// in VMs through hack/vm/vmexec, with the environment, arguments and
// working directory these tests check.
package vmself

import (
	"encoding/json"
	"errors"
	"flag"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var arg = flag.String("selftest.arg", "", "must equal FLASHPV_SELFTEST_ARG")

// run runs a command, logs how long it took and fails the test if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	start := time.Now()
	out, err := exec.Command(name, args...).CombinedOutput()
	t.Logf("%5.2fs %s %s", time.Since(start).Seconds(), name, strings.Join(args, " "))
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func TestEmpty(t *testing.T) {}

func TestEnvAndArgs(t *testing.T) {
	if want := os.Getenv("FLASHPV_SELFTEST_ARG"); *arg != want || want == "" {
		t.Errorf("argument %q, want %q", *arg, want)
	}
	if os.Getenv("GOTRACEBACK") != "all" || os.Getenv("NOT_PASSED") != "" {
		t.Error("GOTRACEBACK missing or NOT_PASSED passed")
	}
	if os.Getenv("TMPDIR") != "/scratch" || len(strings.Fields(os.Getenv("FLASHPV_VM_DISKS"))) != 2 {
		t.Errorf("TMPDIR=%q FLASHPV_VM_DISKS=%q", os.Getenv("TMPDIR"), os.Getenv("FLASHPV_VM_DISKS"))
	}
	if wd, _ := os.Getwd(); wd != os.Getenv("FLASHPV_SELFTEST_CWD") {
		t.Errorf("working directory %q, want %q", wd, os.Getenv("FLASHPV_SELFTEST_CWD"))
	}
	if _, err := os.Stat("../../hack/vm/vmexec"); err != nil {
		t.Errorf("the repository by a relative path: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Error("not root")
	}
	mounts, _ := os.ReadFile("/etc/mtab")
	for _, m := range []string{" /proc ", " /sys ", " /dev ", " /dev/pts ", " /dev/shm ", " /run ", " /tmp ", " /scratch ", " /mnt/job "} {
		if !strings.Contains(string(mounts), m) {
			t.Errorf("nothing mounted on%s:\n%s", m, mounts)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("loopback: %v", err)
	}
	l.Close()
}

func TestLVM(t *testing.T) {
	disks := strings.Fields(os.Getenv("FLASHPV_VM_DISKS"))
	run(t, "pvcreate", append([]string{"-y"}, disks...)...)
	defer run(t, "pvremove", append([]string{"-y"}, disks...)...)
	run(t, "vgcreate", append([]string{"selftest"}, disks...)...)
	defer run(t, "vgremove", "-y", "selftest")
	run(t, "lvcreate", "-y", "-L", "1G", "-n", "thick", "selftest")
	run(t, "lvcreate", "-y", "-L", "512M", "-i", "2", "-n", "striped", "selftest")
	run(t, "lvcreate", "-y", "--type", "thin-pool", "-L", "1G", "-n", "tp", "selftest")
	run(t, "lvcreate", "-y", "-V", "4G", "--thinpool", "tp", "-n", "thin", "selftest")
	for _, lv := range []string{"thick", "striped", "thin"} {
		for _, p := range []string{"/dev/selftest/" + lv, "/dev/mapper/selftest-" + lv} {
			if _, err := os.Stat(p); err != nil {
				t.Error(err)
			}
		}
	}
	run(t, "mkfs.xfs", "-q", "/dev/selftest/thin")
	run(t, "mkfs.ext4", "-q", "/dev/selftest/thick")
	run(t, "lvextend", "-L", "+256M", "/dev/selftest/thick")
	run(t, "resize2fs", "/dev/selftest/thick")
	run(t, "lvcreate", "-y", "-s", "-n", "thinsnap", "selftest/thin")
	out := run(t, "lvs", "--reportformat", "json", "-o", "lv_name,lv_size,lv_attr,pool_lv", "--units", "b", "selftest")
	var rep struct {
		Report []struct {
			LV []map[string]string `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Report) != 1 || len(rep.Report[0].LV) != 5 { // no hidden LVs without -a
		t.Fatalf("lvs --reportformat json: %v\n%s", err, out)
	}
	run(t, "lvremove", "-y", "selftest/thinsnap", "selftest/thin", "selftest/tp", "selftest/striped", "selftest/thick")
}

func TestXFSProjectQuota(t *testing.T) {
	img := filepath.Join(t.TempDir(), "xfs.img")
	run(t, "truncate", "-s", "1G", img)
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", img))
	defer run(t, "losetup", "-d", dev)
	run(t, "mkfs.xfs", "-q", dev)
	mnt := t.TempDir()
	run(t, "mount", "-o", "prjquota", dev, mnt)
	defer run(t, "umount", mnt)
	dir := filepath.Join(mnt, "vol")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "xfs_quota", "-x", "-c", "project -s -p "+dir+" 42", "-c", "limit -p bhard=20m 42", mnt)
	f, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := 0; i < 40 && err == nil; i++ {
		_, err = f.Write(buf)
	}
	if !errors.Is(err, syscall.ENOSPC) { // XFS: ENOSPC, not EDQUOT, for projects
		t.Fatalf("40 MiB into a 20 MiB project: %v, want ENOSPC", err)
	}
}

func TestFails(t *testing.T) {
	if os.Getenv("FLASHPV_SELFTEST_FAIL") == "" {
		t.Skip("FLASHPV_SELFTEST_FAIL not set")
	}
	t.Fatal("failing on purpose")
}

func TestSleeps(t *testing.T) {
	if os.Getenv("FLASHPV_SELFTEST_SLEEP") == "" {
		t.Skip("FLASHPV_SELFTEST_SLEEP not set")
	}
	for i := 0; ; i++ {
		t.Logf("asleep for %d s", i) // -test.v prints these as they come
		time.Sleep(time.Second)
	}
}

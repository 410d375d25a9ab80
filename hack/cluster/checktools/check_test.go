package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// repoWith writes a minimal harness: an install list, a build script, a
// Makefile target and the given scripts.
func repoWith(t *testing.T, install string, scripts map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	cluster := filepath.Join(dir, "hack", "cluster")
	if err := os.MkdirAll(cluster, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"install-deps.sh": "tools=(\n\t" + install + "\n)\n",
		"build.sh":        "# builds " + strings.Join(sortedKeys(built), " ") + "\n",
		"lib.sh":          "wait_for() { local s=$1 w=$2; shift 2; until \"$@\"; do sleep 1; done; }\non() { local n=$1; shift; nsenter -t 1 -m -- \"$@\"; }\n",
	}
	for k, v := range scripts {
		files[k] = v
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(cluster, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk := "demo:\n\thack/cluster/demo.sh\n"
	if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte(mk), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestCheck(t *testing.T) {
	const header = "source \"$(dirname \"$0\")/lib.sh\"\nHERE=$(dirname \"$0\")\n\"$HERE/install-deps.sh\"\n"
	for _, tc := range []struct {
		name    string
		install string
		scripts map[string]string
		want    []string // substrings of the problems, in order; none: clean
	}{{
		name:    "everything installed",
		install: "mkfs.xfs:xfsprogs containerd:containerd /bin/busybox:busybox-static ip:iproute2",
		scripts: map[string]string{"demo.sh": header + "copy_with_libs \"$root\" blkid mkfs.xfs\ncp /bin/busybox \"$root/bin/sh\"\nnohup containerd --config x &\non node-1 sh -ec \"ip link set lo up\"\n\"$BIN/kubectl\" get nodes\nkubectl get pods\n"},
	}, {
		name:    "a copied tool missing from the list (the make demo defect)",
		install: "containerd:containerd",
		scripts: map[string]string{"demo.sh": header + "copy_with_libs \"$root\" blkid mkfs.xfs btrfs\n"},
		want:    []string{"demo.sh:4: copies mkfs.xfs", "demo.sh:4: copies btrfs"},
	}, {
		name:    "a copied path",
		install: "containerd:containerd",
		scripts: map[string]string{"demo.sh": header + "cp /etc/mke2fs.conf \"$root/etc/\"\n"},
		want:    []string{"copies /etc/mke2fs.conf"},
	}, {
		name:    "tools run through runners, functions and sh -c",
		install: "containerd:containerd",
		scripts: map[string]string{"demo.sh": header + "wait_for 30 ctr ctr version\non node-1 sh -ec \"\n\tip link set lo up\n\tsysctl -qw x=1\"\ntimeout 5 nsenter -t 1 -n -- iptables-save\n"},
		want:    []string{"demo.sh:4: runs ctr", "demo.sh:6: runs ip", "demo.sh:7: runs sysctl", "demo.sh:8: runs iptables-save"},
	}, {
		name:    "probes are not uses",
		install: "containerd:containerd",
		scripts: map[string]string{"demo.sh": header + "if command -v iptables-save >/dev/null; then :; fi\n"},
	}, {
		name:    "a target that uses a tool before installing",
		install: "containerd:containerd",
		scripts: map[string]string{"demo.sh": "source \"$(dirname \"$0\")/lib.sh\"\nHERE=$(dirname \"$0\")\ncontainerd --version\n\"$HERE/install-deps.sh\"\n"},
		want:    []string{"target demo: hack/cluster/demo.sh runs containerd (line 3) before it runs install-deps.sh"},
	}, {
		name:    "installing through the script a target runs first",
		install: "containerd:containerd",
		scripts: map[string]string{"demo.sh": "HERE=$(dirname \"$0\")\n\"$HERE/up.sh\"\ncontainerd --version\n", "up.sh": header + "containerd --version\n"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			problems, err := Check(repoWith(t, tc.install, tc.scripts))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range problems {
				got = append(got, p.String())
			}
			if len(got) != len(tc.want) {
				t.Fatalf("problems:\n%s\nwant %d: %q", strings.Join(got, "\n"), len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d: %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}

// TestRepository checks the real harness: this is what make verify-cluster
// enforces.
func TestRepository(t *testing.T) {
	problems, err := Check("../../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

package driver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/flashpv/flashpv/pkg/pool"
)

// The fuzz targets (fuzz_controller_test.go, fuzz_node_test.go) decode
// each input as a CSI request with proto.Unmarshal, as the gRPC server
// does (so strings are UTF-8, as on the wire), and call its handler on a
// fresh driver per input: two image pools and a kubelet directory in a
// temp dir, with the loop devices and mounts of the unit tests faked. A
// fresh driver per input keeps every crasher reproducible from its input
// alone.
//
// Each call must not panic, must answer an error with a status whose code
// the CSI spec allows for the RPC (never Unknown, never Internal: hostile
// input is the caller's fault), must answer success with a response that
// marshals, and must touch nothing outside the pools and the kubelet
// directory: see fuzzEnv.check.

// Placeholders in the strings of an input, replaced per input by the
// paths of its temp dir, so that seeds can name real paths.
const (
	phKubelet = "{kubelet}" // the kubelet directory
	phRoot    = "{root}"    // the temp dir that holds it, the pools and the sentinel
)

// Names of the volumes and snapshot every input finds, and where they are
// staged and published. Seeds name them by these IDs.
const (
	fixBlock   = "blk"  // Block, staged and published
	fixFs      = "fs"   // ext4, staged and published
	fixIdle    = "idle" // Block in pool "fast", neither staged nor published
	fixSnap    = "snap" // snapshot of idle
	fixStaging = phKubelet + "/plugins/staging/"
	fixPods    = phKubelet + "/pods/p1/"
)

func fixID(pool, name string) string { return pool + "." + poolKey(name) }

func poolKey(name string) string { return pool.KeyForName(name) }

var (
	idBlock = fixID("default", fixBlock)
	idFs    = fixID("default", fixFs)
	idIdle  = fixID("fast", fixIdle)
	idSnap  = fixID("fast", fixSnap)
)

// fuzzEnv is one input's driver and temp dir.
type fuzzEnv struct {
	t       *testing.T
	ctx     context.Context
	root    string // temp dir: pools, kubelet, outside
	kubelet string
	ctl     *Controller
	node    *Node
	mounts  *fakeMounts
	repl    *strings.Replacer
	before  map[string]string // the sentinel's state before the call
	paths   map[string]string // absolute paths in the request outside the kubelet dir, and their state
}

// fuzzPoolBytes is what the pools can promise: enough for an xfs, not
// enough to fill the disk when the fuzzer asks for huge volumes.
const fuzzPoolBytes = 320 * mib

func newFuzzEnv(t *testing.T) *fuzzEnv {
	t.Helper()
	root := fuzzTempDir(t)
	e := &fuzzEnv{t: t, ctx: context.Background(), root: root, kubelet: filepath.Join(root, "kubelet")}
	e.repl = strings.NewReplacer(phKubelet, e.kubelet, phRoot, root)
	outside := filepath.Join(root, "outside")
	for _, d := range []string{e.kubelet + "/pods/p1", e.kubelet + "/plugins/staging", outside + "/dir"} {
		must(t, os.MkdirAll(d, 0o750))
	}
	must(t, os.WriteFile(outside+"/file", []byte("sentinel"), 0o640))
	must(t, os.WriteFile(outside+"/dir/file", []byte("sentinel"), 0o640))
	// Ways out of the kubelet directory that a path might take.
	must(t, os.Symlink("../outside", e.kubelet+"/escape"))
	must(t, os.Symlink(outside, e.kubelet+"/pods/abs-escape"))
	must(t, os.Symlink(outside+"/file", e.kubelet+"/pods/p1/file-link"))

	var pools []pool.Pool
	for _, name := range []string{"default", "fast"} {
		p, err := pool.OpenImage(name, filepath.Join(root, "pool-"+name), reserveFor(t, root))
		must(t, err)
		t.Cleanup(func() { p.Close() })
		pools = append(pools, p)
	}
	devs := &fakeDevices{attached: map[string]string{}, busy: map[string]bool{}}
	e.mounts = newFakeMounts()
	d, err := New(Config{NodeID: "n1", Pools: pools, KubeletDir: e.kubelet, MaxVolumes: 10, Loops: devs, Mounts: e.mounts})
	must(t, err)
	for _, p := range d.pools {
		p.src = &fakeResize{Source: p.src} // the real one refreshes a real loop device
	}
	e.ctl, e.node = &Controller{d: d}, &Node{d: d}
	e.fixtures()
	e.before = e.sentinel()
	return e
}

// fuzzTempDir is a temp dir on /dev/shm where there is one: pools sync
// every file they write, which on a disk costs most of an input's time.
func fuzzTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/dev/shm", "flashpv-fuzz-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	return dir
}

// reserveFor leaves the pools fuzzPoolBytes of the disk that holds dir.
func reserveFor(t *testing.T, dir string) int64 {
	var st unix.Statfs_t
	must(t, unix.Statfs(dir, &st))
	return max(int64(st.Bavail)*int64(st.Bsize)-fuzzPoolBytes, 0)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fixtures makes the volumes and snapshot every input finds.
func (e *fuzzEnv) fixtures() {
	t := e.t
	block, ext4 := blockCap(), mountCap("ext4")
	create := func(name string, c *csi.VolumeCapability, params map[string]string) {
		_, err := e.ctl.CreateVolume(e.ctx, &csi.CreateVolumeRequest{Name: name, Parameters: params,
			CapacityRange: &csi.CapacityRange{RequiredBytes: mib}, VolumeCapabilities: []*csi.VolumeCapability{c}})
		must(t, err)
	}
	create(fixBlock, block, nil)
	create(fixFs, ext4, nil)
	create(fixIdle, block, map[string]string{ParamPool: "fast"})
	_, err := e.ctl.CreateSnapshot(e.ctx, &csi.CreateSnapshotRequest{Name: fixSnap, SourceVolumeId: idIdle})
	must(t, err)
	for _, v := range []struct {
		id   string
		name string
		c    *csi.VolumeCapability
	}{{idBlock, fixBlock, block}, {idFs, fixFs, ext4}} {
		staging := e.repl.Replace(fixStaging + v.name)
		_, err := e.node.NodeStageVolume(e.ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: v.c})
		must(t, err)
		_, err = e.node.NodePublishVolume(e.ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: staging,
			TargetPath: e.repl.Replace(fixPods + v.name), VolumeCapability: v.c})
		must(t, err)
	}
}

// fuzzRPC fuzzes one RPC: every input is a marshalled request (seeds are
// requests), call answers it, and allowed are the codes it may fail with.
func fuzzRPC[R proto.Message](f *testing.F, seeds []R, call func(e *fuzzEnv, req R) (proto.Message, error), allowed ...codes.Code) {
	f.Helper()
	for _, s := range seeds {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	var zero R
	f.Fuzz(func(t *testing.T, data []byte) {
		req := zero.ProtoReflect().New().Interface().(R)
		if err := proto.Unmarshal(data, req); err != nil {
			return // the gRPC server refuses it before any handler
		}
		e := newFuzzEnv(t)
		e.expand(req.ProtoReflect())
		resp, err := callGuarded(e, req, call)
		e.check(req, resp, err, allowed)
	})
}

// callGuarded runs call with a deadline, so that a hang is a failure
// rather than a fuzzer stuck on one input.
func callGuarded[R proto.Message](e *fuzzEnv, req R, call func(*fuzzEnv, R) (proto.Message, error)) (proto.Message, error) {
	type result struct {
		resp proto.Message
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := call(e, req)
		done <- result{resp, err}
	}()
	select {
	case r := <-done:
		return r.resp, r.err
	case <-time.After(30 * time.Second):
		e.t.Fatalf("no answer in 30 s to %v", req)
		return nil, nil
	}
}

// expand replaces the placeholders in every string of m (fields, lists,
// map keys and values, nested messages) and records the absolute paths
// outside the kubelet directory with their state.
func (e *fuzzEnv) expand(m protoreflect.Message) {
	if e.paths == nil {
		e.paths = map[string]string{}
	}
	str := func(s string) string {
		s = e.repl.Replace(s)
		if filepath.IsAbs(s) && !within(filepath.Clean(s), e.kubelet) && len(e.paths) < 16 {
			e.paths[s] = lstate(s)
		}
		return s
	}
	var fields []protoreflect.FieldDescriptor
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		fields = append(fields, fd)
		return true
	})
	for _, fd := range fields {
		switch v := m.Get(fd); {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				switch fd.Kind() {
				case protoreflect.StringKind:
					l.Set(i, protoreflect.ValueOfString(str(l.Get(i).String())))
				case protoreflect.MessageKind:
					e.expand(l.Get(i).Message())
				}
			}
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			type kv struct {
				k protoreflect.MapKey
				v protoreflect.Value
			}
			var all []kv
			mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				all = append(all, kv{k, v})
				return true
			})
			for _, x := range all {
				mp.Clear(x.k)
			}
			for _, x := range all {
				k, v := x.k, x.v
				if fd.MapKey().Kind() == protoreflect.StringKind {
					k = protoreflect.ValueOfString(str(k.String())).MapKey()
				}
				switch fd.MapValue().Kind() {
				case protoreflect.StringKind:
					v = protoreflect.ValueOfString(str(v.String()))
				case protoreflect.MessageKind:
					e.expand(v.Message())
				}
				mp.Set(k, v)
			}
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, protoreflect.ValueOfString(str(v.String())))
		case fd.Kind() == protoreflect.MessageKind:
			e.expand(m.Mutable(fd).Message())
		}
	}
}

// lstate describes what is at path, without following a last symlink.
func lstate(path string) string {
	fi, err := os.Lstat(path)
	if err != nil {
		return "absent"
	}
	return fmt.Sprintf("%v %v %d", fi.Mode(), fi.ModTime(), fi.Size())
}

// sentinel records what the temp dir holds outside the pools and the
// kubelet directory: the "outside" tree that the kubelet directory's
// symlinks lead to, and the temp dir's own entries.
func (e *fuzzEnv) sentinel() map[string]string {
	out := map[string]string{}
	err := filepath.WalkDir(e.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == e.kubelet || p == filepath.Join(e.root, "pool-default") || p == filepath.Join(e.root, "pool-fast") {
			out[p] = "kept"
			return filepath.SkipDir
		}
		if p != e.root {
			out[p] = lstate(p)
		}
		return nil
	})
	must(e.t, err)
	return out
}

// check is what every answer must satisfy.
func (e *fuzzEnv) check(req, resp proto.Message, err error, allowed []codes.Code) {
	t := e.t
	t.Helper()
	if err != nil {
		st, ok := status.FromError(err)
		if !ok {
			t.Fatalf("error without a gRPC status: %v\nrequest: %v", err, req)
		}
		if !codeIn(st.Code(), allowed) {
			t.Fatalf("code %s, want one of %v: %v\nrequest: %v", st.Code(), allowed, st.Message(), req)
		}
	} else {
		if resp == nil || !resp.ProtoReflect().IsValid() {
			t.Fatalf("no error and no response\nrequest: %v", req)
		}
		if _, err := proto.Marshal(resp); err != nil {
			t.Fatalf("response cannot be sent: %v\nrequest: %v", err, req)
		}
	}
	after := e.sentinel()
	for p, s := range e.before {
		if after[p] != s {
			t.Errorf("%s changed outside the kubelet directory: %s, then %s\nrequest: %v", p, s, after[p], req)
		}
	}
	for p := range after {
		if _, ok := e.before[p]; !ok {
			t.Errorf("%s appeared outside the kubelet directory\nrequest: %v", p, req)
		}
	}
	for p, s := range e.paths {
		if now := lstate(p); now != s {
			t.Errorf("%s, outside the kubelet directory, changed: %s, then %s\nrequest: %v", p, s, now, req)
		}
	}
	e.checkMounts(req)
}

// checkMounts: every mount (of the fake table) is a loop device's, at a
// path whose real location is inside the kubelet directory, and no real
// mount appeared below the temp dir.
func (e *fuzzEnv) checkMounts(req proto.Message) {
	t := e.t
	realKubelet, err := filepath.EvalSymlinks(e.kubelet)
	must(t, err)
	e.mounts.mu.Lock()
	defer e.mounts.mu.Unlock()
	for p, m := range e.mounts.table {
		real, err := filepath.EvalSymlinks(filepath.Dir(p))
		if !within(p, e.kubelet) || err != nil || !within(real, realKubelet) {
			t.Errorf("mount at %s (real parent %q, %v), outside the kubelet directory\nrequest: %v", p, real, err, req)
		}
		if !strings.HasPrefix(m.Source, "/dev/loop-fake") {
			t.Errorf("mount at %s of %s, not a volume's device\nrequest: %v", p, m.Source, req)
		}
	}
	f, err := os.Open("/proc/self/mountinfo")
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	must(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && within(fields[4], e.root) {
			t.Errorf("real mount at %s\nrequest: %v", fields[4], req)
		}
	}
}

func codeIn(c codes.Code, set []codes.Code) bool {
	for _, s := range set {
		if c == s {
			return true
		}
	}
	return false
}

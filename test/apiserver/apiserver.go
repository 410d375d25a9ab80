// Package apiserver runs a real etcd and kube-apiserver for tests of the
// code that talks to the Kubernetes API (pkg/nodeloss,
// pkg/clustercontroller), where client-go's fake clientset is not enough:
// it ignores delete preconditions, resourceVersion conflicts, admission
// (finalizers the API server adds), CRD schemas, and cannot review a
// token.
//
// Start runs both as child processes of the test binary on free
// localhost ports, with a temporary directory for etcd's data, the
// certificates (a CA, a serving certificate, an admin client certificate
// in system:masters) and the ServiceAccount signing key; the API server
// authorizes with RBAC and issues and reviews bound ServiceAccount tokens.
// It installs the VolumeSnapshot CRDs the local cluster installs (the
// snapshot client module pinned by hack/tools/snapshotter). No
// controller-manager runs: nothing removes finalizers, binds claims or
// finishes deleting namespaces unless a test does.
//
// The binaries come from FLASHPV_APISERVER_BIN, else the repository's
// _output/bin, where `hack/cluster/build.sh apiserver` puts them (make
// test-apiserver builds them and runs the tests). A missing binary fails
// the tests: they are built with the apiserver tag only where the binaries
// are meant to be.
//
// The processes die with the test binary, also when a test timeout
// kills it; its directory is then removed by the next Start.
//
// Starting takes a few seconds, so a test package shares one Server
// (TestMain: os.Exit(apiserver.Main(m, &srv))) and each test takes its own
// namespace (Server.Namespace) and names its cluster-scoped objects after
// it.
package apiserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Server is a running etcd and kube-apiserver.
type Server struct {
	// Config is an admin's (system:masters) client configuration.
	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface

	dir   string
	procs []*process
}

type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when it has exited
}

const startTimeout = 2 * time.Minute

// Start starts etcd and kube-apiserver and returns once the API server is
// ready and the CRDs are established. On error nothing is left running.
func Start(ctx context.Context) (*Server, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	bin := os.Getenv("FLASHPV_APISERVER_BIN")
	if bin == "" {
		bin = filepath.Join(root, "_output", "bin")
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := exec.LookPath(filepath.Join(bin, b)); err != nil {
			return nil, fmt.Errorf("%s not found in %s (FLASHPV_APISERVER_BIN): build it with hack/cluster/build.sh apiserver, as make test-apiserver does: %w", b, bin, err)
		}
	}
	removeStale()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{dir: dir}
	ok := false
	defer func() {
		if !ok {
			s.Stop()
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	p, err := newPKI(dir)
	if err != nil {
		return nil, err
	}
	// A free port found here may be taken before the process binds it:
	// a process that exits while starting is started again on others.
	for attempt := 1; ; attempt++ {
		err = s.start(ctx, bin, p, attempt)
		if err == nil {
			break
		}
		s.stopProcesses()
		if attempt == 3 || ctx.Err() != nil {
			return nil, err
		}
	}
	if err := installCRDs(ctx, s.Dynamic, root); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func (s *Server) start(ctx context.Context, bin string, p *pki, attempt int) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	client, peer, secure := ports[0], ports[1], ports[2]
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	data := filepath.Join(s.dir, fmt.Sprintf("etcd-%d", attempt))
	if err := s.run(filepath.Join(bin, "etcd"), "etcd", "--name=test", "--data-dir="+data,
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL, "--initial-cluster=test="+peerURL,
		"--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}
	if err := s.run(filepath.Join(bin, "kube-apiserver"), "kube-apiserver",
		"--etcd-servers="+etcdURL, "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(secure), "--cert-dir="+s.dir,
		"--tls-cert-file="+p.serverCert, "--tls-private-key-file="+p.serverKey, "--client-ca-file="+p.caFile,
		"--service-account-key-file="+p.serviceAccountKey, "--service-account-signing-key-file="+p.serviceAccountKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.0.0.0/24", "--authorization-mode=RBAC",
		// No Service endpoints to keep for a server on a loopback address.
		"--endpoint-reconciler-type=none"); err != nil {
		return err
	}
	s.Config = &rest.Config{
		Host:            "https://127.0.0.1:" + strconv.Itoa(secure),
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM, CertData: p.adminCert, KeyData: p.adminKey},
		QPS:             200, Burst: 400,
		UserAgent: "flashpv-apiserver-test",
	}
	if s.Client, err = kubernetes.NewForConfig(s.Config); err != nil {
		return err
	}
	if s.Dynamic, err = dynamic.NewForConfig(s.Config); err != nil {
		return err
	}
	return s.waitReady(ctx)
}

// run starts a child process, its output in a log file in the directory.
// It dies with the test binary (Pdeathsig), also when that is killed.
func (s *Server) run(path, name string, args ...string) error {
	logPath := filepath.Join(s.dir, fmt.Sprintf("%s-%d.log", name, len(s.procs)))
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	pr := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(pr.done)
	}()
	s.procs = append(s.procs, pr)
	return nil
}

func (s *Server) waitReady(ctx context.Context) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		for _, p := range s.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited while starting (%s): %s", p.name, p.cmd.ProcessState, tail(p.log))
			default:
			}
		}
		body, err := s.Client.CoreV1().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) == "ok" {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready (last: %v): %s", last, tail(s.procs[len(s.procs)-1].log))
		case <-tick.C:
		}
	}
}

const (
	dirPrefix = "flashpv-apiserver-"
	ownerFile = "owner.pid" // the test binary's PID
)

// removeStale removes the directories of test binaries that died without
// stopping their Server (a test timeout panics past every deferred
// function; their etcd and kube-apiserver died with them, by Pdeathsig).
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(string(b))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// Stop kills both processes (by PID) and removes the directory.
func (s *Server) Stop() {
	s.stopProcesses()
	_ = os.RemoveAll(s.dir)
}

func (s *Server) stopProcesses() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	s.procs = nil
}

// Main is a TestMain body: it starts a Server into *srv, runs the tests
// and stops it. Use: os.Exit(apiserver.Main(m, &srv)).
func Main(m *testing.M, srv **Server) int {
	t0 := time.Now()
	s, err := Start(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting etcd and kube-apiserver:", err)
		return 1
	}
	defer s.Stop()
	fmt.Fprintf(os.Stderr, "etcd and kube-apiserver ready at %s in %.1fs\n", s.Config.Host, time.Since(t0).Seconds())
	*srv = s
	return m.Run()
}

var notName = regexp.MustCompile(`[^a-z0-9]+`)

// Namespace creates a namespace for the test, named after it, with its
// default ServiceAccount, and deletes
// it when the test ends (without a controller-manager it stays
// Terminating; the server is thrown away anyway). Cluster-scoped objects
// of the test should carry its name too.
func (s *Server) Namespace(t testing.TB) string {
	t.Helper()
	base := strings.Trim(notName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(base) > 50 {
		base = base[:50]
	}
	name := base + "-" + strings.ToLower(rand.Text()[:6])
	ctx := context.Background()
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}) })
	// Pods need their ServiceAccount, which the controller-manager would make.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := s.Client.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

func freePorts(n int) ([]int, error) {
	var out []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// tail is the end of a log file, for errors.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

// repoRoot is the directory of flashpv's go.mod, above the working
// directory (a test runs in its package's directory).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/flashpv/flashpv\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the flashpv repository")
		}
		dir = parent
	}
}

// moduleDir is where the module cache holds a module of a tools module.
func moduleDir(ctx context.Context, toolsDir, module string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", module)
	cmd.Dir = toolsDir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return "", fmt.Errorf("go mod download %s in %s: %w", module, toolsDir, err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		return "", fmt.Errorf("go mod download %s: no directory in %q", module, out)
	}
	return m.Dir, nil
}

package registration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestKubeletConversation plays the kubelet's plugin watcher against the real
// server on a real socket.
func TestKubeletConversation(t *testing.T) {
	dir := t.TempDir()
	sock := SocketPath(dir, "flashpv.dev")
	if filepath.Base(sock) != "flashpv.dev-reg.sock" {
		t.Fatalf("socket name %s", sock)
	}
	s := New("flashpv.dev", "/var/lib/kubelet/plugins/flashpv.dev/csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, sock) }()
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := registerapi.NewRegistrationClient(conn)

	info, err := c.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetType() != registerapi.CSIPlugin || info.GetName() != "flashpv.dev" ||
		info.GetEndpoint() != "/var/lib/kubelet/plugins/flashpv.dev/csi.sock" || len(info.GetSupportedVersions()) == 0 {
		t.Fatalf("GetInfo: %v", info)
	}
	if s.Healthy() != nil {
		t.Fatal("unhealthy before any status")
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "version mismatch"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Healthy(); err == nil || !strings.Contains(err.Error(), "version mismatch") {
		t.Fatalf("after a refusal: %v", err)
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Healthy(); err != nil {
		t.Fatalf("after success: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatal("registration socket left behind: the kubelet would keep a dead plugin")
	}
}

package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestListen(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, _ := net.Listen("unix", stale)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen(stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l2.Close()
	if _, err := Listen(stale); err == nil {
		t.Fatal("a live socket was taken over")
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("data"), 0o600)
	if _, err := Listen(file); err == nil {
		t.Fatal("a regular file was replaced by a socket")
	}
	if b, _ := os.ReadFile(file); string(b) != "data" {
		t.Fatal("regular file changed")
	}
}

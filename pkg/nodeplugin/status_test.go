package nodeplugin

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/driver"
	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/pkg/nodestatus"
	"github.com/flashpv/flashpv/pkg/orphans"
	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/volumelist"
)

func TestStatusHandler(t *testing.T) {
	p, err := pool.OpenImage("fast", t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	d, err := driver.New(driver.Config{NodeID: "n1", Pools: []pool.Pool{p}, KubeletDir: t.TempDir(), Mounts: mounter.New(t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	// A volume made before a current list that does not name it is an
	// orphan.
	if _, _, err := p.Create(context.Background(), pool.Spec{Name: "pvc-gone", SizeBytes: 1 << 20, Mode: pool.ModeBlock}); err != nil {
		t.Fatal(err)
	}
	listDir := t.TempDir()
	later := time.Now().Add(time.Hour)
	list, _ := volumelist.Encode(volumelist.List{AsOf: later, Volumes: []string{}})
	writeFile(t, filepath.Join(listDir, "n1"), list)
	finder, err := orphans.New(orphans.Config{Node: "n1", ListDir: listDir, Pools: []pool.Pool{p}, Margin: time.Nanosecond,
		Now: func() time.Time { return later }})
	if err != nil {
		t.Fatal(err)
	}
	finder.Scan(context.Background())

	s := &Status{Node: "n1", Version: "v9", Driver: d, Orphans: finder}
	srv := httptest.NewServer(WithStatus(http.NotFoundHandler(), s))
	defer srv.Close()

	resp, err := http.Get(srv.URL + nodestatus.Path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	st, err := nodestatus.Decode(body)
	if err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if st.Node != "n1" || st.Version != "v9" || len(st.Pools) != 1 || st.Pools[0].Kind != "image" || st.Pools[0].Volumes != 1 || len(st.Volumes) != 1 {
		t.Errorf("status: %+v", st)
	}
	if !st.Orphans.Judged || len(st.Orphans.Volumes) != 1 || st.Orphans.Volumes[0].Name != "pvc-gone" || st.Orphans.Volumes[0].Pool != "fast" {
		t.Errorf("orphans: %+v", st.Orphans)
	}

	// Read-only; other paths go to the health handler.
	resp, err = http.Post(srv.URL+nodestatus.Path, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %s", resp.Status)
	}
	resp, err = http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/healthz went elsewhere: %s", resp.Status)
	}
}

func TestStatusWithoutOrphanCheck(t *testing.T) {
	d, err := driver.New(driver.Config{NodeID: "n1", Pools: []pool.Pool{pool.NewUnusable("q", pool.KindQuota, pool.ErrUnusable)}, KubeletDir: t.TempDir(), Mounts: mounter.New(t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	st := (&Status{Node: "n1", Driver: d}).Get(context.Background())
	if st.Orphans.Judged || st.Orphans.State == "" || len(st.Pools) != 1 || st.Pools[0].Healthy {
		t.Errorf("status: %+v", st)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

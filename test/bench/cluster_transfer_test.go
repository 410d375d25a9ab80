package main

import (
	"bytes"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The plain copy moves a sparse file's data to the same offsets and sends
// no holes.
func TestPlainCopy(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	const size = 64 << 20
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	a, b := make([]byte, 3<<20+5), make([]byte, 4096)
	rand.Read(a)
	rand.Read(b)
	for off, p := range map[int64][]byte{1 << 20: a, 40 << 20: b, size - 4096: b} {
		if _, err := f.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		st  plainCopyStats
		err error
	}
	got := make(chan result, 1)
	go func() {
		st, err := plainReceive(lis, dst, size)
		got <- result{st, err}
	}()
	conn, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sent, err := plainSend(conn.(*net.TCPConn), src, size)
	if err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	want, _ := os.ReadFile(src)
	have, _ := os.ReadFile(dst)
	if !bytes.Equal(want, have) {
		t.Fatal("the copy differs from its source")
	}
	// Only data extents travel: at most what was written rounded to blocks
	// (a filesystem without extent maps sends everything).
	if sent.DataBytes != r.st.DataBytes || sent.WireBytes != r.st.WireBytes || sent.DataBytes < int64(len(a)+2*len(b)) {
		t.Errorf("sent %+v, received %+v", sent, r.st)
	}
	if sent.DataBytes > 8<<20 {
		t.Logf("%d bytes sent: this filesystem reports no holes", sent.DataBytes)
	}
	if r.st.Seconds <= 0 {
		t.Errorf("no time: %+v", r.st)
	}
}

func TestMetricValue(t *testing.T) {
	text := []byte(`# HELP flashpv_transfer_bytes_total Bytes
# TYPE flashpv_transfer_bytes_total counter
flashpv_transfer_bytes_total{direction="in",kind="data"} 5.36870912e+08
flashpv_transfer_bytes_total{direction="in",kind="wire"} 5.37e+08
flashpv_transfer_bytes_total{direction="out",kind="data"} 7
flashpv_transfers_total{direction="in",result="done"} 1
`)
	for _, tc := range []struct {
		labels []string
		want   int64
	}{
		{[]string{`direction="in"`, `kind="data"`}, 536870912},
		{[]string{`kind="wire"`, `direction="in"`}, 537000000},
		{[]string{`direction="out"`, `kind="data"`}, 7},
		{[]string{`direction="out"`, `kind="wire"`}, 0},
	} {
		if got := metricValue(text, "flashpv_transfer_bytes_total", tc.labels...); got != tc.want {
			t.Errorf("%v: %d, want %d", tc.labels, got, tc.want)
		}
	}
}

func TestLogLine(t *testing.T) {
	raw := []byte(`I1207 09:10:11.000001       1 transfer_target.go:152] "Volume data received from another node" volumeID="default.other" dataBytes=1 duration="1s"
I1207 09:10:12.123456       1 transfer_target.go:152] "Volume data received from another node" volumeID="default.abc" source="default.snap" node="node-2" from=0 dataBytes=537001984 wireBytes=537460000 duration="2.345s"
`)
	f := logLine(raw, "Volume data received from another node", "volumeID", "default.abc")
	if f == nil || f["dataBytes"] != "537001984" || f["wireBytes"] != "537460000" || f["duration"] != "2.345s" || f["node"] != "node-2" {
		t.Errorf("fields %v", f)
	}
	if logLine(raw, "Transfer sent", "volumeID", "default.abc") != nil {
		t.Error("found a line of another message")
	}
}

func TestPoolDirOf(t *testing.T) {
	pools := "# comment\ndefault=/var/lib/flashpv/pools/default,reserve=256Mi\nfast=lvm:vg0\n"
	if dir, err := poolDirOf(pools, "default"); err != nil || dir != "/var/lib/flashpv/pools/default" {
		t.Errorf("default: %q, %v", dir, err)
	}
	if _, err := poolDirOf(pools, "fast"); err == nil {
		t.Error("an lvm pool has a directory")
	}
	if _, err := poolDirOf(pools, "none"); err == nil {
		t.Error("a missing pool has a directory")
	}
}

func TestUncap(t *testing.T) {
	for _, tc := range []struct {
		mode, bw       string
		flashpv, plain float64
		want           bool
	}{
		{"auto", "256Mi", 250, 300, true},  // the cap is 268 MB/s
		{"auto", "", 200, 300, true},       // the default is 256Mi
		{"auto", "256Mi", 120, 400, true},  // far below the cap, which may still bind
		{"auto", "256Mi", 250, 260, false}, // the plain copy is no faster
		{"auto", "0", 500, 1000, false},    // no cap to lift
		{"yes", "256Mi", 1, 1, true},
		{"yes", "0", 1, 1, false},
		{"no", "256Mi", 268, 1000, false},
	} {
		run := &transferRun{MBps: spread{Median: tc.flashpv}, PlainMBps: spread{Median: tc.plain}}
		if got := uncap(tc.mode, tc.bw, run); got != tc.want {
			t.Errorf("uncap(%q, %q, %v, %v) = %v", tc.mode, tc.bw, tc.flashpv, tc.plain, got)
		}
	}
}

func TestTransferReport(t *testing.T) {
	round := func(mbps, plain float64) transferRound {
		return transferRound{ReadySec: 4, DataBytes: 512 << 20, WireBytes: 513 << 20, Seconds: 2, MBps: mbps,
			PlainDataBytes: 512 << 20, PlainMBps: plain, Ratio: mbps / plain, SourceCPUSec: 1, TargetCPUSec: 2}
	}
	run := func(bw string, rs ...transferRound) transferRun {
		r := transferRun{Bandwidth: bw, Rounds: rs}
		var mbps, plain, ratio []float64
		for _, x := range rs {
			mbps, plain, ratio = append(mbps, x.MBps), append(plain, x.PlainMBps), append(ratio, x.Ratio)
		}
		r.MBps, r.PlainMBps, r.Ratio = spreadOf(mbps), spreadOf(plain), spreadOf(ratio)
		return r
	}
	c := &clusterResult{Nodes: []string{"node-1", "node-2"}, Transfer: &transferResult{SourceNode: "node-1", TargetNode: "node-2",
		VolumeBytes: 1 << 30, DataBytes: 512 << 20, Runs: []transferRun{
			run("", round(260, 400), round(250, 500)), run("0", round(360, 400))}}}
	md := c.markdown()
	for _, want := range []string{"### Restores across nodes", "with its pod pinned to node-2",
		"| --transfer-bandwidth | 256Mi, 2 round(s) | 0, 1 round(s) |", "| flashpv, MB/s | 255 [250–260] | 360 [360–360] |",
		"| **flashpv ÷ plain** (per round; target ≥ 0.8) | **0.57 [0.50–0.65]** | **0.90 [0.90–0.90]** |",
		"| wire ÷ data | 1.0020 | 1.0020 |", "| CPU s, flashpv source / target (claim to Ready) | 1.00 / 2.00 | 1.00 / 2.00 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	skipped := (&clusterResult{Transfer: &transferResult{Skipped: "it needs two schedulable nodes"}}).markdown()
	if !strings.Contains(skipped, "Skipped: it needs two schedulable nodes.") {
		t.Errorf("skipped:\n%s", skipped)
	}
}

func TestWithBandwidth(t *testing.T) {
	args := []string{"--a", "--transfer-bandwidth=256Mi", "--v=2"}
	for _, tc := range []struct {
		args  []string
		value string
		want  string
	}{
		{args, "0", "--a --transfer-bandwidth=0 --v=2"},
		{args, "", "--a --v=2"},
		{[]string{"--a"}, "256Mi", "--a --transfer-bandwidth=256Mi"},
	} {
		if got := strings.Join(withBandwidth(tc.args, tc.value), " "); got != tc.want {
			t.Errorf("withBandwidth(%v, %q) = %q, want %q", tc.args, tc.value, got, tc.want)
		}
	}
	if args[1] != "--transfer-bandwidth=256Mi" {
		t.Errorf("args changed: %v", args)
	}
}

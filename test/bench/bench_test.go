package main

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(101-i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(ds, tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	if percentile(nil, 50) != 0 {
		t.Error("percentile of nothing")
	}
	if s := spreadOf([]float64{0.9, 1.1, 0.5, 1.0}); s.Median != 0.95 || s.Min != 0.5 || s.Max != 1.1 {
		t.Errorf("spread %+v", s)
	}
}

// A trimmed fio 3.33 document: notes before the JSON, total latency
// percentiles, and the write side of a write job.
const fioOut = `note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [ { "jobname" : "t", "error" : 0,
      "read" : { "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0, "total_ios" : 0,
        "lat_ns" : { "percentile" : {} } },
      "write" : { "io_bytes" : 41943040, "bw_bytes" : 8388608, "iops" : 2048.0, "total_ios" : 10240,
        "clat_ns" : { "percentile" : { "50.000000" : 1000 } },
        "lat_ns" : { "percentile" : { "50.000000" : 70144, "99.000000" : 150528, "99.900000" : 1204224 } } } } ]
}`

func TestParseFio(t *testing.T) {
	run, ios, err := parseFio([]byte(fioOut), "IOPS")
	if err != nil {
		t.Fatal(err)
	}
	if run.Value != 2048 || ios != 10240 || run.P50us != 70.144 || run.P99us != 150.528 || run.P999us != 1204.224 {
		t.Errorf("parsed %+v, %d I/Os", run, ios)
	}
	if run, _, _ := parseFio([]byte(fioOut), "MB/s"); run.Value != 8.388608 {
		t.Errorf("MB/s: %v", run.Value)
	}
	if _, _, err := parseFio([]byte(`{"jobs":[{"error":5}]}`), "IOPS"); err == nil {
		t.Error("a failed job parsed")
	}
}

func TestReportFiles(t *testing.T) {
	runs := map[string][]fioRun{}
	for _, tg := range []string{"raw", "ext4", "xfs", "block"} {
		runs[tg] = []fioRun{{Value: 100, P99us: 10}}
	}
	d := dataResult{Case: fioCases[0], Runs: runs, Median: map[string]fioRun{"raw": {Value: 100}},
		Ratio: map[string]spread{"ext4": {0.9, 0.8, 1}, "xfs": {1, 1, 1}, "block": {1.3, 1.2, 1.4}}, P99: map[string]spread{}}
	r := &report{Data: []dataResult{d}, Control: []controlResult{{Concurrency: 1, Volumes: 2, RPC: map[string]latencyStats{"CreateVolume": {2, 4.5, 6}}}},
		Scale: &scaleResult{Volumes: 1000, Small: 10, AtSmall: map[string]latencyStats{"CreateVolume": {1, 2, 2}}, AtScale: map[string]latencyStats{"CreateVolume": {1, 3, 3}}}}
	dir := t.TempDir()
	if err := r.write(dir, false); err != nil {
		t.Fatal(err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	for _, want := range []string{"| 4k randread QD1 | 100 |", "0.90 [0.80–1.00]", "| CreateVolume | 4.5 / 6.0 |", "| CreateVolume | 2.00 | 3.00 | 1.50 |"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q:\n%s", want, md)
		}
	}
	f, err := os.Open(filepath.Join(dir, "ratios.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if img, err := png.Decode(f); err != nil || img.Bounds().Dx() < 500 {
		t.Fatalf("ratios.png: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "report.json")); err != nil {
		t.Fatal(err)
	}
}

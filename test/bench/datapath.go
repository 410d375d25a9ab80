package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// fioCase is one access pattern.
type fioCase struct {
	Name  string `json:"name"`
	RW    string `json:"rw"`
	BS    string `json:"bs"`
	Depth int    `json:"iodepth"`
	Unit  string `json:"unit"` // IOPS or MB/s
}

var fioCases = []fioCase{
	{"4k randread QD1", "randread", "4k", 1, "IOPS"},
	{"4k randread QD32", "randread", "4k", 32, "IOPS"},
	{"4k randwrite QD1", "randwrite", "4k", 1, "IOPS"},
	{"4k randwrite QD32", "randwrite", "4k", 32, "IOPS"},
	{"1M seqread QD8", "read", "1M", 8, "MB/s"},
	{"1M seqwrite QD8", "write", "1M", 8, "MB/s"},
}

// fioRun is one fio run on one target, with what the whole machine did
// meanwhile, per I/O.
type fioRun struct {
	Value   float64 `json:"value"` // IOPS or MB/s
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
	P999us  float64 `json:"p99_9_us"`
	CPUus   float64 `json:"cpu_us_per_io"`     // all CPUs, user+system+irq
	CtxSw   float64 `json:"ctxsw_per_io"`      // context switches, whole machine
	Interru float64 `json:"interrupts_per_io"` // interrupts, whole machine
	IPIs    float64 `json:"ipis_per_io"`       // function-call IPIs (remote wakeups and completions)
}

// target is where fio runs: a file on the pool's filesystem, a file in a
// published Filesystem volume, or a published Block volume.
type target struct {
	Name string `json:"name"`
	path string
}

type dataResult struct {
	Case   fioCase             `json:"case"`
	Runs   map[string][]fioRun `json:"runs"`      // target -> one per round
	Median map[string]fioRun   `json:"median"`    // target -> medians
	Ratio  map[string]spread   `json:"ratio"`     // volume target -> value ÷ raw, per round
	P99    map[string]spread   `json:"p99_ratio"` // volume target -> p99 ÷ raw p99
}

// spread is the median, lowest and highest of per-round ratios.
type spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

func spreadOf(xs []float64) spread {
	if len(xs) == 0 {
		return spread{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return spread{Median: median(s), Min: s[0], Max: s[len(s)-1]}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// runData provisions one volume of each kind through CSI, writes the test
// data everywhere, then runs every case on every target, round after round,
// rotating the order of targets so that none always runs first.
func (b *bench) runData(ctx context.Context) ([]dataResult, error) {
	d, _, err := startDriver(ctx, b.driverConfig(16))
	if err != nil {
		return nil, err
	}
	defer d.stop()
	r := newRecorder()
	size := b.fioSize*5/4 + 64<<20
	size = max(size, 320<<20) // xfs's minimum
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)

	rawDir := filepath.Join(b.work, "raw")
	if err := os.MkdirAll(rawDir, 0o755); err != nil {
		return nil, err
	}
	targets := []target{{Name: "raw", path: filepath.Join(rawDir, "fio.dat")}}
	for _, kind := range []string{"ext4", "xfs", "block"} {
		vc := mountCap(kind)
		if kind == "block" {
			vc = blockCap()
		}
		v := d.newVol("bench-data-"+kind, vc)
		if err := d.up(ctx, r, v, size); err != nil {
			return nil, err
		}
		defer d.down(context.Background(), r, v)
		p := v.target
		if kind != "block" {
			p = filepath.Join(v.target, "fio.dat")
		}
		targets = append(targets, target{Name: kind, path: p})
	}
	for _, t := range targets {
		log.Printf("data: writing %d MiB to %s", b.fioSize>>20, t.Name)
		if _, err := b.fio(ctx, t.path, fioCase{"precondition", "write", "1M", 8, "MB/s"}, false); err != nil {
			return nil, err
		}
	}
	results := make([]dataResult, len(fioCases))
	for i, c := range fioCases {
		results[i] = dataResult{Case: c, Runs: map[string][]fioRun{}, Median: map[string]fioRun{}, Ratio: map[string]spread{}, P99: map[string]spread{}}
	}
	for round := range b.rounds {
		for i, c := range fioCases {
			for k := range targets {
				t := targets[(k+round)%len(targets)]
				run, err := b.fio(ctx, t.path, c, true)
				if err != nil {
					return nil, err
				}
				results[i].Runs[t.Name] = append(results[i].Runs[t.Name], run)
				log.Printf("data: round %d %-18s %-5s %10.0f %s  p50 %6.0f us  p99 %6.0f us", round+1, c.Name, t.Name, run.Value, c.Unit, run.P50us, run.P99us)
			}
		}
	}
	for i := range results {
		res := &results[i]
		raw := res.Runs["raw"]
		for _, t := range targets {
			runs := res.Runs[t.Name]
			res.Median[t.Name] = medianRun(runs)
			if t.Name == "raw" {
				continue
			}
			var ratio, p99 []float64
			for j, run := range runs {
				ratio = append(ratio, run.Value/raw[j].Value)
				p99 = append(p99, run.P99us/raw[j].P99us)
			}
			res.Ratio[t.Name], res.P99[t.Name] = spreadOf(ratio), spreadOf(p99)
		}
	}
	return results, nil
}

func medianRun(runs []fioRun) fioRun {
	pick := func(f func(fioRun) float64) float64 {
		var xs []float64
		for _, r := range runs {
			xs = append(xs, f(r))
		}
		return median(xs)
	}
	return fioRun{
		Value:   pick(func(r fioRun) float64 { return r.Value }),
		P50us:   pick(func(r fioRun) float64 { return r.P50us }),
		P99us:   pick(func(r fioRun) float64 { return r.P99us }),
		P999us:  pick(func(r fioRun) float64 { return r.P999us }),
		CPUus:   pick(func(r fioRun) float64 { return r.CPUus }),
		CtxSw:   pick(func(r fioRun) float64 { return r.CtxSw }),
		Interru: pick(func(r fioRun) float64 { return r.Interru }),
		IPIs:    pick(func(r fioRun) float64 { return r.IPIs }),
	}
}

// fio runs one job with O_DIRECT and libaio on path. A timed job runs for
// b.runtime after b.ramp; an untimed one writes the whole size once.
func (b *bench) fio(ctx context.Context, path string, c fioCase, timed bool) (fioRun, error) {
	name := c.Name
	args := []string{"--name=" + strings.ReplaceAll(name, " ", "_"), "--filename=" + path,
		"--size=" + strconv.FormatInt(b.fioSize, 10), "--direct=1", "--ioengine=libaio",
		"--rw=" + c.RW, "--bs=" + c.BS, "--iodepth=" + strconv.Itoa(c.Depth),
		"--randrepeat=0", "--norandommap", "--lat_percentiles=1", "--percentile_list=50:99:99.9", "--output-format=json"}
	if timed {
		args = append(args, "--time_based", "--runtime="+secs(b.runtime), "--ramp_time="+secs(b.ramp))
	}
	before := readProcStat()
	out, err := exec.CommandContext(ctx, "fio", args...).Output()
	after := readProcStat()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return fioRun{}, fmt.Errorf("fio %s on %s: %v: %s", name, path, err, stderr)
	}
	run, ios, err := parseFio(out, c.Unit)
	if err != nil {
		return fioRun{}, fmt.Errorf("fio %s on %s: %w", name, path, err)
	}
	if timed && ios > 0 {
		// The counters cover the ramp too: scale the I/Os to the whole run.
		total := float64(ios) * (b.runtime + b.ramp).Seconds() / b.runtime.Seconds()
		run.CPUus = (after.cpu - before.cpu) / total
		run.CtxSw = (after.ctxt - before.ctxt) / total
		run.Interru = (after.intr - before.intr) / total
		run.IPIs = (after.ipi - before.ipi) / total
	}
	return run, nil
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s" }

// parseFio reads fio's JSON: the value (IOPS, or MB/s if unit says so), the
// total latency percentiles and the number of I/Os.
func parseFio(out []byte, unit string) (fioRun, int64, error) {
	// fio may print notes before the JSON document.
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	type dir struct {
		IOBytes int64   `json:"io_bytes"`
		BW      float64 `json:"bw_bytes"`
		IOPS    float64 `json:"iops"`
		TotalIO int64   `json:"total_ios"`
		// Total latency, submission included: with libaio a raw file's
		// submission does the device's work, a loop device's only queues.
		Lat struct {
			Percentile map[string]float64 `json:"percentile"`
		} `json:"lat_ns"`
	}
	var doc struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  dir `json:"read"`
			Write dir `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return fioRun{}, 0, fmt.Errorf("parsing output: %w", err)
	}
	if len(doc.Jobs) != 1 || doc.Jobs[0].Error != 0 {
		return fioRun{}, 0, fmt.Errorf("unexpected result: %s", out)
	}
	d := doc.Jobs[0].Read
	if d.IOBytes == 0 {
		d = doc.Jobs[0].Write
	}
	p := d.Lat.Percentile
	run := fioRun{P50us: p["50.000000"] / 1e3, P99us: p["99.000000"] / 1e3, P999us: p["99.900000"] / 1e3}
	run.Value = d.IOPS
	if unit == "MB/s" {
		run.Value = d.BW / 1e6
	}
	return run, d.TotalIO, nil
}

// procStat holds the machine-wide counters of /proc/stat.
type procStat struct{ cpu, ctxt, intr, ipi float64 }

// readProcStat reads busy CPU time (µs, all CPUs), context switches,
// interrupts and function-call IPIs (/proc/interrupts, CAL on x86).
func readProcStat() procStat {
	var s procStat
	if data, err := os.ReadFile("/proc/interrupts"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || (f[0] != "CAL:" && f[0] != "IPI1:") {
				continue
			}
			for _, v := range f[1:] {
				n, err := strconv.ParseFloat(v, 64)
				if err != nil {
					break
				}
				s.ipi += n
			}
		}
	}
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "cpu":
			// user nice system idle iowait irq softirq steal ...: busy is
			// everything but idle and iowait, in USER_HZ ticks.
			for i, v := range f[1:] {
				if i == 3 || i == 4 || i >= 8 { // guest time is already in user
					continue
				}
				n, _ := strconv.ParseFloat(v, 64)
				s.cpu += n * 1e6 / 100
			}
		case "ctxt":
			s.ctxt, _ = strconv.ParseFloat(f[1], 64)
		case "intr":
			s.intr, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return s
}

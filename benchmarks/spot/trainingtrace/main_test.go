package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseSizes(t *testing.T) {
	counts, weights, err := parseSizes("1:3, 8:1")
	if err != nil {
		t.Fatal(err)
	}
	if len(counts) != 2 || counts[0] != 1 || counts[1] != 8 || weights[0] != 0.75 || weights[1] != 0.25 {
		t.Errorf("got %v %v, want [1 8] [0.75 0.25]", counts, weights)
	}
	for _, bad := range []string{"1", "0:1", "2:-1", "x:1", "1:0.5,", "1:NaN", "1:Inf,8:1"} {
		if _, _, err := parseSizes(bad); err == nil || !strings.Contains(err.Error(), "GPUs:weight") {
			t.Errorf("%q: want an error naming GPUs:weight, got %v", bad, err)
		}
	}
}

// The mix flags change the trace only when given: a seed still writes the
// same file (training-600 in docs/spot.md is --jobs 600 --days 14 --seed 1).
func TestTraceKeepsItsMix(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, o options) string {
		o.jobs, o.days, o.seed, o.out = 200, 7, 1, filepath.Join(dir, name)
		if err := run(o); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(o.out)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	base := options{sizes: defaultSizes, median: 40 * time.Minute, sigma: 1.6, maxRuntime: 7 * 24 * time.Hour}
	a, b := write("a.csv", base), write("b.csv", base)
	if a != b {
		t.Fatal("the same seed wrote two different traces")
	}
	big := base
	big.sizes = "128:1"
	for _, line := range strings.Split(strings.TrimSpace(write("c.csv", big)), "\n")[1:] {
		if f := strings.Split(line, ","); f[2] != "128" {
			t.Fatalf("--sizes 128:1 wrote a job of %s GPUs", f[2])
		}
	}
}

// A bad flag is named with what it takes, NaN and infinities included (the
// flag package parses them, and they wrote NaN and +Inf times).
func TestRunNamesTheBadFlag(t *testing.T) {
	good := options{jobs: 10, days: 1, seed: 1, out: filepath.Join(t.TempDir(), "t.csv"), sizes: defaultSizes,
		median: 40 * time.Minute, sigma: 1.6, maxRuntime: 7 * 24 * time.Hour}
	for _, tt := range []struct {
		change func(*options)
		want   string
	}{
		{func(o *options) { o.out = "" }, "--out is required"},
		{func(o *options) { o.jobs = 0 }, "--jobs 0"},
		{func(o *options) { o.days = math.NaN() }, "--days NaN"},
		{func(o *options) { o.days = math.Inf(1) }, "--days +Inf"},
		{func(o *options) { o.sigma = math.NaN() }, "--sigma NaN"},
		{func(o *options) { o.median = 0 }, "--median 0s"},
		{func(o *options) { o.maxRuntime = time.Minute }, "--max-runtime 1m0s"},
	} {
		o := good
		tt.change(&o)
		if err := run(o); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("want an error containing %q, got %v", tt.want, err)
		}
	}
	if err := run(good); err != nil {
		t.Fatal(err)
	}
}

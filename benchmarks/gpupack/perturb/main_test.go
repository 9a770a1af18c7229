package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A missing or impossible flag is named, with what it takes, before the
// trace is read.
func TestRunNamesTheBadFlag(t *testing.T) {
	dir := t.TempDir()
	pods := filepath.Join(dir, "pods.csv")
	if err := os.WriteFile(pods, []byte("name,cpu_milli,num_gpu,gpu_milli,gpu_spec\np,1000,1,500,\nq,2000,0,0,\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.csv")
	for _, tt := range []struct {
		pods, kind string
		level      float64
		out, want  string
	}{
		{"", "gpushare", 0.4, out, "--pods is required"},
		{pods, "gpushare", 0.4, "", "--out is required"},
		{pods, "", 0.4, out, `unknown --kind ""`},
		{pods, "gpushare", 1.5, out, "--level 1.5: gpushare takes a share between 0 and 1"},
		{pods, "subsample", -0.1, out, "--level -0.1: subsample takes a share between 0 and 1"},
		{pods, "multigpu", math.NaN(), out, "--level NaN"},
		{pods, "cpu", -1, out, "--level -1: cpu takes a multiple"},
	} {
		err := run(tt.pods, "", tt.kind, tt.level, 1, tt.out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("pods %q kind %q level %v out %q: got %v, want an error containing %q", tt.pods, tt.kind, tt.level, tt.out, err, tt.want)
		}
	}
	if err := run(pods, "", "cpu", 2, 1, out); err != nil {
		t.Fatalf("cpu 2: %v", err)
	}
}

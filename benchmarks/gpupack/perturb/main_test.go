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

// A converted pod draws its share or its GPU count from one the trace has:
// on a trace with none, the draw panicked (rand.IntN(0)). It is an error
// naming the flag, and --level 0, which converts nothing, still works.
func TestRunOnATraceWithNoneToDrawFrom(t *testing.T) {
	dir := t.TempDir()
	pods := filepath.Join(dir, "pods.csv")
	// Whole single GPUs only: no sharing pod, no multi-GPU pod.
	if err := os.WriteFile(pods, []byte("name,cpu_milli,num_gpu,gpu_milli,gpu_spec\np,1000,1,1000,\nq,2000,1,1000,\nr,500,0,0,\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.csv")
	for _, tt := range []struct{ kind, want string }{
		{"gpushare", "--kind gpushare --level 0.5: " + pods + " has no GPU-sharing pods"},
		{"multigpu", "--kind multigpu --level 0.5: " + pods + " has no multi-GPU pods"},
	} {
		err := run(pods, "", tt.kind, 0.5, 1, out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.kind, err, tt.want)
		}
		if err := run(pods, "", tt.kind, 0, 1, out); err != nil {
			t.Errorf("%s at level 0: %v", tt.kind, err)
		}
	}
}

// A pod constrained to a model draws one with a node large enough for it:
// with none, the draw panicked (rand.Int64N(0)).
func TestRunGPUSpecWithNoNodeLargeEnough(t *testing.T) {
	dir := t.TempDir()
	pods, nodes := filepath.Join(dir, "pods.csv"), filepath.Join(dir, "nodes.csv")
	if err := os.WriteFile(pods, []byte("name,cpu_milli,num_gpu,gpu_milli,gpu_spec\nbig,1000,8,1000,\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nodes, []byte("sn,cpu_milli,memory_mib,gpu,model\nn1,64000,262144,2,V100M16\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := run(pods, nodes, "gpuspec", 1, 1, filepath.Join(dir, "out.csv"))
	if want := "--kind gpuspec: pod big needs 8 GPUs and no GPU model in --nodes " + nodes + " has a node with that many"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want an error containing %q", err, want)
	}
}

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeRun(t *testing.T, dir, name string, throughput map[string]float64) {
	t.Helper()
	type item struct {
		Data   map[string]float64 `json:"data"`
		Unit   string             `json:"unit"`
		Labels map[string]string  `json:"labels"`
	}
	var items []item
	for n, v := range throughput {
		items = append(items, item{Data: map[string]float64{"Average": v}, Unit: "pods/s", Labels: map[string]string{"Metric": "SchedulingThroughput", "Name": "BenchmarkPerfScheduling/" + n}})
	}
	// Other metrics share the file and must be ignored.
	items = append(items, item{Data: map[string]float64{"Average": 1}, Unit: "ms", Labels: map[string]string{"Metric": "scheduler_scheduling_attempt_duration_seconds", "Name": "Gangs_penny/10Nodes/gangs"}})
	raw, err := json.Marshal(map[string]any{"version": "v1", "dataItems": items})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReportPairsSidesAndTakesMedians(t *testing.T) {
	dir := t.TempDir()
	writeRun(t, dir, "BenchmarkPerfScheduling_benchmark_penny_2026-01-01T00:00:00Z.json", map[string]float64{
		"GPUBasic_default/600Nodes/measured": 100, "GPUBasic_penny/600Nodes/measured": 95,
		"Gangs_intree/500Nodes_150Gangs/gangs": 50, "Gangs_penny/500Nodes_150Gangs/gangs": 60,
	})
	writeRun(t, dir, "BenchmarkPerfScheduling_benchmark_penny_2026-01-01T00:10:00Z.json", map[string]float64{
		"GPUBasic_default/600Nodes/measured": 200, "GPUBasic_penny/600Nodes/measured": 180,
		"Gangs_intree/500Nodes_150Gangs/gangs": 40, "Gangs_penny/500Nodes_150Gangs/gangs": 60,
	})
	writeRun(t, dir, "BenchmarkPerfScheduling_benchmark_penny_2026-01-01T00:20:00Z.json", map[string]float64{
		"GPUBasic_default/600Nodes/measured": 150, "GPUBasic_penny/600Nodes/measured": 150,
		"Gangs_intree/500Nodes_150Gangs/gangs": 45, "Gangs_penny/500Nodes_150Gangs/gangs": 45,
	})
	jsonOut, mdOut := filepath.Join(dir, "out.json"), filepath.Join(dir, "out.md")
	if err := run(dir, jsonOut, mdOut, "make bench-schedperf"); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Workloads) != 2 || len(rep.Sources) != 3 {
		t.Fatalf("want 2 workloads from 3 runs, got %+v", rep)
	}
	basic, gangs := rep.Workloads[0], rep.Workloads[1]
	if gangs.Name != "Gangs/500Nodes_150Gangs" || gangs.Baseline != "intree" || gangs.BaselinePodsPerS != 45 || gangs.PennyPodsPerS != 60 || gangs.Ratio != 1.2 {
		t.Errorf("gangs: %+v", gangs)
	}
	// Per-run ratios 0.95, 0.9, 1.0: the median ratio is 0.95.
	if basic.Name != "GPUBasic/600Nodes" || basic.Baseline != "default" || basic.Ratio != 0.95 || len(basic.Runs) != 3 {
		t.Errorf("basic: %+v", basic)
	}
	md, _ := os.ReadFile(mdOut)
	if !strings.Contains(string(md), "| GPUBasic/600Nodes | default profile | 150.0 | 150.0 | 0.95 | 0.95, 0.90, 1.00 |") {
		t.Errorf("markdown table:\n%s", md)
	}
}

func TestReportRefusesAOneSidedComparison(t *testing.T) {
	dir := t.TempDir()
	writeRun(t, dir, "BenchmarkPerfScheduling_benchmark_penny_x.json", map[string]float64{"GPUBasic_penny/600Nodes/measured": 95})
	err := run(dir, filepath.Join(dir, "o.json"), filepath.Join(dir, "o.md"), "x")
	if err == nil || !strings.Contains(err.Error(), "comparisons missing a side: GPUBasic/600Nodes (have [penny])") {
		t.Fatalf("error %v", err)
	}
}

func TestReportReadsOneDirectoryPerRun(t *testing.T) {
	// bench.sh runs each side in its own process: one file per side, one
	// directory per run.
	dir := t.TempDir()
	for run, v := range map[string][2]float64{"run-1": {100, 110}, "run-2": {100, 90}, "run-3": {100, 100}} {
		d := filepath.Join(dir, run)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		writeRun(t, d, "BenchmarkPerfScheduling_benchmark_penny_a.json", map[string]float64{"Gangs_intree/10Nodes/gangs": v[0]})
		writeRun(t, d, "BenchmarkPerfScheduling_benchmark_penny_b.json", map[string]float64{"Gangs_penny/10Nodes/gangs": v[1]})
	}
	if err := run(dir, filepath.Join(dir, "o.json"), filepath.Join(dir, "o.md"), "x"); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "o.json"))
	var rep Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Sources) != 3 || len(rep.Workloads) != 1 || rep.Workloads[0].Ratio != 1 || len(rep.Workloads[0].Runs) != 3 {
		t.Fatalf("report: %+v", rep)
	}
}

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pennysched/penny/benchmarks/scenarios"
)

func TestParseSeeds(t *testing.T) {
	for in, want := range map[string][]uint64{
		"42":       {42},
		"42-45":    {42, 43, 44, 45},
		"1,3-4, 9": {1, 3, 4, 9},
		// The largest seeds: counting past them would wrap round to 0.
		"18446744073709551615":                      {18446744073709551615},
		"18446744073709551614-18446744073709551615": {18446744073709551614, 18446744073709551615},
	} {
		got, err := parseSeeds(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%q: %v %v, want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "5-3", "1-x", "0-20000"} {
		if _, err := parseSeeds(bad); err == nil || !strings.Contains(err.Error(), "--seeds") {
			t.Errorf("%q: want a --seeds error, got %v", bad, err)
		}
	}
}

func runPenny(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newSimCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func writeCSV(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSimFillCommand(t *testing.T) {
	dir := t.TempDir()
	nodes := writeCSV(t, dir, "nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\n"+
		"a,64000,262144,4,T4\nb,64000,262144,2,V100M32\nc,32000,65536,0,\n")
	pods := writeCSV(t, dir, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"+
		"p1,4000,8192,1,500,,LS,Running,0,10,0\n"+
		"p2,8000,8192,1,1000,,LS,Running,1,10,1\n"+
		"p3,2000,4096,0,0,,BE,Running,2,10,2\n"+
		"p4,4000,8192,2,1000,V100M32,LS,Running,3,10,3\n"+
		"p5,4000,8192,1,300,,LS,Running,4,10,4\n"+
		"p6,4000,8192,8,1000,,LS,Pending,5,10,\n")
	out := filepath.Join(dir, "R.json")
	plot := filepath.Join(dir, "P.png")
	stdout, err := runPenny(t, "fill", "--nodes", nodes, "--pods", pods, "--policy", "fgd,bestfit", "--seeds", "1-2", "--order", "creation",
		"--out", out, "--plot", plot, "--parallel", "2")
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if !strings.Contains(stdout, "| FGD | 2 |") || !strings.Contains(stdout, "asks for 8 nvidia.com/gpu but any node has at most 4 GPUs") {
		t.Fatalf("output lacks the table or the impossible pod:\n%s", stdout)
	}
	var rep struct {
		Records []struct {
			Policy            string    `json:"policy"`
			Seed              uint64    `json:"seed"`
			UnallocatedGPUPct *float64  `json:"unallocated_gpu_pct"`
			AllocCurve        []float64 `json:"alloc_curve"`
			FragRateAt80      *float64  `json:"frag_rate_at_80"`
			PodsFailed        *int      `json:"pods_failed"`
			WallSeconds       float64   `json:"wall_seconds"`
		} `json:"records"`
		Summary map[string]struct {
			Mean *float64 `json:"unallocated_gpu_pct_mean"`
			Wall *float64 `json:"wall_seconds_mean"`
		} `json:"summary"`
		Impossible []struct{ Pod string } `json:"impossible_pods"`
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Records) != 4 || len(rep.Summary) != 2 || len(rep.Impossible) != 1 {
		t.Fatalf("records %d, summary %d, impossible %d", len(rep.Records), len(rep.Summary), len(rep.Impossible))
	}
	for _, r := range rep.Records {
		if len(r.AllocCurve) != 131 || r.UnallocatedGPUPct == nil || r.FragRateAt80 == nil || r.PodsFailed == nil || *r.PodsFailed < 1 || r.WallSeconds <= 0 {
			t.Fatalf("record %+v", r)
		}
	}
	for name, s := range rep.Summary {
		if s.Mean == nil || s.Wall == nil {
			t.Fatalf("summary %s lacks fields", name)
		}
	}
	f, err := os.Open(plot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil || img.Bounds().Dx() < 600 {
		t.Fatalf("plot: %v %v", img.Bounds(), err)
	}
	again := filepath.Join(dir, "again.svg")
	if _, err := runPenny(t, "plot", "--in", out, "--plot", again); err != nil {
		t.Fatal(err)
	}
	if svg, err := os.ReadFile(again); err != nil || !strings.Contains(string(svg), "FGD") {
		t.Fatalf("re-plot: %v", err)
	}
	if _, err := runPenny(t, "plot", "--in", nodes, "--plot", again); err == nil {
		t.Fatal("plotting a CSV was accepted")
	}
	spot := writeCSV(t, dir, "spot.json", `{"kind":"spot-replay","runs":[]}`)
	if _, err := runPenny(t, "plot", "--in", spot, "--plot", again); err == nil || !strings.Contains(err.Error(), "--markdown R.md") {
		t.Fatalf("plotting a priced replay's report: %v, want a pointer to its Markdown", err)
	}
}

func TestSimCommandErrors(t *testing.T) {
	dir := t.TempDir()
	nodes := writeCSV(t, dir, "nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,4,T4\n")
	pods := writeCSV(t, dir, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\np,1,1,1,2000,,LS,Running,0,1,0\n")
	good := writeCSV(t, dir, "good.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\np,1,1,1,1000,,LS,Running,0,1,0\n")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"fill", "--nodes", nodes, "--pods", pods, "--policy", "tetris"}, "valid policies: default, penny, random"},
		{[]string{"fill", "--nodes", nodes, "--pods", pods, "--policy", "fgd"}, "pods.csv:2: column 5 (gpu_milli)"},
		{[]string{"fill", "--nodes", nodes, "--pods", pods, "--order", "lifo"}, "valid: shuffled, creation"},
		{[]string{"replay", "--nodes", nodes, "--pods", pods, "--format", "yaml"}, "valid formats: auto, openb, philly"},
		{[]string{"replay", "--nodes", nodes, "--pods", nodes}, "nodes.csv:1: cannot tell the trace's format from its first row"},
		// A file that cannot be read is named by its flag, not only its path.
		{[]string{"replay", "--nodes", filepath.Join(dir, "none.csv"), "--pods", pods}, "--nodes: open " + filepath.Join(dir, "none.csv")},
		{[]string{"replay", "--nodes", nodes, "--pods", filepath.Join(dir, "none.csv")}, "--pods: open " + filepath.Join(dir, "none.csv")},
		{[]string{"replay", "--nodes", nodes, "--pods", filepath.Join(dir, "none.csv"), "--format", "openb"}, "--pods: open " + filepath.Join(dir, "none.csv")},
		{[]string{"replay", "--scenario", filepath.Join(dir, "none.yaml"), "--pods", pods}, "--scenario: spot scenario: open " + filepath.Join(dir, "none.yaml")},
		{[]string{"replay", "--nodes", nodes, "--pods", good, "--policy", "penny", "--scheduler-config", filepath.Join(dir, "none.yaml")}, "--scheduler-config: open " + filepath.Join(dir, "none.yaml")},
		// A trace in another format than --format says is told which.
		{[]string{"replay", "--nodes", nodes, "--pods", good, "--format", "philly"}, "good.csv:1: header lacks column(s) timestamp, duration, num_gpus; expected columns timestamp,duration,num_gpus; its first row is in the openb format: give --format openb, or leave --format out (auto)"},
		{[]string{"plot", "--in", filepath.Join(dir, "none.json"), "--plot", filepath.Join(dir, "p.png")}, "--in: open " + filepath.Join(dir, "none.json")},
		{[]string{"plot", "--in", nodes, "--plot", filepath.Join(dir, "p.png")}, "--in " + nodes + " is not a result of penny sim fill --out or replay --out: invalid character"},
		{[]string{"replay", "--nodes", nodes, "--pods", pods, "--policy", "default,penny"}, "with --nodes a replay runs one policy"},
		{[]string{"replay", "--pods", pods, "--plot", filepath.Join(dir, "p.png")}, "--plot applies to a replay on a fixed fleet (--nodes)"},
		// Flags one kind of replay would ignore are refused, not dropped.
		{[]string{"replay", "--pods", pods, "--mig", "A100-80GB"}, "--mig applies to a replay on a fixed fleet (--nodes)"},
		{[]string{"replay", "--scenario", "../../benchmarks/scenarios/spot-openb.yaml", "--nodes", nodes, "--pods", pods}, "give one fleet, a fixed node list or a priced, elastic scenario"},
		{[]string{"replay", "--nodes", nodes, "--pods", pods, "--markdown", filepath.Join(dir, "r.md")}, "--markdown applies to a replay on a priced fleet"},
		{[]string{"replay", "--nodes", nodes, "--pods", pods, "--parallel", "3"}, "--parallel applies to a replay on a priced fleet (--scenario, or neither --scenario nor --nodes); on a fixed fleet a replay runs one policy"},
	}
	// Refused before the trace is read: a fill of a target that is not a
	// number panicked, one of 1e12 x the cluster's GPUs filled memory.
	for _, inflate := range []string{"NaN", "Inf", "1e12", "11", "0.001", "0", "-1"} {
		cases = append(cases, struct {
			args []string
			want string
		}{[]string{"fill", "--nodes", nodes, "--pods", pods, "--inflate", inflate}, "the fill's target must be a number from 0.01 to 10 times"})
	}
	// Negative requests per GPU would leave the pods asking for none.
	for _, f := range []string{"--philly-cpu-per-gpu", "--philly-mem-per-gpu"} {
		cases = append(cases, struct {
			args []string
			want string
		}{[]string{"replay", "--nodes", nodes, "--pods", pods, f, "-1"}, f + " -1 must not be negative"})
	}
	// A gang's pods of no GPUs fell back to 8 GPUs without a word.
	for _, v := range []string{"0", "-2"} {
		cases = append(cases, struct {
			args []string
			want string
		}{[]string{"replay", "--nodes", nodes, "--pods", pods, "--philly-gang-pod-gpus", v}, "--philly-gang-pod-gpus " + v + " must be at least 1"})
	}
	for _, c := range cases {
		_, err := runPenny(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: want an error mentioning %q, got %v", c.args, c.want, err)
		}
	}
}

// A flag that no part of the run would read, or whose value would run
// nothing or overflow, is refused before the run, naming the flag.
func TestSimRefusesFlagsTheRunWouldIgnore(t *testing.T) {
	dir := t.TempDir()
	nodes := writeCSV(t, dir, "nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,4,T4\n")
	pods := writeCSV(t, dir, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,creation_time\np,1000,1024,1,1000,0\n")
	jobs := writeCSV(t, dir, "jobs.csv", "timestamp,duration,num_gpus\n0,60,1\n")
	spot := writeCSV(t, dir, "job_info_df.csv", "job_name,organization,gpu_model,cpu_request,gpu_request,worker_num,submit_time,duration,job_type\nj,o,A10,4,1,1,0,60,Spot\n")
	cfg := writeCSV(t, dir, "config.yaml", "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n")
	cases := []struct {
		args []string
		want string
	}{
		// Only penny's profile is read from a scheduler configuration.
		{[]string{"fill", "--nodes", nodes, "--pods", pods, "--policy", "bestfit,fgd", "--scheduler-config", cfg}, "--scheduler-config " + cfg + ": only --policy penny reads a scheduler configuration, and the policies run are bestfit,fgd"},
		{[]string{"replay", "--nodes", nodes, "--pods", pods, "--policy", "fgd", "--scheduler-config", cfg}, "only --policy penny reads a scheduler configuration"},
		{[]string{"replay", "--pods", pods, "--policy", "default,spot-first", "--scheduler-config", cfg}, "only --policy penny reads a scheduler configuration"},
		// An openb pod list records each pod's CPU and memory; Alibaba's
		// Spot GPU trace each worker's GPUs.
		{[]string{"replay", "--nodes", nodes, "--pods", pods, "--philly-cpu-per-gpu", "8000"}, "--philly-cpu-per-gpu: the trace " + pods + " is in the openb format (told from its first row), which does not read it"},
		{[]string{"fill", "--nodes", nodes, "--pods", pods, "--format", "openb", "--philly-mem-per-gpu", "8000"}, "--philly-mem-per-gpu: the trace " + pods + " is in the openb format (--format openb), which does not read it"},
		{[]string{"replay", "--nodes", nodes, "--pods", spot, "--philly-gang-pod-gpus", "4"}, "--philly-gang-pod-gpus: the trace " + spot + " is in the alibaba-spot-gpu format (told from its first row), which does not read it: it applies to philly, helios traces"},
		// Requests so large they overflowed into pods that asked for none.
		{[]string{"replay", "--nodes", nodes, "--pods", jobs, "--philly-mem-per-gpu", "9223372036854775807"}, "--philly-mem-per-gpu 9223372036854775807 is more than any node holds"},
		{[]string{"replay", "--nodes", nodes, "--pods", jobs, "--philly-cpu-per-gpu", "9223372036854775807"}, "--philly-cpu-per-gpu 9223372036854775807 is more than any node holds"},
		// Runs none at a time.
		{[]string{"fill", "--nodes", nodes, "--pods", pods, "--parallel", "0"}, "--parallel 0: give how many runs to do at once, 1 or more"},
		{[]string{"replay", "--pods", pods, "--parallel", "-2"}, "--parallel -2: give how many runs to do at once, 1 or more"},
	}
	for _, c := range cases {
		out, err := runPenny(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: want an error mentioning %q, got %v", c.args, c.want, err)
		}
		if strings.Contains(out, "runs in") || strings.Contains(out, "GPU-hours") || strings.Contains(out, "| policy |") {
			t.Errorf("%v ran before refusing:\n%s", c.args, out)
		}
	}
	// The flags a format reads are still taken.
	for _, args := range [][]string{
		{"replay", "--nodes", nodes, "--pods", spot, "--philly-cpu-per-gpu", "8000", "--policy", "bestfit"},
		{"replay", "--nodes", nodes, "--pods", jobs, "--philly-gang-pod-gpus", "4", "--philly-mem-per-gpu", "1024", "--policy", "bestfit"},
	} {
		if out, err := runPenny(t, args...); err != nil {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
}

// A fill of pods that ask for no GPU never reaches its target: it is
// refused, not run without end.
func TestSimFillRefusesCPUOnlyTrace(t *testing.T) {
	dir := t.TempDir()
	nodes := writeCSV(t, dir, "nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,4,T4\n")
	pods := writeCSV(t, dir, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\np,1000,1024,0,0,,LS,Running,0,1,0\n")
	done := make(chan error, 1)
	go func() {
		_, err := runPenny(t, "fill", "--nodes", nodes, "--pods", pods, "--policy", "bestfit")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), pods+": no pod asks for a GPU") {
			t.Errorf("%v; want a refusal naming the trace", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("penny sim fill did not return")
	}
}

// A --plot the chart cannot be drawn to is refused before the run, and no
// empty file is left behind.
func TestSimPlotExtensionCheckedFirst(t *testing.T) {
	dir := t.TempDir()
	nodes := writeCSV(t, dir, "nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,4,T4\n")
	pods := writeCSV(t, dir, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\np,1000,1024,1,1000,,LS,Running,0,10,0\n")
	result := filepath.Join(dir, "R.json")
	if out, err := runPenny(t, "fill", "--nodes", nodes, "--pods", pods, "--policy", "bestfit", "--out", result); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"fill", "--nodes", nodes, "--pods", pods, "--policy", "bestfit", "--out", filepath.Join(dir, "fill.json")},
		{"replay", "--nodes", nodes, "--pods", pods, "--out", filepath.Join(dir, "replay.json")},
		{"plot", "--in", result},
	} {
		plot := filepath.Join(dir, args[0]+".txt")
		out, err := runPenny(t, append(args, "--plot", plot)...)
		if err == nil || !strings.Contains(err.Error(), "--plot "+plot+": the chart's format follows the file's extension; use .png, .svg or .pdf") {
			t.Errorf("%s: %v; want the --plot refused", args[0], err)
		}
		if strings.Contains(out, "runs in") || strings.Contains(out, "GPU-hours") {
			t.Errorf("%s ran before refusing --plot:\n%s", args[0], out)
		}
		for _, f := range []string{plot, filepath.Join(dir, args[0]+".json")} {
			if _, err := os.Stat(f); !os.IsNotExist(err) {
				t.Errorf("%s: %s was written: %v", args[0], f, err)
			}
		}
	}
}

// penny sim plot took --plot P.jpg (and .tiff, .eps, .tex): gonum writes
// those too, but the help and docs/sim.md name .png, .svg and .pdf, and the
// refusal of any other extension said to use those three. Each is refused,
// naming the flag and a file to write instead, and nothing is written.
func TestSimPlotRefusesFormatsTheHelpDoesNotName(t *testing.T) {
	dir := t.TempDir()
	nodes := writeCSV(t, dir, "nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,4,T4\n")
	pods := writeCSV(t, dir, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\np,1000,1024,1,1000,,LS,Running,0,10,0\n")
	result := filepath.Join(dir, "R.json")
	if out, err := runPenny(t, "fill", "--nodes", nodes, "--pods", pods, "--policy", "bestfit", "--out", result); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, ext := range []string{".jpg", ".JPEG", ".tiff", ".eps", ".tex"} {
		plot := filepath.Join(dir, "P"+ext)
		_, err := runPenny(t, "plot", "--in", result, "--plot", plot)
		want := "--plot " + plot + ": the chart's format follows the file's extension; use .png, .svg or .pdf, e.g. " + filepath.Join(dir, "P.png")
		if err == nil || err.Error() != want {
			t.Errorf("--plot %s: %v; want %q", plot, err, want)
		}
		if _, err := os.Stat(plot); !os.IsNotExist(err) {
			t.Errorf("%s was written: %v", plot, err)
		}
	}
	for _, ext := range []string{".png", ".PNG", ".svg", ".pdf"} {
		plot := filepath.Join(dir, "P"+ext)
		if out, err := runPenny(t, "plot", "--in", result, "--plot", plot); err != nil {
			t.Errorf("--plot %s: %v\n%s", plot, err, out)
		}
	}
}

// An --out, --markdown or --plot that could not be written is refused before
// the run, naming the flag, not found once the run is over; a refusal, and a
// run that fails, leave the file (and its folder) as they were.
func TestSimRefusesOutputsItCouldNotWrite(t *testing.T) {
	dir := t.TempDir()
	nodes := writeCSV(t, dir, "nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,4,T4\n")
	pods := writeCSV(t, dir, "pods.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\np,1000,1024,1,1000,,LS,Running,0,10,0\n")
	jobs := writeCSV(t, dir, "jobs.csv", "timestamp,duration,num_gpus\n0,600,1\n")
	missing := filepath.Join(dir, "no", "such", "folder", "R.json")
	underFile := filepath.Join(nodes, "R.json")
	runs := map[string][]string{
		"fill":          {"fill", "--nodes", nodes, "--pods", pods, "--policy", "bestfit"},
		"replay":        {"replay", "--nodes", nodes, "--pods", pods},
		"priced replay": {"replay", "--pods", jobs, "--policy", "default"},
	}
	type refusal struct {
		run  string
		args []string
		want string
	}
	var cases []refusal
	for run := range runs {
		cases = append(cases,
			refusal{run, []string{"--out", missing}, "--out " + missing + ": the folder " + filepath.Dir(missing) + " does not exist: create it first"},
			refusal{run, []string{"--out", dir}, "--out " + dir + " is a directory: give a file to write, e.g. " + dir + string(filepath.Separator)},
			refusal{run, []string{"--out", underFile}, "--out " + underFile + ": "},
			// /proc exists and is a folder, but no file can be made in it,
			// even by root: a check of the folder alone would pass.
			refusal{run, []string{"--out", "/proc/penny-sim.json"}, "--out /proc/penny-sim.json: "},
		)
	}
	cases = append(cases,
		refusal{"priced replay", []string{"--markdown", missing}, "--markdown " + missing + ": the folder " + filepath.Dir(missing) + " does not exist"},
		refusal{"priced replay", []string{"--markdown", dir}, "--markdown " + dir + " is a directory: give a file to write, e.g. " + filepath.Join(dir, "spot.md")},
		refusal{"fill", []string{"--plot", filepath.Join(dir, "no", "P.png")}, "--plot " + filepath.Join(dir, "no", "P.png") + ": the folder " + filepath.Join(dir, "no") + " does not exist"},
		refusal{"replay", []string{"--plot", "/proc/penny-sim.png"}, "--plot /proc/penny-sim.png: "},
	)
	for _, c := range cases {
		out, err := runPenny(t, append(slices.Clone(runs[c.run]), c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %v: %v; want an error mentioning %q", c.run, c.args, err, c.want)
		}
		if strings.Contains(out, "runs in") || strings.Contains(out, "GPU-hours") || strings.Contains(out, "| policy |") {
			t.Errorf("%s %v ran before refusing:\n%s", c.run, c.args, out)
		}
	}
	// Nothing was made on the way: no output, no folder, no probe.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"jobs.csv", "nodes.csv", "pods.csv"}; !reflect.DeepEqual(names, want) {
		t.Errorf("the refused runs left %v in the folder; want only %v", names, want)
	}

	// An older result stays as it was when a run fails, and is replaced
	// when one succeeds.
	old := writeCSV(t, dir, "R.json", "an older result\n")
	if _, err := runPenny(t, "fill", "--nodes", nodes, "--pods", jobs, "--format", "openb", "--out", old); err == nil {
		t.Fatal("a fill of a trace in another format ran")
	}
	if b, err := os.ReadFile(old); err != nil || string(b) != "an older result\n" {
		t.Errorf("a failed run left %q (%v) where the older result was", b, err)
	}
	if out, err := runPenny(t, append(slices.Clone(runs["fill"]), "--out", old)...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if b, err := os.ReadFile(old); err != nil || !bytes.Contains(b, []byte(`"kind": "fill"`)) {
		t.Errorf("the run did not replace the older result: %q (%v)", b, err)
	}
}

// Without --scenario or --nodes a replay runs on the reference scenario
// built into penny: the same fleet and prices as the file make bench-spot
// reads, all three policies.
func TestSimReplayBuiltInScenario(t *testing.T) {
	dir := t.TempDir()
	var jobs strings.Builder
	jobs.WriteString("timestamp,duration,num_gpus\n")
	for i := range 12 {
		fmt.Fprintf(&jobs, "%d,%d,%d\n", i*600, 3600*(1+i%5), []int{1, 1, 2, 4, 8, 16}[i%6])
	}
	pods := writeCSV(t, dir, "jobs.csv", jobs.String())
	builtIn, onDisk := filepath.Join(dir, "built-in.json"), filepath.Join(dir, "on-disk.json")
	stdout, err := runPenny(t, "replay", "--pods", pods, "--out", builtIn)
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if !strings.Contains(stdout, "replaying on the reference scenario built into penny") {
		t.Errorf("the replay does not say which fleet it took:\n%s", stdout)
	}
	if _, err := runPenny(t, "replay", "--scenario", "../../"+scenarios.SpotOpenbPath, "--pods", pods,
		"--policy", "default,spot-first,penny", "--out", onDisk); err != nil {
		t.Fatal(err)
	}
	type report struct {
		Scenario string
		Summary  map[string]struct {
			BillUSD        float64 `json:"bill_usd"`
			UsefulGPUHours float64 `json:"useful_gpu_hours"`
			NeverOnSpot    int     `json:"never_on_spot"`
		}
	}
	read := func(path string) report {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var r report
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	got, want := read(builtIn), read(onDisk)
	if got.Scenario != scenarios.SpotOpenbPath+" (built in)" {
		t.Errorf("scenario = %q, want the reference scenario, built in", got.Scenario)
	}
	if len(got.Summary) != 3 {
		t.Errorf("policies = %v, want default, spot-first and penny", got.Summary)
	}
	for _, p := range []string{"default", "spot-first", "penny"} {
		g, w := got.Summary[p], want.Summary[p]
		if g.BillUSD <= 0 || g.UsefulGPUHours <= 0 {
			t.Errorf("%s: bill %v, useful GPU-hours %v: the jobs did not run", p, g.BillUSD, g.UsefulGPUHours)
		}
		if g != w {
			t.Errorf("%s: built-in scenario gives %+v, the file %+v", p, g, w)
		}
	}
}

// A replay whose fleet hits its limits says which pool held pods back; one
// with room to grow says nothing.
func TestSimReplayWarnsWhenPoolsAtMax(t *testing.T) {
	dir := t.TempDir()
	pods := writeCSV(t, dir, "jobs.csv", "timestamp,duration,num_gpus\n0,3600,1\n0,3600,1\n0,3600,1\n")
	for limit, want := range map[int]bool{1: true, 10: false} {
		scenario := writeCSV(t, dir, fmt.Sprintf("fleet-%d.yaml", limit), fmt.Sprintf(`region: us-east-1
pools:
- {name: od, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: %d}
`, limit))
		stdout, err := runPenny(t, "replay", "--scenario", scenario, "--pods", pods, "--policy", "default", "--out", filepath.Join(dir, "r.json"))
		if err != nil {
			t.Fatalf("max %d: %v\n%s", limit, err, stdout)
		}
		// Three 1-hour jobs on one 1-GPU node: it is up, and the pool at
		// its max, from launch to the end.
		warned := strings.Contains(stdout, "warning: policy default: pool od was at its max of 1 nodes for 3 of 3 h (100%)")
		if warned != want || (!want && strings.Contains(stdout, "at its max")) {
			t.Errorf("max %d: warned %v, want %v:\n%s", limit, warned, want, stdout)
		}
	}
}

// A gang wider than any pool is named on stderr: the scenario kept it out.
func TestSimReplayWarnsAboutGangsLargerThanAnyPool(t *testing.T) {
	pods, stdout := replayOnOnePool(t, "timestamp,duration,num_gpus\n0,3600,16\n0,3600,1\n", "g5.48xlarge", 1, "penny")
	if want := "warning: policy penny: 2 pod(s) of gangs larger than any pool were never scheduled (first: job-000001 (" + pods + ":2): 2 pods at once; the pools that run its members hold at most 1)"; !strings.Contains(stdout, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stdout)
	}
}

// A replay that stalls says so on stderr: default places the 4-GPU member of
// a 12-GPU job whose 8-GPU member fits no pool, and it waits on its node.
func TestSimReplayWarnsWhenAReplayStalls(t *testing.T) {
	_, stdout := replayOnOnePool(t, "timestamp,duration,num_gpus\n0,3600,12\n0,3600,1\n", "g5.12xlarge", 2, "default,penny")
	if want := "with 1 pod(s) that ran and did not finish and 1 never scheduled: nothing could make progress"; !strings.Contains(stdout, "warning: policy default: the replay stalled at ") || !strings.Contains(stdout, want) {
		t.Errorf("stderr lacks default's stall (%q):\n%s", want, stdout)
	}
	if strings.Contains(stdout, "policy penny: the replay stalled") {
		t.Errorf("penny's replay, which holds nothing, is said to have stalled:\n%s", stdout)
	}
}

// replayOnOnePool replays a Philly trace on one on-demand pool of
// instanceType that may grow to the given number of nodes, and returns the
// trace's path and what penny printed.
func replayOnOnePool(t *testing.T, jobs, instanceType string, nodes int, policies string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	pods := writeCSV(t, dir, "jobs.csv", jobs)
	scenario := writeCSV(t, dir, "fleet.yaml", fmt.Sprintf(`region: us-east-1
pools:
- {name: od, instanceType: %s, capacityType: on-demand, zone: us-east-1a, max: %d}
`, instanceType, nodes))
	stdout, err := runPenny(t, "replay", "--scenario", scenario, "--pods", pods, "--policy", policies, "--out", filepath.Join(dir, "r.json"))
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	return pods, stdout
}

// A trace QoS value no class rule names is warned of, in words that fit a
// misspelt value and a trace without QoS values alike.
func TestSimReplayWarnsOfUnclassedQoS(t *testing.T) {
	dir := t.TempDir()
	scenario := writeCSV(t, dir, "s.yaml", `region: us-east-1
pools:
- {name: od, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 4}
classes:
- {qos: [LS], annotations: {penny.dev/workload: inference}}
`)
	openb := writeCSV(t, dir, "openb.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\na,1000,1024,1,1000,,ls,Running,0,60,0\nb,1000,1024,1,1000,,LS,Running,0,60,0\n")
	philly := writeCSV(t, dir, "philly.csv", "timestamp,duration,num_gpus\n0,60,1\n10,60,1\n")
	for _, c := range []struct{ pods, format, want string }{
		{openb, "openb", `warning: no class rule of the scenario names qos "ls", which 1 pod(s) of the trace carry (first: a (` + openb + `:2)): they take no rule's annotations and run as batch`},
		{philly, "philly", `warning: 2 pod(s) of the trace have no qos value, and no class rule of the scenario names "" (first: job-000001 (` + philly + `:2))`},
	} {
		out, err := runPenny(t, "replay", "--scenario", scenario, "--pods", c.pods, "--format", c.format, "--policy", "default", "--out", filepath.Join(dir, "r.json"))
		if err != nil || !strings.Contains(out, c.want) {
			t.Errorf("%s: %v, output:\n%s\nwant %q", c.format, err, out, c.want)
		}
	}
}

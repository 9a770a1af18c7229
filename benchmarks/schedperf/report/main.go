// Command report turns the data items scheduler_perf writes
// (BenchmarkPerfScheduling_benchmark_penny_<time>.json) into
// benchmarks/results/schedperf.json and a markdown table, pairing each Penny
// test case with its baseline from the same run.
//
//	go run ./benchmarks/schedperf/report -in _output/schedperf \
//	    -json benchmarks/results/schedperf.json -md benchmarks/results/schedperf.md \
//	    -command "make bench-schedperf"
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pennysched/penny/benchmarks/machine"
)

// dataItems is scheduler_perf's output format (perfdash's).
type dataItems struct {
	DataItems []struct {
		Data   map[string]float64 `json:"data"`
		Unit   string             `json:"unit"`
		Labels map[string]string  `json:"labels"`
	} `json:"dataItems"`
}

// Workload is one comparison: the same workload under Penny's profile and
// under the baseline, both sides in the same run.
type Workload struct {
	Name             string  `json:"name"`
	Baseline         string  `json:"baseline"`
	PennyPodsPerS    float64 `json:"penny_pods_per_s"`
	BaselinePodsPerS float64 `json:"baseline_pods_per_s"`
	Ratio            float64 `json:"ratio"`
	ThroughputMetric string  `json:"throughput_metric"`
	// Runs are the individual runs (go test -count); the fields above are
	// their medians, the ratio the median of the per-run ratios.
	Runs []Run `json:"runs"`
}

// Run is one run's pair of measurements.
type Run struct {
	Source           string  `json:"source"`
	PennyPodsPerS    float64 `json:"penny_pods_per_s"`
	BaselinePodsPerS float64 `json:"baseline_pods_per_s"`
	Ratio            float64 `json:"ratio"`
}

// Report is benchmarks/results/schedperf.json.
type Report struct {
	// LoadAverage is the range of the machine's 1-minute load average seen
	// before each side ran: other work on the machine skews single runs.
	LoadAverage [2]float64      `json:"load_average_min_max"`
	Command     string          `json:"command"`
	Date        string          `json:"date"`
	Sources     []string        `json:"sources"`
	Machine     machine.Machine `json:"machine"`
	Workloads   []Workload      `json:"workloads"`
}

// baselines names, per comparison, the test case suffix of the baseline.
var baselines = map[string]string{
	"GPUBasic":   "default",
	"Gangs":      "intree",
	"MixedChurn": "default",
}

func main() {
	in := flag.String("in", "_output/schedperf", "directory with scheduler_perf's data item files (-data-items-dir)")
	jsonOut := flag.String("json", "benchmarks/results/schedperf.json", "JSON report to write")
	mdOut := flag.String("md", "benchmarks/results/schedperf.md", "markdown report to write")
	command := flag.String("command", "make bench-schedperf", "the command that produced the data, for the report")
	flag.Parse()
	if err := run(*in, *jsonOut, *mdOut, *command); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	md, err := os.ReadFile(*mdOut)
	if err == nil {
		fmt.Print(string(md))
	}
}

func run(in, jsonOut, mdOut, command string) error {
	runs, err := findRuns(in)
	if err != nil {
		return err
	}
	byName := map[string]*Workload{}
	var sources []string
	for _, r := range runs {
		pairs, err := readPairs(r.name, r.files)
		if err != nil {
			return err
		}
		sources = append(sources, r.name)
		for _, w := range pairs {
			agg := byName[w.Name]
			if agg == nil {
				agg = &Workload{Name: w.Name, Baseline: w.Baseline, ThroughputMetric: w.ThroughputMetric}
				byName[w.Name] = agg
			}
			agg.Runs = append(agg.Runs, w.Runs...)
		}
	}
	var workloads []Workload
	for _, w := range byName {
		var p, b, r []float64
		for _, run := range w.Runs {
			p, b, r = append(p, run.PennyPodsPerS), append(b, run.BaselinePodsPerS), append(r, run.Ratio)
		}
		w.PennyPodsPerS, w.BaselinePodsPerS, w.Ratio = median(p), median(b), median(r)
		workloads = append(workloads, *w)
	}
	sort.Slice(workloads, func(i, j int) bool { return workloads[i].Name < workloads[j].Name })

	rep := Report{
		LoadAverage: loadRange(runs),
		Command:     command,
		Date:        time.Now().UTC().Format(time.RFC3339),
		Sources:     sources,
		Machine:     machine.Describe(),
		Workloads:   workloads,
	}
	out, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(jsonOut, append(out, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(mdOut, []byte(markdown(rep)), 0o644)
}

type runFiles struct {
	name  string
	files []string
}

// findRuns lists the runs under dir: each run-* directory (bench.sh writes
// one per run, a file per side) or, without those, each data item file.
func findRuns(dir string) ([]runFiles, error) {
	const pattern = "BenchmarkPerfScheduling_benchmark_penny_*.json"
	runDirs, err := filepath.Glob(filepath.Join(dir, "run-*"))
	if err != nil {
		return nil, err
	}
	var runs []runFiles
	for _, d := range runDirs {
		files, err := filepath.Glob(filepath.Join(d, pattern))
		if err != nil {
			return nil, err
		}
		if len(files) > 0 {
			runs = append(runs, runFiles{name: filepath.Base(d), files: files})
		}
	}
	if len(runs) == 0 {
		files, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			runs = append(runs, runFiles{name: filepath.Base(f), files: []string{f}})
		}
	}
	if len(runs) == 0 {
		return nil, fmt.Errorf("no %s in %s or its run-* directories: run benchmarks/schedperf/bench.sh %s first", pattern, dir, dir)
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].name < runs[j].name })
	return runs, nil
}

// readPairs reads one run's data items and pairs each Penny test case with
// its baseline from the same run.
func readPairs(name string, files []string) ([]Workload, error) {
	var items dataItems
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var one dataItems
		if err := json.Unmarshal(raw, &one); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		items.DataItems = append(items.DataItems, one.DataItems...)
	}
	// The test case is "<comparison>_<side>".
	type key struct{ comparison, workload string }
	sides := map[key]map[string]map[string]float64{}
	for _, it := range items.DataItems {
		if it.Labels["Metric"] != "SchedulingThroughput" {
			continue
		}
		// Name is "BenchmarkPerfScheduling/<test case>/<workload>/<collector>".
		parts := strings.Split(it.Labels["Name"], "/")
		if len(parts) > 0 && strings.HasPrefix(parts[0], "Benchmark") {
			parts = parts[1:]
		}
		if len(parts) < 2 {
			continue
		}
		comparison, side, ok := strings.Cut(parts[0], "_")
		if !ok {
			continue
		}
		k := key{comparison, parts[1]}
		if sides[k] == nil {
			sides[k] = map[string]map[string]float64{}
		}
		sides[k][side] = it.Data
	}
	var out []Workload
	var missing []string
	for k, s := range sides {
		base := baselines[k.comparison]
		p, b := s["penny"], s[base]
		if p == nil || b == nil {
			missing = append(missing, fmt.Sprintf("%s/%s (have %v)", k.comparison, k.workload, keys(s)))
			continue
		}
		run := Run{Source: name, PennyPodsPerS: round(p["Average"]), BaselinePodsPerS: round(b["Average"])}
		if b["Average"] > 0 {
			run.Ratio = round(p["Average"] / b["Average"])
		}
		out = append(out, Workload{
			Name:             k.comparison + "/" + k.workload,
			Baseline:         base,
			ThroughputMetric: "SchedulingThroughput Average (pods/s)",
			Runs:             []Run{run},
		})
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s: comparisons missing a side: %s", name, strings.Join(missing, "; "))
	}
	if len(out) == 0 {
		return nil, errors.New(name + ": no SchedulingThroughput data items")
	}
	return out, nil
}

// loadRange reads the load averages bench.sh recorded (*.load beside the
// data items).
func loadRange(runs []runFiles) [2]float64 {
	out := [2]float64{-1, 0}
	for _, r := range runs {
		loads, _ := filepath.Glob(filepath.Join(filepath.Dir(r.files[0]), "*.load"))
		for _, f := range loads {
			raw, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			var v float64
			if _, err := fmt.Sscan(string(raw), &v); err != nil {
				continue
			}
			if out[0] < 0 || v < out[0] {
				out[0] = v
			}
			out[1] = max(out[1], v)
		}
	}
	if out[0] < 0 {
		out[0] = 0
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return round((s[len(s)/2-1] + s[len(s)/2]) / 2)
}

func markdown(r Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# scheduler_perf: Penny vs kube-scheduler\n\n")
	fmt.Fprintf(&b, "Measured with kube-scheduler's own harness (`k8s.io/kubernetes/test/integration/scheduler_perf`), ")
	fmt.Fprintf(&b, "both sides of every row in the same run, each workload on a fresh etcd and kube-apiserver.\n\n")
	fmt.Fprintf(&b, "- command: `%s`\n", r.Command)
	fmt.Fprintf(&b, "- date: %s; runs: %d\n", r.Date, len(r.Sources))
	fmt.Fprintf(&b, "- machine: %s\n", r.Machine)
	if r.LoadAverage[1] > 0 {
		fmt.Fprintf(&b, "- 1-minute load average before each side: %.1f to %.1f (other work shared the machine; single runs swing with it, hence several runs and medians)\n", r.LoadAverage[0], r.LoadAverage[1])
	}
	fmt.Fprintln(&b)
	fmt.Fprintf(&b, "| workload | baseline | baseline pods/s | Penny pods/s | ratio | per-run ratios |\n|---|---|---:|---:|---:|---|\n")
	for _, w := range r.Workloads {
		var ratios []string
		for _, run := range w.Runs {
			ratios = append(ratios, fmt.Sprintf("%.2f", run.Ratio))
		}
		fmt.Fprintf(&b, "| %s | %s | %.1f | %.1f | %.2f | %s |\n", w.Name, describeBaseline(w.Baseline), w.BaselinePodsPerS, w.PennyPodsPerS, w.Ratio, strings.Join(ratios, ", "))
	}
	fmt.Fprintf(&b, "\nThroughput is scheduler_perf's SchedulingThroughput average (pods bound per second while the measured pods are scheduled); ")
	fmt.Fprintf(&b, "each run has both sides back to back, each side in a fresh process, the order alternating between runs; pods/s are medians over runs and the ratio is the median of the per-run ratios. ")
	fmt.Fprintf(&b, "Baselines: default = kube-scheduler's default profile; intree = default profile with GenericWorkload on, gangs as native PodGroups scheduled by the in-tree GangScheduling plugin. ")
	fmt.Fprintf(&b, "Penny = the penny-scheduler profile from deploy/scheduler/config.yaml; its gangs use the penny.dev/gang labels.\n")
	return b.String()
}

func describeBaseline(s string) string {
	switch s {
	case "default":
		return "default profile"
	case "intree":
		return "in-tree GangScheduling"
	}
	return s
}

func keys(m map[string]map[string]float64) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func round(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

// Command perturb writes variants of an openb pod list, to check that a
// packing policy tuned on one trace holds on others of its family (the FGD
// paper evaluates the same families): more or fewer GPU-sharing pods,
// multi-GPU pods, pods constrained to one GPU model, CPU-only pods, or a
// random subsample. The variants keep the trace's columns and its
// distribution of everything not varied. Deterministic for a seed.
//
//	go run ./benchmarks/gpupack/perturb --pods openb_pod_list_default.csv --nodes openb_node_list_all_node.csv \
//	    --kind gpushare --level 0.8 --out /tmp/gpushare80.csv
package main

import (
	"encoding/csv"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
)

func main() {
	pods := flag.String("pods", "", "openb pod list to start from")
	nodes := flag.String("nodes", "", "openb node list (for gpuspec: the models and their GPU counts)")
	kind := flag.String("kind", "", "gpushare | multigpu | gpuspec | cpu | subsample")
	level := flag.Float64("level", 0, "gpushare, multigpu, gpuspec: share of GPU pods (0..1); cpu: CPU-only pods' CPU as a multiple of the trace's; subsample: share of pods kept")
	seed := flag.Uint64("seed", 1, "random seed")
	out := flag.String("out", "", "output CSV")
	flag.Parse()
	if err := run(*pods, *nodes, *kind, *level, *seed, *out); err != nil {
		fmt.Fprintln(os.Stderr, "perturb:", err)
		os.Exit(1)
	}
}

type table struct {
	header []string
	col    map[string]int
	rows   [][]string
}

func read(path string) (*table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(rows) < 2 {
		return nil, fmt.Errorf("%s: no rows", path)
	}
	t := &table{header: rows[0], col: map[string]int{}, rows: rows[1:]}
	for i, h := range t.header {
		t.col[h] = i
	}
	return t, nil
}

func (t *table) int(r []string, c string) int64 {
	v, _ := strconv.ParseFloat(r[t.col[c]], 64)
	return int64(v)
}

func (t *table) set(r []string, c string, v int64) { r[t.col[c]] = strconv.FormatInt(v, 10) }

// checkFlags turns away what would otherwise fail only after the trace is
// read, as a bare "open : no such file", or write a variant silently unlike
// the one asked for (a share past 1 or below 0 is clamped by the method).
func checkFlags(podsPath, kind string, level float64, out string) error {
	switch {
	case podsPath == "":
		return fmt.Errorf("--pods is required: the openb pod list to start from")
	case out == "":
		return fmt.Errorf("--out is required: the CSV to write")
	}
	switch kind {
	case "gpushare", "multigpu", "gpuspec", "subsample":
		if !(level >= 0 && level <= 1) {
			return fmt.Errorf("--level %v: %s takes a share between 0 and 1", level, kind)
		}
	case "cpu":
		if !(level >= 0) || math.IsInf(level, 1) {
			return fmt.Errorf("--level %v: cpu takes a multiple of the trace's CPU-only pods' CPU, 0 or more (e.g. 2)", level)
		}
	default:
		return fmt.Errorf("unknown --kind %q; valid kinds: gpushare, multigpu, gpuspec, cpu, subsample", kind)
	}
	return nil
}

func run(podsPath, nodesPath, kind string, level float64, seed uint64, out string) error {
	if err := checkFlags(podsPath, kind, level, out); err != nil {
		return err
	}
	t, err := read(podsPath)
	if err != nil {
		return err
	}
	for _, c := range []string{"name", "cpu_milli", "num_gpu", "gpu_milli", "gpu_spec"} {
		if _, ok := t.col[c]; !ok {
			return fmt.Errorf("%s: no column %q", podsPath, c)
		}
	}
	rng := rand.New(rand.NewPCG(seed, 0x70657274))
	isGPU := func(r []string) bool { return t.int(r, "num_gpu") > 0 }
	isShare := func(r []string) bool { return t.int(r, "num_gpu") == 1 && t.int(r, "gpu_milli") < 1000 }
	isMulti := func(r []string) bool { return t.int(r, "num_gpu") > 1 }
	// Empirical pools to draw converted pods' values from.
	var shares, multis [][]string
	var gpuPods int
	for _, r := range t.rows {
		if isShare(r) {
			shares = append(shares, r)
		}
		if isMulti(r) {
			multis = append(multis, r)
		}
		if isGPU(r) {
			gpuPods++
		}
	}
	want := int(level*float64(gpuPods) + 0.5)
	// A pod converted to sharing or to several GPUs takes its values from
	// one the trace already has: with none to draw from, the draw panicked
	// (rand.IntN(0)).
	noneToDraw := func(pool [][]string, what string) error {
		if len(pool) > 0 || want == 0 {
			return nil
		}
		return fmt.Errorf("--kind %s --level %v: %s has no %s to draw the converted pods' values from; start from a trace that has some, or use --level 0", kind, level, podsPath, what)
	}
	// retarget changes pods one at a time, chosen at random, until the
	// share of GPU pods with the property reaches level.
	retarget := func(has func([]string) bool, give, take func([]string)) {
		var with, without []int
		for i, r := range t.rows {
			switch {
			case !isGPU(r):
			case has(r):
				with = append(with, i)
			default:
				without = append(without, i)
			}
		}
		rng.Shuffle(len(with), func(i, j int) { with[i], with[j] = with[j], with[i] })
		rng.Shuffle(len(without), func(i, j int) { without[i], without[j] = without[j], without[i] })
		for len(with) < want && len(without) > 0 {
			i := without[len(without)-1]
			without = without[:len(without)-1]
			give(t.rows[i])
			with = append(with, i)
		}
		for len(with) > want {
			i := with[len(with)-1]
			with = with[:len(with)-1]
			take(t.rows[i])
		}
	}
	switch kind {
	case "gpushare":
		if err := noneToDraw(shares, "GPU-sharing pods (one GPU, gpu_milli under 1000)"); err != nil {
			return err
		}
		retarget(isShare, func(r []string) {
			src := shares[rng.IntN(len(shares))]
			t.set(r, "num_gpu", 1)
			t.set(r, "gpu_milli", t.int(src, "gpu_milli"))
		}, func(r []string) {
			t.set(r, "gpu_milli", 1000)
		})
	case "multigpu":
		if err := noneToDraw(multis, "multi-GPU pods (num_gpu over 1)"); err != nil {
			return err
		}
		retarget(isMulti, func(r []string) {
			src := multis[rng.IntN(len(multis))]
			n := t.int(src, "num_gpu")
			t.set(r, "cpu_milli", t.int(r, "cpu_milli")*n/max(1, t.int(r, "num_gpu")))
			t.set(r, "num_gpu", n)
			t.set(r, "gpu_milli", 1000)
		}, func(r []string) {
			t.set(r, "cpu_milli", t.int(r, "cpu_milli")/t.int(r, "num_gpu"))
			t.set(r, "num_gpu", 1)
		})
	case "gpuspec":
		if nodesPath == "" {
			return fmt.Errorf("gpuspec needs --nodes to know the GPU models")
		}
		nt, err := read(nodesPath)
		if err != nil {
			return err
		}
		gpus := map[string]int64{}
		for _, r := range nt.rows {
			if m := r[nt.col["model"]]; m != "" {
				gpus[m] += nt.int(r, "gpu")
			}
		}
		var models []string
		var total int64
		for m, n := range gpus {
			models = append(models, m)
			total += n
		}
		sort.Strings(models)
		// A constrained pod names one model, drawn in proportion to the
		// model's GPUs, among those with nodes large enough for it.
		maxGPUs := map[string]int64{}
		for _, r := range nt.rows {
			m := r[nt.col["model"]]
			maxGPUs[m] = max(maxGPUs[m], nt.int(r, "gpu"))
		}
		// A pod no model has a node large enough for cannot be
		// constrained (the draw panicked: rand.Int64N(0)); its name is
		// kept for the error.
		var unplaceable []string
		pick := func(r []string, need int64) string {
			var sum int64
			for _, m := range models {
				if maxGPUs[m] >= need {
					sum += gpus[m]
				}
			}
			if sum == 0 {
				if unplaceable == nil {
					unplaceable = r
				}
				return ""
			}
			x := rng.Int64N(sum)
			for _, m := range models {
				if maxGPUs[m] < need {
					continue
				}
				if x < gpus[m] {
					return m
				}
				x -= gpus[m]
			}
			return models[len(models)-1]
		}
		retarget(func(r []string) bool { return r[t.col["gpu_spec"]] != "" }, func(r []string) {
			r[t.col["gpu_spec"]] = pick(r, t.int(r, "num_gpu"))
		}, func(r []string) {
			r[t.col["gpu_spec"]] = ""
		})
		if unplaceable != nil {
			return fmt.Errorf("--kind gpuspec: pod %s needs %d GPUs and no GPU model in --nodes %s has a node with that many; give the node list of the trace's cluster",
				unplaceable[t.col["name"]], t.int(unplaceable, "num_gpu"), nodesPath)
		}
	case "cpu":
		var cpuOnly []int
		for i, r := range t.rows {
			if !isGPU(r) {
				cpuOnly = append(cpuOnly, i)
			}
		}
		if len(cpuOnly) == 0 {
			return fmt.Errorf("%s has no CPU-only pods to scale", podsPath)
		}
		// Drop CPU-only pods, or add copies of random ones, until their CPU
		// is level times the trace's.
		var have int64
		for _, i := range cpuOnly {
			have += t.int(t.rows[i], "cpu_milli")
		}
		want := int64(level * float64(have))
		keep := map[int]bool{}
		for _, i := range cpuOnly {
			keep[i] = true
		}
		rng.Shuffle(len(cpuOnly), func(i, j int) { cpuOnly[i], cpuOnly[j] = cpuOnly[j], cpuOnly[i] })
		for k := 0; have > want && k < len(cpuOnly); k++ {
			keep[cpuOnly[k]] = false
			have -= t.int(t.rows[cpuOnly[k]], "cpu_milli")
		}
		var rows [][]string
		for i, r := range t.rows {
			if isGPU(r) || keep[i] {
				rows = append(rows, r)
			}
		}
		for n := 0; have < want; n++ {
			src := t.rows[cpuOnly[rng.IntN(len(cpuOnly))]]
			r := append([]string(nil), src...)
			r[t.col["name"]] = fmt.Sprintf("%s-cpu%d", src[t.col["name"]], n)
			rows = append(rows, r)
			have += t.int(r, "cpu_milli")
		}
		t.rows = rows
	case "subsample":
		var rows [][]string
		for _, r := range t.rows {
			if rng.Float64() < level {
				rows = append(rows, r)
			}
		}
		t.rows = rows
	default:
		return fmt.Errorf("unknown --kind %q; valid kinds: gpushare, multigpu, gpuspec, cpu, subsample", kind)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	if err := w.Write(t.header); err != nil {
		return err
	}
	if err := w.WriteAll(t.rows); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "%s: %d pods (%s %s)\n", out, len(t.rows), kind, strconv.FormatFloat(level, 'g', -1, 64))
	return nil
}

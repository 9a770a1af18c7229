package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/benchmarks/scenarios"
	"github.com/pennysched/penny/pkg/sim"
)

func newSimCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Replay cluster traces through the real scheduler code",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			// The framework logs what it decides about the profile at INFO
			// (e.g. "MultiPoint plugin is explicitly re-configured"), which
			// reads like a problem on a terminal; warnings and errors stay.
			if err := routeKlog(io.Discard, "WARNING"); err != nil {
				return err
			}
			// A simulation allocates briefly-lived scheduling state for every
			// node of every pod; collecting half as often takes about a
			// quarter off a fill (measured: 13.8 s against 18.8 s) for about
			// 250 MB more per experiment. GOGC still overrides.
			if os.Getenv("GOGC") == "" {
				debug.SetGCPercent(200)
			}
			return nil
		},
		Long: `penny sim runs kube-scheduler's framework in-process, with the real in-tree
plugins and Penny's, against a recorded cluster and workload: no API server,
a virtual clock, seconds per experiment. See docs/sim.md.

Policies: ` + strings.Join(sim.PolicyNames(), ", "),
	}
	cmd.AddCommand(newSimFillCommand(), newSimReplayCommand(), newSimPlotCommand())
	return cmd
}

// traceFlags are the inputs both subcommands read.
type traceFlags struct {
	nodes, pods, format string
	schedulerConfig     string
	philly              sim.PhillyOptions
	mig                 string
	// flags says which of them were given.
	flags *pflag.FlagSet
}

func (f *traceFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.nodes, "nodes", "", "node list (openb CSV: sn,cpu_milli,memory_mib,gpu,model)")
	cmd.Flags().StringVar(&f.pods, "pods", "", "workload trace (see --format)")
	cmd.Flags().StringVar(&f.format, "format", sim.FormatAuto, "workload format: openb (pod list), philly (timestamp,duration,num_gpus[,gpu_time,cluster], header optional), alibaba-spot-gpu (job_info_df.csv of Alibaba's cluster-trace-v2026-spot-gpu), helios (cluster_log.csv of SenseTime's Helios traces) or auto (told from the file's first row)")
	cmd.Flags().StringVar(&f.schedulerConfig, "scheduler-config", "", "KubeSchedulerConfiguration for --policy penny (default: the deployed deploy/scheduler/config.yaml)")
	cmd.Flags().StringVar(&f.mig, "mig", "", "MIG experiment: turn every GPU node into an on-demand MIG node of these models, in turn (e.g. A100-80GB,H100-80GB), and ask each share as the smallest MIG profile that covers it")
	def := sim.DefaultPhillyOptions()
	cmd.Flags().Int64Var(&f.philly.MilliCPUPerGPU, "philly-cpu-per-gpu", def.MilliCPUPerGPU, "philly: CPU millicores requested per GPU (alibaba-spot-gpu, helios: for a job that records no CPUs)")
	cmd.Flags().Int64Var(&f.philly.MemMiBPerGPU, "philly-mem-per-gpu", def.MemMiBPerGPU, "philly: memory MiB requested per GPU (alibaba-spot-gpu, helios: at least this per GPU, else 4 GiB per vCPU)")
	cmd.Flags().Int64Var(&f.philly.GPUsPerGangPod, "philly-gang-pod-gpus", def.GPUsPerGangPod, "philly: GPUs per pod of a job split into a gang (helios: the most a pod of a job takes)")
	_ = cmd.MarkFlagRequired("pods")
	f.flags = cmd.Flags()
}

// Upper bounds of the --philly-* flags: far above any node's, and low enough
// that a pod's requests (up to 4096 GPUs of them) stay within an int64
// rather than overflowing into a pod that asks for nothing.
const (
	maxMilliCPUPerGPU = 1 << 20 // 1,048 cores
	maxMemMiBPerGPU   = 1 << 30 // 1 PiB
)

// phillyFlagsUsed are the --philly-* flags each trace format reads; the
// others would be ignored.
var phillyFlagsUsed = map[string][]string{
	sim.FormatOpenb:   nil,
	sim.FormatPhilly:  {"philly-cpu-per-gpu", "philly-mem-per-gpu", "philly-gang-pod-gpus"},
	sim.FormatSpotGPU: {"philly-cpu-per-gpu", "philly-mem-per-gpu"},
	sim.FormatHelios:  {"philly-cpu-per-gpu", "philly-mem-per-gpu", "philly-gang-pod-gpus"},
}

// checkPhillyFlags refuses a --philly-* flag the trace's format (as
// given, or told from the trace) does not read (an openb pod list records
// every pod's CPU and memory).
func (f *traceFlags) checkPhillyFlags(format string) error {
	if f.flags == nil {
		return nil
	}
	used, ok := phillyFlagsUsed[format]
	if !ok {
		return nil // LoadTrace names the valid formats.
	}
	for _, name := range []string{"philly-cpu-per-gpu", "philly-mem-per-gpu", "philly-gang-pod-gpus"} {
		if f.flags.Changed(name) && !slices.Contains(used, name) {
			how, fix := "--format "+format, "leave it out"
			if f.format == sim.FormatAuto {
				how, fix = "told from its first row", "leave it out, or name the trace's format with --format"
			}
			return fmt.Errorf("--%s: the trace %s is in the %s format (%s), which does not read it: it applies to %s traces; %s", name, f.pods, format, how, strings.Join(formatsReading(name), ", "), fix)
		}
	}
	return nil
}

// formatsReading are the trace formats that read a --philly-* flag.
func formatsReading(flag string) []string {
	var out []string
	for _, format := range []string{sim.FormatPhilly, sim.FormatSpotGPU, sim.FormatHelios} {
		if slices.Contains(phillyFlagsUsed[format], flag) {
			out = append(out, format)
		}
	}
	return out
}

// checkSchedulerConfig refuses --scheduler-config where no policy reads it:
// only penny's profile comes from a KubeSchedulerConfiguration.
func checkSchedulerConfig(path string, policies []*sim.Policy) error {
	if path == "" {
		return nil
	}
	var names []string
	for _, p := range policies {
		if p.Name == "penny" {
			return nil
		}
		names = append(names, p.Name)
	}
	return fmt.Errorf("--scheduler-config %s: only --policy penny reads a scheduler configuration, and the policies run are %s; add penny to --policy or leave the flag out", path, strings.Join(names, ","))
}

// checkParallel refuses a --parallel that runs nothing at a time.
func checkParallel(n int) error {
	if n < 1 {
		return fmt.Errorf("--parallel %d: give how many runs to do at once, 1 or more", n)
	}
	return nil
}

func (f *traceFlags) load() ([]*v1.Node, *sim.Trace, []byte, error) {
	if f.nodes == "" {
		return nil, nil, nil, fmt.Errorf("--nodes is required (penny sim replay takes --scenario instead)")
	}
	nodes, err := sim.LoadOpenbNodes(f.nodes)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--nodes: %w", err)
	}
	tr, cfg, err := f.loadPods()
	if err != nil {
		return nil, nil, nil, err
	}
	if f.mig != "" {
		models := strings.Split(f.mig, ",")
		if nodes, err = sim.MIGFleet(nodes, models); err != nil {
			return nil, nil, nil, fmt.Errorf("--mig: %w", err)
		}
		if tr, err = sim.MIGTrace(tr, strings.TrimSpace(models[0])); err != nil {
			return nil, nil, nil, fmt.Errorf("--mig: %w", err)
		}
	}
	return nodes, tr, cfg, nil
}

// loadPods reads the workload and the scheduler configuration.
func (f *traceFlags) loadPods() (*sim.Trace, []byte, error) {
	// NewPod leaves out a request that is not positive: a negative one would
	// silently ask for nothing.
	def := sim.DefaultPhillyOptions()
	if f.philly.MilliCPUPerGPU < 0 {
		return nil, nil, fmt.Errorf("--philly-cpu-per-gpu %d must not be negative: it is the millicores each GPU's pod asks for (default %d)", f.philly.MilliCPUPerGPU, def.MilliCPUPerGPU)
	}
	if f.philly.MemMiBPerGPU < 0 {
		return nil, nil, fmt.Errorf("--philly-mem-per-gpu %d must not be negative: it is the MiB each GPU's pod asks for (default %d)", f.philly.MemMiBPerGPU, def.MemMiBPerGPU)
	}
	if f.philly.GPUsPerGangPod < 1 {
		return nil, nil, fmt.Errorf("--philly-gang-pod-gpus %d must be at least 1: it is how many GPUs each pod of a job split into a gang takes (default %d)", f.philly.GPUsPerGangPod, def.GPUsPerGangPod)
	}
	if f.philly.MilliCPUPerGPU > maxMilliCPUPerGPU {
		return nil, nil, fmt.Errorf("--philly-cpu-per-gpu %d is more than any node holds: it is in millicores per GPU, at most %d (default %d)", f.philly.MilliCPUPerGPU, maxMilliCPUPerGPU, def.MilliCPUPerGPU)
	}
	if f.philly.MemMiBPerGPU > maxMemMiBPerGPU {
		return nil, nil, fmt.Errorf("--philly-mem-per-gpu %d is more than any node holds: it is in MiB per GPU, at most %d (default %d)", f.philly.MemMiBPerGPU, maxMemMiBPerGPU, def.MemMiBPerGPU)
	}
	format := f.format
	if format == sim.FormatAuto {
		var err error
		if format, err = sim.DetectFormat(f.pods); err != nil {
			return nil, nil, fmt.Errorf("--pods: %w", err)
		}
	}
	if err := f.checkPhillyFlags(format); err != nil {
		return nil, nil, err
	}
	tr, err := sim.LoadTrace(f.pods, format, f.philly)
	if err != nil {
		// A trace refused in the format --format names may be in another:
		// say which, so the fix is not guessed from the columns missing.
		if f.format != sim.FormatAuto {
			if told, derr := sim.DetectFormat(f.pods); derr == nil && told != format {
				return nil, nil, fmt.Errorf("--pods: %w; its first row is in the %s format: give --format %s, or leave --format out (auto)", err, told, told)
			}
		}
		return nil, nil, fmt.Errorf("--pods: %w", err)
	}
	var cfg []byte
	if f.schedulerConfig != "" {
		if cfg, err = os.ReadFile(f.schedulerConfig); err != nil {
			return nil, nil, fmt.Errorf("--scheduler-config: %w", err)
		}
	}
	return tr, cfg, nil
}

func newSimFillCommand() *cobra.Command {
	var (
		tf              traceFlags
		policies, seeds string
		out, plot       string
		inflate         float64
		order, tieBreak string
		parallel        int
		cpuProfile      string
	)
	cmd := &cobra.Command{
		Use:   "fill",
		Short: "Fill the cluster until saturation (the FGD paper's protocol) and record GPU allocation",
		Example: `  penny sim fill --nodes openb_node_list_all_node.csv --pods openb_pod_list_default.csv \
    --policy random,dotprod,clustering,packing,bestfit,fgd --seeds 42-51 --out R.json --plot P.png --parallel 2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			pols, err := sim.ParsePolicies(policies)
			if err != nil {
				return err
			}
			if err := checkSchedulerConfig(tf.schedulerConfig, pols); err != nil {
				return err
			}
			if err := checkParallel(parallel); err != nil {
				return err
			}
			seedList, err := parseSeeds(seeds)
			if err != nil {
				return err
			}
			tb, err := sim.ParseTieBreak(tieBreak)
			if err != nil {
				return err
			}
			if order != "shuffled" && order != "creation" {
				return fmt.Errorf("unknown --order %q; valid: shuffled, creation", order)
			}
			if err := sim.CheckInflate(inflate); err != nil {
				return err
			}
			if err := checkPlot(plot); err != nil {
				return err
			}
			if err := checkOutputFile("out", out, "R.json"); err != nil {
				return err
			}
			nodes, tr, cfg, err := tf.load()
			if err != nil {
				return err
			}
			var jobs []sim.FillJob
			for _, p := range pols {
				for _, s := range seedList {
					jobs = append(jobs, sim.FillJob{Policy: p, Seed: s})
				}
			}
			capacity := sim.GPUCapacityMilli(nodes)
			rep := &sim.FillReport{
				Kind: "fill", Command: commandLine(), Nodes: tf.nodes, Pods: tf.pods, Inflate: inflate, MIG: tf.mig, Order: order, TieBreak: tieBreak,
				GPUCapacityMilli: capacity, NodeCount: len(nodes), TracePods: len(tr.Pods), Machine: sim.ThisMachine(),
			}
			for _, p := range pols {
				rep.Policies = append(rep.Policies, p.Name)
			}
			var trPods []*v1.Pod
			for _, tp := range tr.Pods {
				trPods = append(trPods, tp.Pod)
			}
			rep.Impossible = sim.Impossible(nodes, trPods)
			reportImpossible(cmd, rep.Impossible)
			start := time.Now()
			recs, err := sim.FillAll(cmd.Context(), sim.FillOptions{Nodes: nodes, Trace: tr, Inflate: inflate, Creation: order == "creation", TieBreak: tb, SchedulerConfig: cfg}, jobs, parallel,
				func(r *sim.FillRecord) {
					fmt.Fprintf(cmd.ErrOrStderr(), "%-10s seed %-4d unallocated %6.2f%%  failed %5d pods  %5.1fs\n", r.Policy, r.Seed, r.UnallocatedGPUPct, r.PodsFailed, r.WallSeconds)
				})
			if err != nil {
				return err
			}
			rep.Records = recs
			rep.Summarize()
			fmt.Fprintf(cmd.OutOrStdout(), "%d runs in %.1fs\n\n%s", len(recs), time.Since(start).Seconds(), rep.Table())
			if out != "" {
				if err := sim.WriteJSON(out, rep); err != nil {
					return fmt.Errorf("--out: %w", err)
				}
			}
			if plot != "" {
				return rep.Plot(plot)
			}
			return nil
		},
	}
	tf.add(cmd)
	cmd.Flags().StringVar(&policies, "policy", "default", "comma-separated policies: "+strings.Join(sim.PolicyNames(), ", "))
	cmd.Flags().StringVar(&seeds, "seeds", "42", "seeds: a list (42,43), a range (42-51) or both")
	cmd.Flags().Float64Var(&inflate, "inflate", 1.3, "arrivals target as a multiple of the cluster's GPU capacity")
	cmd.Flags().StringVar(&order, "order", "shuffled", "order of the trace's pods: shuffled (seeded, as the FGD paper's artifact) or creation")
	cmd.Flags().StringVar(&tieBreak, "tie-break", "node-order", "between equally scored nodes: node-order (first in a seeded node order, as the artifact) or random")
	cmd.Flags().StringVar(&out, "out", "", "write the results (R.json) here")
	cmd.Flags().StringVar(&plot, "plot", "", "draw allocation against arrivals here (.png, .svg or .pdf)")
	cmd.Flags().IntVar(&parallel, "parallel", 1, "experiments to run at once")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a Go CPU profile here (for developers)")
	_ = cmd.Flags().MarkHidden("cpuprofile")
	return cmd
}

func newSimReplayCommand() *cobra.Command {
	var (
		tf        traceFlags
		policy    string
		seed      uint64
		out, plot string
		step      time.Duration
		tieBreak  string
		scenario  string
		markdown  string
		cpuProf   string
		parallel  int
	)
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Replay a trace's arrivals and departures in trace time",
		Long: `Replay a trace's arrivals and departures in trace time.

With --nodes: on that fixed fleet, one policy, recording GPU allocation over
time (docs/sim.md). With --scenario: on that elastic, priced fleet, comparing
policies (default: ` + spotPolicies + `) by bill, lost work and queueing
(docs/spot.md). With neither: on the reference scenario built into penny
(` + scenarios.SpotOpenbPath + `).`,
		Example: `  penny sim replay --nodes openb_node_list_all_node.csv --pods openb_pod_list_default.csv \
    --policy fgd --out replay.json --plot replay.png
  penny sim replay --scenario benchmarks/scenarios/spot-openb.yaml --pods openb_pod_list_default.csv \
    --policy default,spot-first,penny --out spot.json --markdown spot.md
  penny sim replay --pods philly_jobs.csv --out spot.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cpuProf != "" {
				stop, err := startCPUProfile(cpuProf)
				if err != nil {
					return err
				}
				defer stop()
			}
			if scenario != "" || tf.nodes == "" {
				if !cmd.Flags().Changed("policy") {
					policy = spotPolicies
				}
				for _, f := range []string{"plot", "step", "tie-break", "mig"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--%s applies to a replay on a fixed fleet (--nodes); on a priced fleet the report is --out and --markdown", f)
					}
				}
				if tf.nodes != "" {
					return fmt.Errorf("--nodes %s and --scenario %s: give one fleet, a fixed node list or a priced, elastic scenario (its pools say what nodes it runs)", tf.nodes, scenario)
				}
				return runSpotReplay(cmd, &tf, scenario, policy, seed, out, markdown, parallel)
			}
			for _, f := range []struct{ name, fixed string }{{"markdown", "the report is --out and --plot"}, {"parallel", "a replay runs one policy"}} {
				if cmd.Flags().Changed(f.name) {
					return fmt.Errorf("--%s applies to a replay on a priced fleet (--scenario, or neither --scenario nor --nodes); on a fixed fleet %s", f.name, f.fixed)
				}
			}
			if strings.Contains(policy, ",") {
				return fmt.Errorf("--policy %s: with --nodes a replay runs one policy; to compare policies on a priced, elastic fleet give --scenario, or leave out --nodes for the reference scenario built into penny (docs/spot.md)", policy)
			}
			p, err := sim.LookupPolicy(policy)
			if err != nil {
				return err
			}
			if err := checkSchedulerConfig(tf.schedulerConfig, []*sim.Policy{p}); err != nil {
				return err
			}
			tb, err := sim.ParseTieBreak(tieBreak)
			if err != nil {
				return err
			}
			if step <= 0 {
				return fmt.Errorf("--step must be positive, got %v", step)
			}
			if err := checkPlot(plot); err != nil {
				return err
			}
			if err := checkOutputFile("out", out, "replay.json"); err != nil {
				return err
			}
			nodes, tr, cfg, err := tf.load()
			if err != nil {
				return err
			}
			res, err := sim.Replay(cmd.Context(), sim.ReplayOptions{
				Nodes: nodes, Trace: tr, Policy: p, Seed: seed, SchedulerConfig: cfg, SampleEvery: step, TieBreak: tb,
			})
			if err != nil {
				return err
			}
			res.Command, res.Nodes, res.Pods, res.Machine = commandLine(), tf.nodes, tf.pods, sim.ThisMachine()
			reportImpossible(cmd, res.Impossible)
			fmt.Fprint(cmd.OutOrStdout(), res.Summary())
			if out != "" {
				if err := sim.WriteJSON(out, res); err != nil {
					return fmt.Errorf("--out: %w", err)
				}
			}
			if plot != "" {
				return res.Plot(plot)
			}
			return nil
		},
	}
	tf.add(cmd)
	cmd.Flags().StringVar(&policy, "policy", "default", "policy: "+strings.Join(sim.PolicyNames(), ", ")+" (on a priced fleet, a comma-separated list of them; there the default is "+spotPolicies+")")
	cmd.Flags().Uint64Var(&seed, "seed", 42, "seed for tie-breaking and random choices")
	cmd.Flags().DurationVar(&step, "step", time.Hour, "sample utilisation every this much trace time")
	cmd.Flags().StringVar(&tieBreak, "tie-break", "node-order", "between equally scored nodes: node-order or random")
	cmd.Flags().StringVar(&scenario, "scenario", "", "replay on this elastic, priced fleet (docs/spot.md) instead of --nodes (neither: the reference scenario built into penny)")
	cmd.Flags().StringVar(&markdown, "markdown", "", "on a priced fleet: write the results table (Markdown) here")
	cmd.Flags().IntVar(&parallel, "parallel", 1, "on a priced fleet: policies to replay at once (each holds its own copy of the fleet and the trace's pods in memory)")
	cmd.Flags().StringVar(&out, "out", "", "write the results (JSON) here")
	cmd.Flags().StringVar(&plot, "plot", "", "draw utilisation over time here (.png, .svg or .pdf)")
	cmd.Flags().StringVar(&cpuProf, "cpuprofile", "", "write a Go CPU profile here (for developers)")
	_ = cmd.Flags().MarkHidden("cpuprofile")
	return cmd
}

func newSimPlotCommand() *cobra.Command {
	var in, plot string
	cmd := &cobra.Command{
		Use:     "plot",
		Short:   "Draw the chart of a saved fill or replay result again",
		Example: "  penny sim plot --in R.json --plot P.png",
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := checkPlot(plot); err != nil {
				return err
			}
			b, err := os.ReadFile(in)
			if err != nil {
				return fmt.Errorf("--in: %w", err)
			}
			var kind struct{ Kind string }
			if err := json.Unmarshal(b, &kind); err != nil {
				return fmt.Errorf("--in %s is not a result of penny sim fill --out or replay --out: %w", in, err)
			}
			switch kind.Kind {
			case "fill":
				var rep sim.FillReport
				if err := json.Unmarshal(b, &rep); err != nil {
					return fmt.Errorf("%s: %w", in, err)
				}
				return rep.Plot(plot)
			case "replay":
				var res sim.ReplayResult
				if err := json.Unmarshal(b, &res); err != nil {
					return fmt.Errorf("%s: %w", in, err)
				}
				return res.Plot(plot)
			case "spot-replay":
				return fmt.Errorf("%s: a replay on a priced fleet (--scenario) has no plot: its tables are in the Markdown report, penny sim replay ... --markdown R.md", in)
			}
			return fmt.Errorf("%s: kind %q is not a result of penny sim fill --out or replay --out", in, kind.Kind)
		},
	}
	cmd.Flags().StringVar(&in, "in", "", "a result written by penny sim fill --out or replay --out")
	cmd.Flags().StringVar(&plot, "plot", "", "where to draw (.png, .svg or .pdf)")
	_ = cmd.MarkFlagRequired("in")
	_ = cmd.MarkFlagRequired("plot")
	return cmd
}

// checkPlot refuses a --plot the chart cannot be drawn to before the run,
// not after it.
func checkPlot(path string) error {
	if path == "" {
		return nil
	}
	if err := sim.CheckPlotPath(path); err != nil {
		return fmt.Errorf("--plot %w", err)
	}
	return checkOutputFile("plot", path, "P.png")
}

// checkOutputFile refuses a file the flag names that could not be written
// once the run is over: a run takes minutes, and its results would be lost.
// It neither creates nor truncates the file, so a run that fails leaves an
// older result there as it was. example names a file to suggest in a
// directory given instead of one.
func checkOutputFile(flag, path, example string) error {
	if path == "" {
		return nil
	}
	info, err := os.Stat(path)
	if err == nil {
		if info.IsDir() {
			return fmt.Errorf("--%s %s is a directory: give a file to write, e.g. %s", flag, path, filepath.Join(path, example))
		}
		if !info.Mode().IsRegular() {
			return nil // a device such as /dev/stdout, written as it is
		}
		// Opened to write without O_TRUNC: asks whether it may be replaced
		// and changes nothing in it.
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("--%s %s cannot be written (%v): give a file you may write", flag, path, pathErrReason(err))
		}
		return f.Close()
	}
	dir := filepath.Dir(path)
	if info, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("--%s %s: the folder %s does not exist: create it first, or give a file in a folder that does", flag, path, dir)
	} else if err != nil {
		return fmt.Errorf("--%s %s: %w", flag, path, err)
	} else if !info.IsDir() {
		return fmt.Errorf("--%s %s: %s is a file, not a folder: give a file in a folder", flag, path, dir)
	}
	// Only making a file there tells whether one can be made (permissions,
	// a read-only or special file system); the output file itself is not
	// made before there is something to write to it.
	probe, err := os.CreateTemp(dir, ".penny-write-check-*")
	if err != nil {
		return fmt.Errorf("--%s %s: cannot create a file in %s (%v): give a file in a folder you may write", flag, path, dir, pathErrReason(err))
	}
	probe.Close()
	return os.Remove(probe.Name())
}

// pathErrReason is why an operation on a file failed, without the file's
// name (the error names the file already).
func pathErrReason(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func reportImpossible(cmd *cobra.Command, imp []sim.ImpossiblePod) {
	if len(imp) == 0 {
		return
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d pod(s) ask for resources no node has; they are submitted and fail:\n", len(imp))
	for i, p := range imp {
		if i == 5 {
			fmt.Fprintf(cmd.ErrOrStderr(), "  ... and %d more (see impossible_pods in the results)\n", len(imp)-5)
			break
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "  %s: %s\n", p.Pod, p.Reason)
	}
}

// parseSeeds reads "42", "42,43" or "42-51" (and mixes of them).
func parseSeeds(s string) ([]uint64, error) {
	var out []uint64
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.ParseUint(strings.TrimSpace(lo), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("--seeds %q: %q is not a seed; use e.g. 42, 42,43 or 42-51", s, part)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(strings.TrimSpace(hi), 10, 64); err != nil || b < a {
				return nil, fmt.Errorf("--seeds %q: %q is not a range low-high; use e.g. 42-51", s, part)
			}
		}
		if b-a > 10000 {
			return nil, fmt.Errorf("--seeds %q: range %q is too long", s, part)
		}
		// Counting up to b, not past it: past the largest seed v wraps to 0.
		for v := a; ; v++ {
			out = append(out, v)
			if v == b {
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--seeds is empty; use e.g. 42-51")
	}
	return out, nil
}

func commandLine() string {
	args := make([]string, len(os.Args))
	for i, a := range os.Args {
		if strings.ContainsAny(a, " \t\"'") {
			a = strconv.Quote(a)
		}
		args[i] = a
	}
	if len(args) > 0 {
		args[0] = "penny"
	}
	return strings.Join(args, " ")
}

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/sim"
	"github.com/pennysched/penny/plugins"
)

type upOptions struct {
	clusterFile   string
	dir           string
	port          int
	demo          bool
	exitAfterDemo bool
	summaryJSON   string
	demoTimeout   time.Duration
	verbose       bool
	// demoTimeoutSet: --demo-timeout was given (it needs --demo).
	demoTimeoutSet bool
}

func newUpCommand() *cobra.Command {
	o := upOptions{
		dir:         filepath.Join(os.TempDir(), fmt.Sprintf("penny-up-%d", os.Getuid())),
		port:        16443,
		demoTimeout: 2 * time.Minute,
	}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a local cluster with simulated GPU nodes and penny-scheduler",
		Long: `penny up starts a real Kubernetes control plane in this process (etcd, kube-apiserver,
the Job/Deployment controllers), simulated GPU nodes (KWOK) from a cluster spec, and
penny-scheduler with the configuration in deploy/scheduler/config.yaml. It prints a
kubeconfig to use with kubectl and runs until Ctrl-C, then removes everything it made.

With --demo it submits a small GPU workload (training Jobs, inference Deployments on
MIG slices and on GPU shares, a CPU pod) to penny-scheduler and prints where each pod
landed and what it costs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.demoTimeoutSet = cmd.Flags().Changed("demo-timeout")
			return runUp(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.clusterFile, "cluster", "", "cluster spec (YAML); default: the mixed fleet of deploy/examples/cluster.yaml")
	f.StringVar(&o.dir, "dir", o.dir, "state directory (etcd data, certificates, kubeconfig): new, empty or an earlier penny up's, yours; removed on exit (emptied if it was an empty one); \"\" for a new temporary one")
	f.IntVar(&o.port, "port", o.port, "kube-apiserver port on 127.0.0.1 (0 picks a free one)")
	f.BoolVar(&o.demo, "demo", false, "submit the demo workload and print where it landed")
	f.BoolVar(&o.exitAfterDemo, "exit-after-demo", false, "with --demo: tear down and exit once the demo pods are placed")
	f.StringVar(&o.summaryJSON, "summary-json", "", "write a JSON summary of the run to this file")
	f.DurationVar(&o.demoTimeout, "demo-timeout", o.demoTimeout, "with --demo: how long to wait for the demo pods to be scheduled")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "show control-plane and scheduler logs on stderr")
	return cmd
}

// upSummary is what --summary-json writes.
type upSummary struct {
	// Status is summaryOK, or summaryFailed with Error saying why: the
	// counts alone cannot tell a run that failed before the demo from one
	// without it.
	Status         string        `json:"status"`
	Error          string        `json:"error,omitempty"`
	PodsTotal      int           `json:"pods_total"`
	PodsScheduled  int           `json:"pods_scheduled"`
	PodsPending    int           `json:"pods_pending"`
	StartupSeconds float64       `json:"startup_seconds"`
	ScheduleSecs   float64       `json:"schedule_seconds"`
	Nodes          int           `json:"nodes"`
	HourlyUSD      float64       `json:"hourly_usd"`
	Pods           []placedPod   `json:"pods"`
	Pools          []poolSummary `json:"pools"`
}

const (
	summaryOK     = "ok"
	summaryFailed = "failed"
)

type poolSummary struct {
	Name         string `json:"name"`
	Nodes        int    `json:"nodes"`
	CapacityType string `json:"capacity_type"`
	GPUModel     string `json:"gpu_model,omitempty"`
}

// check refuses flags that cannot work, before anything starts.
func (o upOptions) check() error {
	if o.exitAfterDemo && !o.demo {
		return fmt.Errorf("--exit-after-demo needs --demo")
	}
	if o.demoTimeoutSet && !o.demo {
		return fmt.Errorf("--demo-timeout needs --demo")
	}
	if o.demo && o.demoTimeout <= 0 {
		return fmt.Errorf("--demo-timeout %v: give how long the demo may take to place its pods, e.g. 2m", o.demoTimeout)
	}
	return nil
}

func runUp(ctx context.Context, o upOptions, out, errOut io.Writer) (err error) {
	began := time.Now()
	// Checked now, not after the demo ran: a summary that cannot be
	// written fails the run. And before the other flags, so that a run
	// refused for them still replaces an earlier run's summary below.
	if err := checkOutputFile("summary-json", o.summaryJSON, "summary.json"); err != nil {
		return err
	}
	summary := upSummary{Status: summaryOK}
	summaryWritten := false
	if o.summaryJSON != "" {
		// An earlier run's summary must not pass for this one's: a run that
		// fails replaces it below, and one that cannot (killed, or its
		// shutdown cut short by a second Ctrl-C) leaves none.
		if err := os.Remove(o.summaryJSON); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("--summary-json %s: %w", o.summaryJSON, err)
		}
		// Deferred first, so it runs last and records the error as the
		// user reads it.
		defer func() {
			if err == nil || summaryWritten {
				return
			}
			summary.Status, summary.Error = summaryFailed, err.Error()
			if werr := writeSummary(o.summaryJSON, summary); werr != nil {
				err = fmt.Errorf("%w\n(--summary-json: %v)", err, werr)
			}
		}()
	}
	if err := o.check(); err != nil {
		return err
	}
	spec, err := loadClusterSpec(o.clusterFile)
	if err != nil {
		return err
	}
	left := &leftBehind{stateDir: o.dir, dirGiven: o.dir != ""}
	if abs, err := filepath.Abs(o.dir); err == nil && o.dir != "" {
		left.stateDir = abs
	}
	ctx, stop := stopOnSignals(ctx, errOut, left)
	defer stop()
	// Output to a reader that has gone (`penny up | head`, a pager quit
	// early, a tee that a Ctrl-C ended first) must not kill the process
	// before it stops the cluster: Go's default for a write to a broken
	// standard output or error is to exit at once on SIGPIPE, leaving the
	// state directory, the scheduler's temporary directory and the log
	// file behind. Ignored, the write fails and penny up goes on to finish
	// (or wait for Ctrl-C) and clean up.
	signal.Ignore(syscall.SIGPIPE)
	// What was being done, for an interrupt's message.
	doing := "starting"
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("interrupted while %s; stopped, and removed what penny up made", doing)
		}
	}()

	logFile, err := redirectLogs(o.verbose)
	if err != nil {
		return err
	}
	if logFile != nil {
		left.set(func(l *leftBehind) { l.logFile = logFile.Name() })
	}
	defer func() {
		if logFile == nil {
			return
		}
		logFile.Close()
		// The log is worth a look only when something failed after the
		// control plane logged something; an interrupt is no failure.
		if info, statErr := os.Stat(logFile.Name()); err != nil && ctx.Err() == nil && statErr == nil && info.Size() > 0 {
			err = fmt.Errorf("%w\n(control-plane and scheduler logs: %s)", err, logFile.Name())
			return
		}
		os.Remove(logFile.Name())
	}()

	var logs io.Writer = os.Stderr
	if logFile != nil {
		logs = logFile
	}
	cluster, err := localcluster.Start(ctx, localcluster.Options{
		Dir: o.dir, APIServerPort: o.port, Spec: spec, Log: logs, DirFlag: "--dir", PortFlag: "--port"})
	if err != nil {
		return err
	}
	left.set(func(l *leftBehind) { l.stateDir = cluster.Dir })
	defer cluster.Stop()
	// SpotRisk prices nodes from the penny-prices ConfigMap, as on a real
	// cluster after `kubectl apply -f deploy/pricing/penny-prices.yaml`.
	prices, err := deploy.PricesConfigMap()
	if err != nil {
		return err
	}
	if _, err := cluster.Client.CoreV1().ConfigMaps(prices.Namespace).Create(ctx, prices, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the price catalog ConfigMap: %w", err)
	}
	// No reclaim reaches the risk model here (no agents, no cloud), so it
	// is not fed exposure either: node-hours alone would only ever lower the
	// Spot pools' rates below their catalog priors.
	left.set(func(l *leftBehind) { l.scheduler = true })
	doing = "starting penny-scheduler, before it scheduled anything"
	sched, err := startScheduler(ctx, plugins.SchedulerOptions{Kubeconfig: cluster.KubeconfigPath, Config: deploy.SchedulerConfig})
	if err != nil {
		return err
	}
	defer sched.Stop()
	// The scheduler's start runs to its end whatever ctx says (cut short,
	// it could not be stopped cleanly), so a Ctrl-C during it shows only
	// here: let through, it read as a run that came up and then stopped.
	if err := ctx.Err(); err != nil {
		return err
	}
	startup := time.Since(began)

	nodes := len(spec.Nodes())
	fleet := ""
	if spec.Name != "" {
		fleet = " of " + spec.Name
	}
	fmt.Fprintf(out, "Penny is up in %.1fs: %s in %s%s, penny-scheduler running.\n", startup.Seconds(), plural(nodes, "node"), plural(len(spec.Pools), "pool"), fleet)
	fmt.Fprintf(out, "  kubeconfig: %s\n", cluster.KubeconfigPath)
	fmt.Fprintf(out, "  try:        KUBECONFIG=%s kubectl get nodes -L %s,%s\n", cluster.KubeconfigPath, localcluster.LabelPool, localcluster.LabelCapacityType)
	fmt.Fprintf(out, "  pods opt in with `schedulerName: penny-scheduler`.\n")

	summary.StartupSeconds, summary.Nodes = startup.Seconds(), nodes
	for _, p := range spec.Pools {
		summary.Pools = append(summary.Pools, poolSummary{Name: p.Name, Nodes: p.Count, CapacityType: p.CapacityType, GPUModel: p.GPUModel})
	}
	if o.demo {
		doing = "running the demo"
		fmt.Fprintf(out, "\nSubmitting the demo workload to penny-scheduler...\n")
		submitted := time.Now()
		res, err := runDemo(ctx, cluster.Client, o.demoTimeout)
		if err != nil {
			return err
		}
		summary.ScheduleSecs = time.Since(submitted).Seconds()
		summary.Pods = res
		for _, p := range res {
			summary.PodsTotal++
			if p.Node != "" {
				summary.PodsScheduled++
				summary.HourlyUSD += p.HourlyUSD
			}
		}
		summary.PodsPending = summary.PodsTotal - summary.PodsScheduled
		fmt.Fprintln(out)
		printPlacements(out, res)
	}
	if o.demo && summary.PodsPending > 0 {
		return fmt.Errorf("%d of %d demo pods were not scheduled within %v", summary.PodsPending, summary.PodsTotal, o.demoTimeout)
	}
	if o.summaryJSON != "" {
		summaryWritten = true
		if err := writeSummary(o.summaryJSON, summary); err != nil {
			return fmt.Errorf("--summary-json: %w", err)
		}
	}
	if o.exitAfterDemo {
		fmt.Fprintf(out, "\nDemo done; tearing down.\n")
		return nil
	}
	fmt.Fprintf(out, "\nRunning. Press Ctrl-C to stop and remove everything.\n")
	<-ctx.Done()
	fmt.Fprintf(out, "Stopping... (Ctrl-C again exits at once, without cleaning up)\n")
	return nil
}

// writeSummary replaces path whole (sim.WriteFile): a reader, or a run
// killed while writing, finds the whole old file or the whole new one.
func writeSummary(path string, s upSummary) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return sim.WriteFile(path, append(data, '\n'))
}

// startScheduler is plugins.StartScheduler; a test stands in for it to
// interrupt penny up while the scheduler starts.
var startScheduler = plugins.StartScheduler

// exitNow ends the process when a second Ctrl-C cuts the shutdown short; a
// test stands in for it.
var exitNow = os.Exit

// stopOnSignals returns a context that the first Ctrl-C, SIGTERM or SIGHUP
// ends (a terminal closed under penny up is as much a "stop" as Ctrl-C), so
// that penny up stops the cluster and removes what it made. A Ctrl-C after
// that exits at once, as kubectl, docker compose and kind do, for a user who
// will not wait for the shutdown, after saying what it leaves behind. A
// later SIGTERM or SIGHUP does not: closing the terminal after a Ctrl-C must
// not cut short the cleanup it started.
func stopOnSignals(ctx context.Context, errOut io.Writer, left *leftBehind) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		stopping := false
		for {
			select {
			case <-done:
				return
			case sig := <-sigs:
				switch {
				case !stopping:
					stopping = true
					cancel()
				case sig == os.Interrupt:
					fmt.Fprintf(errOut, "penny: interrupted again: exiting before the shutdown finished. Nothing keeps running (the control plane and penny-scheduler ran in this process), but this may be left behind: %s\n", left.describe())
					exitNow(130)
					return
				}
			}
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}

// leftBehind is what penny up has made so far and removes when it stops:
// what a shutdown cut short leaves. The signal handler reads it while
// runUp fills it in.
type leftBehind struct {
	mu sync.Mutex
	// stateDir is --dir until the cluster has started ("" for a new
	// temporary one), then the cluster's directory; dirGiven: --dir was
	// not "", so a next penny up may use the same directory.
	stateDir  string
	dirGiven  bool
	logFile   string
	scheduler bool
}

func (l *leftBehind) set(f func(*leftBehind)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(l)
}

func (l *leftBehind) describe() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var parts []string
	switch {
	case l.stateDir == "":
		parts = append(parts, fmt.Sprintf("a penny-local-* state directory in %s (remove it)", os.TempDir()))
	case !l.dirGiven:
		parts = append(parts, fmt.Sprintf("the state directory %s (remove it)", l.stateDir))
	default:
		parts = append(parts, fmt.Sprintf("the state directory %s (the next `penny up --dir %s` clears it)", l.stateDir, l.stateDir))
	}
	if l.logFile != "" {
		parts = append(parts, "the log file "+l.logFile)
	}
	if l.scheduler {
		parts = append(parts, fmt.Sprintf("a penny-scheduler-* directory in %s", os.TempDir()))
	}
	return strings.Join(parts, "; ")
}

// plural is "1 node", "2 nodes".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func loadClusterSpec(path string) (*localcluster.Spec, error) {
	if path == "" {
		return localcluster.ParseSpec("deploy/examples/cluster.yaml", deploy.ExampleCluster)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--cluster: %w", err)
	}
	return localcluster.ParseSpec(path, data)
}

// redirectLogs sends klog (control plane and scheduler) to a temporary file
// unless verbose, so the terminal shows what Penny did, not its internals.
func redirectLogs(verbose bool) (*os.File, error) {
	if verbose {
		return nil, nil
	}
	f, err := os.CreateTemp("", "penny-up-*.log")
	if err != nil {
		return nil, err
	}
	return f, routeKlog(f, "FATAL")
}

// routeKlog sends every klog line to w and copies those at stderrThreshold
// (INFO, WARNING, ERROR, FATAL) or worse to standard error.
func routeKlog(w io.Writer, stderrThreshold string) error {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for k, v := range map[string]string{"logtostderr": "false", "alsologtostderr": "false", "stderrthreshold": stderrThreshold} {
		if err := fs.Set(k, v); err != nil {
			return err
		}
	}
	klog.SetOutput(w)
	return nil
}

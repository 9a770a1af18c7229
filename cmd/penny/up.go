package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/localcluster"
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

With --demo it submits a small GPU workload (training Jobs, an inference Deployment,
a CPU pod) to penny-scheduler and prints where each pod landed and what it costs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.demoTimeoutSet = cmd.Flags().Changed("demo-timeout")
			return runUp(cmd.Context(), o, cmd.OutOrStdout())
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
	if o.summaryJSON != "" {
		// Checked now, not after the demo ran: a summary that cannot be
		// written fails the run.
		if info, err := os.Stat(o.summaryJSON); err == nil && info.IsDir() {
			return fmt.Errorf("--summary-json %s is a directory: give a file to write, e.g. %s", o.summaryJSON, filepath.Join(o.summaryJSON, "summary.json"))
		}
		parent := filepath.Dir(o.summaryJSON)
		if info, err := os.Stat(parent); err != nil {
			return fmt.Errorf("--summary-json %s: %w", o.summaryJSON, err)
		} else if !info.IsDir() {
			return fmt.Errorf("--summary-json %s: %s is not a directory", o.summaryJSON, parent)
		}
	}
	return nil
}

func runUp(ctx context.Context, o upOptions, out io.Writer) (err error) {
	began := time.Now()
	if err := o.check(); err != nil {
		return err
	}
	spec, err := loadClusterSpec(o.clusterFile)
	if err != nil {
		return err
	}
	// SIGHUP too: a terminal closed under penny up is as much a "stop" as Ctrl-C.
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
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
	sched, err := plugins.StartScheduler(ctx, plugins.SchedulerOptions{Kubeconfig: cluster.KubeconfigPath, Config: deploy.SchedulerConfig})
	if err != nil {
		return err
	}
	defer sched.Stop()
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

	summary := upSummary{StartupSeconds: startup.Seconds(), Nodes: nodes}
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
	if o.summaryJSON != "" {
		data, _ := json.MarshalIndent(summary, "", "  ")
		if err := os.WriteFile(o.summaryJSON, append(data, '\n'), 0o644); err != nil {
			return fmt.Errorf("--summary-json: %w", err)
		}
	}
	if o.demo && summary.PodsPending > 0 {
		return fmt.Errorf("%d of %d demo pods were not scheduled within %v", summary.PodsPending, summary.PodsTotal, o.demoTimeout)
	}
	if o.exitAfterDemo {
		fmt.Fprintf(out, "\nDemo done; tearing down.\n")
		return nil
	}
	fmt.Fprintf(out, "\nRunning. Press Ctrl-C to stop and remove everything.\n")
	<-ctx.Done()
	fmt.Fprintf(out, "Stopping...\n")
	return nil
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

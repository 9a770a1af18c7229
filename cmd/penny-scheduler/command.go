package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	genericfeatures "k8s.io/apiserver/pkg/features"
	"k8s.io/client-go/tools/cache"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/cli/globalflag"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/term"
	"k8s.io/component-base/version/verflag"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	appconfig "k8s.io/kubernetes/cmd/kube-scheduler/app/config"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

// part is what penny-scheduler runs beside kube-scheduler, on every replica
// whether it leads or waits for the lease: the telemetry endpoint with the
// reclaim coordinator (telemetry.go), Cluster Autoscaler's expander
// (expander.go).
type part interface {
	// addFlags adds the part's flags to the command's, as a section of
	// --help.
	addFlags(nfs *cliflag.NamedFlagSets)
	// start checks the part's flags and starts it, before the scheduler
	// starts. What it starts runs until ctx ends: on SIGTERM or SIGINT,
	// before the scheduler is told to stop, or when the scheduler returns.
	// stopped, when not nil, returns once all of that has stopped and what
	// must outlive the process is saved.
	start(ctx context.Context, cmd *cobra.Command) (stopped func(), err error)
}

// setUpPart is a part that needs the scheduler's configuration, which is
// complete only once the scheduler is set up, after the parts started.
type setUpPart interface {
	setUp(cc *appconfig.CompletedConfig)
}

// checkedPart is a part whose flags may ask for what the scheduler's
// profiles, built only by its set-up, do not provide.
type checkedPart interface {
	checkSetUp() error
}

// stopTimeout bounds how long the parts may take to stop before the
// scheduler is told to stop anyway: the kubelet kills a pod 30s after
// SIGTERM by default, and the scheduler needs a moment to hand its lease
// over.
const stopTimeout = 20 * time.Second

// newSchedulerCommand is kube-scheduler's command (app.NewSchedulerCommand,
// whose flags, help and behaviour it keeps) with Penny's parts beside the
// scheduler. It differs in one thing: a signal first stops the parts and
// waits for them to save, and only then stops the scheduler. kube-scheduler's
// own command ends the process from its leader election (os.Exit(0)) as soon
// as the signal ends its context, on the leader and on a replica waiting
// for the lease alike, so nothing that runs after it returns would ever run
// as deploy/scheduler runs it.
func newSchedulerCommand(parts []part, registry ...app.Option) *cobra.Command {
	opts := options.NewOptions()
	cmd := &cobra.Command{
		Use: "penny-scheduler",
		Long: `penny-scheduler is kube-scheduler with Penny's plugins registered: every
kube-scheduler flag, the configuration file, leader election, /metrics and
/healthz work as they do upstream. Pods opt in with schedulerName:
penny-scheduler. Penny's own flags turn on the agents' telemetry endpoint
with the reclaim coordinator, and Cluster Autoscaler's gRPC expander.`,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			// Feature gates are set before RunE.
			return opts.ComponentGlobalsRegistry.Set()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCommand(cmd, opts, parts, registry)
		},
		Args: func(cmd *cobra.Command, args []string) error {
			for _, arg := range args {
				if len(arg) > 0 {
					return fmt.Errorf("%q does not take any arguments, got %q", cmd.CommandPath(), args)
				}
			}
			return nil
		},
	}
	nfs := opts.Flags
	verflag.AddFlags(nfs.FlagSet("global"))
	globalflag.AddGlobalFlags(nfs.FlagSet("global"), cmd.Name(), logs.SkipLoggingConfigurationFlags())
	for _, p := range parts {
		p.addFlags(nfs)
	}
	fs := cmd.Flags()
	for _, f := range nfs.FlagSets {
		fs.AddFlagSet(f)
	}
	cols, _, _ := term.TerminalSize(cmd.OutOrStdout())
	cliflag.SetUsageAndHelpFunc(cmd, *nfs, cols)
	if err := cmd.MarkFlagFilename("config", "yaml", "yml", "json"); err != nil {
		klog.Background().Error(err, "Failed to mark flag filename")
	}
	return cmd
}

// runCommand is kube-scheduler's (cmd/kube-scheduler/app runCommand), with
// the parts started before the scheduler and stopped before it.
func runCommand(cmd *cobra.Command, opts *options.Options, parts []part, registry []app.Option) error {
	verflag.PrintAndExitIfRequested()
	fg := opts.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	// Logging first, so that what follows logs as configured.
	if err := logsapi.ValidateAndApply(opts.Logs, fg); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		os.Exit(1)
	}
	cliflag.PrintFlags(cmd.Flags())
	if opts.InformerName == nil {
		informerName, err := cache.NewInformerName("kube-scheduler")
		if err != nil {
			return err
		}
		opts.InformerName = informerName
	}

	partsCtx, stopParts := context.WithCancel(context.Background())
	var stopped []func()
	stop := sync.OnceFunc(func() {
		stopParts()
		waitStopped(stopped, stopTimeout)
	})
	defer stop()
	for _, p := range parts {
		s, err := p.start(partsCtx, cmd)
		if err != nil {
			return err
		}
		if s != nil {
			stopped = append(stopped, s)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case <-signals:
		case <-ctx.Done():
			// The scheduler ended on its own: the parts still stop and
			// save (deferred), and a signal then ends the process at once.
			go func() {
				<-signals
				os.Exit(1)
			}()
			return
		}
		go func() {
			<-signals
			os.Exit(1) // a second signal ends the process at once, as upstream
		}()
		klog.Background().Info("Stopping Penny's telemetry endpoint, reclaim coordinator and expander before the scheduler")
		stop()
		cancel()
	}()

	cc, sched, err := app.Setup(ctx, opts, registry...)
	if err != nil {
		return err
	}
	if cc.LeaderElection != nil && fg.Enabled(genericfeatures.CoordinatedLeaderElection) {
		// Upstream's candidate is named for kube-scheduler in kube-system
		// whatever the configuration says: this replica would stand in the
		// default scheduler's coordinated election, not penny-scheduler's.
		return fmt.Errorf("--feature-gates: penny-scheduler does not support CoordinatedLeaderElection: kube-scheduler registers its LeaseCandidate as kube-scheduler in kube-system, which would enter penny-scheduler in the default scheduler's election; leave the gate off (its default) for penny-scheduler, which elects its leader with the lease in leaderElection.resourceNamespace/resourceName")
	}
	for _, p := range parts {
		if s, ok := p.(setUpPart); ok {
			s.setUp(cc)
		}
		if c, ok := p.(checkedPart); ok {
			if err := c.checkSetUp(); err != nil {
				return err
			}
		}
	}
	fg.(featuregate.MutableFeatureGate).AddMetrics()
	opts.ComponentGlobalsRegistry.AddMetrics()
	return app.Run(ctx, cc, sched)
}

// waitStopped waits for every part to stop, at most timeout.
func waitStopped(stopped []func(), timeout time.Duration) {
	var wg sync.WaitGroup
	for _, s := range stopped {
		wg.Go(s)
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		klog.Background().Info("Penny's parts did not stop in time; stopping the scheduler anyway", "timeout", timeout)
	}
}

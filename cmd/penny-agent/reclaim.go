package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pennysched/penny/agent/notice"
	"github.com/pennysched/penny/agent/notice/aws"
	"github.com/pennysched/penny/agent/notice/azure"
	"github.com/pennysched/penny/agent/notice/cloud"
	"github.com/pennysched/penny/agent/notice/gcp"
	"github.com/pennysched/penny/agent/reclaim"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	pennyreclaim "github.com/pennysched/penny/pkg/reclaim"
)

// reclaimOptions configure reclaim notices and the flow that acts on them
// (docs/reclaim.md).
type reclaimOptions struct {
	cloud               string
	kubeconfig          string
	stateDir            string
	safetyMargin        time.Duration
	maintenanceLead     time.Duration
	rebalanceCheckpoint bool
	rebalanceTaint      bool
	watch               cloud.Config
}

func (o *reclaimOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.cloud, "cloud", "auto", "whose reclaim notices to watch: auto (from the node's spec.providerID), aws, gcp, azure, or none")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for tainting the node, evicting its pods and recording events; empty: the in-cluster configuration")
	fs.StringVar(&o.stateDir, "reclaim-state-dir", "/var/lib/penny-agent/reclaim", "directory (a hostPath) where reclaim work in progress is kept, so a restarted agent finishes it")
	fs.DurationVar(&o.safetyMargin, "reclaim-safety-margin", reclaim.DefaultSafetyMargin, "how long before a notice's deadline the agent stops waiting for checkpoints and evicts")
	fs.DurationVar(&o.maintenanceLead, "reclaim-maintenance-lead", pennyreclaim.DefaultMaintenanceLead, "how long before scheduled maintenance pods are checkpointed and moved")
	fs.BoolVar(&o.rebalanceCheckpoint, "rebalance-checkpoint", true, "on an AWS rebalance recommendation, ask pods to checkpoint early (they are not evicted)")
	fs.BoolVar(&o.rebalanceTaint, "rebalance-taint", true, "on an AWS rebalance recommendation, taint the node so no new pods land on it")
	fs.StringVar(&o.watch.AWS.Endpoint, "aws-imds-endpoint", aws.DefaultEndpoint, "EC2 instance metadata service")
	fs.DurationVar(&o.watch.AWS.Interval, "aws-imds-interval", aws.DefaultInterval, "how often IMDS is polled for notices")
	fs.StringVar(&o.watch.GCP.Endpoint, "gcp-metadata-endpoint", gcp.DefaultEndpoint, "GCE metadata server")
	fs.StringVar(&o.watch.Azure.Endpoint, "azure-imds-endpoint", azure.DefaultEndpoint, "Azure instance metadata service (Scheduled Events)")
	fs.DurationVar(&o.watch.Azure.Interval, "azure-scheduled-events-interval", azure.DefaultInterval, "how often Scheduled Events are polled")
	fs.StringVar(&o.watch.Azure.VMName, "azure-vm-name", "", "this VM's name as Scheduled Events lists it; empty: read from the instance metadata")
}

func (o *reclaimOptions) validate() error {
	switch o.cloud {
	case "auto", "none", cloud.AWS, cloud.GCP, cloud.Azure:
	default:
		return fmt.Errorf("--cloud %q: want auto, aws, gcp, azure or none", o.cloud)
	}
	if o.cloud != "none" && o.stateDir == "" {
		return errors.New("--reclaim-state-dir is empty: set it to a hostPath directory, so that a restarted agent finishes the reclaim work in progress, or --cloud=none")
	}
	if o.safetyMargin <= 0 || o.maintenanceLead <= 0 {
		return errors.New("--reclaim-safety-margin and --reclaim-maintenance-lead must be positive")
	}
	if o.maintenanceLead > telemetryv1.MaxCommandDeadline {
		// The scheduler refuses the same lead (its --reclaim-maintenance-lead),
		// which the agents' must match.
		return fmt.Errorf("--reclaim-maintenance-lead %v: must be at most %v, the furthest deadline a checkpoint command may carry (default %v); match penny-scheduler's --reclaim-maintenance-lead", o.maintenanceLead, telemetryv1.MaxCommandDeadline, pennyreclaim.DefaultMaintenanceLead)
	}
	// The watchers read 0 as their default: a value given that is not
	// positive would be polled at another interval than asked, silently.
	if o.watch.AWS.Interval <= 0 {
		return fmt.Errorf("--aws-imds-interval %v: must be positive (default %v)", o.watch.AWS.Interval, aws.DefaultInterval)
	}
	if o.watch.Azure.Interval <= 0 {
		return fmt.Errorf("--azure-scheduled-events-interval %v: must be positive (default %v)", o.watch.Azure.Interval, azure.DefaultInterval)
	}
	return nil
}

// reclaimParts are the running pieces: the watcher feeds reports and the
// flow, the flow answers the scheduler's commands.
type reclaimParts struct {
	watcher *notice.Watcher
	flow    *reclaim.Flow
}

// setupReclaim builds the watcher for the node's cloud and the flow. It
// returns nil parts when watching is off or the cloud has no notices.
func setupReclaim(ctx context.Context, o reclaimOptions, node string, log logr.Logger, reg prometheus.Registerer, trigger func(), status func(*telemetryv1.CheckpointStatus, time.Time)) (*reclaimParts, error) {
	if o.cloud == "none" {
		log.Info("reclaim notices off (--cloud=none)")
		return nil, nil
	}
	rc, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		if o.cloud == "auto" && o.kubeconfig == "" {
			// Outside a cluster (a developer's machine, --once): nothing
			// to taint or evict, and no providerID to read.
			log.Info("reclaim notices off: no Kubernetes API access (not in a pod, no --kubeconfig)", "error", err.Error())
			return nil, nil
		}
		return nil, fmt.Errorf("no Kubernetes client for the reclaim flow: %w (set --kubeconfig, or --cloud=none to turn reclaim handling off)", err)
	}
	rc.UserAgent = "penny-agent/" + version
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	name := o.cloud
	if name == "auto" {
		n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("reading node %s's providerID to choose the cloud: %w (or set --cloud)", node, err)
		}
		if name, err = cloud.FromProviderID(n.Spec.ProviderID); err != nil {
			log.Info("reclaim notices off", "reason", err.Error())
			return nil, nil
		}
	}
	// The notices an earlier agent left work unfinished for keep the time
	// it detected them (the scheduler names its plans by it), and, as GCE
	// names no maintenance it announces, the id it recorded them under
	// rather than one made anew from a window GCE may have moved since.
	unfinished, err := reclaim.UnfinishedNotices(o.stateDir, time.Now())
	if err != nil {
		return nil, err
	}
	detected := make(map[string]time.Time, len(unfinished))
	for _, n := range unfinished {
		detected[n.ID] = n.Detected
		if name == cloud.GCP {
			o.watch.GCP.Unfinished = append(o.watch.GCP.Unfinished, n.ID)
		}
	}
	src, err := cloud.New(name, o.watch)
	if err != nil {
		return nil, err
	}
	watcher := notice.NewWatcher(src, log.WithName("notice"), notice.NewMetrics(reg))
	watcher.Resume(detected)
	fo := reclaim.Options{
		Node: node, Client: client, StateDir: o.stateDir,
		Policy: pennyreclaim.Policy{
			MaintenanceLead:     o.maintenanceLead,
			RebalanceCheckpoint: &o.rebalanceCheckpoint,
			RebalanceTaint:      &o.rebalanceTaint,
		},
		SafetyMargin: o.safetyMargin, Report: trigger, Status: status,
		Notices: watcher.Settled, Log: log, Metrics: reclaim.NewMetrics(reg),
	}
	if ack, ok := src.(notice.Acknowledger); ok {
		fo.Acknowledger = ack
	}
	flow, err := reclaim.New(fo)
	if err != nil {
		return nil, err
	}
	watcher.OnNotice(func(n notice.Notice) {
		flow.OnNotice(n)
		trigger()
	})
	// A moved deadline is news to the scheduler too (its commands to the
	// gangs' other members carry it).
	watcher.OnMove(func(n notice.Notice) {
		flow.Moved(n)
		trigger()
	})
	log.Info("watching for reclaim notices", "cloud", name, "stateDir", o.stateDir)
	return &reclaimParts{watcher: watcher, flow: flow}, nil
}

//go:build linux

// Command memory measures penny-scheduler's memory against the upstream
// kube-scheduler's (default profile) on the same GPU fleet and the same pods,
// at several cluster sizes, each scheduler on a fresh control plane
// (pkg/localcluster: real etcd and kube-apiserver) and as its own process,
// so that its peak RSS is what a container limit would see.
//
// `make bench-memory` builds the binaries and runs it with the committed
// defaults; it writes benchmarks/results/memory.{json,md}.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/pennysched/penny/benchmarks/machine"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
)

const (
	namespace = "bench"
	// gangSize members, each with gangGPUs whole GPUs.
	gangSize = 4
	gangGPUs = 2
)

type options struct {
	sizes        []int
	podsPerNode  float64
	pennyBin     string
	kubeBin      string
	pennyConfig  string
	prices       string
	bindTimeout  time.Duration
	jsonOut      string
	mdOut        string
	command      string
	logVerbosity int
	manifest     string
	// telemetryPerNode is the telemetry store's heap per reporting node
	// (benchmarks/results/telemetry.md): no agents report here, so it is
	// added to the estimate rather than measured.
	telemetryPerNode int64
}

// scheduler is one side of the comparison.
type scheduler struct {
	name, binary, makeTarget string
	// schedulerName is the profile the pods ask for.
	schedulerName string
	// leaseNamespace/leaseName: the leader lease it takes before scheduling.
	leaseNamespace, leaseName string
	// config returns the KubeSchedulerConfiguration to run with.
	config func(kubeconfig string) ([]byte, error)
}

// Result is one scheduler at one size.
type Result struct {
	Nodes     int    `json:"nodes"`
	Pods      int    `json:"pods"`
	Scheduler string `json:"scheduler"`
	// PeakRSSBytes is VmHWM at the end of the run: the most resident memory
	// the process ever had, start-up and informer lists included.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// RSSAfterBindBytes is VmRSS once every pod was bound.
	RSSAfterBindBytes int64 `json:"rss_after_bind_bytes"`
	// PeakRSSBeforePodsBytes is VmHWM when the scheduler held its lease and
	// had listed the nodes, before the first pod: the cost of the fleet alone.
	PeakRSSBeforePodsBytes int64 `json:"peak_rss_before_pods_bytes"`
	// HeapInuseBytes is go_memstats_heap_inuse_bytes from /metrics after
	// binding; 0 if it could not be read.
	HeapInuseBytes int64 `json:"heap_inuse_bytes,omitempty"`
	// BindSeconds runs from the first pod's creation to the last pod bound.
	BindSeconds float64 `json:"bind_seconds"`
	// PeakRatioToDefault is PeakRSSBytes over the default scheduler's at the
	// same size in this run (only on Penny's rows).
	PeakRatioToDefault float64 `json:"peak_ratio_to_default,omitempty"`
}

// Report is what -json writes.
type Report struct {
	Date        string          `json:"date"`
	Command     string          `json:"command"`
	Machine     machine.Machine `json:"machine"`
	PodsPerNode float64         `json:"pods_per_node"`
	PodMix      string          `json:"pod_mix"`
	NodeMix     string          `json:"node_mix"`
	Results     []*Result       `json:"results"`
	Verdict     *Verdict        `json:"verdict,omitempty"`
}

// Verdict sets penny-scheduler's largest measured size against the shipped
// Deployment's memory request and limit.
type Verdict struct {
	Manifest              string `json:"manifest"`
	Nodes                 int    `json:"nodes"`
	RequestBytes          int64  `json:"request_bytes"`
	LimitBytes            int64  `json:"limit_bytes"`
	TelemetryPerNodeBytes int64  `json:"telemetry_per_node_bytes"`
	// EstimatedPeakBytes is the measured peak RSS plus the telemetry store
	// at that many nodes; EstimatedSteadyBytes the same from RSS after binding.
	EstimatedPeakBytes   int64   `json:"estimated_peak_bytes"`
	EstimatedSteadyBytes int64   `json:"estimated_steady_bytes"`
	LimitHeadroom        float64 `json:"limit_headroom"`
	// Pods, PerPodBurstBytes and PodsToLimit: what the pods added to the
	// peak, per pod, and the linear extrapolation of it to the limit.
	Pods             int   `json:"pods"`
	PerPodBurstBytes int64 `json:"per_pod_burst_bytes"`
	PodsToLimit      int   `json:"pods_to_limit_extrapolated,omitempty"`
}

func main() {
	var o options
	var sizes string
	flag.StringVar(&sizes, "nodes", "1000,5000", "comma-separated cluster sizes (GPU nodes)")
	flag.Float64Var(&o.podsPerNode, "pods-per-node", 1, "pods created per node at each size")
	flag.StringVar(&o.pennyBin, "penny-scheduler", "bin/penny-scheduler", "penny-scheduler binary")
	flag.StringVar(&o.kubeBin, "kube-scheduler", "bin/kube-scheduler", "upstream kube-scheduler binary")
	flag.StringVar(&o.pennyConfig, "config", "deploy/scheduler/config.yaml", "penny-scheduler's KubeSchedulerConfiguration (the deployed profile)")
	flag.StringVar(&o.prices, "prices", "deploy/pricing/penny-prices.yaml", "the penny-prices ConfigMap SpotRisk reads")
	flag.DurationVar(&o.bindTimeout, "bind-timeout", 5*time.Minute, "how long each run may take to bind all pods")
	flag.StringVar(&o.jsonOut, "json", "benchmarks/results/memory.json", "raw results")
	flag.StringVar(&o.mdOut, "md", "benchmarks/results/memory.md", "results table")
	flag.StringVar(&o.command, "command", "", "the command to record in the report (default: this program's command line)")
	flag.StringVar(&o.manifest, "manifest", "deploy/scheduler/penny-scheduler.yaml", "the Deployment whose memory request and limit the results are set against")
	flag.Int64Var(&o.telemetryPerNode, "telemetry-bytes-per-node", 6400, "telemetry store heap per reporting node, added to the estimate (benchmarks/results/telemetry.md)")
	flag.IntVar(&o.logVerbosity, "v", 2, "schedulers' log verbosity (the shipped Deployment runs --v=2, and logs cost memory too)")
	flag.Parse()
	var err error
	// The control plane runs in this process and logs every request at
	// INFO; only its errors belong on the terminal next to the results.
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	for k, v := range map[string]string{"logtostderr": "false", "alsologtostderr": "false", "stderrthreshold": "ERROR"} {
		if err := klogFlags.Set(k, v); err != nil {
			fatalf("klog: %v", err)
		}
	}
	klog.SetOutput(io.Discard)
	o.sizes, err = parseSizes(sizes)
	if err == nil {
		err = checkFlags(o)
	}
	if err != nil {
		fatalf("%v", err)
	}
	if o.command == "" {
		o.command = "go run ./benchmarks/memory " + strings.Join(os.Args[1:], " ")
	}
	if err := run(o); err != nil {
		fatalf("%v", err)
	}
}

func parseSizes(sizes string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-nodes %q: want comma-separated positive node counts, e.g. 1000,5000", sizes)
		}
		out = append(out, n)
	}
	return out, nil
}

// maxPodsPerNode is the pod capacity of localcluster's nodes (the kubelet's
// default): more pods than that per node would never all bind.
const maxPodsPerNode = 110

// checkFlags refuses flag values the run cannot use, before it starts a
// control plane. NaN passed a "<= 0" check (every comparison with it is
// false) and became int(NaN) pods.
func checkFlags(o options) error {
	switch {
	case !(o.podsPerNode > 0 && o.podsPerNode <= maxPodsPerNode): // NaN and ±Inf too
		return fmt.Errorf("-pods-per-node %v: want a number in (0, %d], e.g. 1", o.podsPerNode, maxPodsPerNode)
	case o.bindTimeout <= 0:
		return fmt.Errorf("-bind-timeout %v: want a positive duration, e.g. 5m", o.bindTimeout)
	case o.telemetryPerNode < 0:
		return fmt.Errorf("-telemetry-bytes-per-node %d: want 0 or more bytes", o.telemetryPerNode)
	case o.logVerbosity < 0:
		return fmt.Errorf("-v %d: want a log verbosity of 0 or more", o.logVerbosity)
	}
	for _, n := range o.sizes {
		if math.Round(float64(n)*o.podsPerNode) < 1 {
			return fmt.Errorf("-pods-per-node %v: %d nodes would get no pod; want at least %g", o.podsPerNode, n, 0.5/float64(n))
		}
	}
	return nil
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "memory: "+format+"\n", args...)
	os.Exit(1)
}

func run(o options) error {
	pennyConfig, err := os.ReadFile(o.pennyConfig)
	if err != nil {
		return fmt.Errorf("penny-scheduler config: %w", err)
	}
	// --kubeconfig is ignored next to --config, so the connection goes into
	// the file; a profile that already sets one would be overridden silently.
	if bytes.Contains(pennyConfig, []byte("\nclientConnection:")) {
		return fmt.Errorf("%s sets clientConnection; this benchmark adds its own kubeconfig there", o.pennyConfig)
	}
	prices, err := loadConfigMap(o.prices)
	if err != nil {
		return err
	}
	request, limit, err := deploymentMemory(o.manifest)
	if err != nil {
		return err
	}
	scheds := []scheduler{
		{
			name: "default", binary: o.kubeBin, makeTarget: "make bench-memory (go build -o bin/kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler)",
			schedulerName: corev1.DefaultSchedulerName, leaseNamespace: metav1.NamespaceSystem, leaseName: "kube-scheduler",
			config: func(kubeconfig string) ([]byte, error) {
				return fmt.Appendf(nil, "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  kubeconfig: %s\n", kubeconfig), nil
			},
		},
		{
			name: "penny", binary: o.pennyBin, makeTarget: "make build",
			schedulerName: "penny-scheduler", leaseNamespace: localcluster.SystemNamespace, leaseName: "penny-scheduler",
			config: func(kubeconfig string) ([]byte, error) {
				return append(bytes.Clone(pennyConfig), fmt.Sprintf("\nclientConnection:\n  kubeconfig: %s\n", kubeconfig)...), nil
			},
		},
	}
	for _, s := range scheds {
		if fi, err := os.Stat(s.binary); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s scheduler binary %s not found or not executable: build it with %s", s.name, s.binary, s.makeTarget)
		}
	}

	report := &Report{
		Date:        time.Now().UTC().Format("2006-01-02"),
		Command:     o.command,
		Machine:     machine.Describe(),
		PodsPerNode: o.podsPerNode,
		PodMix:      podMixDescription,
		NodeMix:     nodeMixDescription,
	}
	for _, n := range o.sizes {
		pods := int(math.Round(float64(n) * o.podsPerNode))
		var baseline *Result
		for _, s := range scheds {
			fmt.Fprintf(os.Stderr, "memory: %d nodes, %d pods, %s scheduler: fresh control plane\n", n, pods, s.name)
			r, err := runOne(o, s, n, pods, prices)
			if err != nil {
				return fmt.Errorf("%d nodes, %s scheduler: %w", n, s.name, err)
			}
			if s.name == "default" {
				baseline = r
			} else if baseline != nil && baseline.PeakRSSBytes > 0 {
				r.PeakRatioToDefault = float64(r.PeakRSSBytes) / float64(baseline.PeakRSSBytes)
			}
			fmt.Fprintf(os.Stderr, "memory: %d nodes, %s: peak RSS %.0f MiB, RSS after binding %.0f MiB, %d pods bound in %.1fs\n",
				n, s.name, mib(r.PeakRSSBytes), mib(r.RSSAfterBindBytes), pods, r.BindSeconds)
			report.Results = append(report.Results, r)
		}
	}
	report.Verdict = verdict(report.Results, o.manifest, request, limit, o.telemetryPerNode)
	if err := os.MkdirAll(filepath.Dir(o.jsonOut), 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.jsonOut, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(o.mdOut, []byte(markdown(report)), 0o644)
}

func loadConfigMap(path string) (*corev1.ConfigMap, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("price catalog ConfigMap: %w (make manifests generates it)", err)
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(data, &cm); err != nil {
		return nil, fmt.Errorf("price catalog ConfigMap %s: %w", path, err)
	}
	return &cm, nil
}

// deploymentMemory is the penny-scheduler container's memory request and
// limit in the generated manifest.
func deploymentMemory(path string) (request, limit int64, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("scheduler manifest: %w (make manifests generates it)", err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var d appsv1.Deployment
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", path, err)
		}
		if d.Kind != "Deployment" {
			continue
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Name != "penny-scheduler" {
				continue
			}
			req, lim := c.Resources.Requests.Memory(), c.Resources.Limits.Memory()
			if req.IsZero() || lim.IsZero() {
				return 0, 0, fmt.Errorf("%s: container penny-scheduler sets no memory request or limit", path)
			}
			return req.Value(), lim.Value(), nil
		}
	}
	return 0, 0, fmt.Errorf("%s: no Deployment with a container penny-scheduler", path)
}

func verdict(results []*Result, manifest string, request, limit, perNode int64) *Verdict {
	var largest *Result
	for _, r := range results {
		if r.Scheduler == "penny" && (largest == nil || r.Nodes > largest.Nodes) {
			largest = r
		}
	}
	if largest == nil {
		return nil
	}
	v := &Verdict{
		Manifest: manifest, Nodes: largest.Nodes, RequestBytes: request, LimitBytes: limit, TelemetryPerNodeBytes: perNode,
		EstimatedPeakBytes:   largest.PeakRSSBytes + perNode*int64(largest.Nodes),
		EstimatedSteadyBytes: largest.RSSAfterBindBytes + perNode*int64(largest.Nodes),
	}
	v.LimitHeadroom = float64(limit) / float64(v.EstimatedPeakBytes)
	v.Pods = largest.Pods
	if added := largest.PeakRSSBytes - largest.PeakRSSBeforePodsBytes; added > 0 && largest.Pods > 0 {
		v.PerPodBurstBytes = added / int64(largest.Pods)
		if room := limit - largest.PeakRSSBeforePodsBytes - perNode*int64(largest.Nodes); room > 0 {
			v.PodsToLimit = int(room / v.PerPodBurstBytes)
		}
	}
	return v
}

// runOne starts a fresh control plane with n nodes, then the scheduler, then
// the pods, and samples the scheduler's memory until they are all bound.
func runOne(o options, s scheduler, n, pods int, prices *corev1.ConfigMap) (*Result, error) {
	ctx := context.Background()
	// KWOK and the controllers localcluster runs do nothing here: the nodes
	// carry no KWOK annotation (they are Ready from creation, and bound pods
	// stay Pending), and the pods have no owners.
	c, err := localcluster.Start(ctx, localcluster.Options{Log: io.Discard})
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	defer c.Stop()
	// The admin config's client-side limit (1000 QPS) is enough; creation
	// speed is the API server's on a 2-core machine anyway.
	client := c.Client
	pc := prices.DeepCopy()
	pc.ResourceVersion = ""
	if _, err := client.CoreV1().ConfigMaps(pc.Namespace).Create(ctx, pc, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create price ConfigMap: %w", err)
	}
	if err := createNamespace(ctx, client); err != nil {
		return nil, err
	}
	began := time.Now()
	nodes := fleet(n)
	if err := parallel(len(nodes), func(i int) error {
		_, err := client.CoreV1().Nodes().Create(ctx, nodes[i], metav1.CreateOptions{})
		return err
	}); err != nil {
		return nil, fmt.Errorf("create nodes: %w", err)
	}
	fmt.Fprintf(os.Stderr, "memory:   %d nodes created in %.1fs\n", n, time.Since(began).Seconds())

	cfg, err := s.config(c.KubeconfigPath)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(c.Dir, s.name+"-scheduler.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return nil, err
	}
	p, err := startScheduler(s, cfgPath, filepath.Join(c.Dir, s.name+"-scheduler.log"), o.logVerbosity)
	if err != nil {
		return nil, err
	}
	defer p.stop()

	if err := waitLeader(ctx, client, s, p); err != nil {
		return nil, err
	}
	// Holding the lease is not having listed the nodes: wait until the
	// scheduler reports itself ready, whose informers sync first.
	if err := p.waitReady(ctx); err != nil {
		return nil, err
	}
	_, beforePods, err := p.mem()
	if err != nil {
		return nil, err
	}

	var bound atomic.Int64
	allBound := make(chan struct{})
	var once sync.Once
	informerCtx, stopInformer := context.WithCancel(ctx)
	defer stopInformer()
	lw := cache.NewListWatchFromClient(client.CoreV1().RESTClient(), "pods", namespace, fields.Everything())
	seen := sync.Map{}
	_, controller := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &corev1.Pod{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { countBound(obj, &seen, &bound, pods, allBound, &once) },
			UpdateFunc: func(_, obj any) { countBound(obj, &seen, &bound, pods, allBound, &once) },
		},
	})
	go controller.RunWithContext(informerCtx)
	if !cache.WaitForCacheSync(informerCtx.Done(), controller.HasSynced) {
		return nil, errors.New("pod informer did not sync")
	}

	podList := workload(pods, s.schedulerName)
	start := time.Now()
	if err := parallel(len(podList), func(i int) error {
		_, err := client.CoreV1().Pods(namespace).Create(ctx, podList[i], metav1.CreateOptions{})
		return err
	}); err != nil {
		return nil, fmt.Errorf("create pods: %w", err)
	}
	select {
	case <-allBound:
	case <-p.exited:
		return nil, fmt.Errorf("scheduler exited with %d of %d pods bound: %v%s", bound.Load(), pods, p.err, p.logTail())
	case <-time.After(o.bindTimeout - time.Since(start)):
		return nil, fmt.Errorf("timed out after %s (-bind-timeout) with %d of %d pods bound%s", o.bindTimeout, bound.Load(), pods, p.logTail())
	}
	bindTime := time.Since(start)
	rss, hwm, err := p.mem()
	if err != nil {
		return nil, err
	}
	return &Result{
		Nodes:                  n,
		Pods:                   pods,
		Scheduler:              s.name,
		PeakRSSBytes:           hwm,
		RSSAfterBindBytes:      rss,
		PeakRSSBeforePodsBytes: beforePods,
		HeapInuseBytes:         p.heapInuse(ctx),
		BindSeconds:            bindTime.Seconds(),
	}, nil
}

func countBound(obj any, seen *sync.Map, bound *atomic.Int64, want int, done chan struct{}, once *sync.Once) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.NodeName == "" {
		return
	}
	if _, loaded := seen.LoadOrStore(pod.Name, struct{}{}); loaded {
		return
	}
	if bound.Add(1) >= int64(want) {
		once.Do(func() { close(done) })
	}
}

// createNamespace creates the pods' namespace and waits for its default
// ServiceAccount: admission refuses pods until the controller made it.
func createNamespace(ctx context.Context, client kubernetes.Interface) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(namespace).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("namespace %s got no default ServiceAccount: %w", namespace, err)
	}
	return nil
}

// parallel runs f(0..n-1) on a few workers: one at a time, creating 5,000
// objects would take minutes of round trips.
func parallel(n int, f func(i int) error) error {
	var g errgroup.Group
	g.SetLimit(16)
	for i := range n {
		g.Go(func() error {
			if err := f(i); err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
			return nil
		})
	}
	return g.Wait()
}

const nodeMixDescription = "AWS us-east-1 shapes in 3 zones, half on-demand and half Spot: p4d.24xlarge (8x A100-40GB), " +
	"p4de.24xlarge (8x A100-80GB), p5.48xlarge (8x H100-80GB), g5.48xlarge (8x A10G), g5.12xlarge (4x A10G); " +
	"nvidia.com/gpu and penny.dev/gpu-milli capacity, GPU product/count/memory labels, Ready"

// fleetPools are the node shapes, with their share of the fleet in tenths.
var fleetPools = []struct {
	tenths int
	pool   localcluster.Pool
}{
	{2, localcluster.Pool{InstanceType: "p4d.24xlarge", GPUModel: "A100-40GB", GPUsPerNode: 8, CPU: "96", Memory: "1152Gi", HourlyPrice: 32.77}},
	{2, localcluster.Pool{InstanceType: "p4de.24xlarge", GPUModel: "A100-80GB", GPUsPerNode: 8, CPU: "96", Memory: "1152Gi", HourlyPrice: 40.97}},
	{2, localcluster.Pool{InstanceType: "p5.48xlarge", GPUModel: "H100-80GB", GPUsPerNode: 8, CPU: "192", Memory: "2048Gi", HourlyPrice: 98.32}},
	{2, localcluster.Pool{InstanceType: "g5.48xlarge", GPUModel: "A10G", GPUsPerNode: 8, CPU: "192", Memory: "768Gi", HourlyPrice: 16.29}},
	{2, localcluster.Pool{InstanceType: "g5.12xlarge", GPUModel: "A10G", GPUsPerNode: 4, CPU: "48", Memory: "192Gi", HourlyPrice: 5.67}},
}

// fleet builds n nodes with localcluster's node builder (the labels and
// capacity `penny up` gives its nodes), split over the shapes above, each
// shape half on-demand and half Spot over three zones.
func fleet(n int) []*corev1.Node {
	spec := &localcluster.Spec{Name: "memory-bench", Region: "us-east-1"}
	zones := []string{"us-east-1a", "us-east-1b", "us-east-1c"}
	left := n
	for i, fp := range fleetPools {
		count := n * fp.tenths / 10
		if i == len(fleetPools)-1 {
			count = left
		}
		left -= count
		for j, capType := range []string{localcluster.CapacityOnDemand, localcluster.CapacitySpot} {
			half := count / 2
			if j == 1 {
				half = count - count/2
			}
			for z, zone := range zones {
				p := fp.pool
				p.Cloud = "aws"
				p.CapacityType = capType
				p.Zone = zone
				p.Name = fmt.Sprintf("%s-%s-%s", strings.ReplaceAll(p.InstanceType, ".", "-"), capType, zone[len(zone)-1:])
				p.Count = half / 3
				if z < half%3 {
					p.Count++
				}
				spec.Pools = append(spec.Pools, p)
			}
		}
	}
	nodes := spec.Nodes()
	now := metav1.Now()
	for _, node := range nodes {
		// Without the KWOK annotation the in-process KWOK leaves the node
		// alone: no heartbeats, so the API server's load is the scheduler's.
		for k := range node.Annotations {
			if strings.HasPrefix(k, "kwok.x-k8s.io/") {
				delete(node.Annotations, k)
			}
		}
		node.Status.Conditions = []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}}
	}
	return nodes
}

const podMixDescription = "per 20 pods: 4 in one gang (penny.dev/gang, gang-size 4, 2 GPUs each, training, spot allow), " +
	"4 GPU shares (penny.dev/gpu-milli 250 or 500, inference), 12 bare whole-GPU pods (six 1-GPU, three 2-GPU, two 4-GPU, one 8-GPU; batch); " +
	"the same pods on both sides, only schedulerName differs (the default scheduler counts gpu-milli and ignores the gang labels)"

// workload is the pods, the same for both schedulers but for
// schedulerName: the default scheduler treats penny.dev/gpu-milli as a plain
// extended resource and the gang labels as labels.
func workload(n int, schedulerName string) []*corev1.Pod {
	var pods []*corev1.Pod
	for i := 0; i < n; {
		slot := i % 20
		switch {
		case slot < gangSize && n-i >= gangSize:
			name := fmt.Sprintf("train-%d", i/20)
			for m := 0; m < gangSize; m++ {
				p := pod(fmt.Sprintf("%s-%d", name, m), schedulerName, "training", "16", "128Gi", gpu.ResourceGPU, gangGPUs)
				p.Labels[gang.LabelName] = name
				p.Labels[gang.KeySize] = strconv.Itoa(gangSize)
				pods = append(pods, p)
			}
			i += gangSize
			continue
		case slot >= gangSize && slot < 8:
			milli := int64(250)
			if slot%2 == 1 {
				milli = 500
			}
			pods = append(pods, pod(fmt.Sprintf("infer-%d", i), schedulerName, "inference", "4", "16Gi", gpu.ResourceGPUMilli, milli))
		default:
			gpus := int64(1)
			switch {
			case slot >= 17 && slot < 19:
				gpus = 4
			case slot == 19:
				gpus = 8
			case slot >= 14:
				gpus = 2
			}
			pods = append(pods, pod(fmt.Sprintf("batch-%d", i), schedulerName, "batch", strconv.FormatInt(4*gpus, 10), strconv.FormatInt(32*gpus, 10)+"Gi", gpu.ResourceGPU, gpus))
		}
		i++
	}
	return pods
}

func pod(name, schedulerName, workloadClass, cpu, memory string, res corev1.ResourceName, count int64) *corev1.Pod {
	q := *resource.NewQuantity(count, resource.DecimalSI)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			// Not penny.dev/workload (nor penny.dev/spot, which the gang
			// members had): SpotRisk reads those from labels too since
			// 2026-12-04. Before, as labels they were ignored, so the pods
			// have always been classed as bare pods (batch); kept so, the
			// results stay comparable.
			Labels: map[string]string{"app": name, "workload": workloadClass},
		},
		Spec: corev1.PodSpec{
			SchedulerName: schedulerName,
			Containers: []corev1.Container{{
				Name:  "main",
				Image: "registry.example/" + workloadClass + ":v1",
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memory), res: q},
					Limits:   corev1.ResourceList{res: q},
				},
			}},
		},
	}
}

// process is a running scheduler.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	port    int
	exited  chan struct{}
	err     error
}

func startScheduler(s scheduler, configPath, logPath string, verbosity int) (*process, error) {
	port, err := localcluster.FreePort()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(s.binary,
		"--config="+configPath,
		"--secure-port="+strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		// /metrics for the Go heap, without a delegated authorizer here.
		"--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
		"--v="+strconv.Itoa(verbosity),
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A benchmark killed mid-run must not leave a scheduler behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", s.binary, err)
	}
	p := &process{name: s.name, cmd: cmd, logPath: logPath, port: port, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// logTail is the end of the scheduler's log, for errors: the log itself
// goes with the cluster's directory.
func (p *process) logTail() string {
	data, err := os.ReadFile(p.logPath)
	if err != nil || len(data) == 0 {
		return ""
	}
	const max = 3000
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return "\nlast lines of the scheduler's log:\n" + string(data)
}

// mem reads VmRSS and VmHWM; the kernel keeps the high-water mark, so no
// sampling can miss a short peak.
func (p *process) mem() (rss, hwm int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0, fmt.Errorf("%s scheduler's memory: %w", p.name, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) != 2 || fs[1] != "kB" {
			return 0, 0, fmt.Errorf("%s scheduler's /proc status: unexpected %q", p.name, sc.Text())
		}
		kb, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return 0, 0, err
		}
		if k == "VmRSS" {
			rss = kb * 1024
		} else {
			hwm = kb * 1024
		}
	}
	if rss == 0 || hwm == 0 {
		return 0, 0, fmt.Errorf("%s scheduler's /proc status has no VmRSS/VmHWM", p.name)
	}
	return rss, hwm, sc.Err()
}

var insecure = &http.Client{
	Timeout: 10 * time.Second,
	// The scheduler's serving certificate is self-signed in memory.
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
}

func (p *process) get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d%s", p.port, path), nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := insecure.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func (p *process) waitReady(ctx context.Context) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case <-p.exited:
			return false, fmt.Errorf("scheduler exited: %v%s", p.err, p.logTail())
		default:
		}
		code, body, err := p.get(ctx, "/readyz")
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("HTTP %d: %s", code, body)
		return code == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("%s scheduler not ready on port %d (last: %s): %w", p.name, p.port, last, err)
	}
	return nil
}

// heapInuse is go_memstats_heap_inuse_bytes, or 0 where /metrics does not
// answer: RSS is the measure, the heap only says how much of it is live data.
func (p *process) heapInuse(ctx context.Context) int64 {
	code, body, err := p.get(ctx, "/metrics")
	if err != nil || code != http.StatusOK {
		fmt.Fprintf(os.Stderr, "memory:   %s /metrics not read (HTTP %d, %v): no heap figure\n", p.name, code, err)
		return 0
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int64(f)
			}
		}
	}
	return 0
}

func waitLeader(ctx context.Context, client kubernetes.Interface, s scheduler, p *process) error {
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case <-p.exited:
			return false, fmt.Errorf("scheduler exited before taking its lease: %v%s", p.err, p.logTail())
		default:
		}
		l, err := client.CoordinationV1().Leases(s.leaseNamespace).Get(ctx, s.leaseName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "", nil
	})
	if err != nil {
		return fmt.Errorf("%s scheduler did not take lease %s/%s: %w%s", s.name, s.leaseNamespace, s.leaseName, err, p.logTail())
	}
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func markdown(r *Report) string {
	var b strings.Builder
	b.WriteString("# Scheduler memory: penny-scheduler against kube-scheduler\n\n")
	fmt.Fprintf(&b, "Measured %s with `%s`. Each row is one scheduler process on a fresh control plane "+
		"(pkg/localcluster: etcd and kube-apiserver in the benchmark's process): the nodes are created, the scheduler "+
		"starts and takes its lease, then the pods are created and bound. Peak RSS is the process's VmHWM "+
		"(/proc/<pid>/status) at the end; the ratio is against the default scheduler measured in the same run.\n\n",
		r.Date, r.Command)
	b.WriteString("| nodes | pods | scheduler | peak RSS (MiB) | Penny/default | peak before pods (MiB) | RSS after binding (MiB) | Go heap in use (MiB) | time to bind (s) |\n")
	b.WriteString("|---:|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for _, res := range r.Results {
		ratio := "—"
		if res.PeakRatioToDefault > 0 {
			ratio = fmt.Sprintf("%.2f", res.PeakRatioToDefault)
		}
		heap := "—"
		if res.HeapInuseBytes > 0 {
			heap = fmt.Sprintf("%.0f", mib(res.HeapInuseBytes))
		}
		name := "kube-scheduler (default profile)"
		if res.Scheduler == "penny" {
			name = "penny-scheduler"
		}
		fmt.Fprintf(&b, "| %d | %d | %s | %.0f | %s | %.0f | %.0f | %s | %.1f |\n", res.Nodes, res.Pods, name,
			mib(res.PeakRSSBytes), ratio, mib(res.PeakRSSBeforePodsBytes), mib(res.RSSAfterBindBytes), heap, res.BindSeconds)
	}
	// One run per row keeps the target under ten minutes on 2 cores; the
	// spread between runs is what the reader must know to read the ratio.
	b.WriteString("\nEach row is a single run: peak RSS depends on when Go's garbage collector runs during the burst of pods and can differ by tens of percent between runs of the same command, so read the ratio as rough; the estimates against the limit below are what matter.\n")
	fmt.Fprintf(&b, "\nNodes: %s.\n\nPods (%.3g per node): %s.\n\n", r.NodeMix, r.PodsPerNode, r.PodMix)
	fmt.Fprintf(&b, "Machine: %s. Both schedulers at their defaults as shipped "+
		"(client QPS 50, `--v=2`, no GOMEMLIMIT); penny-scheduler with deploy/scheduler/config.yaml unchanged, "+
		"no telemetry endpoint (no agents report here).\n", r.Machine)
	if v := r.Verdict; v != nil {
		measured := v.EstimatedPeakBytes - v.TelemetryPerNodeBytes*int64(v.Nodes)
		telemetry := v.TelemetryPerNodeBytes * int64(v.Nodes)
		b.WriteString("\n## The shipped memory request and limit\n\n")
		fmt.Fprintf(&b, "%s asks for %.0f MiB and is limited to %.0f MiB. At %d nodes penny-scheduler peaked at %.0f MiB "+
			"here. No agents reported; the telemetry store holds about %.1f KB of heap per reporting node "+
			"(benchmarks/results/telemetry.md), %.0f MiB at %d nodes, added to the estimates below.\n\n",
			v.Manifest, mib(v.RequestBytes), mib(v.LimitBytes), v.Nodes, mib(measured),
			float64(v.TelemetryPerNodeBytes)/1000, mib(telemetry), v.Nodes)
		limitVerdict := "holds with headroom"
		switch {
		case v.LimitHeadroom < 1:
			limitVerdict = "does NOT hold: raise it"
		case v.LimitHeadroom < 1.5:
			limitVerdict = "holds, but with little headroom"
		}
		fmt.Fprintf(&b, "- **Limit: %s.** Estimated peak %.0f MiB = %.0f%% of the limit (%.1fx headroom).\n",
			limitVerdict, mib(v.EstimatedPeakBytes), 100*float64(v.EstimatedPeakBytes)/float64(v.LimitBytes), v.LimitHeadroom)
		if v.EstimatedSteadyBytes <= v.RequestBytes {
			fmt.Fprintf(&b, "- **Request: covers it.** Estimated resident after binding %.0f MiB.\n", mib(v.EstimatedSteadyBytes))
		} else {
			fmt.Fprintf(&b, "- **Request: too low at this size.** Estimated resident after binding %.0f MiB, %.0f MiB above the request: "+
				"the container runs over its request, so under node memory pressure the kubelet evicts it before pods "+
				"within theirs (the request is not a cap; the limit is).\n", mib(v.EstimatedSteadyBytes), mib(v.EstimatedSteadyBytes-v.RequestBytes))
		}
		if v.PerPodBurstBytes > 0 {
			fmt.Fprintf(&b, "- **More pods.** These runs create %d pods at once at %d nodes; what they added to the peak, "+
				"(peak − peak before pods) / pods, is %.0f KB per pod. Extrapolated linearly (not measured), the limit "+
				"would be reached at about %d pods created at once on %d nodes; for denser clusters, measure with "+
				"MEMORY_PODS_PER_NODE.\n", v.Pods, v.Nodes, float64(v.PerPodBurstBytes)/1000, v.PodsToLimit, v.Nodes)
		}
	}
	return b.String()
}

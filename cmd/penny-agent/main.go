// Command penny-agent runs on every GPU node (a DaemonSet). It reads the
// node's GPUs through NVML, asks the kubelet which pod holds which device,
// optionally reads DCGM profiling fields from dcgm-exporter, and streams the
// result to every penny-scheduler replica over authenticated gRPC.
//
// `penny-agent --once` prints one report and exits, to see what the agent
// sees; `--nvml=mock:dgxa100` uses go-nvml's mock DGX A100 instead of the
// real driver. See docs/agent.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	nodeutil "k8s.io/component-helpers/node/util"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/protobuf/encoding/protojson"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/agent/dcgm"
	"github.com/pennysched/penny/agent/nvml"
	"github.com/pennysched/penny/agent/podresources"
	"github.com/pennysched/penny/agent/report"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// version is set at build time: -ldflags "-X main.version=v0.1.0".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type options struct {
	nodeName        string
	nvmlSource      string
	nvmlLibrary     string
	podResources    string
	dcgmURL         string
	scheduler       string
	caFile          string
	tokenFile       string
	collectInterval time.Duration
	resendInterval  time.Duration
	xidWindow       time.Duration
	httpAddress     string
	once            bool
	output          string
	verbosity       int
	logFormat       string
	reclaim         reclaimOptions
}

// defaultNodeName is $NODE_NAME, else the hostname as the kubelet names its
// node from it (trimmed, lower case): taken as it is, an upper-case hostname
// named no node, and every report was refused.
func defaultNodeName(env, hostname string) string {
	if env != "" {
		return env
	}
	name, err := nodeutil.GetHostname(hostname)
	if err != nil {
		return ""
	}
	return name
}

func flags(o *options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("penny-agent", pflag.ContinueOnError)
	hostname, _ := os.Hostname()
	fs.StringVar(&o.nodeName, "node-name", defaultNodeName(os.Getenv("NODE_NAME"), hostname), "Kubernetes name of this node; left out, $NODE_NAME if set, else the hostname in lower case, as the kubelet names its node")
	fs.StringVar(&o.nvmlSource, "nvml", "auto", "where GPU data comes from: auto (the NVIDIA driver's libnvidia-ml), mock:<machine> (go-nvml's mocks: "+strings.Join(nvml.MockMachines, ", ")+")")
	fs.StringVar(&o.nvmlLibrary, "nvml-library", "libnvidia-ml.so.1", "NVML library to load with --nvml=auto")
	fs.StringVar(&o.podResources, "pod-resources-socket", podresources.DefaultSocket, "kubelet PodResources socket; empty turns pod-to-device mapping off")
	fs.StringVar(&o.dcgmURL, "dcgm-exporter-url", "", "dcgm-exporter metrics URL for profiling fields, e.g. http://127.0.0.1:9400/metrics; empty turns it off")
	fs.StringVar(&o.scheduler, "scheduler-address", "", "host:port of penny-scheduler's telemetry endpoint (a headless Service name: the agent streams to every address it resolves to); empty: do not report")
	fs.StringVar(&o.caFile, "ca-file", "", "PEM CA bundle that signs the scheduler's telemetry certificate, reread when the file changes; empty: the system roots")
	fs.StringVar(&o.tokenFile, "token-file", "/var/run/secrets/penny/token", "projected ServiceAccount token (audience penny-scheduler) sent to the scheduler")
	fs.DurationVar(&o.collectInterval, "collect-interval", report.DefaultCollectInterval, "how often to collect; a significant change is reported at the next collection")
	fs.DurationVar(&o.resendInterval, "resend-interval", report.DefaultResendInterval, "longest time between two reports when nothing significant changes")
	fs.DurationVar(&o.xidWindow, "xid-window", nvml.DefaultXIDWindow, "how long a critical XID error keeps its GPU unhealthy")
	fs.StringVar(&o.httpAddress, "http-bind-address", ":9464", "address for /metrics, /healthz and /readyz; empty turns them off")
	fs.BoolVar(&o.once, "once", false, "collect one report, print it and exit")
	fs.StringVar(&o.output, "output", "json", "format of --once output: json")
	fs.IntVarP(&o.verbosity, "v", "v", 0, "log verbosity (0: normal, 1: changes and connections, 2: debug)")
	fs.StringVar(&o.logFormat, "log-format", "json", "log format: json or text")
	o.reclaim.addFlags(fs)
	return fs
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flags(&o)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "penny-agent:", err)
		return 2
	}
	log, err := newLogger(o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "penny-agent:", err)
		return 2
	}
	routeKlog(log, o.verbosity)
	if err := o.reclaim.validate(); err != nil {
		fmt.Fprintln(stderr, "penny-agent:", err)
		return 2
	}
	if err := validate(o); err != nil {
		fmt.Fprintln(stderr, "penny-agent:", err)
		return 2
	}
	lib, err := nvmlLibrary(o)
	if err != nil {
		fmt.Fprintln(stderr, "penny-agent:", err)
		return 2
	}
	gpus := nvml.New(lib, log.WithName("nvml"), nvml.Options{XIDWindow: o.xidWindow})
	defer gpus.Shutdown()
	sources := report.Sources{GPUs: gpus}
	if o.podResources != "" {
		pr := podresources.New(o.podResources, nil, gpus.Minors)
		defer pr.Close()
		sources.PodDevices = pr
	}
	if o.dcgmURL != "" {
		sources.Profiling = dcgm.New(o.dcgmURL)
	}
	builder := &report.Builder{Node: o.nodeName, AgentID: report.NewAgentID(), Version: version, Sources: sources}

	ctx, stop := context.WithCancel(ctx)
	defer stop()

	if o.once {
		return printOnce(ctx, builder, stdout, stderr)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := report.NewMetrics(reg)
	loop := report.NewLoop(builder, report.LoopOptions{CollectInterval: o.collectInterval, ResendInterval: o.resendInterval, Log: log.WithName("report"), Metrics: metrics})

	var client *report.Client
	// Reclaim notices (reclaim.go): the watcher's notices go into every
	// report and to the flow, which also carries out the scheduler's
	// checkpoint commands and reports their progress.
	sendStatus := func(st *telemetryv1.CheckpointStatus, until time.Time) {
		if client != nil {
			client.SendCheckpointStatus(st, until)
		}
	}
	rp, err := setupReclaim(ctx, o.reclaim, o.nodeName, log.WithName("reclaim"), reg, loop.Trigger, sendStatus)
	if err != nil {
		fmt.Fprintln(stderr, "penny-agent:", err)
		return 2
	}
	var commands report.CommandHandler
	if rp != nil {
		builder.Sources.Reclaim = rp.watcher
		commands = rp.flow
	}
	if o.scheduler != "" {
		// An address without a port is refused by report.NewClient, with
		// a better message than SplitHostPort's.
		host, _, _ := net.SplitHostPort(o.scheduler)
		tlsCfg, err := clientTLS(ctx, o.caFile, host, log.WithName("uplink"))
		if err != nil {
			fmt.Fprintln(stderr, "penny-agent:", err)
			return 2
		}
		client, err = report.NewClient(loop, report.ClientOptions{
			Address: o.scheduler, TLS: tlsCfg, TokenFile: o.tokenFile, Log: log.WithName("uplink"), Metrics: metrics,
			Commands: commands,
		})
		if err != nil {
			fmt.Fprintln(stderr, "penny-agent: --scheduler-address:", err)
			return 2
		}
	} else {
		log.Info("no --scheduler-address: collecting without reporting")
	}

	// Before anything runs: an address the agent cannot serve fails the
	// start, naming the flag, rather than stopping a running agent, which
	// exits 0 as one asked to stop does.
	var lis net.Listener
	if o.httpAddress != "" {
		if lis, err = net.Listen("tcp", o.httpAddress); err != nil {
			fmt.Fprintln(stderr, "penny-agent: --http-bind-address:", err)
			return 2
		}
	}

	log.Info("penny-agent starting", "version", version, "node", o.nodeName, "nvml", o.nvmlSource, "scheduler", o.scheduler)
	done := make(chan struct{})
	var running int
	start := func(f func()) {
		running++
		go func() { f(); done <- struct{}{} }()
	}
	start(func() { gpus.WatchXIDs(ctx, loop.Trigger) })
	if rp != nil {
		start(func() { rp.watcher.Run(ctx) })
		start(func() { rp.flow.Run(ctx) })
	}
	start(func() { loop.Run(ctx) })
	if client != nil {
		start(func() { client.Run(ctx) })
	}
	if lis != nil {
		srv := &http.Server{Handler: httpHandler(reg, loop, client, o.collectInterval), ReadHeaderTimeout: 10 * time.Second}
		start(func() {
			go func() { <-ctx.Done(); srv.Close() }()
			if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error(err, "HTTP server stopped")
			}
		})
		log.Info("serving /metrics, /healthz and /readyz", "address", lis.Addr().String())
	}
	<-ctx.Done()
	log.Info("penny-agent stopping")
	for ; running > 0; running-- {
		<-done
	}
	return 0
}

func validate(o options) error {
	if o.nodeName == "" {
		return errors.New("--node-name is empty: set it, or NODE_NAME from the downward API (spec.nodeName)")
	}
	// The scheduler refuses every report naming no Kubernetes node; the
	// agent would run without ever being heard.
	if msgs := validation.IsDNS1123Subdomain(o.nodeName); len(msgs) > 0 {
		return fmt.Errorf("--node-name %q is no Kubernetes node name: %s; set it, or NODE_NAME from the downward API (spec.nodeName), to the node's name", o.nodeName, strings.Join(msgs, "; "))
	}
	if o.dcgmURL != "" {
		// Without a scheme or host every scrape fails, each with an error
		// that names the URL but not the flag.
		if u, err := url.Parse(o.dcgmURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--dcgm-exporter-url %q: want an http:// or https:// URL with a host, e.g. http://127.0.0.1:9400/metrics", o.dcgmURL)
		}
	}
	if o.collectInterval <= 0 || o.resendInterval < o.collectInterval {
		return fmt.Errorf("--collect-interval (%v) must be positive and at most --resend-interval (%v)", o.collectInterval, o.resendInterval)
	}
	if o.xidWindow <= 0 {
		// NVML's collector takes 0 as its default and a negative window
		// as one no XID is ever in: neither is what was asked for.
		return fmt.Errorf("--xid-window (%v) must be positive", o.xidWindow)
	}
	if o.output != "json" {
		return fmt.Errorf("--output %q: only json is supported", o.output)
	}
	if o.logFormat != "json" && o.logFormat != "text" {
		return fmt.Errorf("--log-format %q: want json or text", o.logFormat)
	}
	return nil
}

func nvmlLibrary(o options) (gonvml.Interface, error) {
	if machine, ok := strings.CutPrefix(o.nvmlSource, "mock:"); ok {
		return nvml.NewMockFromFlag(machine)
	}
	if o.nvmlSource != "auto" {
		return nil, fmt.Errorf("--nvml %q: want auto or mock:<machine> (%s)", o.nvmlSource, strings.Join(nvml.MockMachines, ", "))
	}
	return gonvml.New(gonvml.WithLibraryPath(o.nvmlLibrary)), nil
}

func printOnce(ctx context.Context, b *report.Builder, stdout, stderr io.Writer) int {
	r := b.Build(ctx)
	r.Sequence = 1
	out, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true, EmitDefaultValues: true}.Marshal(r)
	if err != nil {
		fmt.Fprintln(stderr, "penny-agent:", err)
		return 1
	}
	fmt.Fprintln(stdout, string(out))
	if err := telemetryv1.ValidateNodeReport(r); err != nil {
		fmt.Fprintln(stderr, "penny-agent: warning: the scheduler would refuse this report:", err)
		return 1
	}
	return 0
}

// httpHandler serves metrics and health. Health says the collection loop is
// alive; readiness says a first report exists. Neither depends on a
// scheduler: an agent that cannot reach one is still doing its job.
func httpHandler(reg *prometheus.Registry, loop *report.Loop, client *report.Client, collect time.Duration) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		last := loop.LastCollection()
		if last.IsZero() || time.Since(last) > 3*collect+10*time.Second {
			http.Error(w, fmt.Sprintf("no collection finished since %s", last.Format(time.RFC3339)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		rep := loop.Latest()
		if rep == nil {
			http.Error(w, "no report collected yet", http.StatusServiceUnavailable)
			return
		}
		streams := "reporting off"
		if client != nil {
			streams = fmt.Sprintf("%d of %d scheduler streams open", client.Connected(), len(client.Endpoints()))
		}
		fmt.Fprintf(w, "ok: %d GPUs (nvml %s), %s\n", len(rep.Gpus), strings.TrimPrefix(rep.GetNvml().GetState().String(), "STATE_"), streams)
	})
	return mux
}

// routeKlog sends what libraries log through klog (client-go's informers,
// the CA bundle's file watch) to the agent's logger, at the agent's
// verbosity: without it those lines are klog text among the agent's JSON
// lines, which log collectors parse line by line.
func routeKlog(log logr.Logger, verbosity int) {
	var fs flag.FlagSet
	klog.InitFlags(&fs)
	// klog's -v is an int32; the agent's -v is one in practice.
	_ = fs.Set("v", strconv.Itoa(verbosity))
	klog.SetLogger(log)
}

func newLogger(o options, stderr io.Writer) (logr.Logger, error) {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	var encoder zapcore.Encoder = zapcore.NewJSONEncoder(enc)
	if o.logFormat == "text" {
		encoder = zapcore.NewConsoleEncoder(enc)
	}
	// logr's V(n) is zap level -n.
	level := zap.NewAtomicLevelAt(zapcore.Level(-o.verbosity))
	// Many goroutines log; zap leaves serialising writes to the writer.
	core := zapcore.NewCore(encoder, zapcore.Lock(zapcore.AddSync(stderr)), level)
	return zapr.NewLogger(zap.New(core)), nil
}

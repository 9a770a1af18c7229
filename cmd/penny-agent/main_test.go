package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/klog/v2"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
	"sigs.k8s.io/yaml"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

func runAgent(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// The command the issue names: one report from go-nvml's mock DGX A100.
func TestOnceMockDGXA100(t *testing.T) {
	code, out, errOut := runAgent(t, "--once", "--nvml=mock:dgxa100", "--output", "json", "--node-name", "gpu-node-1", "--pod-resources-socket", "")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var r telemetryv1.NodeReport
	if err := protojson.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("output is not a NodeReport in JSON: %v\n%s", err, out)
	}
	if err := telemetryv1.ValidateNodeReport(&r); err != nil {
		t.Fatal(err)
	}
	mig := 0
	for _, g := range r.Gpus {
		if g.MigMode == telemetryv1.MIGMode_MIG_MODE_ENABLED {
			mig++
		}
	}
	if r.NodeName != "gpu-node-1" || len(r.Gpus) != 8 || mig != 2 || r.PodResources.State != telemetryv1.CollectorStatus_STATE_DISABLED {
		t.Fatalf("node %q, %d GPUs, %d in MIG mode, pod resources %v", r.NodeName, len(r.Gpus), mig, r.PodResources.State)
	}
	// Field names are the proto's, as docs/telemetry-api.md shows them.
	if !strings.Contains(out, `"mig_instances"`) || !strings.Contains(out, `"placement_start"`) {
		t.Error("JSON does not use the proto field names")
	}
}

// kubelet serves PodResources with one fixed answer, as the kubelet does on
// a unix socket.
type kubelet struct {
	podresourcesv1.UnimplementedPodResourcesListerServer
	pods []*podresourcesv1.PodResources
}

func (k *kubelet) List(context.Context, *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	return &podresourcesv1.ListPodResourcesResponse{PodResources: k.pods}, nil
}

// On GKE the kubelet lists devices by the names GKE's device plugin gives
// them, from the GPUs' device minor numbers, which only the NVML collector
// reads: the agent must hand them to the PodResources collector.
func TestOnceAttachesGKEDeviceIDs(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	lis, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	gpu := func(ns, name string, ids ...string) *podresourcesv1.PodResources {
		return &podresourcesv1.PodResources{Namespace: ns, Name: name, Containers: []*podresourcesv1.ContainerResources{{
			Name: "main", Devices: []*podresourcesv1.ContainerDevices{{ResourceName: "nvidia.com/gpu", DeviceIds: ids}}}}}
	}
	podresourcesv1.RegisterPodResourcesListerServer(srv, &kubelet{pods: []*podresourcesv1.PodResources{
		gpu("team-a", "trainer", "nvidia1/vgpu0"),
		gpu("team-b", "infer", "nvidia6/gi1"),
	}})
	go srv.Serve(lis)
	defer srv.Stop()

	// The mock's GPUs have their index as minor number; GPU 6 is split
	// 3g.20gb, 2g.10gb, 1g.5gb, GPU instances 0, 1, 2.
	code, out, errOut := runAgent(t, "--once", "--nvml=mock:dgxa100", "--node-name", "gpu-node-1", "--pod-resources-socket", socket)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var r telemetryv1.NodeReport
	if err := protojson.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if st := r.PodResources; st.GetState() != telemetryv1.CollectorStatus_STATE_OK || st.GetMessage() != "" {
		t.Errorf("pod_resources %v %q", st.GetState(), st.GetMessage())
	}
	if got := r.Gpus[1].Pods; len(got) != 1 || got[0].GetName() != "trainer" {
		t.Errorf("GPU 1 holders %v, want team-a/trainer", got)
	}
	if migs := r.Gpus[6].MigInstances; len(migs) != 3 || migs[1].Pod.GetName() != "infer" {
		t.Errorf("GPU 6 MIG instances %v, want the 2g.10gb one held by team-b/infer", migs)
	}
}

func TestOnceWithoutDriver(t *testing.T) {
	code, out, errOut := runAgent(t, "--once", "--nvml-library", "/nonexistent/libnvidia-ml.so.1", "--node-name", "n1", "--pod-resources-socket", "")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var r telemetryv1.NodeReport
	if err := protojson.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if r.Nvml.State != telemetryv1.CollectorStatus_STATE_UNAVAILABLE || len(r.Gpus) != 0 || !strings.Contains(r.Nvml.Message, "no NVIDIA driver") {
		t.Fatalf("no-driver report: %v", r.Nvml)
	}
}

func TestBadFlags(t *testing.T) {
	dir := t.TempDir()
	caFile := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	uplink := []string{"--nvml=mock:dgxa100", "--cloud=none", "--http-bind-address=", "--scheduler-address", "127.0.0.1:7443", "--ca-file"}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--once", "--nvml=mock:dgx9"}, "unknown mock machine"},
		{[]string{"--once", "--nvml=real"}, "--nvml"},
		{[]string{"--once", "--output", "yaml"}, "only json"},
		{[]string{"--collect-interval", "10s", "--resend-interval", "5s"}, "--collect-interval"},
		{[]string{"--node-name", ""}, "--node-name"},
		// The scheduler refused every report, and every scrape failed
		// without naming the flag.
		{[]string{"--once", "--nvml=mock:dgxa100", "--cloud=none", "--pod-resources-socket", "", "--node-name", "GPU_Node.1"}, "--node-name \"GPU_Node.1\" is no Kubernetes node name"},
		{[]string{"--once", "--nvml=mock:dgxa100", "--cloud=none", "--pod-resources-socket", "", "--node-name", "n1", "--dcgm-exporter-url", "127.0.0.1:9400/metrics"}, "--dcgm-exporter-url"},
		{[]string{"--once", "--nvml=mock:dgxa100", "--cloud=none", "--pod-resources-socket", "", "--node-name", "n1", "--dcgm-exporter-url", "localhost:9400/metrics"}, "--dcgm-exporter-url"},
		{[]string{"--once", "--nvml=mock:dgxa100", "--cloud=none", "--pod-resources-socket", "", "--node-name", "n1", "--dcgm-exporter-url", "http:///metrics"}, "--dcgm-exporter-url"},
		// A window no XID stays in would never mark a GPU unhealthy.
		{[]string{"--once", "--nvml=mock:dgxa100", "--cloud=none", "--xid-window=-1h"}, "--xid-window"},
		{[]string{"--log-format", "xml"}, "--log-format"},
		{[]string{"--no-such-flag"}, "unknown flag"},
		// An address the agent could never reach stops its start, rather
		// than leaving it running without ever reporting.
		{[]string{"--nvml=mock:dgxa100", "--cloud=none", "--http-bind-address=", "--scheduler-address", "penny-telemetry.penny-system.svc"}, "--scheduler-address: scheduler address \"penny-telemetry.penny-system.svc\": want host:port"},
		{[]string{"--nvml=mock:dgxa100", "--cloud=none", "--http-bind-address=", "--scheduler-address", "penny-telemetry:"}, "--scheduler-address"},
		// A CA bundle that is missing or holds no certificate at the start
		// stops it too: the agent has no last good bundle to fall back on.
		{append(uplink, filepath.Join(dir, "missing.crt")), "--ca-file"},
		{append(uplink, caFile("empty.crt", "")), "--ca-file"},
		{append(uplink, caFile("garbage.crt", "not a certificate\n")), "--ca-file"},
		// An agent that cannot serve its health endpoints fails its start
		// rather than stopping as if it was asked to.
		{[]string{"--nvml=mock:dgxa100", "--cloud=none", "--http-bind-address", busy.Addr().String()}, "--http-bind-address"},
		// Polled at the default instead of the interval given, silently.
		{[]string{"--once", "--nvml=mock:dgxa100", "--aws-imds-interval=0s"}, "--aws-imds-interval"},
		{[]string{"--once", "--nvml=mock:dgxa100", "--azure-scheduled-events-interval=-1s"}, "--azure-scheduled-events-interval"},
		// A lead the scheduler's own flag refuses: the two must match.
		{[]string{"--once", "--nvml=mock:dgxa100", "--reclaim-maintenance-lead=2h"}, "--reclaim-maintenance-lead 2h0m0s: must be at most 1h0m0s"},
		// Without a state directory a restarted agent would lose the
		// reclaim work in progress: the error names the agent's flag.
		{[]string{"--nvml=mock:dgxa100", "--http-bind-address=", "--cloud=aws", "--reclaim-state-dir=",
			"--kubeconfig", caFile("kubeconfig", "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n")},
			"--reclaim-state-dir"},
	} {
		code, _, errOut := runAgent(t, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
}

// The node names and exporter URLs the agent is given in practice pass.
func TestValidateAcceptsNodeNamesAndDCGMURLs(t *testing.T) {
	var o options
	if err := flags(&o).Parse(nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ node, url string }{
		{"gpu-node-1", ""},
		{"ip-10-0-1-23.ec2.internal", "http://10.0.1.23:9400/metrics"},
		{"gke-pool-1-abc", "https://dcgm.example.com/metrics"},
		{"n1", "http://[fd00::17]:9400/metrics"},
	} {
		o.nodeName, o.dcgmURL = c.node, c.url
		if err := validate(o); err != nil {
			t.Errorf("--node-name %q --dcgm-exporter-url %q: %v", c.node, c.url, err)
		}
	}
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The agent as the DaemonSet runs it: reporting to a scheduler over TLS with
// its token, serving metrics and health, stopping cleanly.
func TestAgentServes(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, env.Cert.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := telemetrytest.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	exit := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		exit <- run(ctx, []string{
			"--node-name", "gpu-node-1", "--nvml", "mock:dgxa100", "--pod-resources-socket", "",
			"--scheduler-address", env.Addr, "--ca-file", ca, "--token-file", env.TokenFile(t, "gpu-node-1"),
			"--http-bind-address", httpAddr, "--collect-interval", "100ms", "--resend-interval", "500ms",
		}, io.Discard, &stderr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, ok := env.Store.Node("gpu-node-1")
		code, body := get("http://" + httpAddr + "/readyz")
		if ok && len(st.GPUs) == 8 && code == 200 && strings.Contains(body, "1 of 1 scheduler streams open") {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("agent did not report and get ready: store ok=%v, readyz %d %q\n%s", ok, code, body, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _ := get("http://" + httpAddr + "/healthz"); code != 200 {
		t.Errorf("healthz %d", code)
	}
	code, body := get("http://" + httpAddr + "/metrics")
	for _, m := range []string{
		fmt.Sprintf("penny_agent_reports_sent_total{endpoint=%q}", env.Addr),
		`penny_agent_collector_state{collector="nvml",state="ok"} 1`,
		`penny_agent_gpus 8`,
		fmt.Sprintf("penny_agent_stream_connected{endpoint=%q} 1", env.Addr),
	} {
		if code != 200 || !strings.Contains(body, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	cancel()
	select {
	case c := <-exit:
		if c != 0 {
			t.Fatalf("exit %d\n%s", c, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop within 10s of its signal")
	}
}

// The DaemonSet's arguments are flags this binary knows.
func TestDaemonSetArgs(t *testing.T) {
	data, err := os.ReadFile("../../deploy/agent/penny-agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var ds appsv1.DaemonSet
		if err := yaml.Unmarshal([]byte(doc), &ds); err != nil {
			t.Fatal(err)
		}
		if ds.Kind == "DaemonSet" {
			args = ds.Spec.Template.Spec.Containers[0].Args
		}
	}
	if len(args) == 0 {
		t.Fatal("no DaemonSet with arguments in deploy/agent/penny-agent.yaml")
	}
	var o options
	fs := flags(&o)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("DaemonSet args %v: %v", args, err)
	}
	if err := validate(o); err != nil {
		t.Fatal(err)
	}
	if o.scheduler == "" || o.caFile == "" || o.tokenFile == "" {
		t.Errorf("DaemonSet does not configure reporting: %+v", o)
	}
}

// overlapWriter counts Write calls that start while another is running.
type overlapWriter struct {
	inFlight, overlaps atomic.Int32
}

func (w *overlapWriter) Write(p []byte) (int, error) {
	if w.inFlight.Add(1) > 1 {
		w.overlaps.Add(1)
	}
	time.Sleep(time.Millisecond)
	w.inFlight.Add(-1)
	return len(p), nil
}

// The agent logs from many goroutines (collection, every scheduler stream,
// the XID watcher) into the one writer run is given, which need not be
// safe for concurrent use (the tests give it a bytes.Buffer, and go test
// -race flagged TestAgentServes): lines are written one at a time.
func TestLogLinesAreWrittenOneAtATime(t *testing.T) {
	w := &overlapWriter{}
	log, err := newLogger(options{logFormat: "json"}, w)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				log.Info("line", "goroutine", g, "i", i)
			}
		}()
	}
	wg.Wait()
	if n := w.overlaps.Load(); n > 0 {
		t.Fatalf("%d log lines were written while another was being written", n)
	}
}

// Libraries log through klog (client-go's informers, the CA bundle's file
// watch); their lines must be the agent's JSON lines, at the agent's --v.
func TestKlogLinesAreTheAgents(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"--once", "--nvml=mock:dgxa100", "--node-name", "gpu-node-1", "--pod-resources-socket", "", "--v", "1"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	stderr.Reset()
	klog.InfoS("from a library", "key", "value")
	klog.V(1).InfoS("at the agent's verbosity")
	klog.V(2).InfoS("above the agent's verbosity")
	klog.Flush()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("klog wrote a line that is not JSON: %q (%v)", l, err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 2 || lines[0]["msg"] != "from a library" || lines[0]["key"] != "value" || lines[1]["msg"] != "at the agent's verbosity" {
		t.Fatalf("klog lines: %v; want the first two of the three, as JSON", lines)
	}
}

// The kubelet names its node after the hostname trimmed and in lower case;
// the agent's default must name the same node.
func TestDefaultNodeNameIsTheKubeletsName(t *testing.T) {
	for _, c := range []struct{ env, host, want string }{
		{"", "GPU-Node-7.Example.internal", "gpu-node-7.example.internal"},
		{"", " ip-10-0-0-1 ", "ip-10-0-0-1"},
		{"from-downward-api", "Other", "from-downward-api"},
	} {
		if got := defaultNodeName(c.env, c.host); got != c.want {
			t.Errorf("NODE_NAME %q, hostname %q: %q, want %q", c.env, c.host, got, c.want)
		}
	}
}

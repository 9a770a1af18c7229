package main

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/component-base/metrics/testutil"

	"github.com/pennysched/penny/pkg/api/expander"
	"github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// g5Template is a template node of a g5.12xlarge node group, as Cluster
// Autoscaler builds one.
func g5Template(name, capacityType string) []byte {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		corev1.LabelInstanceTypeStable: "g5.12xlarge", corev1.LabelTopologyRegion: "us-east-1",
		corev1.LabelTopologyZone: "us-east-1a", capacity.LabelKarpenter: capacityType}}}
	n.Status.Allocatable = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("48"), corev1.ResourceMemory: resource.MustParse("192Gi"),
		corev1.ResourcePods: resource.MustParse("110"), gpu.ResourceGPU: resource.MustParse("4")}
	n.Status.Capacity = n.Status.Allocatable
	b, err := n.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

// The flags start a TLS endpoint that answers Cluster Autoscaler's gRPC
// expander with SpotRisk's ranking (the shipped catalog's prices).
func TestExpanderFlagsStartTheEndpoint(t *testing.T) {
	dir := t.TempDir()
	cert := telemetrytest.NewCert(t)
	f := expanderFlags{
		bindAddress:    telemetrytest.FreeAddr(t),
		certFile:       writeFile(t, dir, "tls.crt", cert.CertPEM),
		keyFile:        writeFile(t, dir, "tls.key", cert.KeyPEM),
		maxConnections: defaultExpanderMaxConnections,
	}
	srv := spotrisk.NewExpanderServer()
	srv.Use(shippedSpotRisk(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopped, err := startExpander(ctx, &f, srv)
	if err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(f.bindAddress, grpc.WithTransportCredentials(credentials.NewTLS(cert.ClientTLS())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := expander.NewExpanderClient(conn)
	ask := func(workload string) string {
		t.Helper()
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", Annotations: map[string]string{spotrisk.AnnotationWorkload: workload},
			CreationTimestamp: metav1.NewTime(time.Now().Add(-time.Hour))},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8")},
				Limits:   corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("1")}}}}}}
		pb, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		req := &expander.BestOptionsRequest{
			Options: []*expander.Option{
				{NodeGroupId: "g5-spot", NodeCount: 1, PodBytes: [][]byte{pb}},
				{NodeGroupId: "g5-od", NodeCount: 1, PodBytes: [][]byte{pb}},
			},
			NodeBytesMap: map[string][]byte{"g5-spot": g5Template("g5-spot", "spot"), "g5-od": g5Template("g5-od", "on-demand")},
		}
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		resp, err := client.BestOptions(cctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetOptions()) != 1 {
			t.Fatalf("%s: %d options, want one", workload, len(resp.GetOptions()))
		}
		return resp.GetOptions()[0].GetNodeGroupId()
	}
	if got := ask("inference"); got != "g5-od" {
		t.Errorf("inference: Cluster Autoscaler told to grow %s, want g5-od", got)
	}
	if got := ask("batch"); got != "g5-spot" {
		t.Errorf("batch: Cluster Autoscaler told to grow %s, want g5-spot", got)
	}

	// A client can have only a couple of requests of up to 128 MiB read at
	// once on a connection, and no header list larger than the telemetry
	// endpoint's (gRPC's defaults: unbounded and 16 MiB).
	settings := telemetrytest.HTTP2Settings(t, f.bindAddress, cert.ClientTLS())
	if got, ok := settings[0x3]; !ok || got != expanderMaxStreams {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d (set: %v), want %d", got, ok, expanderMaxStreams)
	}
	if got, ok := settings[0x6]; !ok || got != telemetry.MaxHeaderBytes {
		t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE %d (set: %v), want %d", got, ok, telemetry.MaxHeaderBytes)
	}

	// Stopping waits for the endpoint: once it returns, the address is free
	// (a restarted scheduler in the same pod, or the next test, can take it).
	cancel()
	stopped()
	lis, err := net.Listen("tcp", f.bindAddress)
	if err != nil {
		t.Fatalf("the address is still taken after the endpoint stopped: %v", err)
	}
	lis.Close()
}

// The patch deploy/autoscaler applies to the scheduler's Deployment uses
// flags this command knows, and the Service it documents points at the
// port it opens.
func TestExpanderPatchFlags(t *testing.T) {
	var f expanderFlags
	if err := f.flagSet().Parse(patchArgs(t, "../../deploy/autoscaler/scheduler-expander-patch.yaml")); err != nil {
		t.Fatal(err)
	}
	if f.bindAddress != ":7444" || f.certFile == "" || f.keyFile == "" {
		t.Errorf("patch does not turn the endpoint on at :7444: %+v", f)
	}
	svc, err := os.ReadFile("../../deploy/autoscaler/penny-expander.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"port: 7444", "targetPort: expander", "--grpc-expander-url=penny-expander.penny-system.svc:7444"} {
		if !strings.Contains(string(svc), want) {
			t.Errorf("deploy/autoscaler/penny-expander.yaml lacks %q", want)
		}
	}
}

func TestExpanderFlagErrors(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, c := range []struct {
		f    expanderFlags
		want string
	}{
		{expanderFlags{bindAddress: ":0"}, "--expander-tls-cert-file"},
		{expanderFlags{bindAddress: ":0", certFile: "c", keyFile: "k"}, "--expander-max-connections 0: must be positive (default 64)"},
		{expanderFlags{bindAddress: ":0", certFile: "/nonexistent/c", keyFile: "/nonexistent/k", maxConnections: 1}, "--expander-tls-cert-file, --expander-tls-key-file: TLS certificate"},
	} {
		if _, err := startExpander(ctx, &c.f, spotrisk.NewExpanderServer()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want an error mentioning %q", c.f, err, c.want)
		}
	}
}

// The expander endpoint bounds what clients that say nothing can hold: a
// connection that has not finished its handshake by the deadline is closed
// (gRPC's default held it two minutes), and beyond --expander-max-connections
// one is closed as soon as it is accepted and counted, while Cluster
// Autoscaler's connection under the limit is kept.
func TestExpanderEndpointBoundsConnections(t *testing.T) {
	dir := t.TempDir()
	cert := telemetrytest.NewCert(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := func(f expanderFlags) string {
		t.Helper()
		f.bindAddress = telemetrytest.FreeAddr(t)
		f.certFile, f.keyFile = writeFile(t, dir, "tls.crt", cert.CertPEM), writeFile(t, dir, "tls.key", cert.KeyPEM)
		stopped, err := startExpander(ctx, &f, spotrisk.NewExpanderServer())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); stopped() })
		return f.bindAddress
	}
	addr := start(expanderFlags{maxConnections: defaultExpanderMaxConnections, handshakeTimeout: 200 * time.Millisecond})
	if !telemetrytest.ClosedWithin(t, telemetrytest.SilentConn(t, addr), 30*time.Second) {
		t.Error("a connection that sent nothing was still open 30s later, with a handshake timeout of 200ms")
	}

	// The silent connection must outlast the test's waits.
	addr = start(expanderFlags{maxConnections: 2, handshakeTimeout: 10 * time.Minute})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cert.ClientTLS())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := expander.NewExpanderClient(conn)
	// The endpoint has no SpotRisk to ask: its answer says so, which shows
	// that the call reached it.
	ask := func(when string) {
		t.Helper()
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		if _, err := client.BestOptions(cctx, &expander.BestOptionsRequest{}); err == nil || !strings.Contains(err.Error(), "SpotRisk is not running yet") {
			t.Fatalf("Cluster Autoscaler's call %s: %v, want the endpoint's answer", when, err)
		}
	}
	ask("before the limit is reached")
	// Accepted in the order they were made: the first silent connection is
	// in before the second.
	held := telemetrytest.SilentConn(t, addr)
	before, _ := testutil.GetCounterMetricValue(spotrisk.ExpanderConnectionsOverLimit())
	if !telemetrytest.ClosedWithin(t, telemetrytest.SilentConn(t, addr), 30*time.Second) {
		t.Fatal("the third connection was still open 30s later, with --expander-max-connections=2")
	}
	// The endpoint counts the refusal once the connection is closed.
	var n float64
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		n, _ = testutil.GetCounterMetricValue(spotrisk.ExpanderConnectionsOverLimit())
		return n == before+1, nil
	}); err != nil {
		t.Errorf("penny_expander_connections_over_limit_total went from %v to %v, want one more", before, n)
	}
	if telemetrytest.ClosedWithin(t, held, 100*time.Millisecond) {
		t.Error("a connection under the limit was closed")
	}
	ask("after a connection over the limit was refused")
}

// An endpoint that no profile's SpotRisk ranks for would answer Unavailable
// for as long as the scheduler ran, and Cluster Autoscaler would keep every
// option without a word why: the command refuses to start, naming the flag,
// once the scheduler's set-up has built its profiles (here kube-scheduler's
// default profile, which has no SpotRisk).
func TestExpanderWithoutSpotRiskRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	cert := telemetrytest.NewCert(t)
	out := refusedStart(t, "--leader-elect=false", "--expander-bind-address=127.0.0.1:0",
		"--expander-tls-cert-file="+writeFile(t, dir, "tls.crt", cert.CertPEM),
		"--expander-tls-key-file="+writeFile(t, dir, "tls.key", cert.KeyPEM))
	if !strings.Contains(out, "command ended: --expander-bind-address: no profile of the scheduler's configuration enables the SpotRisk plugin") {
		t.Errorf("got %s, want the start refused naming --expander-bind-address and SpotRisk", out)
	}
}

func TestExpanderCheckSetUp(t *testing.T) {
	off := &expanderFlags{srv: spotrisk.NewExpanderServer()}
	if err := off.checkSetUp(); err != nil {
		t.Errorf("no endpoint: %v", err)
	}
	on := &expanderFlags{bindAddress: ":7444", srv: spotrisk.NewExpanderServer()}
	if err := on.checkSetUp(); err == nil {
		t.Error("an endpoint without SpotRisk was accepted")
	}
	on.srv.Use(shippedSpotRisk(t))
	if err := on.checkSetUp(); err != nil {
		t.Errorf("an endpoint SpotRisk ranks for: %v", err)
	}
}

// shippedSpotRisk is SpotRisk with the shipped catalog's prices.
func shippedSpotRisk(t *testing.T) *spotrisk.SpotRisk {
	t.Helper()
	catalog, err := pricing.LoadFile("../../deploy/pricing/catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pl, err := spotrisk.New(context.Background(), nil, nil, spotrisk.Deps{Prices: catalog})
	if err != nil {
		t.Fatal(err)
	}
	return pl.(*spotrisk.SpotRisk)
}

package report

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/pennysched/penny/agent/nvml"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

func newMockLoop(t *testing.T, node string, collect, resend time.Duration) (*Loop, *nvml.Mock) {
	t.Helper()
	m, err := nvml.NewMockFromFlag("dgxa100")
	if err != nil {
		t.Fatal(err)
	}
	b := &Builder{Node: node, AgentID: NewAgentID(), Version: "test", Sources: Sources{GPUs: nvml.New(m, testr.New(t), nvml.Options{})}}
	return NewLoop(b, LoopOptions{CollectInterval: collect, ResendInterval: resend, Log: testr.New(t)}), m
}

func run(t *testing.T, f func(ctx context.Context)) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f(ctx); close(done) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Error("did not stop within 10s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testBackoff() wait.Backoff {
	return wait.Backoff{Duration: 20 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 1 << 30, Cap: 200 * time.Millisecond}
}

func TestChangedIgnoresVolatileFields(t *testing.T) {
	base := telemetrytest.Report("n1", 4, 1, time.Now())
	mutate := func(f func(r *telemetryv1.NodeReport)) *telemetryv1.NodeReport {
		r := proto.Clone(base).(*telemetryv1.NodeReport)
		f(r)
		return r
	}
	quiet := []func(r *telemetryv1.NodeReport){
		func(r *telemetryv1.NodeReport) {
			r.Sequence = 99
			r.CollectedAt = timestamppb.New(time.Now().Add(time.Hour))
		},
		func(r *telemetryv1.NodeReport) { r.Gpus[0].UtilizationPercent = proto.Uint32(3) },
		func(r *telemetryv1.NodeReport) { r.Gpus[0].MemoryUsedBytes = proto.Uint64(7) },
		func(r *telemetryv1.NodeReport) { r.Gpus[0].Health.TemperatureCelsius = proto.Uint32(80) },
		func(r *telemetryv1.NodeReport) { r.Gpus[0].Health.ThrottleReasons = nil },
		func(r *telemetryv1.NodeReport) { r.Gpus[1].MigInstances[0].MemoryUsedBytes = proto.Uint64(1) },
		func(r *telemetryv1.NodeReport) {
			r.Gpus[0].Profiling = &telemetryv1.Profiling{TensorActive: proto.Float64(0.3)}
		},
	}
	for i, f := range quiet {
		if Changed(base, mutate(f)) {
			t.Errorf("volatile change %d counted as significant", i)
		}
	}
	loud := []func(r *telemetryv1.NodeReport){
		func(r *telemetryv1.NodeReport) {
			r.Gpus[1].MigInstances[3].Pod = &telemetryv1.PodRef{Namespace: "x", Name: "y"}
		},
		func(r *telemetryv1.NodeReport) {
			r.Gpus[0].Health.Healthy = false
			r.Gpus[0].Health.Reasons = []string{"XID 79"}
		},
		func(r *telemetryv1.NodeReport) { r.Gpus = r.Gpus[:3] },
		func(r *telemetryv1.NodeReport) {
			r.PodResources = &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_ERROR, Message: "x"}
		},
		func(r *telemetryv1.NodeReport) {
			r.ReclaimNotices = []*telemetryv1.ReclaimNotice{{Id: "n", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION}}
		},
	}
	for i, f := range loud {
		if !Changed(base, mutate(f)) {
			t.Errorf("significant change %d not seen", i)
		}
	}
	if !Changed(nil, base) {
		t.Error("the first report is a change")
	}
}

// The loop publishes at once on a change and otherwise every resend
// interval, however often it collects.
func TestLoopPublishesOnChangeAndResends(t *testing.T) {
	loop, m := newMockLoop(t, "n1", 10*time.Millisecond, 400*time.Millisecond)
	updates, unsub := loop.Subscribe()
	defer unsub()
	start := time.Now()
	run(t, loop.Run)
	<-updates
	first := loop.Latest()
	if first.Sequence != 1 || len(first.Gpus) != 8 {
		t.Fatalf("first report: seq %d, %d GPUs", first.Sequence, len(first.Gpus))
	}
	// No change: the next report comes after the resend interval, not after
	// the 10ms collections in between.
	<-updates
	if d := time.Since(start); d < 350*time.Millisecond {
		t.Fatalf("unchanged report resent after %v, before the 400ms resend interval", d)
	}
	// A change goes out on the next collection.
	m.SetECCUncorrected(2, 1)
	changed := time.Now()
	for {
		select {
		case <-updates:
		case <-time.After(2 * time.Second):
			t.Fatal("no report after a change")
		}
		if !loop.Latest().Gpus[2].Health.Healthy {
			break
		}
	}
	if d := time.Since(changed); d > 300*time.Millisecond {
		t.Errorf("change published after %v; collection runs every 10ms", d)
	}
	if seq := loop.Latest().Sequence; seq < 3 {
		t.Errorf("sequence %d after three publications", seq)
	}
}

func TestTriggerCollectsAtOnce(t *testing.T) {
	loop, m := newMockLoop(t, "n1", time.Hour, time.Hour)
	updates, unsub := loop.Subscribe()
	defer unsub()
	run(t, loop.Run)
	<-updates
	m.SetClockReasons(1, 0x40) // HW thermal slowdown: unhealthy
	loop.Trigger()
	select {
	case <-updates:
	case <-time.After(2 * time.Second):
		t.Fatal("Trigger did not cause a collection (the collect interval is an hour)")
	}
	if loop.Latest().Gpus[1].Health.Healthy {
		t.Fatal("triggered report does not show the change")
	}
}

func newClient(t *testing.T, loop *Loop, addr string, tlsCfg *tls.Config, token string) *Client {
	t.Helper()
	c, err := NewClient(loop, ClientOptions{Address: addr, TLS: tlsCfg, TokenFile: token, Backoff: testBackoff(), ResolveInterval: 50 * time.Millisecond, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The bound: a report from the agent reaches the scheduler store in
// under 1s on loopback, over TLS with token checks. Measured per report,
// from the end of its collection (CollectedAt) to the store applying it
// (ReceivedAt); both clocks are this process's.
//
// It also measures what a scheduler sees of a device change with the
// agent's default intervals: the change waits for the next collection (at
// most the 1s collect interval), then travels as above.
func TestReportReachesStoreWithinOneSecond(t *testing.T) {
	var mu sync.Mutex
	transport := map[string][]time.Duration{}
	unhealthySeen := map[int]time.Time{}
	env := telemetrytest.Start(t, telemetrytest.Options{Store: telemetry.StoreOptions{OnUpdate: func(_, next *telemetry.NodeState) {
		mu.Lock()
		defer mu.Unlock()
		transport[next.Node] = append(transport[next.Node], next.ReceivedAt.Sub(next.CollectedAt))
		for i, g := range next.GPUs {
			if _, ok := unhealthySeen[i]; !ok && !g.Healthy && next.Node == "gpu-node-1" {
				unhealthySeen[i] = time.Now()
			}
		}
	}}})

	// Many reports: publish on every 20ms collection.
	fast, _ := newMockLoop(t, "gpu-node-2", 20*time.Millisecond, 20*time.Millisecond)
	fastClient := newClient(t, fast, env.Addr, env.ClientTLS, env.TokenFile(t, "gpu-node-2"))
	stopFast := run(t, fast.Run)
	stopFastClient := run(t, fastClient.Run)
	eventually(t, 10*time.Second, "100 reports stored", func() bool { mu.Lock(); defer mu.Unlock(); return len(transport["gpu-node-2"]) >= 100 })
	stopFast()
	stopFastClient()
	mu.Lock()
	lat := append([]time.Duration(nil), transport["gpu-node-2"]...)
	mu.Unlock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("collected-to-stored over %d reports: p50 %v, p99 %v, max %v", len(lat), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	if lat[0] < 0 || lat[len(lat)-1] >= time.Second {
		t.Fatalf("collected-to-stored ranged %v..%v, want every report under 1s", lat[0], lat[len(lat)-1])
	}

	// Device changes with the default intervals.
	loop, m := newMockLoop(t, "gpu-node-1", DefaultCollectInterval, DefaultResendInterval)
	client := newClient(t, loop, env.Addr, env.ClientTLS, env.TokenFile(t, "gpu-node-1"))
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "the first report in the store", func() bool { _, ok := env.Store.Node("gpu-node-1"); return ok })
	var change []time.Duration
	for i := 0; i < 6; i++ {
		changed := time.Now()
		m.SetECCUncorrected(i, 1)
		eventually(t, 3*time.Second, fmt.Sprintf("GPU %d unhealthy in the store", i), func() bool {
			mu.Lock()
			defer mu.Unlock()
			_, ok := unhealthySeen[i]
			return ok
		})
		mu.Lock()
		change = append(change, unhealthySeen[i].Sub(changed))
		mu.Unlock()
		time.Sleep(time.Duration(i*137%700) * time.Millisecond) // land at different points of the collect cycle
	}
	sort.Slice(change, func(i, j int) bool { return change[i] < change[j] })
	t.Logf("device change to store with a %v collect interval: min %v, median %v, max %v", DefaultCollectInterval, change[0], change[len(change)/2], change[len(change)-1])
	if max := change[len(change)-1]; max >= DefaultCollectInterval+time.Second {
		t.Fatalf("a change took %v to reach the store, want under the collect interval plus 1s", max)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, d := range transport["gpu-node-1"] {
		if d >= time.Second {
			t.Fatalf("a report of gpu-node-1 took %v from collection to store", d)
		}
	}
}

// With no scheduler the agent keeps collecting; when one appears it gets the
// current report within the backoff, and after a scheduler restart the agent
// reconnects by itself.
func TestSchedulerDownThenUpThenRestarted(t *testing.T) {
	addr := telemetrytest.FreeAddr(t)
	cert := telemetrytest.NewCert(t)
	loop, _ := newMockLoop(t, "n1", 20*time.Millisecond, 100*time.Millisecond)
	token := filepath.Join(t.TempDir(), "token")
	writeToken(t, token, "n1")
	client := newClient(t, loop, addr, cert.ClientTLS(), token)
	run(t, loop.Run)
	run(t, client.Run)

	eventually(t, 2*time.Second, "reports to pile up with no scheduler", func() bool {
		r := loop.Latest()
		return r != nil && r.Sequence >= 3
	})
	if client.Connected() != 0 {
		t.Fatal("connected to nothing")
	}

	env := telemetrytest.Start(t, telemetrytest.Options{Address: addr, Cert: cert})
	eventually(t, 5*time.Second, "the store to get the node after the scheduler came up", func() bool {
		_, ok := env.Store.Node("n1")
		return ok
	})
	env.Stop()
	eventually(t, 5*time.Second, "the agent to notice the scheduler is gone", func() bool { return client.Connected() == 0 })

	env2 := telemetrytest.Start(t, telemetrytest.Options{Address: addr, Cert: cert})
	eventually(t, 5*time.Second, "the restarted scheduler to get the node", func() bool {
		_, ok := env2.Store.Node("n1")
		return ok
	})
	eventually(t, time.Second, "one open stream", func() bool { return client.Connected() == 1 })
}

func writeToken(t *testing.T, path, node string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("node:"+node), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fixedResolver stands in for DNS answering for a headless Service.
type fixedResolver struct {
	mu    sync.Mutex
	hosts []string
}

func (r *fixedResolver) LookupHost(context.Context, string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.hosts...), nil
}

func (r *fixedResolver) set(hosts ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hosts = hosts
}

// Every scheduler replica behind the Service name gets every report: the
// agent keeps one stream per address the name resolves to, and follows the
// set as replicas come and go.
func TestStreamsToEveryReplica(t *testing.T) {
	cert := telemetrytest.NewCert(t)
	port := telemetrytest.FreeAddr(t)
	_, p, _ := net.SplitHostPort(port)
	// 127.0.0.2 is loopback too on Linux; both replicas use the same port,
	// as the pods of a headless Service do.
	a := telemetrytest.Start(t, telemetrytest.Options{Address: "127.0.0.1:" + p, Cert: cert})
	b := telemetrytest.Start(t, telemetrytest.Options{Address: "127.0.0.2:" + p, Cert: cert})
	res := &fixedResolver{hosts: []string{"127.0.0.1", "127.0.0.2"}}

	loop, client := clientOf(t, p, cert, res, nil)
	run(t, loop.Run)
	run(t, client.Run)
	for _, env := range []*telemetrytest.Env{a, b} {
		eventually(t, 5*time.Second, "node in replica "+env.Addr, func() bool { _, ok := env.Store.Node("n1"); return ok })
	}
	if got := client.Endpoints(); len(got) != 2 {
		t.Fatalf("endpoints %v", got)
	}
	res.set("127.0.0.2")
	eventually(t, 5*time.Second, "the agent to drop the replica that left", func() bool { return len(client.Endpoints()) == 1 })
	if got := client.Endpoints()[0]; got != "127.0.0.2:"+p {
		t.Fatalf("kept %s", got)
	}
}

// An agent that does not run checkpoints says so, per pod, to the scheduler.
func TestCheckpointCommandAnsweredUnsupported(t *testing.T) {
	var mu sync.Mutex
	var statuses []*telemetryv1.CheckpointStatus
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{OnCheckpointStatus: func(node string, st *telemetryv1.CheckpointStatus) telemetry.StatusResult {
		mu.Lock()
		defer mu.Unlock()
		statuses = append(statuses, st)
		return telemetry.StatusAccepted
	}}})
	loop, _ := newMockLoop(t, "n1", 50*time.Millisecond, time.Second)
	client := newClient(t, loop, env.Addr, env.ClientTLS, env.TokenFile(t, "n1"))
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "the agent to connect", func() bool { _, ok := env.Store.Node("n1"); return ok })
	cmd := &telemetryv1.CheckpointCommand{Id: "c1", Deadline: timestamppb.New(time.Now().Add(time.Minute)),
		Pods: []*telemetryv1.PodRef{{Namespace: "a", Name: "p-0"}, {Namespace: "a", Name: "p-1"}}}
	if n, err := env.Server.SendCheckpoint("n1", cmd); n != 1 || err != nil {
		t.Fatalf("SendCheckpoint: %d %v", n, err)
	}
	eventually(t, 5*time.Second, "two statuses", func() bool { mu.Lock(); defer mu.Unlock(); return len(statuses) == 2 })
	mu.Lock()
	defer mu.Unlock()
	for _, st := range statuses {
		if st.CommandId != "c1" || st.State != telemetryv1.CheckpointStatus_STATE_UNSUPPORTED {
			t.Errorf("status %v", st)
		}
	}
}

// clientOf is n1's agent reporting to every replica res resolves, at port
// p, with metrics (nil: its own).
func clientOf(t *testing.T, p string, cert telemetrytest.Cert, res *fixedResolver, metrics *Metrics) (*Loop, *Client) {
	t.Helper()
	loop, _ := newMockLoop(t, "n1", 20*time.Millisecond, 100*time.Millisecond)
	token := filepath.Join(t.TempDir(), "token")
	writeToken(t, token, "n1")
	client, err := NewClient(loop, ClientOptions{
		Address: telemetrytest.ServerName + ":" + p, TLS: cert.ClientTLS(), TokenFile: token,
		Backoff: testBackoff(), ResolveInterval: 50 * time.Millisecond, Resolver: res, Log: testr.New(t), Metrics: metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	return loop, client
}

// A GPU whose NVML memory total reads 0 costs the node nothing but that GPU:
// the scheduler accepts the report, with the GPU unhealthy and the reason
// named, and the other GPUs as they are.
func TestGPUWithNoMemoryLeavesTheNodeInTheScheduler(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	loop, m := newMockLoop(t, "n1", 20*time.Millisecond, 100*time.Millisecond)
	m.SetMemoryTotal(3, 0)
	client := newClient(t, loop, env.Addr, env.ClientTLS, env.TokenFile(t, "n1"))
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "the node in the store", func() bool { _, ok := env.Store.Node("n1"); return ok })
	st, _ := env.Store.Node("n1")
	if !st.GPUsKnown || len(st.GPUs) != 8 {
		t.Fatalf("GPUs known %v, %d GPUs; want all 8", st.GPUsKnown, len(st.GPUs))
	}
	for i, g := range st.GPUs {
		if want := i != 3; g.Healthy != want {
			t.Errorf("GPU %d healthy %v (%v), want %v", i, g.Healthy, g.UnhealthyReasons, want)
		}
	}
	if r := st.GPUs[3].UnhealthyReasons; len(r) != 1 || r[0] != nvml.NoMemoryReason {
		t.Errorf("GPU 3 unhealthy for %q, want %q", r, nvml.NoMemoryReason)
	}
}

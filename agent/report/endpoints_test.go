package report

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// endpointSeries returns the endpoint label values of the per-endpoint
// metric name in reg.
func endpointSeries(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "endpoint" {
					out[l.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}

// A scheduler replica that left (its pod's address is gone from the
// Service) leaves no series behind: a stream_connected of 0 that stays
// forever would say the agent is cut off from a scheduler that no longer
// exists, after every scheduler rollout.
func TestGoneEndpointLeavesNoMetrics(t *testing.T) {
	cert := telemetrytest.NewCert(t)
	port := telemetrytest.FreeAddr(t)
	_, p, _ := net.SplitHostPort(port)
	a := telemetrytest.Start(t, telemetrytest.Options{Address: "127.0.0.1:" + p, Cert: cert})
	b := telemetrytest.Start(t, telemetrytest.Options{Address: "127.0.0.2:" + p, Cert: cert})
	res := &fixedResolver{hosts: []string{"127.0.0.1", "127.0.0.2"}}

	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	loop, client := clientOf(t, p, cert, res, metrics)
	run(t, loop.Run)
	stopClient := run(t, client.Run)
	for _, env := range []*telemetrytest.Env{a, b} {
		eventually(t, 5*time.Second, "node in replica "+env.Addr, func() bool { _, ok := env.Store.Node("n1"); return ok })
	}
	gone, kept := "127.0.0.1:"+p, "127.0.0.2:"+p
	eventually(t, 5*time.Second, "both streams counted as open", func() bool {
		s := endpointSeries(t, reg, "penny_agent_stream_connected")
		return s[gone] == 1 && s[kept] == 1
	})

	res.set("127.0.0.2")
	eventually(t, 5*time.Second, "the agent to drop the replica that left", func() bool { return len(client.Endpoints()) == 1 })
	// Stopping the client waits for every endpoint's goroutine, the dropped
	// one's included, so whatever it was going to write is written.
	stopClient()
	if v, ok := endpointSeries(t, reg, "penny_agent_stream_connected")[gone]; ok {
		t.Errorf("penny_agent_stream_connected{endpoint=%q} = %v remains after the endpoint left", gone, v)
	}
}

// A restarted scheduler replica comes back at a new address. The agent
// looks the Service up again as soon as a stream ends, rather than at its
// next periodic lookup: the replica that takes over as leader during a
// rollout would otherwise start without the nodes' state for up to the
// resolve interval.
func TestReplicaAtANewAddressIsFoundWhenTheOldOneGoes(t *testing.T) {
	cert := telemetrytest.NewCert(t)
	port := telemetrytest.FreeAddr(t)
	_, p, _ := net.SplitHostPort(port)
	old := telemetrytest.Start(t, telemetrytest.Options{Address: "127.0.0.1:" + p, Cert: cert})
	res := &fixedResolver{hosts: []string{"127.0.0.1"}}

	loop, _ := newMockLoop(t, "n1", 20*time.Millisecond, 100*time.Millisecond)
	token := filepath.Join(t.TempDir(), "token")
	writeToken(t, token, "n1")
	client, err := NewClient(loop, ClientOptions{
		Address: telemetrytest.ServerName + ":" + p, TLS: cert.ClientTLS(), TokenFile: token,
		Backoff: testBackoff(), ResolveInterval: time.Hour, Resolver: res, Log: testr.New(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "node in the first replica", func() bool { _, ok := old.Store.Node("n1"); return ok })

	replacement := telemetrytest.Start(t, telemetrytest.Options{Address: "127.0.0.2:" + p, Cert: cert})
	res.set("127.0.0.2")
	old.Stop()
	eventually(t, 5*time.Second, "node in the replica at the new address", func() bool { _, ok := replacement.Store.Node("n1"); return ok })
	eventually(t, 5*time.Second, "the old address dropped", func() bool {
		e := client.Endpoints()
		return len(e) == 1 && e[0] == "127.0.0.2:"+p
	})
}

// cutShortSource fills an OK GPU state, except in a collection that the
// agent's shutdown interrupts, where it reports what the NVML collector
// then says: an error.
type cutShortSource struct {
	calls   atomic.Int32
	blocked chan struct{}
}

func (s *cutShortSource) Fill(ctx context.Context, r *telemetryv1.NodeReport) {
	if s.calls.Add(1) > 1 {
		close(s.blocked)
		<-ctx.Done()
		r.Nvml = &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_ERROR, Message: "collection cancelled: " + ctx.Err().Error()}
		return
	}
	telemetrytest.GPUSource{GPUs: 2}.Fill(ctx, r)
}

// A collection cut short by the agent stopping says nothing about the
// node. Published, it would go out as the agent's last word and make the
// node's GPUs unknown to the scheduler until the next agent reports.
func TestShutdownPublishesNoCutShortCollection(t *testing.T) {
	src := &cutShortSource{blocked: make(chan struct{})}
	loop := NewLoop(&Builder{Node: "n1", AgentID: "a", Sources: Sources{GPUs: src}},
		LoopOptions{CollectInterval: time.Millisecond, ResendInterval: time.Hour, Log: testr.New(t)})
	stop := run(t, loop.Run)
	<-src.blocked
	stop()
	if r := loop.Latest(); r.GetNvml().GetState() != telemetryv1.CollectorStatus_STATE_OK || r.GetSequence() != 1 {
		t.Fatalf("latest report after stopping: sequence %d, nvml %v", r.GetSequence(), r.GetNvml())
	}
}

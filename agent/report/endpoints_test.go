package report

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// endpointSeries returns the values of the per-endpoint gauge or counter
// name in reg, by endpoint.
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
			v := m.GetGauge().GetValue()
			if m.GetCounter() != nil {
				v = m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "endpoint" {
					out[l.GetValue()] = v
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
	// An endpoint's counters are on /metrics at 0 from when it is found,
	// so that its first rejection or failure shows in increase().
	for _, name := range []string{"penny_agent_reports_rejected_total", "penny_agent_stream_failures_total", "penny_agent_streams_ended_total"} {
		for _, addr := range []string{gone, kept} {
			if v, ok := endpointSeries(t, reg, name)[addr]; !ok || v != 0 {
				t.Errorf("%s{endpoint=%q} = %v (exported: %v), want 0", name, addr, v, ok)
			}
		}
	}

	res.set("127.0.0.2")
	eventually(t, 5*time.Second, "the agent to drop the replica that left", func() bool { return len(client.Endpoints()) == 1 })
	// Stopping the client waits for every endpoint's goroutine, the dropped
	// one's included, so whatever it was going to write is written.
	stopClient()
	for _, name := range []string{"penny_agent_stream_connected", "penny_agent_reports_sent_total", "penny_agent_reports_rejected_total",
		"penny_agent_stream_failures_total", "penny_agent_streams_ended_total", "penny_agent_checkpoint_statuses_sent_total"} {
		if v, ok := endpointSeries(t, reg, name)[gone]; ok {
			t.Errorf("%s{endpoint=%q} = %v remains after the endpoint left", name, gone, v)
		}
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

// A scheduler address the agent could never reach fails NewClient, and so
// the agent's start, with the address and what is wrong with it, rather
// than leaving an agent that looks healthy and never reports.
func TestNewClientRefusesAnUnusableAddress(t *testing.T) {
	loop, _ := newMockLoop(t, "n1", time.Hour, time.Hour)
	for addr, want := range map[string]string{
		"penny-telemetry":       "want host:port",
		"penny-telemetry:":      "not a number from 1 to 65535",
		"penny-telemetry:0":     "not a number from 1 to 65535",
		"penny-telemetry:70000": "not a number from 1 to 65535",
		"penny-telemetry:https": "not a number from 1 to 65535",
		":7443":                 "the host is empty",
	} {
		_, err := NewClient(loop, ClientOptions{Address: addr, TLS: &tls.Config{}})
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), addr) {
			t.Errorf("NewClient(%q): %v, want an error naming the address and %q", addr, err, want)
		}
	}
	for _, addr := range []string{"penny-telemetry.penny-system.svc:7443", "10.0.0.1:7443", "[fd00::1]:7443"} {
		if _, err := NewClient(loop, ClientOptions{Address: addr, TLS: &tls.Config{}}); err != nil {
			t.Errorf("NewClient(%q): %v", addr, err)
		}
	}
}

// The second known defect: when gRPC could not make an endpoint's client,
// the endpoint's goroutine logged once and returned, and the agent never
// reported to that replica again while it looked healthy. It now keeps
// trying with its backoff, and each failure shows in the endpoint's
// stream_failures_total, with stream_connected 0.
func TestEndpointWhoseClientCannotBeMadeKeepsTrying(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	reg := prometheus.NewRegistry()
	loop, _ := newMockLoop(t, "n1", 20*time.Millisecond, 100*time.Millisecond)
	client, err := NewClient(loop, ClientOptions{Address: env.Addr, TLS: env.ClientTLS, TokenFile: env.TokenFile(t, "n1"), Backoff: testBackoff(), Log: testr.New(t), Metrics: NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int32
	failing := make(chan struct{})
	client.newConn = func(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
		attempts.Add(1)
		select {
		case <-failing:
			return grpc.NewClient(addr, opts...)
		default:
			return nil, errors.New("made-up failure")
		}
	}
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "failures counted", func() bool {
		return endpointSeries(t, reg, "penny_agent_stream_failures_total")[env.Addr] >= 2
	})
	if v, ok := endpointSeries(t, reg, "penny_agent_stream_connected")[env.Addr]; !ok || v != 0 {
		t.Errorf("penny_agent_stream_connected{endpoint=%q} = %v (present %v) while the endpoint fails, want 0", env.Addr, v, ok)
	}
	close(failing)
	eventually(t, 5*time.Second, "the node at the scheduler once the client can be made", func() bool { _, ok := env.Store.Node("n1"); return ok })
	eventually(t, 5*time.Second, "the stream counted as open", func() bool {
		return endpointSeries(t, reg, "penny_agent_stream_connected")[env.Addr] == 1
	})
	n := attempts.Load()
	time.Sleep(300 * time.Millisecond)
	if attempts.Load() != n {
		t.Errorf("a client was made again while the stream was open (%d, then %d)", n, attempts.Load())
	}
}

// gRPC reconnects a broken connection with its own backoff, two minutes
// apart at most by default, and the streams the agent opens meanwhile fail
// at once: a replica that was down for a while would be reached long after
// the agent's own backoff says. The connection is paced by the agent's
// backoff (200ms at most here), so a replica that comes back after a few
// seconds is reached within about that.
func TestReplicaThatComesBackIsReachedWithinTheBackoff(t *testing.T) {
	addr := telemetrytest.FreeAddr(t)
	cert := telemetrytest.NewCert(t)
	loop, _ := newMockLoop(t, "n1", 20*time.Millisecond, 100*time.Millisecond)
	token := filepath.Join(t.TempDir(), "token")
	writeToken(t, token, "n1")
	client := newClient(t, loop, addr, cert.ClientTLS(), token)
	run(t, loop.Run)
	run(t, client.Run)
	// gRPC's default would try again about 1s, 2.6s, 5.2s and 9.4s after the
	// first failure.
	time.Sleep(3 * time.Second)
	up := time.Now()
	env := telemetrytest.Start(t, telemetrytest.Options{Address: addr, Cert: cert})
	eventually(t, 10*time.Second, "the node at the scheduler", func() bool { _, ok := env.Store.Node("n1"); return ok })
	if d := time.Since(up); d > time.Second {
		t.Errorf("the agent reached the scheduler %v after it came up, want within about its 200ms backoff", d)
	}
}

// An address that leaves the Service and comes back at once gets a new
// endpoint while the old one's goroutine is still winding down: the old
// one's last word (not connected) must not overwrite the new one's.
func TestOldEndpointDoesNotOverwriteTheGaugeOfItsSuccessor(t *testing.T) {
	reg := prometheus.NewRegistry()
	loop, _ := newMockLoop(t, "n1", time.Hour, time.Hour)
	c, err := NewClient(loop, ClientOptions{Address: "127.0.0.1:1", TLS: &tls.Config{}, Log: testr.New(t), Metrics: NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	old := testEndpoint(c)
	c.setConnected(old, true)
	successor := testEndpoint(c) // replaces old under the same address
	c.setConnected(successor, true)
	c.setConnected(old, false)
	if v := endpointSeries(t, reg, "penny_agent_stream_connected")[old.addr]; v != 1 {
		t.Errorf("penny_agent_stream_connected %v after the old endpoint ended, want the successor's 1", v)
	}
	if old.connected.Load() || !successor.connected.Load() {
		t.Error("each endpoint keeps its own state")
	}
}

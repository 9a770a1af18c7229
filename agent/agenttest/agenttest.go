// Package agenttest runs a penny-agent's report loop and scheduler streams
// in-process, for tests of what the scheduler side does with real agent
// traffic. GPUs come from any report.Source (telemetrytest.GPUSource when
// the test binary must not link NVML; see agent/report.Source).
package agenttest

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/pennysched/penny/agent/report"
	"github.com/pennysched/penny/pkg/telemetry"
)

// Options describe one agent.
type Options struct {
	Node      string
	Address   string // scheduler host:port
	TLS       *tls.Config
	TokenFile string
	GPUs      report.Source
	// CollectInterval is 100ms when zero, so tests do not wait.
	CollectInterval time.Duration
}

// Agent is a running agent.
type Agent struct {
	Loop   *report.Loop
	Client *report.Client
}

// Start runs an agent until the test ends.
func Start(t testing.TB, o Options) *Agent {
	t.Helper()
	if o.CollectInterval == 0 {
		o.CollectInterval = 100 * time.Millisecond
	}
	log := testr.NewWithInterface(t, testr.Options{})
	loop := report.NewLoop(&report.Builder{Node: o.Node, AgentID: report.NewAgentID(), Sources: report.Sources{GPUs: o.GPUs}},
		report.LoopOptions{CollectInterval: o.CollectInterval, ResendInterval: 5 * o.CollectInterval, Log: log})
	client, err := report.NewClient(loop, report.ClientOptions{Address: o.Address, TLS: o.TLS, TokenFile: o.TokenFile, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { loop.Run(ctx); done <- struct{}{} }()
	go func() { client.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	return &Agent{Loop: loop, Client: client}
}

// WaitForNode waits until store holds a fresh state of node with gpus GPUs.
func WaitForNode(t testing.TB, store telemetry.Reader, node string, gpus int, timeout time.Duration) *telemetry.NodeState {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if st, ok := store.Node(node); ok && len(st.GPUs) == gpus {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("no report of %s with %d GPUs in the store within %v", node, gpus, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package telemetry_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// Agents never end their streams, so a graceful stop alone would wait for
// ever on a replica that is shutting down; Serve cuts the streams after a
// moment, and the agents see them end and reconnect to the other replicas.
func TestServeEndsOpenAgentStreamsWhenItStops(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	a := connect(t, env, "node:n1")
	if ack, err := a.Report(t, telemetrytest.Report("n1", 8, 1, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatalf("report before the stop: %v %v", ack, err)
	}
	// Stop fails the test when Serve has not returned within 10s.
	env.Stop()
	if _, err := a.Next(t); status.Code(err) != codes.Unavailable {
		t.Fatalf("the agent's stream after the stop: got %v, want Unavailable", err)
	}
}

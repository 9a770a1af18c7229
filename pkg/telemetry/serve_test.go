package telemetry_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/pennysched/penny/pkg/telemetry"
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

// A client that connects and never sends its TLS hello is closed once the
// handshake timeout passes; gRPC's default held it for two minutes.
func TestHandshakeTimeoutClosesASilentConnection(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{HandshakeTimeout: 200 * time.Millisecond}})
	if !telemetrytest.ClosedWithin(t, telemetrytest.SilentConn(t, env.Addr), 30*time.Second) {
		t.Fatal("a connection that sent nothing was still open 30s later, with a handshake timeout of 200ms")
	}
}

// Beyond --telemetry-max-connections a connection is closed as soon as it
// is accepted and counted; the connections already open, an agent's stream
// among them, are kept, and a slot that frees is available again.
func TestConnectionsAreCapped(t *testing.T) {
	// The silent connection must outlast the test's waits.
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{MaxConnections: 2, HandshakeTimeout: 10 * time.Minute}})
	agent := connect(t, env, "node:n1")
	if ack, err := agent.Report(t, telemetrytest.Report("n1", 1, 1, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatalf("the agent's first report: %v %v", ack, err)
	}
	// The server accepts connections in the order they were made, so the
	// silent one is in before the next.
	silent := telemetrytest.SilentConn(t, env.Addr)

	before := plainCounter(t, "penny_telemetry_connections_over_limit_total")
	if !telemetrytest.ClosedWithin(t, telemetrytest.SilentConn(t, env.Addr), 30*time.Second) {
		t.Fatal("the third connection was still open 30s later, with --telemetry-max-connections=2")
	}
	waitFor(t, "penny_telemetry_connections_over_limit_total to count the refusal", func() bool {
		return plainCounter(t, "penny_telemetry_connections_over_limit_total") == before+1
	})
	if telemetrytest.ClosedWithin(t, silent, 100*time.Millisecond) {
		t.Fatal("a connection under the limit was closed")
	}
	if ack, err := agent.Report(t, telemetrytest.Report("n1", 1, 2, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatalf("the agent's report after a connection was refused: %v %v", ack, err)
	}

	silent.Close()
	// The server frees the slot once it reads the end of the connection.
	waitFor(t, "a TLS connection once a slot freed", func() bool {
		c, err := tls.Dial("tcp", env.Addr, env.ClientTLS)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// gRPC's Stop waits for connections still in their handshake, which it
// does not track; Serve closes them when it cuts the streams, so a client
// that connects and sends nothing does not hold the scheduler's shutdown
// for the handshake timeout.
func TestServeStopsWithAConnectionInItsHandshake(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{HandshakeTimeout: 10 * time.Minute}})
	silent := telemetrytest.SilentConn(t, env.Addr)
	// Accepted in order: once the agent's report is in, so is the silent
	// connection.
	if ack, err := connect(t, env, "node:n1").Report(t, telemetrytest.Report("n1", 1, 1, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatalf("report: %v %v", ack, err)
	}
	// Stop fails the test when Serve has not returned within 10s.
	env.Stop()
	if !telemetrytest.ClosedWithin(t, silent, 10*time.Second) {
		t.Error("the connection in its handshake is still open after the server stopped")
	}
}

// A client that finishes its handshake and opens no stream is sent away
// once the connection has been idle for MaxConnectionIdle: the keepalive
// pings alone would keep it, and its slot of the cap, for ever.
func TestIdleConnectionIsSentAway(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{MaxConnectionIdle: 300 * time.Millisecond}})
	conn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(env.ClientTLS)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.Connect()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			t.Fatalf("the client never connected: %v", s)
		}
	}
	// Sent away, the client's connection leaves Ready (it goes idle until
	// it is needed again).
	if !conn.WaitForStateChange(ctx, connectivity.Ready) {
		t.Fatal("a connection with no stream was still open 30s later, with MaxConnectionIdle 300ms")
	}
}

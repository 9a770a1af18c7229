package telemetry

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr/funcr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// panicky panics on its first call and answers after that.
type panicky struct {
	healthpb.UnimplementedHealthServer
	calls atomic.Int32
}

func (p *panicky) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if p.calls.Add(1) == 1 {
		var m map[string]int
		//lint:ignore SA5000 a nil-map write panics, as a bug in a handler would
		m["boom"]++
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// A handler that panics fails its own call with Internal and is logged; the
// server (the scheduler's process) goes on answering.
func TestRecoveryKeepsTheServerUp(t *testing.T) {
	var logged atomic.Value
	log := funcr.New(func(prefix, args string) { logged.Store(args) }, funcr.Options{})
	g := grpc.NewServer(Recovery(log)...)
	healthpb.RegisterHealthServer(g, &panicky{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	defer g.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	_, err = client.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "assignment to entry in nil map") {
		t.Fatalf("panicking call: %v, want Internal naming the panic", err)
	}
	if s, _ := logged.Load().(string); !strings.Contains(s, "nil map") || !strings.Contains(s, "stack") {
		t.Errorf("the panic was not logged with its stack: %q", s)
	}
	if resp, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("the next call: %v, %v; want an answer", resp, err)
	}
}

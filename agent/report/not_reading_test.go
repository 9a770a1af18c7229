package report

import (
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// deafServer is a scheduler replica whose first stream stops reading after
// the agent's first message, while its connection stays up (gRPC answers
// keepalive pings below the handler): once the flow-control windows fill,
// the agent's sends on that stream wait.
type deafServer struct {
	*telemetry.Server
	streams atomic.Int32
}

func (d *deafServer) Connect(s grpc.BidiStreamingServer[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage]) error {
	if d.streams.Add(1) == 1 {
		return d.Server.Connect(&deafStream{BidiStreamingServer: s})
	}
	return d.Server.Connect(s)
}

type deafStream struct {
	grpc.BidiStreamingServer[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage]
	read bool
}

func (s *deafStream) Recv() (*telemetryv1.AgentMessage, error) {
	if s.read {
		<-s.Context().Done()
		return nil, s.Context().Err()
	}
	s.read = true
	return s.BidiStreamingServer.Recv()
}

// A replica that keeps its connection but stops reading a stream must not
// hold that stream's later reports for good: a send that waits the send
// timeout ends the stream, and the agent's next reports reach the replica on
// a new one.
func TestReplicaThatStopsReadingGetsLaterReportsOnANewStream(t *testing.T) {
	deaf := &deafServer{}
	// Fixed 64 KiB windows (gRPC's smallest; setting them turns off its
	// window growth), so that the unread stream fills within a few dozen
	// reports.
	env := startWrapped(t, nil, func(srv *telemetry.Server) telemetryv1.TelemetryServer {
		deaf.Server = srv
		return deaf
	}, grpc.InitialWindowSize(64<<10), grpc.InitialConnWindowSize(64<<10))

	loop := NewLoop(&Builder{Node: "n1", AgentID: "a"}, LoopOptions{Log: testr.New(t)})
	token := filepath.Join(t.TempDir(), "token")
	writeToken(t, token, "n1")
	reg := prometheus.NewRegistry()
	const sendTimeout = 300 * time.Millisecond
	client, err := NewClient(loop, ClientOptions{
		Address: env.Addr, TLS: env.ClientTLS, TokenFile: token, Backoff: testBackoff(), ResolveInterval: 50 * time.Millisecond,
		Log: testr.New(t), Metrics: NewMetrics(reg), SendTimeout: sendTimeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Full-node reports (a few KB each), published faster than any
	// collect interval, as the only publisher of the loop.
	stop := make(chan struct{})
	published := make(chan struct{})
	go func() {
		defer close(published)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				loop.publish(telemetrytest.Report("n1", 8, 0, time.Now()))
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-published })
	run(t, client.Run)

	eventually(t, 5*time.Second, "the first report in the store", func() bool { _, ok := env.Store.Node("n1"); return ok })
	first, _ := env.Store.Node("n1")
	start := time.Now()
	eventually(t, 10*time.Second, "a later report on a new stream", func() bool {
		st, ok := env.Store.Node("n1")
		return ok && st.Sequence > first.Sequence
	})
	t.Logf("a later report arrived %v after the first, over stream %d", time.Since(start).Round(time.Millisecond), deaf.streams.Load())
	if n := deaf.streams.Load(); n < 2 {
		t.Errorf("the replica saw %d streams, want the agent to have opened a new one", n)
	}
	// not_reading is the family's only reason.
	ended := endpointSeries(t, reg, "penny_agent_streams_ended_total")
	if ended[env.Addr] < 1 {
		t.Errorf("penny_agent_streams_ended_total{reason=not_reading} %v, want the unread stream counted", ended)
	}
}

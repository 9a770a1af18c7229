package report

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apiserver/pkg/authentication/authenticator"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

func checkpointStatus(command, pod string) *telemetryv1.CheckpointStatus {
	return &telemetryv1.CheckpointStatus{
		CommandId: command, Pod: &telemetryv1.PodRef{Namespace: "a", Name: pod},
		State: telemetryv1.CheckpointStatus_STATE_DONE, UpdatedAt: timestamppb.Now(),
	}
}

// statusLog records the checkpoint statuses a scheduler received, as
// "command pod".
type statusLog struct {
	mu  sync.Mutex
	got []string
}

func (l *statusLog) record(_ string, st *telemetryv1.CheckpointStatus) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, st.GetCommandId()+" "+st.GetPod().GetName())
}

func (l *statusLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}

func (l *statusLog) count(s string) int {
	n := 0
	for _, g := range l.all() {
		if g == s {
			n++
		}
	}
	return n
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// fakeStream is an accepted stream whose status sends fail, when
// failStatuses is set, as they do once the stream has broken.
type fakeStream struct {
	grpc.ClientStream
	ctx          context.Context
	failStatuses bool
	once         sync.Once
	broken       chan struct{}

	mu   sync.Mutex
	sent []*telemetryv1.CheckpointStatus
}

func newFakeStream(ctx context.Context, failStatuses bool) *fakeStream {
	return &fakeStream{ctx: ctx, failStatuses: failStatuses, broken: make(chan struct{})}
}

func (f *fakeStream) Header() (metadata.MD, error) {
	return metadata.Pairs(telemetry.AcceptedHeader, "n1"), nil
}

func (f *fakeStream) CloseSend() error { return nil }

func (f *fakeStream) Send(m *telemetryv1.AgentMessage) error {
	st := m.GetCheckpointStatus()
	if st == nil {
		return nil
	}
	if f.failStatuses {
		f.once.Do(func() { close(f.broken) })
		return io.EOF
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, st)
	return nil
}

func (f *fakeStream) Recv() (*telemetryv1.SchedulerMessage, error) {
	select {
	case <-f.broken:
		return nil, status.Error(codes.Unavailable, "the connection broke")
	case <-f.ctx.Done():
		return nil, f.ctx.Err()
	}
}

// A status taken off the queue whose send fails, because the stream broke
// under it, goes out on the endpoint's next stream: the scheduler's reclaim
// coordinator waits for it before evicting a gang's other members.
func TestStatusWhoseSendFailedGoesOutOnTheNextStream(t *testing.T) {
	loop, _ := newMockLoop(t, "n1", time.Hour, time.Hour)
	c, err := NewClient(loop, ClientOptions{Address: "127.0.0.1:1", TLS: &tls.Config{}, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	e := &endpoint{addr: "127.0.0.1:1", statuses: newStatusQueue()}
	c.mu.Lock()
	c.endpoints[e.addr] = e
	c.mu.Unlock()
	c.SendCheckpointStatus(checkpointStatus("c1", "p-0"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.serve(ctx, cancel, newFakeStream(ctx, true), e, testr.New(t)); status.Code(err) != codes.Unavailable {
		t.Fatalf("the broken stream ended with %v", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	next := newFakeStream(ctx, false)
	done := make(chan struct{})
	go func() { c.serve(ctx, cancel, next, e, testr.New(t)); close(done) }()
	eventually(t, 5*time.Second, "the status on the next stream", func() bool {
		next.mu.Lock()
		defer next.mu.Unlock()
		return len(next.sent) == 1 && next.sent[0].GetCommandId() == "c1"
	})
	cancel()
	<-done
}

// A scheduler replica restarted at a new address gets the statuses that
// waited for it at its old one; the replica that was up all along has its
// own copy and gets no second one.
func TestStatusesOfAGoneReplicaGoToItsReplacement(t *testing.T) {
	cert := telemetrytest.NewCert(t)
	_, p, _ := net.SplitHostPort(telemetrytest.FreeAddr(t))
	var upLog, replacementLog statusLog
	up := telemetrytest.Start(t, telemetrytest.Options{Address: "127.0.0.2:" + p, Cert: cert, Server: telemetry.ServerOptions{OnCheckpointStatus: upLog.record}})
	// Nothing listens at 127.0.0.1: that replica is down.
	res := &fixedResolver{hosts: []string{"127.0.0.1", "127.0.0.2"}}
	loop, client := clientOf(t, p, cert, res, nil)
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "the node in the replica that is up", func() bool { _, ok := up.Store.Node("n1"); return ok })
	eventually(t, 5*time.Second, "both endpoints", func() bool { return len(client.Endpoints()) == 2 })

	client.SendCheckpointStatus(checkpointStatus("c1", "p-0"))
	eventually(t, 5*time.Second, "the status at the replica that is up", func() bool { return upLog.count("c1 p-0") == 1 })

	telemetrytest.Start(t, telemetrytest.Options{Address: "127.0.0.3:" + p, Cert: cert, Server: telemetry.ServerOptions{OnCheckpointStatus: replacementLog.record}})
	res.set("127.0.0.2", "127.0.0.3")
	eventually(t, 5*time.Second, "the status at the replacement", func() bool { return replacementLog.count("c1 p-0") == 1 })
	// The hand-off is done; a copy for the replica that was up would be on
	// its way now.
	time.Sleep(200 * time.Millisecond)
	if n := upLog.count("c1 p-0"); n != 1 {
		t.Errorf("the replica that was up got the status %d times", n)
	}
}

// A status produced before the agent has found any scheduler (an agent
// restarted in the middle of a checkpoint resumes it at once) waits for
// the first endpoints.
func TestStatusesWaitForTheFirstEndpoint(t *testing.T) {
	var log statusLog
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{OnCheckpointStatus: log.record}})
	loop, _ := newMockLoop(t, "n1", 50*time.Millisecond, time.Second)
	client := newClient(t, loop, env.Addr, env.ClientTLS, env.TokenFile(t, "n1"))
	client.SendCheckpointStatus(checkpointStatus("c1", "p-0"))
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "the status at the scheduler", func() bool { return log.count("c1 p-0") == 1 })
}

// While a scheduler is unreachable at most MaxQueuedStatuses statuses wait
// for it; beyond that the oldest go, counted, and the newest, which say
// where each checkpoint stands now, are kept.
func TestQueuedStatusesDropTheOldestAndCountThem(t *testing.T) {
	cert := telemetrytest.NewCert(t)
	addr := telemetrytest.FreeAddr(t)
	reg := prometheus.NewRegistry()
	loop, _ := newMockLoop(t, "n1", 50*time.Millisecond, time.Second)
	token := filepath.Join(t.TempDir(), "token")
	writeToken(t, token, "n1")
	client, err := NewClient(loop, ClientOptions{Address: addr, TLS: cert.ClientTLS(), TokenFile: token, Backoff: testBackoff(), Log: testr.New(t), Metrics: NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "the endpoint", func() bool { return len(client.Endpoints()) == 1 })
	const over = 3
	for i := 1; i <= MaxQueuedStatuses+over; i++ {
		client.SendCheckpointStatus(checkpointStatus("c1", fmt.Sprintf("p-%d", i)))
	}
	if got := counterValue(t, reg, "penny_agent_checkpoint_statuses_dropped_total"); got != over {
		t.Errorf("penny_agent_checkpoint_statuses_dropped_total %v, want %d", got, over)
	}

	var log statusLog
	telemetrytest.Start(t, telemetrytest.Options{Address: addr, Cert: cert, Server: telemetry.ServerOptions{OnCheckpointStatus: log.record}})
	eventually(t, 10*time.Second, "the queued statuses at the scheduler", func() bool { return len(log.all()) >= MaxQueuedStatuses })
	got := log.all()
	if len(got) != MaxQueuedStatuses {
		t.Fatalf("%d statuses arrived, want %d", len(got), MaxQueuedStatuses)
	}
	for i, g := range got {
		if want := fmt.Sprintf("c1 p-%d", i+1+over); g != want {
			t.Fatalf("status %d is %q, want %q (the oldest dropped, the rest in order)", i, g, want)
		}
	}
}

// The agent counts a stream as open once the scheduler has accepted it, not
// when it has only been sent: while the token is being checked, and after
// it was refused, stream_connected is 0 and the stream is not among the
// open ones /readyz reports.
func TestStreamCountsAsOpenOnlyOnceAccepted(t *testing.T) {
	reviewing := make(chan struct{})
	verdicts := make(chan bool)
	tokens := telemetrytest.NodeTokens()
	auth := authenticator.TokenFunc(func(ctx context.Context, token string) (*authenticator.Response, bool, error) {
		select {
		case reviewing <- struct{}{}:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
		select {
		case ok := <-verdicts:
			if !ok {
				return nil, false, nil
			}
			return tokens.AuthenticateToken(ctx, token)
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	})
	srv, err := telemetry.NewServer(telemetry.ServerOptions{
		Store: telemetry.NewStore(telemetry.StoreOptions{}), Authenticator: auth,
		AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount}, Log: testr.New(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	env := telemetrytest.StartWith(t, srv)
	reg := prometheus.NewRegistry()
	loop, _ := newMockLoop(t, "n1", 20*time.Millisecond, 100*time.Millisecond)
	client, err := NewClient(loop, ClientOptions{Address: env.Addr, TLS: env.ClientTLS, TokenFile: env.TokenFile(t, "n1"), Backoff: testBackoff(), Log: testr.New(t), Metrics: NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	run(t, loop.Run)
	run(t, client.Run)
	connected := func() bool {
		return endpointSeries(t, reg, "penny_agent_stream_connected")[env.Addr] == 1 || client.Connected() > 0
	}
	notConnectedFor := func(what string, d time.Duration) {
		t.Helper()
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
			if connected() {
				t.Fatalf("the stream counts as open %s", what)
			}
		}
	}

	<-reviewing
	notConnectedFor("while the scheduler checks its token", 300*time.Millisecond)
	verdicts <- false
	<-reviewing // the agent tries again
	notConnectedFor("after the scheduler refused it", 100*time.Millisecond)
	verdicts <- true
	eventually(t, 5*time.Second, "the accepted stream to count as open", connected)
	if n := client.Connected(); n != 1 {
		t.Fatalf("%d streams open", n)
	}
}

package report

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apiserver/pkg/authentication/authenticator"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

func checkpointStatus(command, pod string) *telemetryv1.CheckpointStatus {
	return checkpointState(command, pod, telemetryv1.CheckpointStatus_STATE_DONE)
}

func checkpointState(command, pod string, state telemetryv1.CheckpointStatus_State) *telemetryv1.CheckpointStatus {
	return &telemetryv1.CheckpointStatus{
		CommandId: command, Pod: &telemetryv1.PodRef{Namespace: "a", Name: pod},
		State: state, UpdatedAt: timestamppb.Now(),
	}
}

// inAMinute is a command deadline still ahead for the whole test.
func inAMinute() time.Time { return time.Now().Add(time.Minute) }

// statusLog records the checkpoint statuses a scheduler received, as
// "command pod" (and the states, as "command pod STATE").
type statusLog struct {
	mu     sync.Mutex
	got    []string
	states []string
}

func (l *statusLog) record(_ string, st *telemetryv1.CheckpointStatus) telemetry.StatusResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, st.GetCommandId()+" "+st.GetPod().GetName())
	l.states = append(l.states, st.GetCommandId()+" "+st.GetPod().GetName()+" "+st.GetState().String())
	return telemetry.StatusAccepted
}

func (l *statusLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}

func (l *statusLog) allStates() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.states...)
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

// fakeStream is an accepted stream. With failStatuses its status sends fail,
// as they do once the stream has broken; with breakAfterStatus a status send
// succeeds (the message is in gRPC's buffer) and the stream breaks then,
// taking the message with it.
type fakeStream struct {
	grpc.ClientStream
	ctx              context.Context
	failStatuses     bool
	breakAfterStatus bool
	once             sync.Once
	broken           chan struct{}

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
	if f.breakAfterStatus {
		f.once.Do(func() { close(f.broken) })
	}
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

func (f *fakeStream) statuses() []*telemetryv1.CheckpointStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*telemetryv1.CheckpointStatus(nil), f.sent...)
}

// testEndpoint adds an endpoint to c without running it, for tests that
// drive its streams by hand.
func testEndpoint(c *Client) *endpoint {
	e := &endpoint{addr: "127.0.0.1:1", statusesChanged: make(chan struct{}, 1), sent: map[statusKey]uint64{}}
	c.mu.Lock()
	c.endpoints[e.addr] = e
	c.mu.Unlock()
	return e
}

// serveNext serves one more stream of e with next until the test says stop.
func serveNext(t *testing.T, c *Client, e *endpoint, failStatuses bool) (*fakeStream, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	next := newFakeStream(ctx, failStatuses)
	done := make(chan struct{})
	go func() { c.serve(ctx, cancel, next, e, testr.New(t)); close(done) }()
	return next, func() { cancel(); <-done }
}

// A status taken off for a stream whose send fails, because the stream broke
// under it, goes out on the endpoint's next stream: the scheduler's reclaim
// coordinator waits for it before evicting a gang's other members.
func TestStatusWhoseSendFailedGoesOutOnTheNextStream(t *testing.T) {
	loop, _ := newMockLoop(t, "n1", time.Hour, time.Hour)
	c, err := NewClient(loop, ClientOptions{Address: "127.0.0.1:1", TLS: &tls.Config{}, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	e := testEndpoint(c)
	c.SendCheckpointStatus(checkpointStatus("c1", "p-0"), inAMinute())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.serve(ctx, cancel, newFakeStream(ctx, true), e, testr.New(t)); status.Code(err) != codes.Unavailable {
		t.Fatalf("the broken stream ended with %v", err)
	}
	next, stop := serveNext(t, c, e, false)
	defer stop()
	eventually(t, 5*time.Second, "the status on the next stream", func() bool {
		s := next.statuses()
		return len(s) == 1 && s[0].GetCommandId() == "c1"
	})
}

// The first known defect: Send returned nil, the status sat in gRPC's
// buffer, the stream broke, and nothing sent it again, as the protocol
// acknowledges no status. Every stream now gets the latest status of each
// pod of every command whose deadline is ahead, and only the latest: a pod's
// REQUESTED that a DONE replaced is not sent again.
func TestStatusSentJustBeforeTheStreamBrokeGoesOutOnTheNextStream(t *testing.T) {
	loop, _ := newMockLoop(t, "n1", time.Hour, time.Hour)
	reg := prometheus.NewRegistry()
	c, err := NewClient(loop, ClientOptions{Address: "127.0.0.1:1", TLS: &tls.Config{}, Log: testr.New(t), Metrics: NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	e := testEndpoint(c)
	c.SendCheckpointStatus(checkpointState("c1", "p-0", telemetryv1.CheckpointStatus_STATE_REQUESTED), inAMinute())
	c.SendCheckpointStatus(checkpointState("c1", "p-1", telemetryv1.CheckpointStatus_STATE_REQUESTED), inAMinute())
	c.SendCheckpointStatus(checkpointState("c1", "p-0", telemetryv1.CheckpointStatus_STATE_DONE), inAMinute())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := newFakeStream(ctx, false)
	first.breakAfterStatus = true
	if err := c.serve(ctx, cancel, first, e, testr.New(t)); status.Code(err) != codes.Unavailable {
		t.Fatalf("the broken stream ended with %v", err)
	}
	if n := len(first.statuses()); n == 0 {
		t.Fatal("the first stream took no status")
	}
	next, stop := serveNext(t, c, e, false)
	eventually(t, 5*time.Second, "both pods' statuses on the next stream", func() bool { return len(next.statuses()) == 2 })
	// A status produced now goes out on the open stream, once.
	c.SendCheckpointStatus(checkpointState("c1", "p-1", telemetryv1.CheckpointStatus_STATE_FAILED), inAMinute())
	eventually(t, 5*time.Second, "the new status", func() bool { return len(next.statuses()) == 3 })
	time.Sleep(50 * time.Millisecond)
	stop()
	var got []string
	for _, st := range next.statuses() {
		got = append(got, st.GetPod().GetName()+" "+st.GetState().String())
	}
	want := []string{"p-1 STATE_REQUESTED", "p-0 STATE_DONE", "p-1 STATE_FAILED"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the next stream sent %v, want %v (the latest of each pod, in the order produced)", got, want)
	}
	if v := endpointSeries(t, reg, "penny_agent_checkpoint_statuses_sent_total")[e.addr]; v != float64(len(first.statuses())+3) {
		t.Errorf("penny_agent_checkpoint_statuses_sent_total %v, want %d", v, len(first.statuses())+3)
	}
}

// lossyServer is a scheduler replica whose connection breaks with the first
// checkpoint status of each of the first `lose` streams unread: the agent's
// Send had returned nil.
type lossyServer struct {
	*telemetry.Server
	lose  int32
	lost  atomic.Int32
	conns atomic.Int32
}

func (l *lossyServer) Connect(s grpc.BidiStreamingServer[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage]) error {
	l.conns.Add(1)
	return l.Server.Connect(&lossyStream{BidiStreamingServer: s, l: l})
}

type lossyStream struct {
	grpc.BidiStreamingServer[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage]
	l *lossyServer
}

func (s *lossyStream) Recv() (*telemetryv1.AgentMessage, error) {
	m, err := s.BidiStreamingServer.Recv()
	if err == nil && m.GetCheckpointStatus() != nil {
		if n := s.l.lost.Add(1); n <= s.l.lose {
			return nil, status.Error(codes.Unavailable, "the connection broke with a status in its buffers")
		}
	}
	return m, err
}

func startLossy(t *testing.T, lose int32, onStatus func(string, *telemetryv1.CheckpointStatus) telemetry.StatusResult) (*lossyServer, *telemetrytest.Env) {
	t.Helper()
	var l *lossyServer
	env := startWrapped(t, onStatus, func(srv *telemetry.Server) telemetryv1.TelemetryServer {
		l = &lossyServer{Server: srv, lose: lose}
		return l
	})
	return l, env
}

// startWrapped serves the real telemetry server, as wrap changes it, on a
// plain gRPC server with opts, for the misbehaving replicas tests need.
func startWrapped(t *testing.T, onStatus func(string, *telemetryv1.CheckpointStatus) telemetry.StatusResult,
	wrap func(*telemetry.Server) telemetryv1.TelemetryServer, opts ...grpc.ServerOption) *telemetrytest.Env {
	t.Helper()
	cert := telemetrytest.NewCert(t)
	srv, err := telemetry.NewServer(telemetry.ServerOptions{
		Store: telemetry.NewStore(telemetry.StoreOptions{}), Authenticator: telemetrytest.NodeTokens(),
		AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount}, OnCheckpointStatus: onStatus, Log: testr.New(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(cert.CertPEM, cert.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(credentials.NewServerTLSFromCert(&pair))}, opts...)...)
	telemetryv1.RegisterTelemetryServer(g, wrap(srv))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return &telemetrytest.Env{Addr: lis.Addr().String(), ClientTLS: cert.ClientTLS(), Cert: cert, Store: srv.Store(), Server: srv}
}

// The same over gRPC: the replica's connection breaks with the status
// unread, after the agent's Send succeeded; the status arrives on the
// agent's next stream.
func TestStatusLostWithItsStreamArrivesOnTheNextOne(t *testing.T) {
	var log statusLog
	l, env := startLossy(t, 1, log.record)
	loop, _ := newMockLoop(t, "n1", 50*time.Millisecond, time.Second)
	token := filepath.Join(t.TempDir(), "token")
	writeToken(t, token, "n1")
	client := newClient(t, loop, env.Addr, env.ClientTLS, token)
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "the stream open", func() bool { return client.Connected() == 1 })
	client.SendCheckpointStatus(checkpointStatus("c1", "p-0"), inAMinute())
	eventually(t, 5*time.Second, "the status at the scheduler", func() bool { return log.count("c1 p-0") == 1 })
	if l.lost.Load() < 1 || l.conns.Load() < 2 {
		t.Fatalf("lost %d statuses over %d streams; the test wants the first lost", l.lost.Load(), l.conns.Load())
	}
}

// A command that comes again (a restarted replica sends it anew: the agent
// runs a command once, so its handler says nothing more) is answered with
// the statuses the agent has for it, on the stream it came on.
func TestRepeatedCommandIsAnsweredWithItsStatuses(t *testing.T) {
	var log statusLog
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{OnCheckpointStatus: log.record}})
	loop, _ := newMockLoop(t, "n1", 50*time.Millisecond, time.Second)
	handler := &recordingHandler{}
	client, err := NewClient(loop, ClientOptions{Address: env.Addr, TLS: env.ClientTLS, TokenFile: env.TokenFile(t, "n1"), Backoff: testBackoff(), Commands: handler, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "the stream open", func() bool { return client.Connected() == 1 })
	client.SendCheckpointStatus(checkpointStatus("c1", "p-0"), inAMinute())
	client.SendCheckpointStatus(checkpointStatus("c2", "p-5"), inAMinute())
	eventually(t, 5*time.Second, "the statuses at the scheduler", func() bool { return len(log.all()) == 2 })

	cmd := &telemetryv1.CheckpointCommand{Id: "c1", Deadline: timestamppb.New(inAMinute()), Pods: []*telemetryv1.PodRef{{Namespace: "a", Name: "p-0"}}}
	if n, err := env.Server.SendCheckpoint("n1", cmd); n != 1 || err != nil {
		t.Fatalf("SendCheckpoint: %d %v", n, err)
	}
	eventually(t, 5*time.Second, "c1's status again", func() bool { return log.count("c1 p-0") == 2 })
	time.Sleep(100 * time.Millisecond)
	if n := log.count("c2 p-5"); n != 1 {
		t.Errorf("another command's status arrived %d times, want once", n)
	}
	if n := handler.count(); n != 1 {
		t.Errorf("the handler got the command %d times", n)
	}
}

type recordingHandler struct {
	mu  sync.Mutex
	ids []string
}

func (h *recordingHandler) HandleCheckpoint(_ context.Context, cmd *telemetryv1.CheckpointCommand) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ids = append(h.ids, cmd.GetId())
}

func (h *recordingHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ids)
}

// A scheduler replica restarted at a new address gets the statuses of the
// commands still live; the replica that was up all along, whose stream
// stayed open, gets no second copy.
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

	client.SendCheckpointStatus(checkpointStatus("c1", "p-0"), inAMinute())
	eventually(t, 5*time.Second, "the status at the replica that is up", func() bool { return upLog.count("c1 p-0") == 1 })

	telemetrytest.Start(t, telemetrytest.Options{Address: "127.0.0.3:" + p, Cert: cert, Server: telemetry.ServerOptions{OnCheckpointStatus: replacementLog.record}})
	res.set("127.0.0.2", "127.0.0.3")
	eventually(t, 5*time.Second, "the status at the replacement", func() bool { return replacementLog.count("c1 p-0") == 1 })
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
	client.SendCheckpointStatus(checkpointStatus("c1", "p-0"), inAMinute())
	run(t, loop.Run)
	run(t, client.Run)
	eventually(t, 5*time.Second, "the status at the scheduler", func() bool { return log.count("c1 p-0") == 1 })
}

// While a scheduler is unreachable the latest status of each pod waits for
// it, until its command's deadline. At most MaxLiveStatuses are kept: beyond
// that the one updated longest ago goes, counted; a pod's newer status
// replaces its older one without counting as a drop.
func TestLiveStatusesDropTheOldestBeyondTheBoundAndCountThem(t *testing.T) {
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
	for i := 1; i <= MaxLiveStatuses+over; i++ {
		client.SendCheckpointStatus(checkpointState("c1", fmt.Sprintf("p-%d", i), telemetryv1.CheckpointStatus_STATE_REQUESTED), inAMinute())
	}
	for i := 1 + over; i <= MaxLiveStatuses+over; i++ {
		client.SendCheckpointStatus(checkpointStatus("c1", fmt.Sprintf("p-%d", i)), inAMinute())
	}
	if got := counterValue(t, reg, "penny_agent_checkpoint_statuses_dropped_total"); got != over {
		t.Errorf("penny_agent_checkpoint_statuses_dropped_total %v, want %d", got, over)
	}

	var log statusLog
	telemetrytest.Start(t, telemetrytest.Options{Address: addr, Cert: cert, Server: telemetry.ServerOptions{OnCheckpointStatus: log.record}})
	eventually(t, 10*time.Second, "the live statuses at the scheduler", func() bool { return len(log.all()) >= MaxLiveStatuses })
	time.Sleep(100 * time.Millisecond)
	got := log.allStates()
	if len(got) != MaxLiveStatuses {
		t.Fatalf("%d statuses arrived, want %d", len(got), MaxLiveStatuses)
	}
	for i, g := range got {
		if want := fmt.Sprintf("c1 p-%d STATE_DONE", i+1+over); g != want {
			t.Fatalf("status %d is %q, want %q (the oldest dropped, the latest of the rest in order)", i, g, want)
		}
	}
}

// The book's record of what a stream was sent: a status goes out again when
// it changes or when the stream is asked for it again, never twice
// otherwise.
func TestStatusBookSendsEachVersionOncePerStream(t *testing.T) {
	now := time.Now()
	b := newStatusBook(func() time.Time { return now })
	b.put(checkpointStatus("c1", "p-0"), now.Add(time.Minute))
	b.put(checkpointStatus("c2", "p-0"), now.Add(2*time.Minute))
	sent := map[statusKey]uint64{}
	if got := b.pending(sent); len(got) != 2 {
		t.Fatalf("first look: %d statuses", len(got))
	}
	if got := b.pending(sent); len(got) != 0 {
		t.Fatalf("second look: %d statuses, want none", len(got))
	}
	b.put(checkpointState("c1", "p-0", telemetryv1.CheckpointStatus_STATE_FAILED), now.Add(time.Minute))
	if got := b.pending(sent); len(got) != 1 || got[0].st.GetState() != telemetryv1.CheckpointStatus_STATE_FAILED {
		t.Fatalf("after an update: %v", got)
	}
	if keys := b.commandKeys("c2"); len(keys) != 1 || keys[0] != (statusKey{"c2", "a", "p-0"}) {
		t.Fatalf("c2's keys %v", keys)
	}
	for _, k := range b.commandKeys("c2") {
		delete(sent, k)
	}
	if got := b.pending(sent); len(got) != 1 || got[0].key.command != "c2" {
		t.Fatalf("asked again for c2: %v", got)
	}
	now = now.Add(90 * time.Second) // c1's deadline has passed
	if got := b.pending(map[statusKey]uint64{}); len(got) != 1 || got[0].key.command != "c2" {
		t.Fatalf("a new stream after c1's deadline: %v", got)
	}
	if b.size() != 1 {
		t.Fatalf("%d live after c1's deadline", b.size())
	}
	// No deadline given: kept for DefaultStatusRetention.
	b.put(checkpointStatus("c3", "p-0"), time.Time{})
	now = now.Add(DefaultStatusRetention - time.Second)
	if len(b.commandKeys("c3")) != 1 || b.size() != 1 {
		t.Fatalf("c3 live %d, %d in all", len(b.commandKeys("c3")), b.size())
	}
	// Produced at or after its command's deadline (a checkpoint that ran
	// out of time): still sent to the streams open then, and kept a little
	// while for the scheduler's clock, then gone.
	b.put(checkpointState("c4", "p-0", telemetryv1.CheckpointStatus_STATE_FAILED), now.Add(-time.Second))
	if got := b.pending(sent); len(got) != 2 || got[1].key.command != "c4" {
		t.Fatalf("a status produced after its deadline: %v", got)
	}
	now = now.Add(minStatusLife - time.Millisecond)
	if got := b.pending(map[statusKey]uint64{}); len(got) != 1 || got[0].key.command != "c4" {
		t.Fatalf("a new stream just before c4 goes (c3 has gone): %v", got)
	}
	now = now.Add(2 * time.Millisecond)
	if got := b.pending(map[statusKey]uint64{}); len(got) != 0 || b.size() != 0 {
		t.Fatalf("a new stream %v after c4 was produced: %v", minStatusLife, got)
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

// An invalid command was logged and left unanswered, and the scheduler's
// reclaim coordinator waited for its pods until the deadline less its
// safety margin before evicting their gang. Each pod the agent can name in
// a status is answered FAILED, saying what was invalid; the handler never
// sees the command.
func TestInvalidCommandIsAnsweredFailedForEachPodItNames(t *testing.T) {
	loop, _ := newMockLoop(t, "n1", time.Hour, time.Hour)
	handler := &recordingHandler{}
	c, err := NewClient(loop, ClientOptions{Address: "127.0.0.1:1", TLS: &tls.Config{}, Commands: handler, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	e := testEndpoint(c)
	cmd := &telemetryv1.CheckpointCommand{Id: "c1", Deadline: timestamppb.New(inAMinute()), Reason: "bad\x00reason",
		Pods: []*telemetryv1.PodRef{{Namespace: "a", Name: "p-0"}, {Namespace: "a", Name: "Not_A_Name"}, {Namespace: "a", Name: "p-2"}}}
	c.handle(context.Background(), e, &telemetryv1.SchedulerMessage{Message: &telemetryv1.SchedulerMessage_Checkpoint{Checkpoint: cmd}}, testr.New(t))

	if n := handler.count(); n != 0 {
		t.Errorf("the handler ran the invalid command %d times", n)
	}
	var got []string
	for _, s := range c.statuses.pending(map[statusKey]uint64{}) {
		st := s.st
		got = append(got, st.GetCommandId()+" "+st.GetPod().GetName()+" "+st.GetState().String())
		for _, want := range []string{"refused the checkpoint command as invalid", "pods[1].name", "reason"} {
			if !strings.Contains(st.GetMessage(), want) {
				t.Errorf("status of %s says %q; want it to mention %q", st.GetPod().GetName(), st.GetMessage(), want)
			}
		}
		if err := telemetryv1.ValidateCheckpointStatus(st); err != nil {
			t.Errorf("status of %s would be refused by the scheduler: %v", st.GetPod().GetName(), err)
		}
	}
	if want := []string{"c1 p-0 STATE_FAILED", "c1 p-2 STATE_FAILED"}; !slices.Equal(got, want) {
		t.Fatalf("statuses %q; want %q (Not_A_Name cannot be named in a status)", got, want)
	}
}

// A stream's record forgets the statuses the book forgot: it kept every
// status the stream ever carried, an hour's worth on a long-lived stream,
// past the book's own bound.
func TestStreamRecordForgetsWhatTheBookForgot(t *testing.T) {
	now := time.Now()
	b := newStatusBook(func() time.Time { return now })
	sent := map[statusKey]uint64{}
	for i := range 2 * MaxLiveStatuses {
		b.put(checkpointStatus(fmt.Sprintf("c%d", i), "p-0"), now.Add(time.Second))
		b.pending(sent)
		now = now.Add(20 * time.Second) // past the deadline and the status's least life
	}
	b.pending(sent)
	if len(sent) > b.size() {
		t.Fatalf("the stream's record holds %d statuses, the book %d", len(sent), b.size())
	}
}

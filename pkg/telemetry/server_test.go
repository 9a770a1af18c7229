package telemetry_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/metricstest"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

func connect(t *testing.T, env *telemetrytest.Env, token string) *telemetrytest.Agent {
	t.Helper()
	return telemetrytest.Dial(t, env, token)
}

func TestReportFromOwnNodeIsStored(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	a := connect(t, env, "node:n1")
	before := metricstest.Counter(t, "penny_telemetry_reports_total", "result", "accepted")
	ack, err := a.Report(t, telemetrytest.Report("n1", 8, 1, time.Now()))
	if err != nil || !ack.GetAccepted() || ack.GetSequence() != 1 {
		t.Fatalf("ack %v err %v", ack, err)
	}
	st, ok := env.Store.Node("n1")
	if !ok || len(st.GPUs) != 8 {
		t.Fatalf("store: %v %v", ok, st)
	}
	if got := metricstest.Counter(t, "penny_telemetry_reports_total", "result", "accepted"); got != before+1 {
		t.Errorf("accepted counter %v, want %v", got, before+1)
	}
	// A stale resend is acknowledged but not applied.
	ack, err = a.Report(t, telemetrytest.Report("n1", 8, 1, time.Now()))
	if err != nil || !ack.GetAccepted() {
		t.Fatalf("resend: %v %v", ack, err)
	}
}

func TestReportAboutAnotherNodeIsRefusedAndCounted(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	a := connect(t, env, "node:node-a")
	before := metricstest.Counter(t, "penny_telemetry_reports_total", "result", "wrong_node")
	_, err := a.Report(t, telemetrytest.Report("node-b", 8, 1, time.Now()))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `"node-a"`) || !strings.Contains(err.Error(), `"node-b"`) {
		t.Fatalf("got %v, want PermissionDenied naming both nodes", err)
	}
	if _, ok := env.Store.Lookup("node-b"); ok {
		t.Fatal("node-b was stored")
	}
	if st, _ := env.Store.Lookup("node-b"); st != nil {
		t.Fatal("node-b was stored")
	}
	if got := metricstest.Counter(t, "penny_telemetry_reports_total", "result", "wrong_node"); got != before+1 {
		t.Errorf("wrong_node counter %v, want %v", got, before+1)
	}
}

// A report that names no node is malformed, not an agent speaking for
// another node: it is refused naming the field, the stream stays, and the
// security alert's counter does not move. A name that is another node's is
// logged cut short: before validation it may be megabytes, sent at every
// reconnect.
func TestReportNamingNoNodeIsInvalidAndAnotherNodesIsLoggedShort(t *testing.T) {
	var mu sync.Mutex
	longest := 0
	log := funcr.New(func(_, args string) {
		mu.Lock()
		defer mu.Unlock()
		longest = max(longest, len(args))
	}, funcr.Options{})
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{Log: log}})
	a := connect(t, env, "node:n1")
	before := metricstest.Counter(t, "penny_telemetry_reports_total", "result", "wrong_node")
	ack, err := a.Report(t, telemetrytest.Report("", 2, 1, time.Now()))
	if err != nil || ack.GetAccepted() || !strings.Contains(ack.GetError(), "node_name") {
		t.Fatalf("ack %v err %v; want a refusal naming node_name, the stream kept", ack, err)
	}
	if got := metricstest.Counter(t, "penny_telemetry_reports_total", "result", "wrong_node"); got != before {
		t.Errorf("wrong_node counter went from %v to %v for a report naming no node", before, got)
	}
	r := telemetrytest.Report("n1", 2, 2, time.Now())
	r.NodeName = strings.Repeat("b", 3<<20)
	if _, err := a.Report(t, r); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("got %v, want PermissionDenied", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if longest > 16<<10 {
		t.Errorf("a log line of %d bytes", longest)
	}
}

func TestInvalidReportIsRefusedWithTheField(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	a := connect(t, env, "node:n1")
	r := telemetrytest.Report("n1", 2, 1, time.Now())
	r.Gpus[0].UtilizationPercent = new(uint32)
	*r.Gpus[0].UtilizationPercent = 250
	ack, err := a.Report(t, r)
	if err != nil || ack.GetAccepted() || !strings.Contains(ack.GetError(), "gpus[0].utilization_percent") {
		t.Fatalf("ack %v err %v", ack, err)
	}
	if _, ok := env.Store.Node("n1"); ok {
		t.Fatal("invalid report stored")
	}
	// The stream stays usable: the next good report goes through.
	ack, err = a.Report(t, telemetrytest.Report("n1", 2, 2, time.Now()))
	if err != nil || !ack.GetAccepted() {
		t.Fatalf("ack %v err %v", ack, err)
	}
}

func TestAuthenticationFailures(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	cases := []struct {
		token string
		code  codes.Code
		msg   string
	}{
		{"", codes.Unauthenticated, "no token"},
		{"garbage", codes.Unauthenticated, "token refused"},
		{"sa:default/default", codes.PermissionDenied, "not an agent ServiceAccount"},
		{"unbound", codes.PermissionDenied, "projected serviceAccountToken"},
	}
	for _, c := range cases {
		a := connect(t, env, c.token)
		_, err := a.Report(t, telemetrytest.Report("n1", 1, 1, time.Now()))
		if status.Code(err) != c.code || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("token %q: got %v, want %v %q", c.token, err, c.code, c.msg)
		}
	}
	if _, ok := env.Store.Lookup("n1"); ok {
		t.Fatal("an unauthenticated report was stored")
	}
}

// A stream lives no longer than its token: the first message after the exp
// claim ends it, and the agent reconnects with the rotated token.
func TestStreamEndsWhenTokenExpires(t *testing.T) {
	// exp claims have whole seconds: at least 1.5s from now.
	nd := jwt.NewNumericDate(time.Now().Add(2500 * time.Millisecond))
	srv, tok := expiringTokenServer(t, nd)
	a := connect(t, telemetrytest.StartWith(t, srv), tok)
	if ack, err := a.Report(t, telemetrytest.Report("n1", 1, 1, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatalf("before expiry: %v %v", ack, err)
	}
	time.Sleep(time.Until(nd.Time) + 10*time.Millisecond)
	_, err := a.Report(t, telemetrytest.Report("n1", 1, 2, time.Now()))
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("after expiry: got %v, want Unauthenticated token expired", err)
	}
	if st, _ := srv.Store().Node("n1"); st.Sequence != 1 {
		t.Fatalf("a report sent after the token expired was stored (sequence %d)", st.Sequence)
	}
}

// The token cache keeps a review's answer for 10s whatever the token's exp
// says, so a token that expired since its review comes back accepted. Such
// a stream is refused as it opens (Unauthenticated, counted as expired): it
// is not shown accepted, takes none of its node's stream slots and is sent
// no command.
func TestStreamWithAnExpiredTokenIsRefused(t *testing.T) {
	// The server accepts the token as a cached review does.
	srv, tok := expiringTokenServer(t, jwt.NewNumericDate(time.Now().Add(-time.Second)))
	before := metricstest.Counter(t, "penny_telemetry_auth_failures_total", "reason", "expired")
	a := connect(t, telemetrytest.StartWith(t, srv), tok)
	cmd := &telemetryv1.CheckpointCommand{Id: "c1", Pods: []*telemetryv1.PodRef{{Namespace: "a", Name: "p-0"}}, Deadline: timestamppb.New(time.Now().Add(time.Minute))}
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if n, _ := srv.SendCheckpoint("n1", cmd); n > 0 {
			t.Fatal("a stream whose token had expired was accepted and sent a command")
		}
	}
	msg, err := a.Next(t)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("got %v %v, want Unauthenticated token expired", msg, err)
	}
	if got := metricstest.Counter(t, "penny_telemetry_auth_failures_total", "reason", "expired"); got != before+1 {
		t.Errorf("expired counter %v, want %v", got, before+1)
	}
}

// expiringTokenServer is a server that takes a token expiring at exp as
// node n1's agent's, and the token.
func expiringTokenServer(t *testing.T, exp *jwt.NumericDate) (*telemetry.Server, string) {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{ExpiresAt: exp}).SignedString([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := telemetry.NewServer(telemetry.ServerOptions{
		Store: telemetry.NewStore(telemetry.StoreOptions{}), AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount},
		Authenticator: jwtAsNode(tok, "n1"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, tok
}

// jwtAsNode accepts exactly token, as the agent bound to node; the server
// reads the expiry from the token itself.
func jwtAsNode(token, node string) authenticator.Token {
	nodeTokens := telemetrytest.NodeTokens()
	return authenticator.TokenFunc(func(ctx context.Context, tok string) (*authenticator.Response, bool, error) {
		if tok != token {
			return nil, false, nil
		}
		return nodeTokens.AuthenticateToken(ctx, "node:"+node)
	})
}

func legacyGatherer() metrics.Gatherer { return legacyregistry.DefaultGatherer }

func TestCheckpointCommandsAndStatus(t *testing.T) {
	var mu sync.Mutex
	var got []string
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{
		OnCheckpointStatus: func(node string, st *telemetryv1.CheckpointStatus) telemetry.StatusResult {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, node+" "+st.GetCommandId()+" "+st.GetState().String())
			return telemetry.StatusAccepted
		},
	}})
	a := connect(t, env, "node:n1")
	if ack, err := a.Report(t, telemetrytest.Report("n1", 1, 1, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatal(ack, err)
	}
	cmd := &telemetryv1.CheckpointCommand{Id: "c1", Pods: []*telemetryv1.PodRef{{Namespace: "a", Name: "p-0"}}, Deadline: timestamppb.New(time.Now().Add(time.Minute))}
	if n, err := env.Server.SendCheckpoint("n1", cmd); n != 1 || err != nil {
		t.Fatalf("SendCheckpoint: %d %v", n, err)
	}
	if n, err := env.Server.SendCheckpoint("n2", cmd); n != 0 || err != nil {
		t.Fatalf("to a node without agent: %d %v", n, err)
	}
	if _, err := env.Server.SendCheckpoint("n1", &telemetryv1.CheckpointCommand{Id: "bad"}); err == nil {
		t.Fatal("an invalid command was sent")
	}
	msg, err := a.Next(t)
	if err != nil || msg.GetCheckpoint().GetId() != "c1" {
		t.Fatalf("agent got %v %v", msg, err)
	}
	st := &telemetryv1.CheckpointStatus{CommandId: "c1", Pod: cmd.Pods[0], State: telemetryv1.CheckpointStatus_STATE_DONE, UpdatedAt: timestamppb.Now()}
	if err := a.Send(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_CheckpointStatus{CheckpointStatus: st}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != "n1 c1 STATE_DONE" {
		t.Fatalf("statuses %v", got)
	}
}

// Checkpoint statuses had no metric, and an invalid one was logged only at
// -v=1 while the reclaim coordinator waited for the pod until the deadline
// less its safety margin. Each is counted by what became of it, and the
// first invalid one of a stream is logged at the default level. The statuses
// of the checkpoints an agent takes for its own node's notice answer no
// command: counted apart (own_notice), not as unknown_command, which every
// notice on every node would otherwise raise on every replica.
func TestCheckpointStatusesAreCountedAndAnInvalidOneLogged(t *testing.T) {
	var mu sync.Mutex
	var logged []string
	log := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		logged = append(logged, args)
	}, funcr.Options{})
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{
		Log: log,
		OnCheckpointStatus: func(_ string, st *telemetryv1.CheckpointStatus) telemetry.StatusResult {
			return telemetry.StatusResult(st.GetMessage())
		},
	}})
	results := []string{"accepted", "invalid", "wrong_node", "unknown_command", "own_notice"}
	before := map[string]float64{}
	for _, r := range results {
		before[r] = metricstest.Counter(t, "penny_telemetry_checkpoint_statuses_total", "result", r)
	}
	a := connect(t, env, "node:n1")
	command := "c1"
	send := func(pod, result string) {
		t.Helper()
		st := &telemetryv1.CheckpointStatus{CommandId: command, Pod: &telemetryv1.PodRef{Namespace: "a", Name: pod},
			State: telemetryv1.CheckpointStatus_STATE_DONE, Message: result, UpdatedAt: timestamppb.Now()}
		if err := a.Send(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_CheckpointStatus{CheckpointStatus: st}}); err != nil {
			t.Fatal(err)
		}
	}
	send("p-0", "accepted")
	send("Not_A_Pod", "")
	send("Not_A_Pod_Either", "")
	send("p-1", "wrong_node")
	send("p-2", "unknown_command")
	// What a receiver that never sent it would say of it.
	command = telemetryv1.NoticeStatusID("gcp-maintenance-terminate-1d7aaad03713a36b-boot-a")
	send("p-3", "unknown_command")
	want := map[string]float64{"accepted": 1, "invalid": 2, "wrong_node": 1, "unknown_command": 1, "own_notice": 1}
	deadline := time.Now().Add(5 * time.Second)
	for metricstest.Counter(t, "penny_telemetry_checkpoint_statuses_total", "result", "unknown_command")+metricstest.Counter(t, "penny_telemetry_checkpoint_statuses_total", "result", "own_notice") < before["unknown_command"]+before["own_notice"]+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, r := range results {
		if got := metricstest.Counter(t, "penny_telemetry_checkpoint_statuses_total", "result", r) - before[r]; got != want[r] {
			t.Errorf("penny_telemetry_checkpoint_statuses_total{result=%q} went up by %v, want %v", r, got, want[r])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var invalid []string
	for _, l := range logged {
		if strings.Contains(l, "invalid checkpoint status") {
			invalid = append(invalid, l)
		}
	}
	if len(invalid) != 1 || !strings.Contains(invalid[0], "a/Not_A_Pod") || !strings.Contains(invalid[0], "pod.name") {
		t.Errorf("logged at the default level %q; want the first of the 2 invalid statuses, naming pod a/Not_A_Pod and the field pod.name", invalid)
	}
}

// tokenReviewServer serves a server with the production authenticator,
// whose TokenReviews go to api.
func tokenReviewServer(t *testing.T) (*telemetrytest.TokenReviewAPI, *telemetrytest.Env) {
	t.Helper()
	api := telemetrytest.StartTokenReviewAPI(t)
	client := kubernetes.NewForConfigOrDie(&rest.Config{Host: api.URL})
	auth, err := telemetry.NewTokenReviewAuthenticator(client.AuthenticationV1(), []string{telemetry.DefaultAudience})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := telemetry.NewServer(telemetry.ServerOptions{
		Store: telemetry.NewStore(telemetry.StoreOptions{}), Authenticator: auth,
		AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount},
	})
	if err != nil {
		t.Fatal(err)
	}
	return api, telemetrytest.StartWith(t, srv)
}

// The production authenticator talks TokenReview to an API server over
// HTTP. Here the API endpoint is a loopback HTTP server answering as
// kube-apiserver does; the real API server is exercised in
// test/integration/telemetry.
func TestTokenReviewAuthenticator(t *testing.T) {
	api, env := tokenReviewServer(t)
	a := connect(t, env, telemetrytest.NodeJWT("gpu-7"))
	if ack, err := a.Report(t, telemetrytest.Report("gpu-7", 2, 1, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatalf("own node: %v %v", ack, err)
	}
	if auds, n := api.LastAudiences(); n != 1 || len(auds) != 1 || auds[0] != telemetry.DefaultAudience {
		t.Errorf("TokenReview asked %d times for audiences %v", n, auds)
	}
	if _, err := a.Report(t, telemetrytest.Report("gpu-8", 2, 2, time.Now())); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("other node: %v", err)
	}
	// A node nothing has reported for: Report also takes a stored report of
	// the same node and sequence for acceptance, and gpu-7's first report
	// is stored, so the refusal could lose the race to it.
	bad, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject: "not-an-agent", Audience: jwt.ClaimStrings{telemetry.DefaultAudience},
	}).SignedString([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	b := connect(t, env, bad)
	if _, err := b.Report(t, telemetrytest.Report("gpu-9", 2, 1, time.Now())); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("bad token: %v", err)
	}
	if _, n := api.LastAudiences(); n != 2 {
		t.Errorf("%d TokenReviews, want 2: the bad token is well-formed, so only the API server can refuse it", n)
	}
}

// A token that cannot be an agent's is refused without a TokenReview, so a
// client that sends made-up tokens does not have the scheduler call the API
// server for each: agents send projected ServiceAccount tokens, JWTs whose
// aud claim holds the audience they were requested for.
func TestTokensThatCannotBeAgentsCostNoTokenReview(t *testing.T) {
	api, env := tokenReviewServer(t)
	otherAudience, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject: "node:gpu-1", Audience: jwt.ClaimStrings{"https://kubernetes.default.svc"},
	}).SignedString([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ token, msg string }{
		{"garbage", "not a ServiceAccount token"},
		{"a.b.c", "not a ServiceAccount token"},
		{"node:gpu-1", "not a ServiceAccount token"},
		{otherAudience, "do not include penny-scheduler"},
	} {
		_, err := connect(t, env, c.token).Next(t)
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("token %q: got %v, want Unauthenticated %q", c.token, err, c.msg)
		}
	}
	if _, n := api.LastAudiences(); n != 0 {
		t.Errorf("%d TokenReviews for tokens that cannot be an agent's, want none", n)
	}
	a := connect(t, env, telemetrytest.NodeJWT("gpu-1"))
	if ack, err := a.Report(t, telemetrytest.Report("gpu-1", 2, 1, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatalf("an agent's token: %v %v", ack, err)
	}
	if _, n := api.LastAudiences(); n != 1 {
		t.Errorf("%d TokenReviews for an agent's token, want 1", n)
	}
}

// Anyone who reaches the endpoint can open streams with made-up tokens,
// each a TokenReview. No more tokens are checked at once than the bound: a
// stream beyond it is refused at once with Unavailable (agents retry),
// naming the limit and its flag, and counted, without its token being
// checked; once the checks in flight end, streams get in again.
func TestAuthenticationsInFlightAreCapped(t *testing.T) {
	const limit = 2
	entered, release := make(chan context.Context, limit+1), make(chan struct{})
	releaseChecks := sync.OnceFunc(func() { close(release) })
	nodeTokens := telemetrytest.NodeTokens()
	srv, err := telemetry.NewServer(telemetry.ServerOptions{
		Store: telemetry.NewStore(telemetry.StoreOptions{}), AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount},
		MaxAuthenticationsInFlight: limit,
		Authenticator: authenticator.TokenFunc(func(ctx context.Context, token string) (*authenticator.Response, bool, error) {
			entered <- ctx
			<-release
			return nodeTokens.AuthenticateToken(ctx, token)
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	env := telemetrytest.StartWith(t, srv)
	// A test that fails while checks are held ends them before the server
	// stops.
	t.Cleanup(releaseChecks)
	var held []*telemetrytest.Agent
	for i := range limit {
		held = append(held, connect(t, env, fmt.Sprintf("node:n%d", i)))
		select {
		case ctx := <-entered:
			// The token cache stops waiting for a TokenReview when the
			// caller's context ends, and lets the review run on: the slot
			// must stay taken until the check is over.
			if ctx.Done() != nil {
				t.Errorf("stream %d: the token is checked with a context the stream's end cancels", i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("stream %d: its token was not checked within 10s", i)
		}
	}

	before := plainCounter(t, "penny_telemetry_authentications_over_limit_total")
	_, err = connect(t, env, "node:n-over").Next(t)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("stream %d: got %v, want Unavailable", limit+1, err)
	}
	for _, want := range []string{"--telemetry-max-authentications-in-flight=2", "retries"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err.Error(), want)
		}
	}
	if len(entered) != 0 {
		t.Errorf("the refused stream's token was checked")
	}
	if got := plainCounter(t, "penny_telemetry_authentications_over_limit_total"); got != before+1 {
		t.Errorf("penny_telemetry_authentications_over_limit_total %v, want %v", got, before+1)
	}

	releaseChecks()
	// Once the held streams are in, their slots are free.
	for i, a := range held {
		node := fmt.Sprintf("n%d", i)
		if ack, err := a.Report(t, telemetrytest.Report(node, 1, 1, time.Now())); err != nil || !ack.GetAccepted() {
			t.Fatalf("held stream of %s after the release: %v %v", node, ack, err)
		}
	}
	if ack, err := connect(t, env, "node:n-after").Report(t, telemetrytest.Report("n-after", 1, 1, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatalf("a stream after the checks ended: %v %v", ack, err)
	}
}

// A client cannot open any number of streams on one connection, nor send
// headers of any size (gRPC's defaults: unbounded and 16 MiB): the server's
// HTTP/2 settings, the first frame it sends, bound both.
func TestServerSettingsBoundStreamsAndHeaders(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	settings := telemetrytest.HTTP2Settings(t, env.Addr, env.ClientTLS)
	for _, want := range []struct {
		id    uint16
		name  string
		value uint32
	}{
		{0x3, "SETTINGS_MAX_CONCURRENT_STREAMS", telemetry.MaxStreamsPerConnection},
		{0x6, "SETTINGS_MAX_HEADER_LIST_SIZE", telemetry.MaxHeaderBytes},
	} {
		if got, ok := settings[want.id]; !ok || got != want.value {
			t.Errorf("%s: %d (set: %v), want %d", want.name, got, ok, want.value)
		}
	}
}

func TestServerOptionsAreChecked(t *testing.T) {
	store := telemetry.NewStore(telemetry.StoreOptions{})
	for _, sas := range [][]string{nil, {"penny-agent"}, {"/x"}, {"a/b/c"}} {
		_, err := telemetry.NewServer(telemetry.ServerOptions{Store: store, Authenticator: telemetrytest.NodeTokens(), AgentServiceAccounts: sas})
		if err == nil {
			t.Errorf("service accounts %q accepted", sas)
		}
	}
	if _, err := telemetry.NewServer(telemetry.ServerOptions{Store: store, Authenticator: telemetrytest.NodeTokens(),
		AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount}, MaxAuthenticationsInFlight: -1}); err == nil || !strings.Contains(err.Error(), "MaxAuthenticationsInFlight") {
		t.Errorf("MaxAuthenticationsInFlight -1: %v", err)
	}
	if _, err := telemetry.NewServer(telemetry.ServerOptions{Store: store, Authenticator: telemetrytest.NodeTokens(),
		AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount}, MaxConnections: -1}); err == nil || !strings.Contains(err.Error(), "MaxConnections") {
		t.Errorf("MaxConnections -1: %v", err)
	}
	if _, err := telemetry.NewServer(telemetry.ServerOptions{Store: store, Authenticator: telemetrytest.NodeTokens(),
		AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount}, HandshakeTimeout: -time.Second}); err == nil || !strings.Contains(err.Error(), "HandshakeTimeout") {
		t.Errorf("HandshakeTimeout -1s: %v", err)
	}
	if _, err := telemetry.NewServer(telemetry.ServerOptions{Store: store, Authenticator: telemetrytest.NodeTokens(),
		AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount}, MaxConnectionIdle: -time.Second}); err == nil || !strings.Contains(err.Error(), "MaxConnectionIdle") {
		t.Errorf("MaxConnectionIdle -1s: %v", err)
	}
	if _, err := telemetry.NewServer(telemetry.ServerOptions{Store: store, Authenticator: telemetrytest.NodeTokens(),
		AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount}, SendTimeout: -time.Second}); err == nil || !strings.Contains(err.Error(), "SendTimeout") {
		t.Errorf("SendTimeout -1s: %v", err)
	}
}

// The refusal of a report reaches the agent however bad the report: an
// error quoting a megabyte of control characters in full was larger than
// an agent may receive (4 MiB), so the agent lost its stream instead of
// learning what to fix, and sent the same report again on reconnecting.
func TestRefusalOfAHugeBadReportReachesTheAgent(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	a := connect(t, env, "node:n1")
	r := telemetrytest.Report("n1", 2, 1, time.Now())
	r.Gpus[0].Uuid = strings.Repeat("\x01", 1<<20)
	ack, err := a.Report(t, r)
	if err != nil {
		t.Fatalf("the stream ended instead of answering: %v", err)
	}
	if ack.GetAccepted() || !strings.Contains(ack.GetError(), "gpus[0].uuid") || len(ack.GetError()) > 64<<10 {
		t.Fatalf("ack accepted=%v, %d bytes of error: %.300s", ack.GetAccepted(), len(ack.GetError()), ack.GetError())
	}
	if ack, err := a.Report(t, telemetrytest.Report("n1", 2, 2, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatalf("the next good report: %v %v", ack, err)
	}
}

// rawCodec sends a []byte as the encoded message it is: a message of
// millions of empty elements would cost the test what it costs the server
// to build as a proto.Message.
type rawCodec struct{ encoding.CodecV2 }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.([]byte); ok {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// An empty element is two bytes on the wire and a struct of up to 230 bytes
// decoded: a report of MaxMessageBytes of empty GPUs took over 500 MiB of
// the scheduler's heap before validation refused it, and an agent may hold
// several streams to each replica. It is refused before it is decoded and
// ends its stream, saying why.
func TestMessageOfEmptyElementsIsRefusedUndecoded(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	conn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(env.ClientTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer node:n1")
	st, err := telemetryv1.NewTelemetryClient(conn).Connect(ctx, grpc.ForceCodecV2(rawCodec{encoding.GetCodecV2(grpcproto.Name)}))
	if err != nil {
		t.Fatal(err)
	}
	var gpus []byte
	for len(gpus) < telemetry.MaxMessageBytes-16 {
		gpus = protowire.AppendBytes(protowire.AppendTag(gpus, 9, protowire.BytesType), nil)
	}
	msg := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), gpus)
	ended := metricstest.Counter(t, "penny_telemetry_streams_ended_total", "reason", "too_many_elements")

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := st.SendMsg(msg); err != nil {
		t.Fatal(err)
	}
	reply, err := st.Recv()
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 64<<20 {
		t.Errorf("receiving a message of %d bytes allocated %d MiB, want at most 64", len(msg), got>>20)
	}
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "NodeReport.gpus: more than 64") {
		t.Errorf("got %v, %v; want the stream ended naming the list", reply, err)
	}
	if got := metricstest.Counter(t, "penny_telemetry_streams_ended_total", "reason", "too_many_elements"); got != ended+1 {
		t.Errorf("streams ended for too many elements: %v, want %v", got-ended, 1)
	}
}

// The report of a node far larger than any built today, every whole GPU
// time-sliced among the most holders a report lists, with long pod names,
// is accepted.
func TestLargeReportIsAccepted(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	a := connect(t, env, "node:n1")
	r := telemetrytest.Report("n1", 16, 1, time.Now())
	long := strings.Repeat("inference-server-", 10)
	for _, g := range r.Gpus {
		if g.MigMode == telemetryv1.MIGMode_MIG_MODE_ENABLED {
			continue
		}
		g.Pods = nil
		for i := 0; i < telemetryv1.MaxPodsPerGPU; i++ {
			pod := &telemetryv1.PodRef{Namespace: "team-a", Name: fmt.Sprintf("%s%d-%d", long, g.Index, i)}
			g.Pods = append(g.Pods, pod)
			r.PodDevices = append(r.PodDevices, &telemetryv1.PodDevices{Pod: pod, Container: "main", ResourceName: "nvidia.com/gpu", DeviceIds: []string{fmt.Sprintf("%s::%d", g.Uuid, i)}})
		}
	}
	if ack, err := a.Report(t, r); err != nil || !ack.GetAccepted() {
		t.Fatalf("a report of %d bytes: %v %v", proto.Size(r), ack, err)
	}
}

// One node's credentials cannot open any number of streams (a goroutine and
// buffers each): beyond the cap the newest is refused, naming the node, the
// limit and the fix. The streams of other nodes are not affected, a stream
// next to an old one (an agent reconnecting before the server has noticed
// that its old stream is dead) is accepted, and a slot that frees is
// available again.
func TestStreamsPerNodeAreCapped(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{})
	var seq uint64
	report := func(a *telemetrytest.Agent, node string) error {
		t.Helper()
		seq++
		ack, err := a.Report(t, telemetrytest.Report(node, 1, seq, time.Now()))
		if err == nil && !ack.GetAccepted() {
			t.Fatalf("report %d refused: %s", seq, ack.GetError())
		}
		return err
	}
	var open []*telemetrytest.Agent
	for i := 0; i < telemetry.DefaultMaxStreamsPerNode; i++ {
		a := connect(t, env, "node:n1")
		if err := report(a, "n1"); err != nil {
			t.Fatalf("stream %d of n1: %v", i+1, err)
		}
		open = append(open, a)
	}
	before := plainCounter(t, "penny_telemetry_streams_over_limit_total")
	err := report(connect(t, env, "node:n1"), "n1")
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream %d of n1: got %v, want ResourceExhausted", telemetry.DefaultMaxStreamsPerNode+1, err)
	}
	for _, want := range []string{`"n1"`, "--telemetry-max-streams-per-node=4", "DaemonSet's pod", "raise --telemetry-max-streams-per-node"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err.Error(), want)
		}
	}
	if got := plainCounter(t, "penny_telemetry_streams_over_limit_total"); got != before+1 {
		t.Errorf("penny_telemetry_streams_over_limit_total %v, want %v", got, before+1)
	}
	if err := report(connect(t, env, "node:n2"), "n2"); err != nil {
		t.Fatalf("another node's stream: %v", err)
	}

	open[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := report(connect(t, env, "node:n1"), "n1")
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("a stream of n1 after one of its streams closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// plainCounter is the value of the counter without labels named name.
func plainCounter(t *testing.T, name string) float64 {
	t.Helper()
	families, err := legacyGatherer().Gather()
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

// An agent that keeps its connection open (its transport answers keepalive
// pings) but stops reading, hung or compromised, fills its receive window,
// and a send to it waited for good: the reclaim coordinator's fan-out to the
// node never returned, so it neither retried nor gave up (no
// GangCheckpointUndelivered), and never evicted the members. A send the
// agent has not read within SendTimeout ends the stream and fails.
func TestStreamOfAnAgentThatStopsReadingEnds(t *testing.T) {
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{SendTimeout: 300 * time.Millisecond}})
	notReading(t, env, "node:n1")
	pods := make([]*telemetryv1.PodRef, telemetryv1.MaxCheckpointPods)
	for i := range pods {
		pods[i] = &telemetryv1.PodRef{Namespace: "a", Name: fmt.Sprintf("%s-%d", strings.Repeat("p", 50), i)}
	}
	type result struct {
		sent int
		err  error
	}
	ended := metricstest.Counter(t, "penny_telemetry_streams_ended_total", "reason", "not_reading")
	res := make(chan result, 1)
	go func() {
		// Each command is ~16 KB: a few dozen fill the agent's window and
		// the server's write buffer.
		for i := 0; ; i++ {
			cmd := &telemetryv1.CheckpointCommand{Id: fmt.Sprintf("c%d", i), Pods: pods, Deadline: timestamppb.New(time.Now().Add(time.Minute))}
			n, err := env.Server.SendCheckpoint("n1", cmd)
			if n == 0 || err != nil {
				res <- result{n, err}
				return
			}
		}
	}()
	select {
	case r := <-res:
		if r.sent != 0 || status.Code(r.err) != codes.Unavailable || !strings.Contains(r.err.Error(), "did not read") {
			t.Fatalf("SendCheckpoint to a stream that stopped reading: %d %v, want 0 and Unavailable: did not read", r.sent, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SendCheckpoint to a stream whose agent stopped reading still waits after 10s")
	}
	// The stream ended: the node counts as not connected, and a command
	// to it says so at once.
	for deadline := time.Now().Add(5 * time.Second); slices.Contains(env.Server.ConnectedNodes(), "n1"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stream of the agent that stopped reading is still open")
		}
	}
	cmd := &telemetryv1.CheckpointCommand{Id: "after", Pods: pods[:1], Deadline: timestamppb.New(time.Now().Add(time.Minute))}
	if n, err := env.Server.SendCheckpoint("n1", cmd); n != 0 || err != nil {
		t.Fatalf("after the stream ended: %d %v, want 0 and no error", n, err)
	}
	if got := metricstest.Counter(t, "penny_telemetry_streams_ended_total", "reason", "not_reading"); got != ended+1 {
		t.Errorf("streams ended for not reading: %v, want %v", got, ended+1)
	}
}

// A token whose exp lies past what a time.Duration holds from now (some
// issuers mint tokens that do not expire in practice) is not expired: the
// time left saturates at the largest Duration, and adding the grace to it
// wrapped round to a negative wait, so such a stream was ended as "token
// expired" as soon as it opened, and again at every reconnect.
func TestStreamWithAFarFutureTokenStaysOpen(t *testing.T) {
	nd := jwt.NewNumericDate(time.Now().AddDate(400, 0, 0))
	srv, tok := expiringTokenServer(t, nd)
	a := connect(t, telemetrytest.StartWith(t, srv), tok)
	time.Sleep(200 * time.Millisecond)
	if ack, err := a.Report(t, telemetrytest.Report("n1", 1, 1, time.Now())); err != nil || !ack.GetAccepted() {
		t.Fatalf("a stream whose token expires in 400 years: %v %v", ack, err)
	}
	if !slices.Contains(srv.ConnectedNodes(), "n1") {
		t.Fatal("a stream whose token expires in 400 years does not count as connected")
	}
}

// notReading opens a stream with token whose client never reads what the
// server sends, with fixed 64 KB windows (as any client may choose), and
// returns it once the server has accepted it.
func notReading(t *testing.T, env *telemetrytest.Env, token string) grpc.BidiStreamingClient[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage] {
	t.Helper()
	conn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(env.ClientTLS)),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token))
	t.Cleanup(cancel)
	st, err := telemetryv1.NewTelemetryClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if md, err := st.Header(); err != nil || len(md.Get(telemetry.AcceptedHeader)) == 0 {
		t.Fatalf("stream not accepted: %v %v", md, err)
	}
	return st
}

// The refusals of an agent's invalid reports are sent from its stream's own
// goroutine, and when one of those sends timed out the stream ended without
// the log line or penny_telemetry_streams_ended_total{reason="not_reading"}:
// only an end that Recv saw (a command's send timing out) was logged and
// counted. Both are, once.
func TestStreamThatDoesNotReadItsRefusalsEndsCounted(t *testing.T) {
	var mu sync.Mutex
	closed := 0
	log := funcr.New(func(_, args string) {
		if strings.Contains(args, "closed an agent stream: the agent did not read") {
			mu.Lock()
			closed++
			mu.Unlock()
		}
	}, funcr.Options{})
	env := telemetrytest.Start(t, telemetrytest.Options{Server: telemetry.ServerOptions{Log: log, SendTimeout: 300 * time.Millisecond}})
	ended := metricstest.Counter(t, "penny_telemetry_streams_ended_total", "reason", "not_reading")
	st := notReading(t, env, "node:n1")
	// Every GPU's utilisation is out of range: each refusal names the
	// fields, a few KB that fill the agent's 64 KB window in a few dozen.
	r := telemetrytest.Report("n1", 32, 1, time.Now())
	for _, g := range r.Gpus {
		g.UtilizationPercent = new(uint32)
		*g.UtilizationPercent = 250
	}
	go func() {
		// Ends when the stream does, or at the test's end (notReading's
		// cleanup cancels it).
		for st.Send(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_Report{Report: r}}) == nil {
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); slices.Contains(env.Server.ConnectedNodes(), "n1"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stream of an agent that does not read its refusals is still open after 10s")
		}
	}
	for deadline := time.Now().Add(5 * time.Second); metricstest.Counter(t, "penny_telemetry_streams_ended_total", "reason", "not_reading") < ended+1 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a second count would come now
	if got := metricstest.Counter(t, "penny_telemetry_streams_ended_total", "reason", "not_reading"); got != ended+1 {
		t.Errorf("streams ended for not reading: %v, want %v", got-ended, 1)
	}
	mu.Lock()
	defer mu.Unlock()
	if closed != 1 {
		t.Errorf(`logged "closed an agent stream: the agent did not read" %d times, want once`, closed)
	}
}

// A stream lives no longer than its token even when the agent stays silent:
// before, only a message from the agent ended it, so a silent one (hung, or
// holding a token it should no longer have) kept a stream past the expiry
// that counted as connected, held one of its node's slots and was sent the
// node's commands. At the expiry it is none of these, and ExpiredStreamGrace
// later it ends (a live agent's next message ends it first, with
// UNAUTHENTICATED: TestStreamEndsWhenTokenExpires).
func TestSilentStreamEndsWhenTokenExpires(t *testing.T) {
	// exp claims have whole seconds: at least 1.5s from now.
	nd := jwt.NewNumericDate(time.Now().Add(2500 * time.Millisecond))
	srv, tok := expiringTokenServer(t, nd)
	before := metricstest.Counter(t, "penny_telemetry_auth_failures_total", "reason", "expired")
	a := connect(t, telemetrytest.StartWith(t, srv), tok)
	cmd := &telemetryv1.CheckpointCommand{Id: "c1", Pods: []*telemetryv1.PodRef{{Namespace: "a", Name: "p-0"}}, Deadline: timestamppb.New(time.Now().Add(time.Minute))}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if n, _ := srv.SendCheckpoint("n1", cmd); n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stream was not accepted")
		}
	}
	if msg, err := a.Next(t); err != nil || msg.GetCheckpoint().GetId() != "c1" {
		t.Fatalf("before expiry: %v %v", msg, err)
	}
	// The agent sends nothing.
	for deadline := nd.Time.Add(5 * time.Second); slices.Contains(srv.ConnectedNodes(), "n1"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the silent stream still counts as connected 5s after its token expired")
		}
	}
	if now := time.Now(); now.Before(nd.Time) {
		t.Fatalf("the stream was detached at %v, before its token expired at %v", now, nd.Time)
	}
	if n, err := srv.SendCheckpoint("n1", cmd); n != 0 || err != nil {
		t.Fatalf("after expiry: %d %v, want 0 and no error", n, err)
	}
	// Not an assertion: Next waits 10s at most, and the stream ends at
	// the expiry and the grace.
	time.Sleep(time.Until(nd.Time.Add(telemetry.ExpiredStreamGrace - 5*time.Second)))
	if msg, err := a.Next(t); err == nil {
		t.Fatalf("the silent stream whose token expired goes on: %v", msg)
	}
	if now := time.Now(); now.Before(nd.Time.Add(telemetry.ExpiredStreamGrace)) {
		t.Fatalf("the stream ended at %v, before the grace after its expiry (%v)", now, nd.Time.Add(telemetry.ExpiredStreamGrace))
	}
	// The failing Recv writes the stream's status before the handler
	// returns, so the agent can see the end before the server counts it.
	for deadline := time.Now().Add(5 * time.Second); metricstest.Counter(t, "penny_telemetry_auth_failures_total", "reason", "expired") < before+1 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a second count would come now
	if got := metricstest.Counter(t, "penny_telemetry_auth_failures_total", "reason", "expired"); got != before+1 {
		t.Errorf("expired counter %v, want %v", got, before+1)
	}
}

// orderedStream is an agent's stream that records what goes out on it, in
// order, and, as grpc-go does, sends the headers it has with the first
// message, failing a SendHeader after that. Its SendHeader waits for the
// first message (or a while), as a scheduler goroutine descheduled there.
type orderedStream struct {
	ctx       context.Context
	firstSent chan struct{}
	once      sync.Once

	mu         sync.Mutex
	headerSent bool
	order      []string
}

var _ grpc.BidiStreamingServer[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage] = &orderedStream{}

func (o *orderedStream) SetHeader(metadata.MD) error { return nil }
func (o *orderedStream) SendHeader(md metadata.MD) error {
	select {
	case <-o.firstSent:
	case <-time.After(time.Second):
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.order = append(o.order, "header "+strings.Join(md.Get(telemetry.AcceptedHeader), ","))
	if o.headerSent {
		return status.Error(codes.Internal, "transport: SendHeader called multiple times")
	}
	o.headerSent = true
	return nil
}
func (o *orderedStream) SetTrailer(metadata.MD)   {}
func (o *orderedStream) Context() context.Context { return o.ctx }
func (o *orderedStream) SendMsg(any) error        { return nil }
func (o *orderedStream) RecvMsg(any) error        { <-o.ctx.Done(); return o.ctx.Err() }
func (o *orderedStream) Recv() (*telemetryv1.AgentMessage, error) {
	<-o.ctx.Done()
	return nil, o.ctx.Err()
}
func (o *orderedStream) Send(*telemetryv1.SchedulerMessage) error {
	o.mu.Lock()
	o.order = append(o.order, "message")
	o.headerSent = true
	o.mu.Unlock()
	o.once.Do(func() { close(o.firstSent) })
	return nil
}

// A command sent to a node whose agent's stream is being accepted goes out
// after the acceptance header: before it, it carried gRPC's headers without
// the node's, and the header's own send then failed with Internal and ended
// a stream just accepted.
func TestCommandGoesOutAfterTheAcceptanceHeader(t *testing.T) {
	srv, err := telemetry.NewServer(telemetry.ServerOptions{Store: telemetry.NewStore(telemetry.StoreOptions{}),
		Authenticator: telemetrytest.NodeTokens(), AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	o := &orderedStream{ctx: metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer node:n1")), firstSent: make(chan struct{})}
	ended := make(chan error, 1)
	go func() { ended <- srv.Connect(o) }()
	cmd := &telemetryv1.CheckpointCommand{Id: "gang-1", Pods: []*telemetryv1.PodRef{{Namespace: "a", Name: "p"}},
		Deadline: timestamppb.New(time.Now().Add(time.Minute))}
	for n := 0; n == 0; {
		n, _ = srv.SendCheckpoint("n1", cmd)
		time.Sleep(time.Millisecond)
	}
	cancel()
	err = <-ended
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.order) < 2 || o.order[0] != "header n1" || o.order[1] != "message" || status.Code(err) != codes.Canceled && err != nil {
		t.Errorf("sent %v, and the stream ended with %v; want the header, then the command, and no error of the server's", o.order, err)
	}
}

package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"
	"k8s.io/apiserver/pkg/authentication/authenticator"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// ServerOptions configure the telemetry gRPC service.
type ServerOptions struct {
	Store *Store
	// Authenticator checks agents' tokens; NewTokenReviewAuthenticator in
	// production.
	Authenticator authenticator.Token
	// Audiences the token must be valid for (DefaultAudience).
	Audiences []string
	// AgentServiceAccounts lists "namespace/name" of the ServiceAccounts
	// agents run as; a token of any other account is refused.
	AgentServiceAccounts []string
	// OnCheckpointStatus receives agents' checkpoint progress, with the node
	// the reporting agent runs on, and says what it made of it
	// (penny_telemetry_checkpoint_statuses_total). Optional.
	OnCheckpointStatus func(node string, st *telemetryv1.CheckpointStatus) StatusResult
	// MaxStreamsPerNode caps the streams one node's agents may hold open to
	// this server at once (DefaultMaxStreamsPerNode when 0); a stream beyond
	// it is refused with ResourceExhausted.
	MaxStreamsPerNode int
	// MaxAuthenticationsInFlight caps the tokens this server checks at once
	// (DefaultMaxAuthenticationsInFlight when 0); a stream that arrives
	// while that many are being checked is refused with Unavailable.
	MaxAuthenticationsInFlight int
	// MaxConnections caps the connections open to the endpoint at once,
	// agents' and anyone else's, authenticated or not
	// (DefaultMaxConnections when 0); Serve closes one beyond it as soon
	// as it is accepted.
	MaxConnections int
	// HandshakeTimeout is how long a connection has to finish its TLS and
	// HTTP/2 handshakes (DefaultHandshakeTimeout when 0); a connection
	// that has not is closed.
	HandshakeTimeout time.Duration
	// MaxConnectionIdle is how long a connection may stay open with no
	// stream on it (DefaultMaxConnectionIdle when 0) before the server
	// asks the client to go away.
	MaxConnectionIdle time.Duration
	// SendTimeout bounds how long a message to an agent may wait for the
	// agent to read (DefaultSendTimeout when 0); a stream whose agent has
	// not read by then is ended, and the send fails.
	SendTimeout time.Duration
	Log         logr.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Server implements the Telemetry service.
type Server struct {
	telemetryv1.UnimplementedTelemetryServer
	opts    ServerOptions
	allowed map[string]bool
	// authSlots has an element for each token being checked.
	authSlots chan struct{}

	mu      sync.Mutex
	streams map[string]map[*agentStream]struct{} // by node
	// overLimitLogged is when a stream refused for its node's limit was
	// last logged at the default level, in Unix nanoseconds: an agent may
	// retry as fast as it connects.
	overLimitLogged atomic.Int64
}

// StatusResult is what the receiver of a checkpoint status made of it: the
// result label of penny_telemetry_checkpoint_statuses_total.
type StatusResult string

const (
	// StatusAccepted: a command the receiver waits on, from the node it
	// was sent to.
	StatusAccepted StatusResult = "accepted"
	// StatusWrongNode: a command sent to another node's agent.
	StatusWrongNode StatusResult = "wrong_node"
	// StatusUnknownCommand: a command the receiver did not send or no
	// longer waits on. Agents send every status to every replica, so the
	// replicas that sent nothing count every status so.
	StatusUnknownCommand StatusResult = "unknown_command"
	// statusOwnNotice: a checkpoint the agent takes of its own node's pods
	// for its node's notice (telemetryv1.IsNoticeStatus), which no command
	// asked for and no receiver waits on. The server counts it before any
	// receiver sees it: counted as unknown_command, every notice on every
	// node would look like lost commands.
	statusOwnNotice StatusResult = "own_notice"
	// statusInvalid: a status that failed validation. The server counts it
	// before any receiver sees it, so no receiver returns it.
	statusInvalid StatusResult = "invalid"
)

type agentStream struct {
	id     *agentIdentity
	stream grpc.BidiStreamingServer[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage]
	// end ends the stream, with the reason Connect returns, from any
	// goroutine (endableStream).
	end context.CancelCauseFunc
	// toldInvalidStatus is set once an invalid checkpoint status from the
	// stream was logged at the default level; the rest go to -v=1, so an
	// agent that keeps resending one does not flood the log. Only the
	// stream's own goroutine reads it.
	toldInvalidStatus bool
	// mu serialises sends: acks from the stream's goroutine, commands from
	// whoever calls SendCheckpoint (gRPC allows one sender at a time).
	mu sync.Mutex
}

// send sends msg, or ends the stream when the agent has not read it within
// timeout. A send waits while the agent's receive window is full, and an
// agent that keeps its connection open (answering keepalive pings) but does
// not read, hung or compromised, would hold it, and everyone who sends to the
// stream after it, for good.
func (as *agentStream) send(msg *telemetryv1.SchedulerMessage, timeout time.Duration) error {
	as.mu.Lock()
	defer as.mu.Unlock()
	t := time.AfterFunc(timeout, func() { as.end(errNotReading) })
	defer t.Stop()
	err := as.stream.Send(msg)
	if err != nil {
		if cause := context.Cause(as.stream.Context()); errors.Is(cause, errNotReading) {
			return cause
		}
	}
	return err
}

// errNotReading ends the stream of an agent that did not read what was sent
// to it within ServerOptions.SendTimeout.
var errNotReading = status.Error(codes.Unavailable, "the agent did not read what the scheduler sent it in time (it hung, or stopped reading); the stream was closed")

// errTokenExpired ends a stream when its token expires.
var errTokenExpired = status.Error(codes.Unauthenticated, tokenExpired)

// endKey holds a stream's context.CancelCauseFunc in its context.
type endKey struct{}

// endableStream is the gRPC tap (NewGRPCServer) that gives each stream a
// context the server can cancel. A stream's handler sits in Recv, and gRPC
// has no other way to end a stream from outside it: cancelling this context
// ends both its Recv and any Send waiting for flow control, at the cost of a
// context, not of a second goroutine per stream.
func endableStream(ctx context.Context, _ *tap.Info) (context.Context, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	return context.WithValue(ctx, endKey{}, cancel), nil
}

// streamEnd returns what ends the stream of ctx, or, on a gRPC server not
// made by NewGRPCServer, a function that does nothing.
func streamEnd(ctx context.Context) context.CancelCauseFunc {
	if end, ok := ctx.Value(endKey{}).(context.CancelCauseFunc); ok {
		return end
	}
	return func(error) {}
}

// NewServer returns the service; register it on a grpc.Server with
// NewGRPCServer or telemetryv1.RegisterTelemetryServer. Only on the server
// NewGRPCServer makes can it end a stream before the agent next sends
// (an agent that stops reading, a token that expires).
func NewServer(o ServerOptions) (*Server, error) {
	if o.Store == nil || o.Authenticator == nil {
		return nil, errors.New("telemetry server needs a store and an authenticator")
	}
	allowed, err := AgentServiceAccounts(o.AgentServiceAccounts)
	if err != nil {
		return nil, err
	}
	if len(o.Audiences) == 0 {
		o.Audiences = []string{DefaultAudience}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxStreamsPerNode, err = positiveOr("MaxStreamsPerNode", o.MaxStreamsPerNode, DefaultMaxStreamsPerNode); err != nil {
		return nil, err
	}
	if o.MaxAuthenticationsInFlight, err = positiveOr("MaxAuthenticationsInFlight", o.MaxAuthenticationsInFlight, DefaultMaxAuthenticationsInFlight); err != nil {
		return nil, err
	}
	if o.MaxConnections, err = positiveOr("MaxConnections", o.MaxConnections, DefaultMaxConnections); err != nil {
		return nil, err
	}
	if o.HandshakeTimeout, err = positiveOr("HandshakeTimeout", o.HandshakeTimeout, DefaultHandshakeTimeout); err != nil {
		return nil, err
	}
	if o.MaxConnectionIdle, err = positiveOr("MaxConnectionIdle", o.MaxConnectionIdle, DefaultMaxConnectionIdle); err != nil {
		return nil, err
	}
	if o.SendTimeout, err = positiveOr("SendTimeout", o.SendTimeout, DefaultSendTimeout); err != nil {
		return nil, err
	}
	RegisterMetrics()
	return &Server{opts: o, allowed: allowed, authSlots: make(chan struct{}, o.MaxAuthenticationsInFlight),
		streams: map[string]map[*agentStream]struct{}{}}, nil
}

// positiveOr returns v, or def when v is zero (an option left unset); a
// negative v is an error naming the option.
func positiveOr[T int | time.Duration](name string, v, def T) (T, error) {
	if v < 0 {
		return 0, fmt.Errorf("%s %v: must be positive", name, v)
	}
	if v == 0 {
		return def, nil
	}
	return v, nil
}

// Store returns the store the server writes to.
func (s *Server) Store() *Store { return s.opts.Store }

// DefaultMaxStreamsPerNode is how many streams one node may hold open to a
// replica: an agent keeps one per address the Service gives the replica
// (two on a dual-stack cluster), and during a rolling update of the agent
// the old and the new pod overlap briefly.
const DefaultMaxStreamsPerNode = 4

// DefaultMaxAuthenticationsInFlight is how many tokens a replica checks at
// once. Anyone who can reach the endpoint can open streams with made-up
// tokens, and each is a TokenReview; without a bound they would pile up as
// goroutines and as requests to the API server. penny-scheduler's
// TokenReview client sends at the scheduler's rate (clientConnection.qps,
// 50 a second by default), so reviews beyond that wait their turn, and one
// that would wait past 30s (the token cache's limit) fails: 100 drain in
// 2s at the default rate and within 30s down to 4 a second. A higher limit
// turns refusals, which agents retry, into failed reviews on a slow API
// server. After a scheduler restart the agents that reconnect at once get
// in at that rate, and the others retry with their backoff.
const DefaultMaxAuthenticationsInFlight = 100

// DefaultMaxConnections is how many connections a replica holds open at
// once: every stream the largest cluster Kubernetes supports (5,000 nodes)
// may hold, each on a connection of its own. An agent needs one connection
// per scheduler address (two on a dual-stack cluster), and one more for a
// while when it reconnects before the replica has noticed that the old one
// is dead. Each connection is a file descriptor and, once its handshake is
// done, goroutines and buffers for its HTTP/2 transport.
const DefaultMaxConnections = 5000 * DefaultMaxStreamsPerNode

// MaxStreamsPerConnection is how many streams a client may open on one
// connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). A penny-agent opens
// one connection per scheduler address and one stream on it at a time, so
// it never comes near; 100 is the lowest value HTTP/2 recommends (RFC 9113,
// section 6.5.2), and gRPC's default is unbounded.
const MaxStreamsPerConnection = 100

// MaxHeaderBytes bounds the headers of a stream (HTTP/2
// SETTINGS_MAX_HEADER_LIST_SIZE). An agent sends its token there, a few KB;
// gRPC's default, 16 MiB, would let a client that has no token to send
// make the server hold 16 MiB for each stream it opens.
const MaxHeaderBytes = 64 << 10

// AcceptedHeader is the response header the server sends, with the node the
// token is bound to, as soon as it has accepted a stream; a refused stream
// ends without headers. Accepted reports are not answered, so this is how
// an agent learns that its stream counts.
const AcceptedHeader = "penny-telemetry-node"

// Keepalive: the server pings a connection it has heard nothing from for
// KeepaliveTime and closes it when the ping is not answered within
// KeepaliveTimeout, so the stream of an agent that vanished without closing
// it (its node lost power or network) ends within the sum of the two.
const (
	KeepaliveTime    = time.Minute
	KeepaliveTimeout = 20 * time.Second
)

// DefaultMaxConnectionIdle bounds how long a client may hold a connection
// that carries no stream. The keepalive pings above keep any answering
// connection open, so without it a client that finished its handshake and
// opened nothing would hold a slot of MaxConnections for as long as it
// liked. An agent always has its stream open, and a client sent away
// reconnects when it next needs to.
const DefaultMaxConnectionIdle = 5 * time.Minute

// ExpiredStreamGrace is how long a stream whose token expired stays open,
// detached from its node, for the agent's next message to end it with
// UNAUTHENTICATED "token expired": twice the agent's resend interval.
const ExpiredStreamGrace = 10 * time.Second

// DefaultSendTimeout bounds how long a message to an agent waits for the
// agent to read. An agent reads every message as it comes (it hands a
// command on without waiting for it to run), and a command is a few KB
// against a receive window of 64 KB or more, so a live agent's sends never
// wait on it; one that waits this long has an agent that stopped reading.
// The reclaim coordinator retries a command that failed until its giveUp
// time, which a send that waited for good would never reach.
const DefaultSendTimeout = 5 * time.Second

// MaxMessageBytes bounds one message from an agent; a report of a full
// 8-GPU node with MIG and a hundred pods is a few tens of KB. What one costs
// once decoded is bounded by agentCodec.
const MaxMessageBytes = 4 << 20

// agentCodec is gRPC's protobuf codec, except that a message from an agent
// is checked before it is decoded (telemetryv1.CheckEncodedAgentMessage): a
// message of MaxMessageBytes can otherwise decode to over 500 MiB, and an
// agent holds several streams. A refused message ends its stream.
type agentCodec struct{ encoding.CodecV2 }

func (c agentCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*telemetryv1.AgentMessage)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	if err := telemetryv1.CheckEncodedAgentMessage(buf.ReadOnlyData()); err != nil {
		streamsEnded.WithLabelValues(string(streamTooManyElements)).Inc()
		return err
	}
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// Recovery has a gRPC server answer a call whose handler panics with
// Internal, and log the panic with its stack, instead of ending the
// process: penny-scheduler serves agents and Cluster Autoscaler from the
// process that schedules, so no request may take it down.
func Recovery(log logr.Logger) []grpc.ServerOption {
	handler := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.Error(fmt.Errorf("panic: %v", p), "A gRPC handler panicked; the call fails with Internal", "stack", string(debug.Stack()))
		return status.Errorf(codes.Internal, "internal error serving the call: %v", p)
	})
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(recovery.UnaryServerInterceptor(handler)),
		grpc.ChainStreamInterceptor(recovery.StreamServerInterceptor(handler)),
	}
}

// NewGRPCServer returns a gRPC server with the service registered, using
// creds (TLS in production) and keepalive settings that match the agent's.
func (s *Server) NewGRPCServer(creds credentials.TransportCredentials) *grpc.Server {
	g := grpc.NewServer(append(Recovery(s.opts.Log),
		grpc.Creds(creds),
		grpc.ConnectionTimeout(s.opts.HandshakeTimeout),
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.ForceServerCodecV2(agentCodec{encoding.GetCodecV2(grpcproto.Name)}),
		grpc.MaxConcurrentStreams(MaxStreamsPerConnection),
		grpc.MaxHeaderListSize(MaxHeaderBytes),
		// Agents ping every 30s to notice a dead scheduler; allow it.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout, MaxConnectionIdle: s.opts.MaxConnectionIdle}),
		// Fixed, generous flow-control windows: reports are small and
		// steady, so window updates become rare and gRPC's bandwidth probing
		// (extra ping frames on every connection) is off.
		grpc.InitialWindowSize(1<<20),
		grpc.InitialConnWindowSize(4<<20),
		grpc.InTapHandle(endableStream),
	)...)
	telemetryv1.RegisterTelemetryServer(g, s)
	return g
}

func bearerToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
	}
	return ""
}

// Connect implements the Telemetry service.
func (s *Server) Connect(stream grpc.BidiStreamingServer[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage]) error {
	ctx := stream.Context()
	if err := s.takeAuthSlot(); err != nil {
		return err
	}
	id, err := s.checkToken(ctx)
	if err != nil {
		var ae *authError
		code, reason := codes.Unauthenticated, authInvalidToken
		if errors.As(err, &ae) {
			reason = ae.reason
			if reason == authNotAgent || reason == authNotBound {
				code = codes.PermissionDenied
			}
		}
		authFailures.WithLabelValues(string(reason)).Inc()
		s.opts.Log.V(2).Info("refused an agent stream", "reason", string(reason), "error", err.Error())
		return status.Error(code, err.Error())
	}
	log := s.opts.Log.WithValues("node", id.Node, "pod", id.Pod)
	as := &agentStream{id: id, stream: stream, end: streamEnd(ctx)}
	// Beyond the cap the newest stream is refused rather than the oldest
	// closed: a live agent whose stream is refused gets in at its next
	// attempt after a slot frees, whereas closing the oldest would have
	// agents that legitimately exceed the cap take turns evicting one
	// another. Streams of agents that are gone end by keepalive, so they
	// keep no agent out for longer than KeepaliveTime+KeepaliveTimeout;
	// those of agents that stopped reading end once a send to them waits
	// SendTimeout, and a stream whose token expired stops holding a slot
	// at the expiry.
	//
	// Registered, the stream is one SendCheckpoint may send on: the
	// acceptance header goes first (as.mu, which send takes). A command sent
	// before it carried gRPC's headers without the node's, and the header's
	// own send then failed and ended the stream.
	as.mu.Lock()
	if n := s.register(as); n > 0 {
		as.mu.Unlock()
		streamsOverLimit.Inc()
		l := log.V(2)
		now := time.Now().UnixNano()
		if last := s.overLimitLogged.Load(); now-last >= int64(time.Minute) && s.overLimitLogged.CompareAndSwap(last, now) {
			l = log
		}
		l.Info("refused an agent stream: its node has too many open (further refusals within a minute are logged at -v=2)", "open", n, "limit", s.opts.MaxStreamsPerNode)
		return status.Errorf(codes.ResourceExhausted,
			"node %q already has %d telemetry streams open to this scheduler replica, the limit (--telemetry-max-streams-per-node=%d). "+
				"A penny-agent keeps one stream per scheduler address, so either more than one agent runs on the node (keep only the penny-agent DaemonSet's pod there) "+
				"or the streams of an agent that vanished are not closed yet (keepalive closes them within %v, and this agent then gets in); "+
				"if the node needs more streams, raise --telemetry-max-streams-per-node",
			id.Node, n, s.opts.MaxStreamsPerNode, KeepaliveTime+KeepaliveTimeout)
	}
	defer s.unregister(as)
	herr := stream.SendHeader(metadata.Pairs(AcceptedHeader, id.Node))
	as.mu.Unlock()
	if herr != nil {
		return herr
	}
	log.V(2).Info("agent stream open")
	openStreams.Inc()
	defer openStreams.Dec()

	// One goroutine per stream: at 5,000 agents per replica, a second one
	// per stream costs more CPU (scheduling, stack scans in every GC) than
	// everything else the server does per report. So the token's expiry is
	// checked when a message arrives, and timers, which take no goroutine
	// until they fire, deal with an agent that stays silent past it, which
	// would otherwise keep a stream that counts as connected, is sent
	// commands and holds one of its node's slots: at the expiry the stream
	// stops being all three, and ExpiredStreamGrace later it ends. Ending
	// it at once would tell every live agent, at each token rotation,
	// CANCELLED (a Recv that fails writes that status before the handler
	// can write its own) rather than why.
	if !id.Expires.IsZero() {
		left := id.Expires.Sub(s.opts.Now())
		detach := time.AfterFunc(left, func() { s.unregister(as) })
		defer detach.Stop()
		// Sub saturates at the largest Duration for an exp centuries
		// away, and the grace added to that would wrap round to a
		// negative wait: the stream would end as it opened.
		if left < math.MaxInt64-ExpiredStreamGrace {
			end := time.AfterFunc(left+ExpiredStreamGrace, func() { as.end(errTokenExpired) })
			defer end.Stop()
		}
	}
	// A stream the agent did not read ends here, whether the send that
	// waited was a command (another goroutine's: Recv fails) or a reply of
	// this one (the send fails): only this goroutine logs and counts it,
	// and it returns after, so each such stream is counted once.
	notReading := func(err error) error {
		streamsEnded.WithLabelValues(string(streamNotReading)).Inc()
		log.Info("closed an agent stream: the agent did not read what was sent to it", "timeout", s.opts.SendTimeout)
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			switch cause := context.Cause(ctx); {
			case errors.Is(cause, errTokenExpired):
				authFailures.WithLabelValues(string(authExpired)).Inc()
				return cause
			case errors.Is(cause, errNotReading):
				return notReading(cause)
			}
			if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
				return nil
			}
			// A message gRPC could not read or decode (over
			// MaxMessageBytes, refused by agentCodec, malformed) ends the
			// stream; the agent reconnects and, sending the same, ends the
			// next one too.
			log.Info("closed an agent stream: its message could not be read", "err", err)
			return err
		}
		if id.expiredAt(s.opts.Now()) {
			authFailures.WithLabelValues(string(authExpired)).Inc()
			return errTokenExpired
		}
		reply, err := s.handle(as, msg, log)
		if err != nil {
			return err
		}
		if reply != nil {
			if err := as.send(reply, s.opts.SendTimeout); err != nil {
				if errors.Is(err, errNotReading) {
					return notReading(err)
				}
				return err
			}
		}
	}
}

// takeAuthSlot takes one of MaxAuthenticationsInFlight slots for checking
// a token, or returns the refusal when all are taken; checkToken gives it
// back.
func (s *Server) takeAuthSlot() error {
	select {
	case s.authSlots <- struct{}{}:
		return nil
	default:
	}
	authenticationsOverLimit.Inc()
	// At -v=2, like refused tokens: whoever fills the slots could otherwise
	// fill the log too.
	s.opts.Log.V(2).Info("refused an agent stream: too many tokens being checked", "limit", s.opts.MaxAuthenticationsInFlight)
	return status.Errorf(codes.Unavailable,
		"this scheduler replica is checking %d agent tokens already, the limit (--telemetry-max-authentications-in-flight=%d); "+
			"the agent retries with its backoff. Refusals that go on mean that TokenReviews are slow or that clients connect with tokens that are not agents'",
		s.opts.MaxAuthenticationsInFlight, s.opts.MaxAuthenticationsInFlight)
}

// checkToken authenticates the stream's token in a slot takeAuthSlot took,
// and gives the slot back.
func (s *Server) checkToken(ctx context.Context) (*agentIdentity, error) {
	defer func() { <-s.authSlots }()
	// The token cache runs a TokenReview detached from the stream and stops
	// waiting for it when the stream ends. Waiting here regardless keeps
	// the slot taken until the review is over, so a client that opens
	// streams and cancels them at once cannot have more reviews running
	// than the bound.
	id, err := authenticate(context.WithoutCancel(ctx), s.opts.Authenticator, s.opts.Audiences, s.allowed, bearerToken(ctx))
	// The token cache keeps a review's answer for its TTL whatever the
	// token's exp says: a token that expired since is refused here, not
	// accepted until its first message.
	if err == nil && id.expiredAt(s.opts.Now()) {
		return nil, &authError{authExpired, tokenExpired}
	}
	return id, err
}

// handle processes one agent message and returns the answer, if any. An
// error ends the stream.
func (s *Server) handle(as *agentStream, msg *telemetryv1.AgentMessage, log logr.Logger) (*telemetryv1.SchedulerMessage, error) {
	id := as.id
	switch m := msg.GetMessage().(type) {
	case *telemetryv1.AgentMessage_Report:
		r := m.Report
		// The node check comes first: it is the security boundary, and a
		// report about someone else's node is refused whatever its content.
		// One that names no node is malformed, not about another node: it
		// is refused as invalid below, without the security alert.
		if r.GetNodeName() != "" && r.GetNodeName() != id.Node {
			reportsTotal.WithLabelValues(string(reportWrongNode)).Inc()
			// Not validated yet: cut, or an agent could write megabytes
			// into the log at every reconnect.
			named := telemetryv1.StatusText(r.GetNodeName())
			log.Info("refused a report about another node; closing the stream", "reportedNode", named)
			return nil, status.Errorf(codes.PermissionDenied, "this agent runs on node %q (token bound to pod %s) and may only report about that node, not %q", id.Node, id.Pod, named)
		}
		if err := telemetryv1.ValidateNodeReport(r); err != nil {
			reportsTotal.WithLabelValues(string(reportInvalid)).Inc()
			log.V(1).Info("refused an invalid report", "sequence", r.GetSequence(), "error", err.Error())
			return refusal(r.GetSequence(), err), nil
		}
		now := s.opts.Now()
		if s.opts.Store.Update(r, now) {
			reportsTotal.WithLabelValues(string(reportAccepted)).Inc()
			reportDelay.Observe(now.Sub(r.GetCollectedAt().AsTime()).Seconds())
		} else {
			reportsTotal.WithLabelValues(string(reportStale)).Inc()
		}
		return nil, nil
	case *telemetryv1.AgentMessage_CheckpointStatus:
		st := m.CheckpointStatus
		if err := telemetryv1.ValidateCheckpointStatus(st); err != nil {
			checkpointStatuses.WithLabelValues(string(statusInvalid)).Inc()
			// The coordinator waits for the pod's status until the deadline
			// less its safety margin: an operator should learn why.
			l := log.V(1)
			if !as.toldInvalidStatus {
				as.toldInvalidStatus, l = true, log
			}
			l.Info("ignoring an invalid checkpoint status (further ones on this stream are logged at -v=1)",
				"command", telemetryv1.StatusText(st.GetCommandId()), "checkpointPod", telemetryv1.StatusText(st.GetPod().GetNamespace()+"/"+st.GetPod().GetName()), "error", err.Error())
			return nil, nil
		}
		result := StatusUnknownCommand
		switch {
		case telemetryv1.IsNoticeStatus(st.GetCommandId()):
			result = statusOwnNotice
		case s.opts.OnCheckpointStatus != nil:
			result = s.opts.OnCheckpointStatus(id.Node, st)
		}
		checkpointStatuses.WithLabelValues(string(result)).Inc()
		return nil, nil
	default:
		return nil, nil // a newer agent's message this scheduler does not know
	}
}

func refusal(seq uint64, err error) *telemetryv1.SchedulerMessage {
	return &telemetryv1.SchedulerMessage{Message: &telemetryv1.SchedulerMessage_Ack{Ack: &telemetryv1.ReportAck{Sequence: seq, Error: err.Error()}}}
}

// register adds as to its node's streams and returns 0, or, when the node
// already holds the most streams it may, leaves it out and returns how many
// the node holds.
func (s *Server) register(as *agentStream) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.streams[as.id.Node]
	if !ok {
		m = map[*agentStream]struct{}{}
		s.streams[as.id.Node] = m
	}
	if len(m) >= s.opts.MaxStreamsPerNode {
		return len(m)
	}
	m[as] = struct{}{}
	return 0
}

// unregister may be called more than once for as (at its token's expiry,
// and when its stream ends).
func (s *Server) unregister(as *agentStream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams[as.id.Node], as)
	if len(s.streams[as.id.Node]) == 0 {
		delete(s.streams, as.id.Node)
	}
}

// SendCheckpoint sends cmd to every open stream from node's agent and returns
// how many took it. Zero with no error means the node's agent is not
// connected to this replica. A send waits while the agent's receive window
// is full, which a live agent keeps short; one that waits SendTimeout ends
// its stream and counts as failed.
func (s *Server) SendCheckpoint(node string, cmd *telemetryv1.CheckpointCommand) (int, error) {
	if err := telemetryv1.ValidateCheckpointCommand(cmd); err != nil {
		return 0, err
	}
	msg := &telemetryv1.SchedulerMessage{Message: &telemetryv1.SchedulerMessage_Checkpoint{Checkpoint: cmd}}
	s.mu.Lock()
	streams := make([]*agentStream, 0, len(s.streams[node]))
	for as := range s.streams[node] {
		streams = append(streams, as)
	}
	s.mu.Unlock()
	n := 0
	var lastErr error
	for _, as := range streams {
		if err := as.send(msg, s.opts.SendTimeout); err != nil {
			lastErr = fmt.Errorf("stream from %s: %w", as.id.Pod, err)
			continue
		}
		n++
	}
	if n > 0 {
		commandsSent.WithLabelValues(string(commandCheckpoint)).Inc()
	}
	if n == 0 && lastErr != nil {
		return 0, lastErr
	}
	return n, nil
}

// ConnectedNodes returns the nodes whose agents have a stream open to this
// replica.
func (s *Server) ConnectedNodes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.streams))
	for n := range s.streams {
		out = append(out, n)
	}
	return out
}

// MaintainStore prunes nodes silent for longer than forgetAfter and updates
// the node gauges, every interval, until ctx ends.
func MaintainStore(ctx context.Context, store *Store, interval, forgetAfter time.Duration) {
	RegisterMetrics()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		total, fresh := store.Prune(forgetAfter)
		nodesGauge.WithLabelValues("fresh").Set(float64(fresh))
		nodesGauge.WithLabelValues("stale").Set(float64(total - fresh))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

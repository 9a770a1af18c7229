package report

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/util/wait"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/telemetry"
)

// CommandHandler acts on commands from the scheduler. HandleCheckpoint must
// return quickly (start the work elsewhere) and report progress through
// Client.SendCheckpointStatus. Several scheduler replicas may send the same
// command; the handler deduplicates by command id.
type CommandHandler interface {
	HandleCheckpoint(ctx context.Context, cmd *telemetryv1.CheckpointCommand)
}

// ClientOptions configure the streams to the scheduler.
type ClientOptions struct {
	// Address is host:port of the scheduler's telemetry endpoint. A DNS name
	// is resolved to all its addresses (a headless Service has one per
	// scheduler replica) and the agent keeps a stream to each. It is
	// resolved again every ResolveInterval and whenever a stream ends.
	Address string
	// TLS verifies the scheduler. ServerName defaults to Address's host, so a
	// certificate for the Service name is valid on every replica's address.
	TLS *tls.Config
	// TokenFile holds the projected ServiceAccount token; it is read again at
	// every connect, so the kubelet's rotation is picked up.
	TokenFile string
	// ResolveInterval is how often Address is resolved again (30s).
	ResolveInterval time.Duration
	// Resolver looks up Address's host; net.DefaultResolver when nil.
	Resolver interface {
		LookupHost(ctx context.Context, host string) ([]string, error)
	}
	// Backoff paces reconnects to one endpoint. Zero: 500ms doubling to 30s,
	// with jitter.
	Backoff wait.Backoff
	// Commands handles scheduler commands; nil answers every checkpoint
	// command with STATE_UNSUPPORTED.
	Commands CommandHandler
	Log      logr.Logger
	Metrics  *Metrics
}

// DefaultBackoff paces reconnects: quick at first, then no more than one
// attempt every 30 seconds per endpoint, jittered so that a restarted
// scheduler is not hit by every agent at once.
var DefaultBackoff = wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.3, Steps: 1 << 30, Cap: 30 * time.Second}

// Client keeps one stream per scheduler endpoint and sends the loop's
// reports over each.
type Client struct {
	loop *Loop
	opts ClientOptions
	host string

	mu        sync.Mutex
	endpoints map[string]*endpoint
	wg        sync.WaitGroup
	// resolveNow asks Run to look the address up again before its
	// interval: a stream ended, and the replica may be back elsewhere.
	resolveNow chan struct{}
	// statusSeq numbers the checkpoint statuses (under mu).
	statusSeq uint64
	// orphans hold statuses while there is no endpoint to queue them for.
	orphans *statusQueue
}

type endpoint struct {
	addr      string
	cancel    context.CancelFunc
	connected atomic.Bool
	statuses  *statusQueue
	// joinedAfter is statusSeq when the endpoint was added: it was given
	// every status after that one, and none before.
	joinedAfter uint64
}

// NewClient returns a client for loop's reports.
func NewClient(loop *Loop, opts ClientOptions) (*Client, error) {
	host, _, err := net.SplitHostPort(opts.Address)
	if err != nil {
		return nil, fmt.Errorf("scheduler address %q: want host:port (%v)", opts.Address, err)
	}
	if opts.TLS == nil {
		return nil, errors.New("scheduler TLS configuration is required: the stream carries a ServiceAccount token")
	}
	if opts.ResolveInterval <= 0 {
		opts.ResolveInterval = 30 * time.Second
	}
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	if opts.Backoff.Duration == 0 {
		opts.Backoff = DefaultBackoff
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	opts.TLS = opts.TLS.Clone()
	if opts.TLS.ServerName == "" {
		opts.TLS.ServerName = host
	}
	return &Client{loop: loop, opts: opts, host: host, endpoints: map[string]*endpoint{}, resolveNow: make(chan struct{}, 1), orphans: newStatusQueue()}, nil
}

// Connected returns how many scheduler streams are open now.
func (c *Client) Connected() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, e := range c.endpoints {
		if e.connected.Load() {
			n++
		}
	}
	return n
}

// Endpoints returns the scheduler addresses the client keeps streams to.
func (c *Client) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for a := range c.endpoints {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// SendCheckpointStatus sends st to every scheduler endpoint (the one that
// leads may change at any time); the scheduler's reclaim coordinator waits
// for these before it evicts a gang's other members. Statuses wait, up to
// MaxQueuedStatuses per endpoint, for an endpoint that is reconnecting; one
// whose send fails is sent again on the endpoint's next stream; those an
// endpoint still holds when it leaves the Service go to the endpoints that
// joined since, which never had them (a replica back at a new address).
func (c *Client) SendCheckpointStatus(st *telemetryv1.CheckpointStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.statusSeq++
	s := queuedStatus{seq: c.statusSeq, st: st}
	if len(c.endpoints) == 0 {
		c.statusesDropped("", c.orphans.push(s))
		return
	}
	for _, e := range c.endpoints {
		c.statusesDropped(e.addr, e.statuses.push(s))
	}
}

// handOff gives statuses that a gone endpoint did not deliver to the
// endpoints that never had them: those that joined after the status was
// produced. The others were given their own copy. With no endpoint left
// the statuses wait for the next one. c.mu is held.
func (c *Client) handOff(items []queuedStatus) {
	if len(items) == 0 {
		return
	}
	if len(c.endpoints) == 0 {
		c.statusesDropped("", c.orphans.merge(items))
		return
	}
	for _, e := range c.endpoints {
		var missing []queuedStatus
		for _, s := range items {
			if s.seq <= e.joinedAfter {
				missing = append(missing, s)
			}
		}
		c.statusesDropped(e.addr, e.statuses.merge(missing))
	}
}

func (c *Client) statusesDropped(endpoint string, n int) {
	if n == 0 {
		return
	}
	c.opts.Metrics.statusesDropped.Add(float64(n))
	c.opts.Log.Info("checkpoint statuses dropped, the oldest first: too many queued for a scheduler that is not reading", "endpoint", endpoint, "dropped", n, "limit", MaxQueuedStatuses)
}

// Run keeps streams open until ctx ends, then closes them and returns.
func (c *Client) Run(ctx context.Context) {
	defer func() {
		c.mu.Lock()
		for addr, e := range c.endpoints {
			e.cancel()
			delete(c.endpoints, addr)
		}
		c.mu.Unlock()
		c.wg.Wait()
	}()
	for {
		addrs, err := c.resolve(ctx)
		if err != nil {
			c.opts.Log.Info("cannot resolve the scheduler address; keeping the current endpoints", "address", c.opts.Address, "error", err.Error())
		} else {
			c.setEndpoints(ctx, addrs)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.opts.ResolveInterval):
		case <-c.resolveNow:
		}
	}
}

func (c *Client) resolve(ctx context.Context) ([]string, error) {
	_, port, _ := net.SplitHostPort(c.opts.Address)
	if net.ParseIP(c.host) != nil {
		return []string{c.opts.Address}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ips, err := c.opts.Resolver.LookupHost(ctx, c.host)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("%s has no addresses (no scheduler replica is ready?)", c.host)
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.JoinHostPort(ip, port))
	}
	return out, nil
}

func (c *Client) setEndpoints(ctx context.Context, addrs []string) {
	want := map[string]bool{}
	for _, a := range addrs {
		want[a] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, e := range c.endpoints {
		if !want[addr] {
			c.opts.Log.Info("scheduler endpoint gone", "endpoint", addr)
			e.cancel()
			delete(c.endpoints, addr)
		}
	}
	for addr := range want {
		if _, ok := c.endpoints[addr]; ok {
			continue
		}
		ectx, cancel := context.WithCancel(ctx)
		e := &endpoint{addr: addr, cancel: cancel, statuses: newStatusQueue(), joinedAfter: c.statusSeq}
		c.endpoints[addr] = e
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.runEndpoint(ectx, e)
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.endpoints[e.addr] == e {
				return
			}
			// Handed off only now: a status the last stream took and
			// failed to send is back in the queue once that stream is
			// done.
			c.handOff(e.statuses.take())
			// The endpoint's series go once its goroutine has written its
			// last value, unless the address is back with a new endpoint.
			if c.endpoints[e.addr] == nil {
				c.opts.Metrics.forgetEndpoint(e.addr)
			}
		}()
	}
	c.handOff(c.orphans.take())
}

// runEndpoint keeps one stream open, reconnecting with backoff.
func (c *Client) runEndpoint(ctx context.Context, e *endpoint) {
	log := c.opts.Log.WithValues("endpoint", e.addr)
	conn, err := grpc.NewClient(e.addr,
		grpc.WithTransportCredentials(credentials.NewTLS(c.opts.TLS)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		log.Error(err, "cannot create a gRPC client for the scheduler endpoint")
		return
	}
	defer conn.Close()
	backoff := c.opts.Backoff
	for {
		started := time.Now()
		err := c.stream(ctx, conn, e, log)
		e.connected.Store(false)
		c.opts.Metrics.connected.WithLabelValues(e.addr).Set(0)
		if ctx.Err() != nil {
			return
		}
		c.opts.Metrics.reconnects.WithLabelValues(e.addr).Inc()
		// A replica that restarted comes back at a new address; the new
		// leader of a rollout must not wait for the periodic lookup to
		// get this node's state. (Lookups stay paced by the backoff.)
		select {
		case c.resolveNow <- struct{}{}:
		default:
		}
		if time.Since(started) > time.Minute {
			backoff = c.opts.Backoff // it worked for a while: start over
		}
		delay := backoff.Step()
		log.Info("stream to the scheduler ended; reconnecting", "error", errString(err), "in", delay.Round(time.Millisecond).String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (c *Client) stream(ctx context.Context, conn *grpc.ClientConn, e *endpoint, log logr.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.opts.TokenFile != "" {
		token, err := os.ReadFile(c.opts.TokenFile)
		if err != nil {
			return fmt.Errorf("read ServiceAccount token: %w", err)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	st, err := telemetryv1.NewTelemetryClient(conn).Connect(ctx)
	if err != nil {
		return err
	}
	return c.serve(ctx, cancel, st, e, log)
}

// serve sends reports and checkpoint statuses over st and hands what the
// scheduler sends to handle, until the stream or ctx ends; cancel ends st.
func (c *Client) serve(ctx context.Context, cancel context.CancelFunc, st grpc.BidiStreamingClient[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage], e *endpoint, log logr.Logger) error {
	// Opening a stream only sends its request; the scheduler checks the
	// token when the stream arrives, and answers with the response headers
	// (telemetry.AcceptedHeader) once it has accepted it. A refused stream
	// ends without headers. Before that the stream counts as open nowhere,
	// and statuses wait: one sent on a stream that is then refused is lost
	// without a failed Send to say so. (A scheduler older than the header
	// sends headers with its first message, which also follows acceptance.)
	accepted := make(chan struct{})
	recvErr := make(chan error, 1)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		if md, _ := st.Header(); md != nil {
			e.connected.Store(true)
			c.opts.Metrics.connected.WithLabelValues(e.addr).Set(1)
			log.Info("stream to the scheduler open", "node", strings.Join(md.Get(telemetry.AcceptedHeader), ","))
			close(accepted)
		}
		for {
			msg, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			c.handle(ctx, e, msg, log)
		}
	}()
	// The receiver is done before the caller marks the endpoint closed.
	defer func() {
		cancel()
		<-recvDone
	}()
	// A failed Send only says the stream broke; Recv has the reason.
	sendFailed := func() error {
		select {
		case err := <-recvErr:
			return err
		case <-time.After(5 * time.Second):
			return errors.New("send failed and the stream did not say why")
		}
	}

	updates, unsubscribe := c.loop.Subscribe()
	defer unsubscribe()
	var sent uint64
	var statusesReady <-chan struct{}
	for {
		select {
		case <-ctx.Done():
			st.CloseSend()
			return ctx.Err()
		case err := <-recvErr:
			return err
		case <-accepted:
			accepted, statusesReady = nil, e.statuses.ready
			if err := c.sendStatuses(st, e); err != nil {
				return sendFailed()
			}
		case <-statusesReady:
			if err := c.sendStatuses(st, e); err != nil {
				return sendFailed()
			}
		case <-updates:
			r := c.loop.Latest()
			if r == nil || r.Sequence <= sent {
				continue
			}
			if err := st.Send(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_Report{Report: r}}); err != nil {
				return sendFailed()
			}
			sent = r.Sequence
			c.opts.Metrics.sent.WithLabelValues(e.addr).Inc()
		}
	}
}

// sendStatuses sends the endpoint's queued statuses, oldest first. One whose
// send fails goes back to the front of the queue for the next stream.
func (c *Client) sendStatuses(st grpc.BidiStreamingClient[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage], e *endpoint) error {
	for {
		s, ok := e.statuses.pop()
		if !ok {
			return nil
		}
		if err := st.Send(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_CheckpointStatus{CheckpointStatus: s.st}}); err != nil {
			c.statusesDropped(e.addr, e.statuses.putBack(s))
			return err
		}
	}
}

func (c *Client) handle(ctx context.Context, e *endpoint, msg *telemetryv1.SchedulerMessage, log logr.Logger) {
	switch m := msg.Message.(type) {
	case *telemetryv1.SchedulerMessage_Ack:
		if !m.Ack.GetAccepted() {
			c.opts.Metrics.rejected.WithLabelValues(e.addr).Inc()
			log.Error(errors.New(m.Ack.GetError()), "the scheduler refused a report", "sequence", m.Ack.GetSequence())
		}
	case *telemetryv1.SchedulerMessage_Checkpoint:
		c.opts.Metrics.commands.WithLabelValues("checkpoint").Inc()
		cmd := m.Checkpoint
		if err := telemetryv1.ValidateCheckpointCommand(cmd); err != nil {
			log.Error(err, "ignoring an invalid checkpoint command", "command", cmd.GetId())
			return
		}
		log.Info("checkpoint command", "command", cmd.GetId(), "pods", len(cmd.GetPods()), "deadline", cmd.GetDeadline().AsTime(), "reason", cmd.GetReason())
		if c.opts.Commands != nil {
			c.opts.Commands.HandleCheckpoint(ctx, cmd)
			return
		}
		for _, p := range cmd.GetPods() {
			c.SendCheckpointStatus(&telemetryv1.CheckpointStatus{
				CommandId: cmd.GetId(), Pod: p, State: telemetryv1.CheckpointStatus_STATE_UNSUPPORTED,
				Message: "this penny-agent does not run checkpoints", UpdatedAt: timestamppb.Now(),
			})
		}
	default:
		log.V(1).Info("ignoring a scheduler message this agent does not know")
	}
}

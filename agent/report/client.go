package report

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
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
// command; the handler deduplicates by command id. The client answers a
// command it holds statuses for with those statuses (a restarted replica
// sends its commands again), so the handler need say nothing about a
// command it has run before.
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
	// SendTimeout bounds how long one message waits for the scheduler to
	// read it before the stream is ended (DefaultSendTimeout when zero).
	SendTimeout time.Duration
}

// DefaultSendTimeout bounds how long one message to a scheduler replica
// waits for room in the replica's receive window. A replica reads every
// message as it comes, and a report (tens of KB for a full node) or a
// status is small against the 1 MiB window the scheduler grants each
// stream, so a live replica's sends never wait on it; one that waits this
// long has a replica that stopped reading while its connection still
// answers keepalive pings. Waiting for good would hold that stream's later
// reports and checkpoint statuses behind it, so the stream is ended and
// reconnected instead. The scheduler bounds its sends to the agent the same
// way (telemetry.DefaultSendTimeout).
const DefaultSendTimeout = 5 * time.Second

// errSchedulerNotReading ends a stream whose replica did not read a message
// within ClientOptions.SendTimeout.
var errSchedulerNotReading = errors.New("the scheduler did not read what the agent sent it in time (it hung, or stopped reading); the agent closed the stream")

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
	// dialOptions are checked by NewClient, which builds a connection with
	// them once, so that a bad option fails the agent's start.
	dialOptions []grpc.DialOption
	// newConn makes an endpoint's connection (grpc.NewClient; tests fail
	// it).
	newConn func(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error)

	mu        sync.Mutex
	endpoints map[string]*endpoint
	wg        sync.WaitGroup
	// resolveNow asks Run to look the address up again before its
	// interval: a stream ended, and the replica may be back elsewhere.
	resolveNow chan struct{}
	// statuses are the checkpoint statuses every new stream is sent.
	statuses *statusBook
}

type endpoint struct {
	addr      string
	cancel    context.CancelFunc
	connected atomic.Bool
	// statusesChanged holds a token when the stream open now may have
	// statuses to send: one was added or updated, or a command came again.
	statusesChanged chan struct{}

	mu sync.Mutex
	// sent records the version of each status the stream open now was
	// given; a stream the scheduler accepts starts with an empty record.
	sent map[statusKey]uint64
}

// again has the stream open now send keys' statuses once more.
func (e *endpoint) again(keys []statusKey) {
	if len(keys) == 0 {
		return
	}
	e.mu.Lock()
	for _, k := range keys {
		delete(e.sent, k)
	}
	e.mu.Unlock()
	e.statusesMayHaveChanged()
}

func (e *endpoint) statusesMayHaveChanged() {
	select {
	case e.statusesChanged <- struct{}{}:
	default:
	}
}

// NewClient returns a client for loop. It checks Address and the options
// it builds connections with, so that a mistake fails the agent's start
// rather than leaving it running without ever reporting.
func NewClient(loop *Loop, opts ClientOptions) (*Client, error) {
	host, port, err := net.SplitHostPort(opts.Address)
	if err != nil {
		return nil, fmt.Errorf("scheduler address %q: want host:port (%v)", opts.Address, err)
	}
	if host == "" {
		return nil, fmt.Errorf("scheduler address %q: the host is empty; want host:port, e.g. penny-telemetry.penny-system.svc:7443", opts.Address)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return nil, fmt.Errorf("scheduler address %q: the port %q is not a number from 1 to 65535", opts.Address, port)
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
	if opts.SendTimeout <= 0 {
		opts.SendTimeout = DefaultSendTimeout
	}
	opts.TLS = opts.TLS.Clone()
	if opts.TLS.ServerName == "" {
		opts.TLS.ServerName = host
	}
	c := &Client{
		loop: loop, opts: opts, host: host, newConn: grpc.NewClient,
		endpoints: map[string]*endpoint{}, resolveNow: make(chan struct{}, 1), statuses: newStatusBook(nil),
	}
	c.dialOptions = []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(opts.TLS)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// gRPC reconnects a failed connection by itself, with its own
		// backoff (up to 2 minutes apart by default); while it waits, the
		// streams the agent opens fail at once. Pace it as the streams
		// are, so a replica that comes back is reached within the cap.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay: opts.Backoff.Duration, Multiplier: max(opts.Backoff.Factor, 1),
				Jitter: min(opts.Backoff.Jitter, 1), MaxDelay: max(opts.Backoff.Cap, opts.Backoff.Duration),
			},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	// Every endpoint's connection is built from these options and an
	// address of this form; building one here (it does not connect) finds
	// what would otherwise only fail in the endpoint's goroutine.
	probe := opts.Address
	if net.ParseIP(host) == nil {
		probe = net.JoinHostPort("127.0.0.1", port)
	}
	conn, err := grpc.NewClient(probe, c.dialOptions...)
	if err != nil {
		return nil, fmt.Errorf("scheduler address %q: %w", opts.Address, err)
	}
	conn.Close()
	return c, nil
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
// for these before it evicts a gang's other members. Until until (the
// command's deadline; DefaultStatusRetention from now when zero) the pod's
// latest status is sent again on every stream a scheduler accepts, and on
// the stream a command arrives on again: the protocol acknowledges no
// status, and one that sat in gRPC's buffer when its stream broke is lost.
// A status produced while no scheduler is connected waits for one.
func (c *Client) SendCheckpointStatus(st *telemetryv1.CheckpointStatus, until time.Time) {
	if dropped := c.statuses.put(st, until); dropped != nil {
		c.opts.Metrics.statusesDropped.Inc()
		c.opts.Log.Info("checkpoint status dropped: too many statuses of commands whose deadline is ahead; the one updated longest ago goes",
			"command", dropped.key.command, "pod", dropped.key.namespace+"/"+dropped.key.name,
			"state", dropped.st.GetState().String(), "limit", MaxLiveStatuses)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.endpoints {
		e.statusesMayHaveChanged()
	}
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
		e := &endpoint{addr: addr, cancel: cancel, statusesChanged: make(chan struct{}, 1), sent: map[statusKey]uint64{}}
		c.endpoints[addr] = e
		c.opts.Metrics.startEndpoint(addr)
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.runEndpoint(ectx, e)
			// The endpoint's series go once its goroutine has written its
			// last value, unless the address is back with a new endpoint.
			// (Its statuses need no hand-off: every stream, to whatever
			// endpoint, is sent every live status.)
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.endpoints[e.addr] == nil {
				c.opts.Metrics.forgetEndpoint(e.addr)
			}
		}()
	}
}

// setConnected records whether e has a stream the scheduler accepted. The
// gauge is left to a newer endpoint for the same address, if there is one
// (the address left the Service and came back): the old endpoint's last
// word must not overwrite the new one's.
func (c *Client) setConnected(e *endpoint, connected bool) {
	e.connected.Store(connected)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur := c.endpoints[e.addr]; cur != nil && cur != e {
		return
	}
	v := 0.0
	if connected {
		v = 1
	}
	c.opts.Metrics.connected.WithLabelValues(e.addr).Set(v)
}

// runEndpoint keeps one stream open, reconnecting with backoff, until ctx
// ends.
func (c *Client) runEndpoint(ctx context.Context, e *endpoint) {
	log := c.opts.Log.WithValues("endpoint", e.addr)
	backoff := c.opts.Backoff
	c.setConnected(e, false)
	var conn *grpc.ClientConn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		started := time.Now()
		var err error
		if conn == nil {
			// NewClient checked the address and the options, so this
			// should not fail; if it does, the endpoint keeps trying (and
			// says so in its failures) rather than going quiet for good
			// while the agent looks healthy.
			if conn, err = c.newConn(e.addr, c.dialOptions...); err != nil {
				conn = nil
				err = fmt.Errorf("cannot create a gRPC client for the scheduler endpoint: %w", err)
			}
		}
		if conn != nil {
			err = c.stream(ctx, conn, e, log)
		}
		c.setConnected(e, false)
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
			c.setConnected(e, true)
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
	// A Send waits while the replica's receive window is full, and a replica
	// that stopped reading would hold it for good: one timer per stream,
	// armed around each Send, ends the stream when a Send waits too long
	// (cancelling the stream's context makes the waiting Send return), and
	// runEndpoint reconnects as for any other ended stream.
	var notReading atomic.Bool
	watchdog := time.AfterFunc(time.Hour, func() {
		notReading.Store(true)
		c.opts.Metrics.streamsEnded.WithLabelValues(e.addr, string(streamNotReading)).Inc()
		log.Info("closing the stream: the scheduler did not read what the agent sent it (it hung, or stopped reading)",
			"timeout", c.opts.SendTimeout.String())
		cancel()
	})
	watchdog.Stop()
	defer watchdog.Stop()
	send := func(m *telemetryv1.AgentMessage) error {
		watchdog.Reset(c.opts.SendTimeout)
		err := st.Send(m)
		watchdog.Stop()
		return err
	}
	// A failed Send only says the stream broke; Recv has the reason.
	sendFailed := func() error {
		if notReading.Load() {
			return errSchedulerNotReading
		}
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
	var statusesChanged <-chan struct{}
	for {
		select {
		case <-ctx.Done():
			st.CloseSend()
			if notReading.Load() {
				// The last Send returned just as its time ran out.
				return errSchedulerNotReading
			}
			return ctx.Err()
		case err := <-recvErr:
			if notReading.Load() {
				return errSchedulerNotReading
			}
			return err
		case <-accepted:
			// A new stream: whatever the last one sent may have been lost
			// with it, so every live status goes out again.
			accepted, statusesChanged = nil, e.statusesChanged
			e.mu.Lock()
			e.sent = map[statusKey]uint64{}
			e.mu.Unlock()
			if err := c.sendStatuses(send, e); err != nil {
				return sendFailed()
			}
		case <-statusesChanged:
			if err := c.sendStatuses(send, e); err != nil {
				return sendFailed()
			}
		case <-updates:
			r := c.loop.Latest()
			if r == nil || r.Sequence <= sent {
				continue
			}
			if err := send(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_Report{Report: r}}); err != nil {
				return sendFailed()
			}
			sent = r.Sequence
			c.opts.Metrics.sent.WithLabelValues(e.addr).Inc()
		}
	}
}

// sendStatuses sends the live statuses this stream does not have in their
// latest version, in the order they were produced. A stream whose send fails
// is done; the next one sends them all again.
func (c *Client) sendStatuses(send func(*telemetryv1.AgentMessage) error, e *endpoint) error {
	for {
		e.mu.Lock()
		batch := c.statuses.pending(e.sent)
		e.mu.Unlock()
		if len(batch) == 0 {
			return nil
		}
		for _, s := range batch {
			if err := send(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_CheckpointStatus{CheckpointStatus: s.st}}); err != nil {
				return err
			}
			c.opts.Metrics.statusesSent.WithLabelValues(e.addr).Inc()
		}
	}
}

// refuse answers FAILED, saying why, for each pod an invalid command names
// in a status the scheduler takes: its reclaim coordinator waits for every
// pod of the command until the deadline less its safety margin, before it
// evicts the gang's other members. A pod the status could not name (or a
// command id it could not carry) gets no answer; the coordinator waits for
// that one.
func (c *Client) refuse(cmd *telemetryv1.CheckpointCommand, why error) {
	var until time.Time
	if d := cmd.GetDeadline(); d.IsValid() {
		until = d.AsTime()
	}
	msg := telemetryv1.StatusText("penny-agent refused the checkpoint command as invalid: " + why.Error())
	for _, p := range cmd.GetPods()[:min(len(cmd.GetPods()), telemetryv1.MaxCheckpointPods)] {
		st := &telemetryv1.CheckpointStatus{
			CommandId: cmd.GetId(), Pod: p, State: telemetryv1.CheckpointStatus_STATE_FAILED,
			Message: msg, UpdatedAt: timestamppb.Now(),
		}
		if telemetryv1.ValidateCheckpointStatus(st) == nil {
			c.SendCheckpointStatus(st, until)
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
		c.opts.Metrics.commands.WithLabelValues(string(commandCheckpoint)).Inc()
		cmd := m.Checkpoint
		if err := telemetryv1.ValidateCheckpointCommand(cmd); err != nil {
			log.Error(err, "refusing an invalid checkpoint command", "command", cmd.GetId())
			c.refuse(cmd, err)
			return
		}
		log.Info("checkpoint command", "command", cmd.GetId(), "pods", len(cmd.GetPods()), "deadline", cmd.GetDeadline().AsTime(), "reason", cmd.GetReason())
		// A command this agent has statuses for already comes again from a
		// replica that lost them (it restarted, or its statuses arrived
		// before it knew the command): the handler runs a command once, so
		// the answer is the statuses it has, on this stream.
		e.again(c.statuses.commandKeys(cmd.GetId()))
		if c.opts.Commands != nil {
			c.opts.Commands.HandleCheckpoint(ctx, cmd)
			return
		}
		for _, p := range cmd.GetPods() {
			c.SendCheckpointStatus(&telemetryv1.CheckpointStatus{
				CommandId: cmd.GetId(), Pod: p, State: telemetryv1.CheckpointStatus_STATE_UNSUPPORTED,
				Message: "this penny-agent does not run checkpoints", UpdatedAt: timestamppb.Now(),
			}, cmd.GetDeadline().AsTime())
		}
	default:
		log.V(1).Info("ignoring a scheduler message this agent does not know")
	}
}

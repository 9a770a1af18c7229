package report

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Defaults for the loop's intervals. A scheduler counts a node's data as
// fresh for a few resend intervals (penny-scheduler --telemetry-max-age,
// 20s by default), so one lost report does not make a node unknown.
const (
	DefaultCollectInterval = time.Second
	DefaultResendInterval  = 5 * time.Second
)

// Loop collects on an interval and publishes numbered reports.
type Loop struct {
	builder         *Builder
	collectInterval time.Duration
	resendInterval  time.Duration
	log             logr.Logger
	metrics         *Metrics

	trigger chan struct{}

	seq       uint64
	latest    atomic.Pointer[telemetryv1.NodeReport]
	collected atomic.Int64 // unix nanos of the last finished collection

	mu          sync.Mutex
	subscribers map[chan struct{}]struct{}
}

// LoopOptions configure a Loop.
type LoopOptions struct {
	CollectInterval time.Duration
	ResendInterval  time.Duration
	Log             logr.Logger
	Metrics         *Metrics // nil: not recorded
}

// NewLoop returns a loop over builder.
func NewLoop(builder *Builder, o LoopOptions) *Loop {
	if o.CollectInterval <= 0 {
		o.CollectInterval = DefaultCollectInterval
	}
	if o.ResendInterval <= 0 {
		o.ResendInterval = DefaultResendInterval
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	return &Loop{
		builder: builder, collectInterval: o.CollectInterval, resendInterval: o.ResendInterval,
		log: o.Log, metrics: o.Metrics,
		trigger:     make(chan struct{}, 1),
		subscribers: map[chan struct{}]struct{}{},
	}
}

// Trigger asks for a collection now (a reclaim notice arrived, an XID was
// raised). It never blocks.
func (l *Loop) Trigger() {
	select {
	case l.trigger <- struct{}{}:
	default:
	}
}

// Latest returns the last published report, nil before the first.
func (l *Loop) Latest() *telemetryv1.NodeReport { return l.latest.Load() }

// LastCollection returns when the last collection finished.
func (l *Loop) LastCollection() time.Time {
	n := l.collected.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Subscribe returns a channel that receives a signal whenever a new report is
// published, and a function to stop. Signals coalesce: a slow reader sees the
// latest report, never a backlog.
func (l *Loop) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	l.mu.Lock()
	l.subscribers[ch] = struct{}{}
	l.mu.Unlock()
	if l.latest.Load() != nil {
		// A report published since the channel was added may have
		// signalled it already; one signal is all it holds, and nobody
		// reads it before this returns.
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return ch, func() {
		l.mu.Lock()
		delete(l.subscribers, ch)
		l.mu.Unlock()
	}
}

// Run collects until ctx ends.
func (l *Loop) Run(ctx context.Context) {
	ticker := time.NewTicker(l.collectInterval)
	defer ticker.Stop()
	var lastPublish time.Time
	for {
		start := time.Now()
		r := l.builder.Build(ctx)
		if ctx.Err() != nil {
			// The agent is stopping and the collection was cut short: what
			// it says (collectors cancelled) is not the node's state.
			return
		}
		l.collected.Store(time.Now().UnixNano())
		l.metrics.observeCollection(r, time.Since(start))
		prev := l.latest.Load()
		if Changed(prev, r) || time.Since(lastPublish) >= l.resendInterval {
			if prev != nil && Changed(prev, r) {
				l.log.V(1).Info("node state changed; reporting now")
			}
			l.publish(r)
			lastPublish = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-l.trigger:
		}
	}
}

// publish numbers r, makes it the latest report and wakes the subscribers.
func (l *Loop) publish(r *telemetryv1.NodeReport) {
	l.seq++
	r.Sequence = l.seq
	if err := telemetryv1.ValidateNodeReport(r); err != nil {
		// The scheduler would refuse it; say so here, where it can be fixed,
		// and still send it so the scheduler's metrics show the refusal.
		l.log.Error(err, "report does not validate; the scheduler will refuse it", "sequence", r.Sequence)
	}
	l.latest.Store(r)
	l.metrics.reportsBuilt.Inc()
	l.notify()
}

// notify wakes every subscriber.
func (l *Loop) notify() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for ch := range l.subscribers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

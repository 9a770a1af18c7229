// Package reclaim is the node side of a reclaim: when the cloud announces
// that the node is going away, within a second the agent taints the node
// (penny.dev/reclaim=<kind>:NoSchedule), reports the notice to the scheduler,
// and asks each pod with a checkpoint hook to checkpoint; it waits for the
// answers until the deadline minus a safety margin, then evicts the pods
// through the Eviction API, those with a checkpoint written first, each with
// its grace period cut to the time that remains. The scheduler, told of the
// notice, commands the agents of the other members of affected gangs to
// checkpoint theirs (HandleCheckpoint) by the same deadline.
//
// Every step is an event on the pod and the node and a metric, and the state
// of each piece of work is kept in a file on the node, so an agent that
// restarts in the middle of a notice finishes the job.
package reclaim

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/pennysched/penny/agent/checkpoint"
	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/reclaim"
)

// DefaultSafetyMargin is how long before the deadline the agent stops
// waiting for checkpoints and evicts: time for the pods to stop.
const DefaultSafetyMargin = 5 * time.Second

// Options configure the flow.
type Options struct {
	// Node is this node's name; the flow acts on nothing else.
	Node   string
	Client kubernetes.Interface
	// Checkpoints calls pods' hooks; a client that reaches pods at their IP
	// when nil.
	Checkpoints *checkpoint.Client
	// StateDir holds the work in progress (a hostPath directory).
	StateDir string
	Policy   reclaim.Policy
	// SafetyMargin is taken off the deadline to get the time checkpoints
	// must be written by (DefaultSafetyMargin).
	SafetyMargin time.Duration
	// Report asks for a report to the scheduler at once (the report loop's
	// Trigger). Optional.
	Report func()
	// Status sends checkpoint progress to the scheduler (the report
	// client's SendCheckpointStatus), with the job's deadline: until then
	// the scheduler may still wait for it, so the client sends it again on
	// a stream that replaces one it may have been lost with. Optional.
	Status func(st *telemetryv1.CheckpointStatus, until time.Time)
	// Acknowledger tells the cloud the node is ready (Azure). Optional.
	Acknowledger notice.Acknowledger
	// Notices returns the notices pending now and whether the last check
	// of the metadata service succeeded (notice.Watcher.Settled). With it
	// the flow drops maintenance the cloud called off before acting on it,
	// and removes the taint when the cloud withdraws every notice. Optional.
	Notices func() ([]notice.Notice, bool)
	// ReconcileInterval is how often the taint is checked against Notices
	// (10s).
	ReconcileInterval time.Duration
	// Recorder records events; one writing to the API server when nil.
	Recorder record.EventRecorder
	Log      logr.Logger
	Metrics  *Metrics
	// Retention is how long a finished job's file is kept, so that the
	// same notice seen again is known as handled (24h).
	Retention time.Duration
}

// Flow runs reclaim work on one node.
type Flow struct {
	node        string
	client      kubernetes.Interface
	checkpoints *checkpoint.Client
	state       *stateStore
	policy      reclaim.Policy
	margin      time.Duration
	report      func()
	status      func(*telemetryv1.CheckpointStatus, time.Time)
	ack         notice.Acknowledger
	notices     func() ([]notice.Notice, bool)
	reconcile   time.Duration
	recorder    record.EventRecorder
	broadcaster record.EventBroadcaster
	log         logr.Logger
	metrics     *Metrics
	retention   time.Duration
	pruneEvery  time.Duration

	factory informers.SharedInformerFactory
	pods    corelisters.PodLister
	synced  cache.InformerSynced

	// queueMu guards queue alone, not mu: start and prune hold mu while
	// they read the state directory, and OnNotice and HandleCheckpoint,
	// which run on the notice watcher's and the report stream's goroutines,
	// must not wait for a slow disk. Queued work is not acted on yet: it
	// is on disk before it is (runNotice and runCommand save it first).
	queueMu sync.Mutex
	queue   []*Job
	mu      sync.Mutex
	running map[string]bool
	// again holds, by job id, a notice announced while its job still ran:
	// a job that ends withdrawn (the cloud called the notice off, then
	// announced it again before the job's end) starts it.
	again map[string]*Job
	wake  chan struct{}
	// moved is closed, and replaced, when the cloud moves a pending
	// notice's deadline (Moved): jobs waiting for their time to act look
	// again at once.
	movedMu sync.Mutex
	moved   chan struct{}
	// recheck asks Run to check the taint against the pending notices now:
	// a job for a notice the cloud withdrew has ended.
	recheck chan struct{}
	wg      sync.WaitGroup
	// asking is the checkpoints in flight, by pod UID (checkpoint).
	asking singleflight.Group
}

// New returns a flow; Run starts it.
func New(o Options) (*Flow, error) {
	if o.Node == "" || o.Client == nil {
		return nil, errors.New("reclaim flow needs the node name and a Kubernetes client")
	}
	st, err := newStateStore(o.StateDir)
	if err != nil {
		return nil, err
	}
	if o.Checkpoints == nil {
		o.Checkpoints = checkpoint.NewClient(nil)
	}
	if o.SafetyMargin <= 0 {
		o.SafetyMargin = DefaultSafetyMargin
	}
	if o.Report == nil {
		o.Report = func() {}
	}
	if o.Status == nil {
		o.Status = func(*telemetryv1.CheckpointStatus, time.Time) {}
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.Retention <= 0 {
		o.Retention = 24 * time.Hour
	}
	if o.ReconcileInterval <= 0 {
		o.ReconcileInterval = 10 * time.Second
	}
	f := &Flow{
		node: o.Node, client: o.Client, checkpoints: o.Checkpoints, state: st, policy: o.Policy,
		margin: o.SafetyMargin, report: o.Report, status: o.Status, ack: o.Acknowledger,
		notices: o.Notices, reconcile: o.ReconcileInterval,
		recorder: o.Recorder, log: o.Log, metrics: o.Metrics,
		retention: o.Retention, pruneEvery: min(o.Retention, maxPruneInterval),
		running: map[string]bool{}, again: map[string]*Job{}, wake: make(chan struct{}, 1), recheck: make(chan struct{}, 1),
		moved: make(chan struct{}),
	}
	if f.recorder == nil {
		f.broadcaster = record.NewBroadcaster()
		f.recorder = f.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "penny-agent", Host: o.Node})
	}
	// Only this node's pods, as the kubelet watches them.
	f.factory = informers.NewSharedInformerFactoryWithOptions(o.Client, 0, informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
		lo.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", o.Node).String()
	}))
	inf := f.factory.Core().V1().Pods()
	f.pods, f.synced = inf.Lister(), inf.Informer().HasSynced
	return f, nil
}

// nodeRef is the node as events refer to it (the kubelet's convention: the
// UID is the name).
func (f *Flow) nodeRef() *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Node", Name: f.node, UID: types.UID(f.node)}
}

// OnNotice starts the work for a notice (notice.Watcher.OnNotice). It never
// blocks.
func (f *Flow) OnNotice(n notice.Notice) {
	j := &Job{
		// Also the command_id of its checkpoints' statuses.
		ID: telemetryv1.NoticeStatusID(n.ID),
		Notice: &NoticeRecord{
			ID: n.ID, Kind: n.Kind, Provider: n.Provider, Action: n.Action,
			Detected: n.Detected, Deadline: n.Deadline, Estimated: n.Estimated,
		},
		Deadline: reclaim.Deadline(n.Kind, n.Detected, n.Deadline),
	}
	f.enqueue(j)
}

// Moved tells the flow that the cloud moved a pending notice's deadline
// (notice.Watcher.OnMove). Work waiting for its time to act looks again now
// rather than at its next check (ReconcileInterval): a GCE maintenance
// brought forward to 60 s away leaves no time to wait. It never blocks.
func (f *Flow) Moved(notice.Notice) {
	f.movedMu.Lock()
	close(f.moved)
	f.moved = make(chan struct{})
	f.movedMu.Unlock()
}

func (f *Flow) movedSignal() <-chan struct{} {
	f.movedMu.Lock()
	defer f.movedMu.Unlock()
	return f.moved
}

// HandleCheckpoint implements the report client's CommandHandler: the
// scheduler asks this node's pods to checkpoint (another member of their
// gang is on a node being reclaimed). It never blocks; replicas sending the
// same command are deduplicated by its id.
func (f *Flow) HandleCheckpoint(_ context.Context, cmd *telemetryv1.CheckpointCommand) {
	rec := &CommandRecord{
		ID: cmd.GetId(), Reason: cmd.GetReason(), OriginNode: cmd.GetOriginNode(),
		OriginNotice: cmd.GetOriginNoticeId(), Received: time.Now(),
	}
	for _, p := range cmd.GetPods() {
		rec.Pods = append(rec.Pods, p.GetNamespace()+"/"+p.GetName())
	}
	f.enqueue(&Job{ID: "command-" + cmd.GetId(), Command: rec, Deadline: cmd.GetDeadline().AsTime()})
}

func (f *Flow) enqueue(j *Job) {
	f.queueMu.Lock()
	f.queue = append(f.queue, j)
	f.queueMu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// Run watches the node's pods, resumes work a previous agent left unfinished
// and runs new work until ctx ends.
func (f *Flow) Run(ctx context.Context) {
	if f.broadcaster != nil {
		f.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: f.client.CoreV1().Events("")})
		defer f.broadcaster.Shutdown()
	}
	f.factory.Start(ctx.Done())
	defer f.factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), f.synced) {
		return
	}
	now := time.Now()
	for _, err := range f.state.removeStaleTemps(now) {
		f.log.Error(err, "cannot remove a temporary file an earlier agent left in the reclaim state directory")
	}
	jobs, errs := f.state.all()
	for _, err := range errs {
		f.log.Error(err, "unreadable reclaim state; left in place")
	}
	for _, j := range jobs {
		switch {
		case outlived(j, now):
			// The node outlived the deadline by far (maintenance rebooted
			// it mid-job, or it was stopped and started): what runs here
			// now came after, and evicting it, with no time left for a
			// grace period, would only stop it.
			f.log.Info("reclaim work an earlier agent left unfinished is long past its deadline; the node outlived it, so its pods are left alone",
				"job", j.ID, "deadline", j.Deadline)
			// Its retention runs from now, not from its last step: the
			// cloud may still list the notice after the reboot, and a file
			// pruned at once would have the next agent act on it.
			j.Done, j.Outlived, j.Updated = true, true, now
			if err := f.state.save(j); err != nil {
				f.log.Error(err, "cannot record the reclaim work as done", "job", j.ID)
			}
		case !j.Done:
			f.log.Info("resuming reclaim work an earlier agent left unfinished", "job", j.ID, "deadline", j.Deadline)
			f.metrics.resumed.Inc()
			f.start(ctx, j, true)
		case j.Command != nil && now.Before(j.Deadline):
			f.resendStatuses(j)
		default:
			f.expire(j, now)
		}
	}
	// A node that is never reclaimed itself still gets a scheduler command
	// for every reclaim of a node its gangs share; its agent may run for
	// weeks, so finished work is pruned while it runs, not only at start.
	prune := time.NewTicker(f.pruneEvery)
	defer prune.Stop()
	var reconcile <-chan time.Time
	if f.notices != nil {
		t := time.NewTicker(f.reconcile)
		defer t.Stop()
		reconcile = t.C
	}
	for {
		select {
		case <-ctx.Done():
			f.wg.Wait()
			return
		case now := <-prune.C:
			f.prune(now)
			continue
		case <-reconcile:
			if pending, ok := f.notices(); ok {
				f.withdrawn(ctx, pending)
			}
			continue
		case <-f.recheck:
			if f.notices == nil {
				continue
			}
			if pending, ok := f.notices(); ok {
				f.withdrawn(ctx, pending)
			}
			continue
		case <-f.wake:
		}
		f.queueMu.Lock()
		queue := f.queue
		f.queue = nil
		f.queueMu.Unlock()
		for _, j := range queue {
			f.start(ctx, j, false)
		}
	}
}

// start runs a job unless it already runs; a new job that the state
// directory knows continues from what is recorded there.
func (f *Flow) start(ctx context.Context, j *Job, resumed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running[j.ID] {
		if j.Notice != nil && !resumed {
			f.again[j.ID] = j
		}
		return
	}
	if !resumed {
		old, ok, err := f.state.load(j.ID)
		if err != nil {
			// The work is done again rather than not at all (the pods
			// are asked again); the file is kept, not overwritten.
			aside, serr := f.state.setAside(j.ID)
			if serr != nil {
				f.log.Error(serr, "the new record of the work will replace it", "job", j.ID)
			}
			f.log.Error(err, "cannot read the reclaim state; starting the work over, the unreadable file kept", "job", j.ID, "kept", aside)
		}
		switch {
		case ok && old.Done && old.Withdrawn:
			// The cloud announces again what it called off earlier; the
			// pods were left alone then, so this is work to do now.
			f.log.Info("a notice called off earlier is announced again", "job", j.ID)
		case ok && old.Done && old.Outlived && postponed(old, j):
			// The pods were left alone then too: the cloud (or the
			// instance's owner) moved the maintenance while no agent ran.
			f.log.Info("a notice whose work an earlier agent left long past its deadline is listed again, due later: postponed, so work to do now",
				"job", j.ID, "was", old.Deadline, "deadline", j.Deadline)
		case ok && old.Done:
			return // handled before (the same notice seen again, or a replica's copy)
		case ok:
			j = old
		}
	}
	if j.Notice != nil && !resumed {
		// Counted here, not in OnNotice: a notice already running or
		// known as handled (seen again after a restart) is not acted on.
		f.metrics.notices.Inc()
	}
	f.running[j.ID] = true
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		withdrawn := false
		defer func() { f.ended(j.ID, withdrawn) }()
		if j.Notice != nil {
			withdrawn = f.runNotice(ctx, j, resumed)
		} else {
			f.runCommand(ctx, j)
		}
	}()
}

// ended forgets a job that ended. One withdrawn starts the notice announced
// again while it ran (start would have counted it as running): the
// watcher hands on each announcement once. Only now does withdrawn() see
// no work running and lift the taint; the reconcile tick would, too, but
// later.
func (f *Flow) ended(id string, withdrawn bool) {
	f.mu.Lock()
	delete(f.running, id)
	again := f.again[id]
	delete(f.again, id)
	f.mu.Unlock()
	if !withdrawn {
		return
	}
	if again != nil {
		f.log.Info("a notice called off is announced again as its work ends", "job", id)
		f.enqueue(again)
	}
	select {
	case f.recheck <- struct{}{}:
	default:
	}
}

// Running reports whether a job is in progress (for tests and /readyz).
func (f *Flow) Running() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.running)
}

// jobState guards a running job's record.
type jobState struct {
	f  *Flow
	mu sync.Mutex
	j  *Job
}

func (s *jobState) save() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.saveLocked()
}

func (s *jobState) saveLocked() {
	s.j.Updated = time.Now()
	if err := s.f.state.save(s.j); err != nil {
		s.f.log.Error(err, "cannot save reclaim state; a restart now would redo this step", "job", s.j.ID)
	}
}

func (s *jobState) pod(pod *corev1.Pod) *PodRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.j.Pods == nil {
		s.j.Pods = map[string]*PodRecord{}
	}
	key := pod.Namespace + "/" + pod.Name
	r := s.j.Pods[key]
	if r == nil || r.UID != string(pod.UID) {
		r = &PodRecord{UID: string(pod.UID)}
		s.j.Pods[key] = r
	}
	return r
}

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
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/protobuf/types/known/timestamppb"
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
	wake    chan struct{}
	// moved is closed, and replaced, when the cloud moves a pending
	// notice's deadline (Moved): jobs waiting for their time to act look
	// again at once.
	movedMu sync.Mutex
	moved   chan struct{}
	// recheck asks Run to check the taint against the pending notices now:
	// a job for a notice the cloud withdrew has ended.
	recheck chan struct{}
	wg      sync.WaitGroup
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
		running: map[string]bool{}, wake: make(chan struct{}, 1), recheck: make(chan struct{}, 1),
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
		ID: "notice-" + n.ID,
		Notice: &NoticeRecord{
			ID: n.ID, Kind: n.Kind, Provider: n.Provider, Action: n.Action,
			Detected: n.Detected, Deadline: n.Deadline,
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

// staleAfter is how long past its deadline unfinished work is still resumed
// by a restarted agent: long enough for an agent that crashed to come back
// before a Spot node goes, far shorter than a reboot for maintenance.
const staleAfter = 10 * time.Minute

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
	jobs, errs := f.state.all()
	for _, err := range errs {
		f.log.Error(err, "unreadable reclaim state; left in place")
	}
	now := time.Now()
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
			j.Done, j.Updated = true, now
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

// maxPruneInterval bounds how long a finished job's file outlives its
// retention while the agent runs; the directory holds few files, so
// reading it hourly costs nothing.
const maxPruneInterval = time.Hour

// prune removes the files of finished work past its retention (expire).
// It holds f.mu so that a job start begins meanwhile cannot have its file
// removed from under it: start reads the file and marks the job running
// under the same lock.
func (f *Flow) prune(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	jobs, errs := f.state.all()
	for _, err := range errs {
		// Run logged it as an error at start; once an hour again would be
		// noise.
		f.log.V(1).Info("unreadable reclaim state; left in place", "error", err.Error())
	}
	for _, j := range jobs {
		if !f.running[j.ID] {
			f.expire(j, now)
		}
	}
}

// expire removes a job's file once it has served its purpose, at start and
// while the agent runs. Unfinished work is kept to be finished; finished
// work is kept for the retention after its last step, so that a restarted
// agent that sees the same notice again knows it as handled, and a
// finished command until its deadline, so that a restarted agent can send
// its statuses again (the scheduler waits for them until then).
func (f *Flow) expire(j *Job, now time.Time) {
	if !j.Done || (j.Command != nil && now.Before(j.Deadline)) || now.Sub(j.Updated) <= f.retention {
		return
	}
	if err := f.state.remove(j.ID); err != nil {
		f.log.Error(err, "cannot remove old reclaim state", "job", j.ID)
		return
	}
	f.log.V(1).Info("removed the state of reclaim work finished longer ago than the retention", "job", j.ID, "updated", j.Updated, "retention", f.retention)
}

// start runs a job unless it already runs; a new job that the state
// directory knows continues from what is recorded there.
func (f *Flow) start(ctx context.Context, j *Job, resumed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running[j.ID] {
		return
	}
	if !resumed {
		old, ok, err := f.state.load(j.ID)
		if err != nil {
			f.log.Error(err, "cannot read the reclaim state; starting over", "job", j.ID)
		}
		switch {
		case ok && old.Done && old.Withdrawn:
			// The cloud announces again what it called off earlier; the
			// pods were left alone then, so this is work to do now.
			f.log.Info("a notice called off earlier is announced again", "job", j.ID)
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
		defer func() {
			f.mu.Lock()
			delete(f.running, j.ID)
			f.mu.Unlock()
			// Only now does withdrawn() see no work running and lift the
			// taint; the reconcile tick would, too, but later.
			if withdrawn {
				select {
				case f.recheck <- struct{}{}:
				default:
				}
			}
		}()
		if j.Notice != nil {
			withdrawn = f.runNotice(ctx, j)
		} else {
			f.runCommand(ctx, j)
		}
	}()
}

// resendStatuses sends again the statuses of a scheduler command an
// earlier agent finished before its deadline: they may have been lost with
// its streams (a status sent just before the agent stopped sat in a buffer),
// and the scheduler waits for them to evict the gang's other members before
// the deadline. The scheduler takes a repeated status as where the pod
// stands, so one it has already changes nothing.
func (f *Flow) resendStatuses(j *Job) {
	for _, key := range j.Command.Pods {
		ns, name, _ := strings.Cut(key, "/")
		st := &telemetryv1.CheckpointStatus{
			CommandId: j.Command.ID, Pod: &telemetryv1.PodRef{Namespace: ns, Name: name},
			State: telemetryv1.CheckpointStatus_STATE_FAILED, UpdatedAt: timestamppb.New(j.Updated),
			Message: fmt.Sprintf("pod %s is not on node %s", key, f.node),
		}
		if r := j.Pods[key]; r != nil {
			state, ok := telemetryv1.CheckpointStatus_State_value[r.Checkpoint]
			if !ok {
				continue // not asked: nothing was said about it
			}
			st.State, st.Message = telemetryv1.CheckpointStatus_State(state), telemetryv1.StatusText(r.Message)
		}
		f.status(st, j.Deadline)
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

// checkpointBy is when checkpoints must be written: the deadline less the
// safety margin, or half the time left when less than the margin remains.
func (f *Flow) checkpointBy(deadline time.Time) time.Time {
	by := deadline.Add(-f.margin)
	if now := time.Now(); !by.After(now) {
		by = now.Add(deadline.Sub(now) / 2)
	}
	return by
}

// runNotice does a notice's work; it reports whether the cloud withdrew the
// notice before it was time to act.
func (f *Flow) runNotice(ctx context.Context, j *Job) bool {
	js := &jobState{f: f, j: j}
	n := j.Notice
	log := f.log.WithValues("notice", n.ID, "kind", n.Kind.String())
	act := f.policy.Decide(n.Kind, n.Provider, n.Action, n.Deadline)
	kind := reclaim.TaintValue(n.Kind)
	js.save()

	// The taint, the report and the checkpoint requests go out together:
	// none waits for another's round trip.
	var tainting sync.WaitGroup
	if act.Taint && !j.Tainted {
		tainting.Add(1)
		go func() {
			defer tainting.Done()
			if err := f.taint(ctx, n.Kind); err != nil {
				log.Error(err, "cannot taint the node; new pods may still land on it")
				f.recorder.Eventf(f.nodeRef(), corev1.EventTypeWarning, "ReclaimTaintFailed", "could not taint the node %s=%s:NoSchedule: %v", reclaim.TaintKey, kind, err)
				return
			}
			f.metrics.step(stepTaint, n.Detected)
			js.mu.Lock()
			j.Tainted = true
			js.saveLocked()
			js.mu.Unlock()
		}()
	}
	defer tainting.Wait()
	f.report()
	var what []string
	if act.Checkpoint {
		what = append(what, "checkpointing its pods")
	}
	if act.Evict {
		what = append(what, "evicting them")
	}
	if len(what) == 0 {
		what = []string{"no action needed (the pods keep running)"}
	}
	deadline := func() string {
		if n.Deadline.IsZero() {
			return "no deadline"
		}
		return fmt.Sprintf("deadline %s (%v after detection)", n.Deadline.UTC().Format(time.RFC3339), n.Deadline.Sub(n.Detected).Round(time.Second))
	}
	f.recorder.Eventf(f.nodeRef(), corev1.EventTypeWarning, "ReclaimNotice", "%s notice %s (%s %s), %s; %s",
		providerName(n.Provider), n.ID, kind, n.Action, deadline(), strings.Join(what, ", "))

	statusID := j.ID
	for {
		if proceed, withdrawn := f.waitToAct(ctx, js, log); !proceed {
			return withdrawn
		}
		if act.Checkpoint {
			pods, err := f.podsOnNodeNow(ctx)
			if err != nil {
				log.Error(err, "cannot list the node's pods")
			}
			f.checkpointAll(ctx, js, pods, checkpoint.Request{
				Deadline: f.checkpointBy(j.Deadline),
				Reason:   fmt.Sprintf("node %s is being reclaimed (%s, %s)", f.node, kind, deadline()),
				Notice:   n.ID, Node: f.node,
			}, statusID, n.Detected, string(originNotice))
		}
		if ctx.Err() != nil {
			return false
		}
		// The cloud may have postponed the maintenance while the pods
		// checkpointed: the pods stay until the new time to act, and the
		// checkpoints written are kept (those pods are not asked again).
		if cur, found, _ := f.pendingNotice(n.ID); found {
			f.follow(js, cur, log)
		}
		if at := f.policy.Decide(n.Kind, n.Provider, n.Action, n.Deadline).At; !time.Now().Before(at) {
			break
		}
	}
	if act.Evict {
		f.evictAll(ctx, js, n.Detected)
		if ctx.Err() != nil {
			return false
		}
		f.acknowledge(ctx, js)
	}
	js.mu.Lock()
	j.Done = true
	js.saveLocked()
	js.mu.Unlock()
	log.Info("reclaim work done")
	return false
}

func providerName(p telemetryv1.CloudProvider) string {
	return strings.ToUpper(strings.TrimPrefix(p.String(), "CLOUD_PROVIDER_"))
}

func (f *Flow) runCommand(ctx context.Context, j *Job) {
	js := &jobState{f: f, j: j}
	c := j.Command
	js.save()
	var pods []*corev1.Pod
	for _, key := range c.Pods {
		ns, name, _ := strings.Cut(key, "/")
		pod, err := f.pods.Pods(ns).Get(name)
		if err != nil || pod.Spec.NodeName != f.node {
			// The agent acts for its own node only.
			f.status(&telemetryv1.CheckpointStatus{
				CommandId: c.ID, Pod: &telemetryv1.PodRef{Namespace: ns, Name: name},
				State: telemetryv1.CheckpointStatus_STATE_FAILED, UpdatedAt: timestamppb.Now(),
				Message: fmt.Sprintf("pod %s is not on node %s", key, f.node),
			}, j.Deadline)
			continue
		}
		pods = append(pods, pod)
	}
	reason := c.Reason
	if reason == "" {
		reason = "the scheduler asked for a checkpoint"
	}
	f.checkpointAll(ctx, js, pods, checkpoint.Request{
		Deadline: f.checkpointBy(j.Deadline), Reason: reason, Notice: c.OriginNotice, Node: c.OriginNode,
	}, c.ID, c.Received, string(originCommand))
	if ctx.Err() != nil {
		return
	}
	js.mu.Lock()
	j.Done = true
	js.saveLocked()
	js.mu.Unlock()
}

// checkpointAll asks every pod at once and waits for every answer (each
// bounded by req.Deadline). Pods whose checkpoint this job already has are
// not asked again.
func (f *Flow) checkpointAll(ctx context.Context, js *jobState, pods []*corev1.Pod, req checkpoint.Request, statusID string, since time.Time, origin string) {
	var wg sync.WaitGroup
	sendStatus := func(pod *corev1.Pod, state telemetryv1.CheckpointStatus_State, msg string) {
		// Hooks answer what they like: a status the scheduler refuses is
		// lost, and one that does not encode ends the agent's stream.
		f.status(&telemetryv1.CheckpointStatus{
			CommandId: statusID, Pod: &telemetryv1.PodRef{Namespace: pod.Namespace, Name: pod.Name},
			State: state, Message: telemetryv1.StatusText(msg), UpdatedAt: timestamppb.Now(),
		}, js.j.Deadline)
	}
	for _, pod := range pods {
		rec := js.pod(pod)
		js.mu.Lock()
		already := rec.Checkpoint == telemetryv1.CheckpointStatus_STATE_DONE.String()
		js.mu.Unlock()
		if already {
			sendStatus(pod, telemetryv1.CheckpointStatus_STATE_DONE, rec.Message)
			continue
		}
		if _, ok := pod.Annotations[checkpoint.Annotation]; !ok {
			js.mu.Lock()
			rec.Checkpoint, rec.Message = telemetryv1.CheckpointStatus_STATE_NO_HOOK.String(), "no checkpoint hook"
			js.saveLocked()
			js.mu.Unlock()
			f.metrics.checkpoints.WithLabelValues(origin, string(checkpointNoHook)).Inc()
			f.recorder.Eventf(pod, corev1.EventTypeWarning, "NoCheckpointHook", "%s; the pod declares no %s hook, so its work since its last checkpoint will be lost", req.Reason, checkpoint.Annotation)
			sendStatus(pod, telemetryv1.CheckpointStatus_STATE_NO_HOOK, "no checkpoint hook")
			continue
		}
		js.mu.Lock()
		rec.Checkpoint = telemetryv1.CheckpointStatus_STATE_REQUESTED.String()
		js.saveLocked()
		js.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.metrics.step(stepCheckpointRequest, since)
			f.recorder.Eventf(pod, corev1.EventTypeNormal, "CheckpointRequested", "%s: asked the pod to checkpoint by %s", req.Reason, req.Deadline.UTC().Format(time.RFC3339))
			sendStatus(pod, telemetryv1.CheckpointStatus_STATE_REQUESTED, "")
			res := f.checkpoints.Checkpoint(ctx, pod, req)
			if ctx.Err() != nil {
				return // the agent is stopping; the state says to ask again
			}
			f.metrics.checkpointSeconds.Observe(res.Finished.Sub(res.Requested).Seconds())
			js.mu.Lock()
			rec.Checkpoint, rec.Message = res.State.String(), res.Message
			js.saveLocked()
			js.mu.Unlock()
			if res.Done() {
				f.metrics.checkpoints.WithLabelValues(origin, string(checkpointDone)).Inc()
				f.metrics.step(stepCheckpointDone, since)
				f.recorder.Eventf(pod, corev1.EventTypeNormal, "CheckpointWritten", "%s", res.Message)
			} else {
				f.metrics.checkpoints.WithLabelValues(origin, string(checkpointFailed)).Inc()
				f.recorder.Eventf(pod, corev1.EventTypeWarning, "CheckpointFailed", "%s", res.Message)
			}
			sendStatus(pod, res.State, res.Message)
		}()
	}
	wg.Wait()
}

// evictAll evicts the node's movable pods, checkpointed ones first, each with
// its grace period cut to the time left before the deadline.
func (f *Flow) evictAll(ctx context.Context, js *jobState, detected time.Time) {
	pods, err := f.podsOnNodeNow(ctx)
	if err != nil {
		f.log.Error(err, "cannot list the node's pods to evict them")
		return
	}
	done := func(p *corev1.Pod) bool {
		js.mu.Lock()
		defer js.mu.Unlock()
		r := js.j.Pods[p.Namespace+"/"+p.Name]
		return r != nil && r.UID == string(p.UID) && r.Checkpoint == telemetryv1.CheckpointStatus_STATE_DONE.String()
	}
	// Checkpointed pods lose nothing by going now, and their gangs can be
	// placed again sooner; the others get whatever time remains.
	sort.SliceStable(pods, func(a, b int) bool { return done(pods[a]) && !done(pods[b]) })
	deadline := js.j.Deadline
	var nEvicted, nCheckpointed int
	// Every pod is asked once before any is asked again
	// (reclaim.EvictInPasses).
	if !reclaim.EvictInPasses(ctx, pods, func(pod *corev1.Pod) bool {
		rec := js.pod(pod)
		js.mu.Lock()
		skip := rec.Evicted
		js.mu.Unlock()
		if skip {
			return false
		}
		grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
		if pod.Spec.TerminationGracePeriodSeconds != nil {
			grace = *pod.Spec.TerminationGracePeriodSeconds
		}
		if left := int64(time.Until(deadline) / time.Second); left < grace {
			grace = max(left, 0)
		}
		result, err := f.evict(ctx, pod, grace)
		if ctx.Err() != nil {
			return false
		}
		if result == blocked || result == unavailable {
			if time.Now().Add(time.Second).Before(deadline) {
				return true
			}
			if result == blocked {
				err = fmt.Errorf("a PodDisruptionBudget still refuses the eviction at the deadline: %v", err)
			} else {
				err = fmt.Errorf("the API server still cannot decide the eviction at the deadline: %v", err)
			}
		}
		f.metrics.evictions.WithLabelValues(string(result)).Inc()
		checkpointed := done(pod)
		switch result {
		case evicted, gone:
			nEvicted++
			if checkpointed {
				nCheckpointed++
			}
			js.mu.Lock()
			rec.Evicted = true
			js.saveLocked()
			js.mu.Unlock()
			if result == evicted {
				what := "its checkpoint is written"
				if !checkpointed {
					what = "without a checkpoint"
				}
				f.recorder.Eventf(pod, corev1.EventTypeWarning, "ReclaimEvicted", "evicted because node %s is being reclaimed (%s); %s; grace period %ds", f.node, reclaim.TaintValue(kindOf(js.j)), what, grace)
			}
		default:
			f.log.Error(err, "eviction failed", "pod", pod.Namespace+"/"+pod.Name)
			f.recorder.Eventf(pod, corev1.EventTypeWarning, "ReclaimEvictionFailed", "could not evict the pod before node %s is reclaimed: %v", f.node, err)
		}
		return false
	}) {
		return // the agent is stopping; the state says what is left to evict
	}
	f.metrics.step(stepEvicted, detected)
	slack := time.Until(deadline)
	f.metrics.slack.Observe(slack.Seconds())
	f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimDrained", "evicted %d of %d pods (%d with a checkpoint written), %v before the deadline", nEvicted, len(pods), nCheckpointed, slack.Round(time.Millisecond))
}

func kindOf(j *Job) telemetryv1.ReclaimKind {
	if j.Notice != nil {
		return j.Notice.Kind
	}
	return telemetryv1.ReclaimKind_RECLAIM_KIND_UNSPECIFIED
}

// acknowledge tells the cloud the node is ready once every movable pod has
// either written its checkpoint or left the node: then nothing is lost by
// the VM going now rather than at the deadline.
func (f *Flow) acknowledge(ctx context.Context, js *jobState) {
	if f.ack == nil || js.j.Acknowledged {
		return
	}
	ready := func() bool {
		pods, err := f.podsOnNode()
		if err != nil {
			return false
		}
		for _, p := range pods {
			js.mu.Lock()
			r := js.j.Pods[p.Namespace+"/"+p.Name]
			ok := r != nil && r.UID == string(p.UID) && r.Checkpoint == telemetryv1.CheckpointStatus_STATE_DONE.String()
			js.mu.Unlock()
			if !ok {
				return false
			}
		}
		return true
	}
	for !ready() {
		if !time.Now().Add(time.Second).Before(js.j.Deadline) {
			f.log.Info("not acknowledging the notice early: some pods have neither a checkpoint nor left the node", "notice", js.j.Notice.ID)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := f.ack.Acknowledge(ctx, js.j.Notice.ID); err != nil {
		if errors.Is(err, notice.ErrNotOurs) {
			f.log.Info("Not acknowledging the notice; the cloud goes ahead at its deadline", "reason", err.Error())
			f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimNotAcknowledged", "%v", err)
			return
		}
		f.log.Error(err, "cannot acknowledge the notice; the cloud will wait out its deadline")
		f.recorder.Eventf(f.nodeRef(), corev1.EventTypeWarning, "ReclaimAcknowledgeFailed", "could not tell the cloud the node is ready, so it waits out the deadline: %v", err)
		return
	}
	f.metrics.step(stepAcknowledged, js.j.Notice.Detected)
	f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimAcknowledged", "told the cloud the node is ready: every pod's checkpoint is written or the pod has left (%v before the deadline)", time.Until(js.j.Deadline).Round(time.Millisecond))
	js.mu.Lock()
	js.j.Acknowledged = true
	js.saveLocked()
	js.mu.Unlock()
}

// waitToAct waits until the policy's time to act on the job's notice (at
// once for a reclaim, shortly before scheduled maintenance), following the
// cloud's moves of the deadline: later, the wait goes on; earlier, it ends
// sooner. It returns proceed false when ctx ended or when the cloud called
// the notice off during the wait (withdrawn true; the job is done).
func (f *Flow) waitToAct(ctx context.Context, js *jobState, log logr.Logger) (proceed, withdrawn bool) {
	n := js.j.Notice
	// Maintenance announced weeks ahead may be called off or moved any
	// day in between; the taint must not stay until the day it was due.
	var check <-chan time.Time
	if f.notices != nil {
		tick := time.NewTicker(f.reconcile)
		defer tick.Stop()
		check = tick.C
	}
	for waited := false; ; waited = true {
		// Taken before the look, so that a move meanwhile is not missed.
		moved := f.movedSignal()
		cur, found, known := f.pendingNotice(n.ID)
		if found {
			f.follow(js, cur, log)
		}
		at := f.policy.Decide(n.Kind, n.Provider, n.Action, n.Deadline).At
		if waited && known && !found {
			log.Info("the cloud called the maintenance off before it was time to act")
			f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimWithdrawn", "%s notice %s was called off; the pods stay", providerName(n.Provider), n.ID)
			js.mu.Lock()
			js.j.Done, js.j.Withdrawn = true, true
			js.saveLocked()
			js.mu.Unlock()
			return false, true
		}
		if !time.Now().Before(at) {
			return true, false
		}
		if !waited {
			log.Info("waiting to act until shortly before the maintenance", "at", at)
		}
		t := time.NewTimer(time.Until(at))
		select {
		case <-ctx.Done():
			t.Stop()
			return false, false
		case <-check:
		case <-moved:
		case <-t.C:
		}
		t.Stop()
	}
}

// follow takes the deadline of the notice as the cloud announces it now
// (notice.NextDeadline) into the job, and records a move.
func (f *Flow) follow(js *jobState, cur notice.Notice, log logr.Logger) {
	js.mu.Lock()
	n := js.j.Notice
	was := n.Deadline
	d := notice.NextDeadline(was, cur)
	if d.Equal(was) {
		js.mu.Unlock()
		return
	}
	n.Deadline = d
	js.j.Deadline = reclaim.Deadline(n.Kind, n.Detected, d)
	js.saveLocked()
	js.mu.Unlock()
	log.Info("the cloud moved the notice's deadline", "deadline", d, "was", was)
	f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimRescheduled", "%s notice %s moved from %s to %s",
		providerName(n.Provider), n.ID, was.UTC().Format(time.RFC3339), d.UTC().Format(time.RFC3339))
}

// pendingNotice returns the notice as the cloud announces it now; known is
// false when that cannot be known (no watcher, or its last check failed),
// and found is false when it is not announced.
func (f *Flow) pendingNotice(id string) (n notice.Notice, found, known bool) {
	if f.notices == nil {
		return notice.Notice{}, false, false
	}
	pending, ok := f.notices()
	if !ok {
		return notice.Notice{}, false, false
	}
	for _, p := range pending {
		if p.ID == id {
			return p, true, true
		}
	}
	return notice.Notice{}, false, true
}

// withdrawn removes the reclaim taint when no notice that calls for one is
// pending and no work is running: the cloud took the notice back (an Azure
// event canceled, a rebalance recommendation gone) and the node stays.
func (f *Flow) withdrawn(ctx context.Context, pending []notice.Notice) {
	for _, n := range pending {
		if f.policy.Decide(n.Kind, n.Provider, n.Action, n.Deadline).Taint {
			return
		}
	}
	if f.Running() > 0 {
		return
	}
	removed, err := f.untaint(ctx)
	if err != nil {
		f.log.Error(err, "cannot remove the reclaim taint")
		return
	}
	if removed {
		f.recorder.Eventf(f.nodeRef(), corev1.EventTypeNormal, "ReclaimWithdrawn", "no reclaim notice is pending any more; removed the %s taint", reclaim.TaintKey)
	}
}

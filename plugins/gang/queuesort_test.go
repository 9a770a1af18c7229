package gang

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/gang"
)

// The first profile's QueueSort orders the pods of every profile, so it
// records a gang's place in the queue even when another profile's PennyGang
// schedules the gang and holds its state. That time must go once the gang's
// members are placed (they bind together), and with its last member, deleted
// or finished (Succeeded or Failed, as a Job leaves them): a pod created
// later under the gang's name (the Job applied or run again, or a tenant's
// new pod that names a gang whose member still runs) sorted by the old time,
// ahead of every gang of its priority queued since.
func TestQueueOrderOfAGangEndsWhenItsMembersRunOrGo(t *testing.T) {
	for _, c := range []struct {
		name string
		end  func(ctx context.Context, client *fake.Clientset, first *corev1.Pod) error
	}{
		{"deleted", func(ctx context.Context, client *fake.Clientset, first *corev1.Pod) error {
			return client.CoreV1().Pods("team").Delete(ctx, first.Name, metav1.DeleteOptions{})
		}},
		{"running", bindAs(corev1.PodRunning)},
		{"succeeded", bindAs(corev1.PodSucceeded)},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			client := fake.NewClientset()
			factory := informers.NewSharedInformerFactory(client, 0)
			sorter := newSorter(ctx, t, client, factory) // the first profile's
			_ = newSorter(ctx, t, client, factory)       // the profile that schedules the gang
			factory.Start(ctx.Done())
			factory.WaitForCacheSync(ctx.Done())

			queued := func(p *corev1.Pod, at time.Time) fwk.QueuedEntityInfo {
				return &framework.QueuedPodInfo{PodInfo: mustPodInfo(t, p), QueueingParams: framework.QueueingParams{Timestamp: at}}
			}
			start := time.Now()
			first := member("x", 1, 0, 1)
			if _, err := client.CoreV1().Pods("team").Create(ctx, first, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			// The fake clientset drops events sent before its watch starts.
			if err := pollFor(5*time.Second, func() bool {
				_, exists, _ := sorter.pods.GetByKey(podKey(first))
				return exists
			}); err != nil {
				t.Fatal("the informer never saw the gang's member")
			}
			sorter.Less(queued(first, start), queued(plainPod("lone", 1), start.Add(time.Second)))
			if err := c.end(ctx, client, first); err != nil {
				t.Fatal(err)
			}

			younger := member("y", 1, 0, 1)
			again := member("x", 1, 1, 1)
			err := pollFor(2*time.Second, func() bool {
				return !sorter.Less(queued(again, start.Add(2*time.Minute)), queued(younger, start.Add(time.Minute)))
			})
			if err != nil {
				t.Errorf("a pod of gang x, created after its only member was %s, sorts before gang y, queued a minute earlier", c.name)
			}
		})
	}
}

// bindAs updates a pod to bound, in phase.
func bindAs(phase corev1.PodPhase) func(context.Context, *fake.Clientset, *corev1.Pod) error {
	return func(ctx context.Context, client *fake.Clientset, first *corev1.Pod) error {
		bound := first.DeepCopy()
		bound.Spec.NodeName = "n-0"
		bound.Status.Phase = phase
		bound.ResourceVersion = "2"
		_, err := client.CoreV1().Pods("team").Update(ctx, bound, metav1.UpdateOptions{})
		return err
	}
}

// newSorter is a PennyGang whose framework reads the pods through factory,
// as the scheduler's QueueSort plugin does.
func newSorter(ctx context.Context, t *testing.T, client *fake.Clientset, factory informers.SharedInformerFactory) *Gang {
	t.Helper()
	h, err := frameworkruntime.NewFramework(ctx, frameworkruntime.Registry{}, nil,
		frameworkruntime.WithClientSet(client), frameworkruntime.WithInformerFactory(factory))
	if err != nil {
		t.Fatal(err)
	}
	pl, err := NewWith(ctx, nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return pl
}

// startedSorter is one profile's PennyGang on a fake clientset whose
// informers have started and synced.
func startedSorter(ctx context.Context, t *testing.T) (*Gang, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(client, 0)
	pl := newSorter(ctx, t, client, factory)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	return pl, client
}

// A gang's place in the queue is held while its members wait. A tenant
// could keep one member waiting for ever (a gang of one that fits no node)
// and name that gang on every new pod: each new pod then sorted by the
// placeholder's old time, ahead of every pod of its priority queued since.
// A pod that joins a gang queues no earlier than its own creation, and the
// gang with it.
func TestPodJoiningAWaitingGangQueuesByItsOwnTime(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sorter, client := startedSorter(ctx, t)

	start := time.Now().Add(-3 * time.Hour).Truncate(time.Second)
	pod := func(name, gangName string, created time.Time) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team", UID: types.UID("uid-" + name),
			CreationTimestamp: metav1.NewTime(created), Labels: map[string]string{}}}
		if gangName != "" {
			p.Labels[gang.LabelName] = gangName
			p.Labels[gang.KeySize] = "1"
		}
		return p
	}
	queued := func(p *corev1.Pod, at time.Time) fwk.QueuedEntityInfo {
		pi, err := framework.NewPodInfo(p)
		if err != nil {
			t.Fatal(err)
		}
		return &framework.QueuedPodInfo{PodInfo: pi, QueueingParams: framework.QueueingParams{Timestamp: at}}
	}

	// The placeholder: a gang of one that never binds, queued three hours ago.
	placeholder := pod("hold", "x", start)
	if _, err := client.CoreV1().Pods("team").Create(ctx, placeholder, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	other := pod("other", "", start.Add(time.Hour))
	sorter.Less(queued(placeholder, start), queued(other, start.Add(time.Hour)))

	// Two hours later the tenant's real pod names the placeholder's gang.
	jumper := pod("real", "x", start.Add(2*time.Hour))
	if _, err := client.CoreV1().Pods("team").Create(ctx, jumper, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Whether or not the informer has shown the new member yet: the queue
	// may place it before the plugin hears of it.
	if sorter.Less(queued(jumper, start.Add(2*time.Hour)), queued(other, start.Add(time.Hour))) {
		t.Fatal("a pod created two hours after the lone pod sorts before it, by naming a gang whose placeholder member has waited since before both")
	}
	if !sorter.Less(queued(other, start.Add(time.Hour)), queued(jumper, start.Add(2*time.Hour))) {
		t.Error("the lone pod, queued an hour before the new gang member, does not sort before it")
	}
	// The gang's members stay together, behind the newest.
	if sorter.Less(queued(placeholder, start), queued(other, start.Add(time.Hour))) {
		t.Error("the gang's older member still sorts before the lone pod: the gang's members were split around it")
	}
}

// A restarted scheduler queues every pending pod anew, at the moment its
// informer lists it, in the order the list returns them (by namespace and
// name). A gang's place must not come from that moment: a gang created an
// hour after another, but listed first, went ahead of it and took the room
// the older gang had waited for. The new scheduler's queue may compare the
// members before this plugin hears of them, so the pods are not in the
// informer here.
func TestGangKeepsItsPlaceAcrossARestart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	restarted, _ := startedSorter(ctx, t)

	restart := time.Now().Truncate(time.Second)
	created := func(p *corev1.Pod, at time.Time) *corev1.Pod {
		p.CreationTimestamp = metav1.NewTime(at)
		return p
	}
	old := created(member("old", 1, 0, 8), restart.Add(-2*time.Hour))
	young := created(member("young", 1, 0, 8), restart.Add(-time.Hour))
	queued := func(p *corev1.Pod, at time.Time) fwk.QueuedEntityInfo {
		return &framework.QueuedPodInfo{PodInfo: mustPodInfo(t, p), QueueingParams: framework.QueueingParams{Timestamp: at}}
	}
	// The younger gang is listed, so queued, a moment before the older one.
	if restarted.Less(queued(young, restart), queued(old, restart.Add(time.Millisecond))) {
		t.Error("after a restart, a gang created an hour after another sorts before it because the new scheduler listed it first")
	}
	if !restarted.Less(queued(old, restart.Add(time.Millisecond)), queued(young, restart)) {
		t.Error("after a restart, the gang created first does not sort before the younger one")
	}
}

// kube-scheduler queues a pod again at the back each time it fails (its
// queue time is refreshed), while a gang keeps the place its newest member's
// creation gave it. A lone pod that sorted by its queue time therefore lost
// to any gang created after it once it had failed, and a tenant took that
// place for any pod by labelling it a gang of one: the label alone put it
// ahead of other tenants' pods that had waited longer. A lone pod queues by
// its creation, the same measure as a gang, so no label sorts a pod earlier.
func TestGangOfOneDoesNotJumpAnOlderLonePod(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sorter, _ := startedSorter(ctx, t)

	start := time.Now().Add(-3 * time.Hour).Truncate(time.Second)
	queued := func(p *corev1.Pod, at time.Time) fwk.QueuedEntityInfo {
		return &framework.QueuedPodInfo{PodInfo: mustPodInfo(t, p), QueueingParams: framework.QueueingParams{Timestamp: at}}
	}
	// Another tenant's lone pod, created first; it failed and was queued
	// again two hours later.
	older := plainPod("older", 1)
	older.Namespace = "other-team"
	older.CreationTimestamp = metav1.NewTime(start)
	// The tenant's pod, created an hour after it and labelled a gang of
	// one; it too has failed since.
	labelled := member("mine", 1, 0, 1)
	labelled.CreationTimestamp = metav1.NewTime(start.Add(time.Hour))

	if sorter.Less(queued(labelled, start.Add(150*time.Minute)), queued(older, start.Add(2*time.Hour))) {
		t.Error("a pod labelled a gang of one sorts before a lone pod created an hour before it")
	}
	if !sorter.Less(queued(older, start.Add(2*time.Hour)), queued(labelled, start.Add(150*time.Minute))) {
		t.Error("the lone pod created first does not sort before the younger pod labelled a gang of one")
	}
	// Unlabelled, the same pod sorts the same: the label changed nothing.
	unlabelled := plainPod("mine-0", 1)
	unlabelled.CreationTimestamp = labelled.CreationTimestamp
	if sorter.Less(queued(unlabelled, start.Add(150*time.Minute)), queued(older, start.Add(2*time.Hour))) {
		t.Error("the tenant's pod without the gang label sorts before the older lone pod")
	}
}

// Creation times have whole seconds, so gangs created together tie often.
// Broken by namespace and name, every such tie went to the tenant whose
// gang was named "0". The tie goes by the UID the API server gave the pod
// that set the gang's place, which no tenant chooses, and a gang's members
// still sort together: here a lone pod whose UID falls between the two
// gangs' sorts after gang zzz and before both members of gang 0.
func TestGangsCreatedTogetherTieByUIDNotName(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sorter, _ := startedSorter(ctx, t)

	created := time.Now().Add(-time.Hour).Truncate(time.Second)
	pod := func(p *corev1.Pod, uid string) *corev1.Pod {
		p.UID = types.UID(uid)
		p.CreationTimestamp = metav1.NewTime(created)
		return p
	}
	zero0 := pod(member("0", 2, 0, 8), "f0000000-0000-4000-8000-000000000000")
	zero1 := pod(member("0", 2, 1, 8), "10000000-0000-4000-8000-000000000000")
	zzz := pod(member("zzz", 1, 0, 8), "a0000000-0000-4000-8000-000000000000")
	lone := pod(plainPod("lone", 8), "c0000000-0000-4000-8000-000000000000")
	queued := func(p *corev1.Pod) fwk.QueuedEntityInfo {
		return &framework.QueuedPodInfo{PodInfo: mustPodInfo(t, p), QueueingParams: framework.QueueingParams{Timestamp: created}}
	}
	// Gang 0's place is set by the member the queue sees first.
	sorter.Less(queued(zero0), queued(zzz))

	for _, c := range []struct {
		first, then *corev1.Pod
	}{{zzz, zero0}, {zzz, zero1}, {zzz, lone}, {lone, zero0}, {lone, zero1}} {
		if !sorter.Less(queued(c.first), queued(c.then)) || sorter.Less(queued(c.then), queued(c.first)) {
			t.Errorf("%s/%s (UID %s) does not sort before %s/%s (UID %s), created in the same second", c.first.Namespace, c.first.Name, c.first.UID, c.then.Namespace, c.then.Name, c.then.UID)
		}
	}
}

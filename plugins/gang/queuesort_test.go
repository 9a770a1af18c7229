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

// A gang's place in the queue is held while its members wait. A tenant
// could keep one member waiting for ever (a gang of one that fits no node)
// and name that gang on every new pod: each new pod then sorted by the
// placeholder's old time, ahead of every pod of its priority queued since.
// A pod that joins a gang queues no earlier than its own creation, and the
// gang with it.
func TestPodJoiningAWaitingGangQueuesByItsOwnTime(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(client, 0)
	sorter := newSorter(ctx, t, client, factory)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

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
	client := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(client, 0)
	restarted := newSorter(ctx, t, client, factory)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

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

package gang

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
)

// The first profile's QueueSort orders the pods of every profile, so it
// records a gang's first-queued time even when another profile's PennyGang
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
			instance := func() *Gang {
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
			sorter := instance() // the first profile's
			_ = instance()       // the profile that schedules the gang
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

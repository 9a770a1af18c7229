package spotrisk

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	clienttesting "k8s.io/client-go/testing"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/features"
	config "k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/names"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/schedulertest"
	"github.com/pennysched/penny/pkg/telemetry"
)

// startDeployed runs a real kube-scheduler with the deployed profile's
// SpotRisk, with args and deps, on nodes, retrying a failed pod or pod group
// only after backoff, so that only a retry SpotRisk asks for brings it back
// within a test.
func startDeployed(t *testing.T, args *Args, deps Deps, backoff time.Duration, nodes ...*corev1.Node) *schedulertest.Cluster {
	t.Helper()
	prof := schedulertest.DeployedProfile(t, Name, args)
	// The deployed queue sort is PennyGang's, which this package cannot
	// build: kube-scheduler's own takes its place.
	prof.Plugins.QueueSort = config.PluginSet{Enabled: []config.Plugin{{Name: names.PrioritySort}}}
	return schedulertest.Start(t, schedulertest.Options{
		Profile: prof,
		Registry: frameworkruntime.Registry{Name: func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
			return New(ctx, obj, h, deps)
		}},
		Nodes:          nodes,
		BackoffSeconds: int64(backoff / time.Second),
	})
}

// A pod waiting for Spot for which DefaultPreemption nominates a Spot node
// still falls back when its wait ends. DefaultPreemption ends the PostFilter
// chain when it nominates a node, and SpotRisk's PostFilter ran after it:
// the pod got no timer, and waited for its backoff (here ten minutes) while
// its victim took its time to go (here it never does). SpotRisk's PostFilter
// now runs first and returns Unschedulable, so preemption still runs: the
// victim is asked to go.
func TestPodNominatedByPreemptionStillFallsBackWhenItsWaitEnds(t *testing.T) {
	args := &Args{}
	args.FallbackAfter = &metav1.Duration{Duration: 2 * time.Second}
	c := startDeployed(t, args, Deps{Prices: catalog(t)}, 10*time.Minute,
		node("spot", pricing.Spot, "us-east-1a"), node("od", pricing.OnDemand, "us-east-1a"))
	var mu sync.Mutex
	var deleted []string
	// The victim is asked to go and stays, as one with a long grace period
	// does, without an event that could retry the preemptor.
	c.Client.PrependReactor("delete", "pods", func(a clienttesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		deleted = append(deleted, a.(clienttesting.DeleteAction).GetName())
		return true, nil, nil
	})
	victim := pod("victim", nil)
	victim.Spec.NodeName = "spot"
	victim.Spec.Priority = ptr.To[int32](0)
	// Requests as the API server defaults them from limits; the fake one
	// does not.
	res := &victim.Spec.Containers[0].Resources
	res.Limits[gpu.ResourceGPU] = resource.MustParse("8")
	res.Requests[gpu.ResourceGPU] = res.Limits[gpu.ResourceGPU]
	c.Create(victim)
	trainer := pod("trainer", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
	trainer.Spec.SchedulerName = schedulertest.SchedulerName
	trainer.Spec.Priority = ptr.To[int32](100)
	trainer.Spec.Containers[0].Resources.Requests[gpu.ResourceGPU] = resource.MustParse("1")
	// The wait runs from creation, which the fake API server does not stamp.
	trainer.CreationTimestamp = metav1.Now()
	c.Create(trainer)

	if got := c.WaitBound(20*time.Second, "trainer"); got["trainer"] != "od" {
		t.Errorf("trainer bound to %q, want od once its wait ended", got["trainer"])
	}
	c.WaitEvent("trainer", "No Spot capacity within 2s (checkpointing training): placed on on-demand node od")
	mu.Lock()
	defer mu.Unlock()
	if len(deleted) == 0 || deleted[0] != "victim" {
		t.Errorf("pods asked to go: %v; want the victim, DefaultPreemption running after SpotRisk", deleted)
	}
}

// A native PodGroup that reclaim risk keeps off a Spot pool is retried when
// the pool's estimate falls under its members' limit, as a lone pod is.
// kube-scheduler's pod-group cycle runs no PostFilter for the group's pods,
// and DefaultPreemption, finding no victims, ended the PodGroupPostFilter
// chain before SpotRisk's: the group waited for its backoff (here ten
// minutes). Two alike members are held through one.
func TestNativePodGroupKeptOffSpotByRiskIsRetriedWhenThePoolsRiskFalls(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.GenericWorkload, true)
	// The pods' creation is stamped by the wall clock; only risk moves
	// with this one.
	clk := clocktesting.NewFakeClock(time.Now())
	model := pricing.NewRiskModel(pricing.RiskConfig{HalfLife: 10 * time.Minute, Clock: clk})
	spot := node("spot", pricing.Spot, "us-east-1a")
	pool := pricing.NodePool(spot)
	// 5-10% a month passes a 10% limit; a reclaim takes the pool far over.
	model.SetPrior(pool, pricing.Bucket5To10)
	model.ObserveReclaim(pool, "spot-gone", clk.Now())
	c := startDeployed(t, &Args{}, Deps{Prices: catalog(t), Risk: model, Clock: clk}, 10*time.Minute, spot)
	members := groupMembers(t, c, "tuners", 2, map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "10%"})

	pl := c.Plugin(Name).(*SpotRisk)
	var held []string
	err := wait.PollUntilContextTimeout(c.Ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		pl.riskWaits.mu.Lock()
		defer pl.riskWaits.mu.Unlock()
		held = held[:0]
		if p := pl.riskWaits.pools[pool]; p != nil {
			for _, w := range p.pods {
				held = append(held, w.ref.Name)
			}
		}
		return len(held) > 0, nil
	})
	if err != nil {
		t.Fatalf("the group failed for the pool's risk and none of %v is held for the pool", members)
	}
	if len(held) != 1 {
		t.Errorf("held %v for the pool, want one of the two alike members", held)
	}
	c.NeverBound(200*time.Millisecond, members...)
	after, ok := model.FallsTo(pool, pricing.RateFromMonthly(0.10))
	if !ok || after <= 0 {
		t.Fatalf("the pool's estimate falls to 10%% in %v, %v", after, ok)
	}
	clk.Step(after + time.Second)
	for m, n := range c.WaitBound(20*time.Second, members...) {
		if n != "spot" {
			t.Errorf("%s bound to %q, want spot", m, n)
		}
	}
}

// In a running scheduler, a pod whose only Spot node has a pending reclaim
// notice binds there as soon as the node's agent no longer reports it, not
// after its backoff (here ten minutes) or the five-minute flush: whether the
// notice was only in telemetry, or its taint was lifted first, while the
// agent still reported it.
func TestPodKeptOffByAReclaimNoticeBindsWhenTheNoticeIsWithdrawn(t *testing.T) {
	for _, tainted := range []bool{false, true} {
		t.Run(fmt.Sprintf("tainted=%v", tainted), func(t *testing.T) {
			store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Hour})
			store.Update(reclaimReport("spot", 1, true), time.Now())
			spot := node("spot", pricing.Spot, "us-east-1a")
			if tainted {
				spot.Spec.Taints = []corev1.Taint{{Key: pricing.TaintReclaimNotice, Effect: corev1.TaintEffectNoSchedule}}
			}
			c := startDeployed(t, &Args{}, Deps{Prices: catalog(t), Telemetry: store}, 10*time.Minute, spot)
			p := pod("spot-only", map[string]string{AnnotationSpot: "only"})
			p.Spec.SchedulerName = schedulertest.SchedulerName
			c.Create(p)
			c.WaitEvent("spot-only", "0/1 nodes are available")
			if tainted {
				lifted := spot.DeepCopy()
				lifted.Spec.Taints = nil
				if _, err := c.Client.CoreV1().Nodes().Update(c.Ctx, lifted, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
				// The taint's event finds the agent still reporting the
				// notice, and the pod stays off the node.
				c.NeverBound(500*time.Millisecond, "spot-only")
			}
			store.Update(reclaimReport("spot", 2, false), time.Now())
			c.WaitBound(10*time.Second, "spot-only")
		})
	}
}

package gang

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	fwk "k8s.io/kube-scheduler/framework"
	config "k8s.io/kubernetes/pkg/scheduler/apis/config"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/schedulertest"
)

// cluster is a real kube-scheduler running the penny-scheduler profile from
// deploy/scheduler/config.yaml (see schedulertest), with the PennyGang it
// built.
type cluster struct {
	*schedulertest.Cluster
	t      *testing.T
	plugin *Gang
}

func startCluster(t *testing.T, args *Args, nodes ...*corev1.Node) *cluster {
	t.Helper()
	return startClusterWith(t, args, nil, nodes...)
}

// startClusterWith is startCluster with the plugin built with opts (what
// the registry hands in, such as SpotRisk's node rule).
func startClusterWith(t *testing.T, args *Args, opts []Option, nodes ...*corev1.Node) *cluster {
	t.Helper()
	var obj runtime.Object
	if args != nil {
		obj = args
	}
	prof := schedulertest.DeployedProfile(t, Name, obj)
	prof.Plugins.PreEnqueue.Enabled = append(prof.Plugins.PreEnqueue.Enabled, config.Plugin{Name: holderName})
	s := schedulertest.Start(t, schedulertest.Options{
		Profile: prof,
		Registry: frameworkruntime.Registry{
			Name: func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
				return NewWith(ctx, obj, h, opts...)
			},
			holderName: func(context.Context, runtime.Object, fwk.Handle) (fwk.Plugin, error) { return holder{}, nil },
		},
		Namespace: "team",
		Nodes:     nodes,
	})
	return &cluster{Cluster: s, t: t, plugin: s.Plugin(Name).(*Gang)}
}

// holdLabel keeps a pod out of the queue (holder's PreEnqueue) while set,
// without spec.schedulingGates: it stands for a member counted by its gang
// that the scheduler has not reached yet, so tests can have members wait in
// Permit for it. A gated member does not count, so it cannot serve.
const holdLabel = "test.penny.dev/hold"

const holderName = "TestHolder"

type holder struct{}

func (holder) Name() string { return holderName }

func (holder) PreEnqueue(_ context.Context, p *corev1.Pod) *fwk.Status {
	if _, ok := p.Labels[holdLabel]; ok {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "held by the test")
	}
	return nil
}

func (holder) EventsToRegister(context.Context) ([]fwk.ClusterEventWithHint, error) {
	return []fwk.ClusterEventWithHint{{Event: fwk.ClusterEvent{Resource: fwk.TargetPod, ActionType: fwk.UpdatePodLabel}}}, nil
}

func held() podOpt { return withLabel(holdLabel, "") }

func (c *cluster) unhold(name string) {
	c.t.Helper()
	c.Update(name, func(p *corev1.Pod) { delete(p.Labels, holdLabel) })
}

// testArgs are short timeouts so tests finish in seconds.
func testArgs() *Args {
	return &Args{
		PermitTimeout: &metav1.Duration{Duration: 3 * time.Second},
		Backoff:       &metav1.Duration{Duration: 200 * time.Millisecond},
		MaxBackoff:    &metav1.Duration{Duration: 500 * time.Millisecond},
	}
}

type nodeOpt func(*corev1.Node)

func inZone(z string) nodeOpt {
	return func(n *corev1.Node) { n.Labels[corev1.LabelTopologyZone] = z }
}

func capType(c capacity.Type) nodeOpt {
	return func(n *corev1.Node) { n.Labels[capacity.LabelKarpenter] = string(c) }
}

// gpuNode is an 8-GPU node with 64 CPUs.
func gpuNode(name string, opts ...nodeOpt) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelHostname:     name,
			corev1.LabelTopologyZone: "zone-a",
			capacity.LabelKarpenter:  string(capacity.OnDemand),
		}},
		Status: corev1.NodeStatus{
			Allocatable: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("64"),
				corev1.ResourceMemory: resource.MustParse("512Gi"),
				corev1.ResourcePods:   resource.MustParse("110"),
				gpu.ResourceGPU:       resource.MustParse("8"),
			},
		},
	}
	n.Status.Capacity = n.Status.Allocatable
	for _, o := range opts {
		o(n)
	}
	return n
}

type podOpt func(*corev1.Pod)

func gated() podOpt {
	return func(p *corev1.Pod) {
		p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: "test.penny.dev/hold"}}
	}
}

func withLabel(k, v string) podOpt {
	return func(p *corev1.Pod) { p.Labels[k] = v }
}

// member is a pod of gang name with the given size asking for gpus GPUs.
func member(gangName string, size, i int, gpus int64, opts ...podOpt) *corev1.Pod {
	p := plainPod(fmt.Sprintf("%s-%d", gangName, i), gpus, opts...)
	p.Labels[gang.LabelName] = gangName
	p.Labels[gang.KeySize] = fmt.Sprint(size)
	return p
}

func plainPod(name string, gpus int64, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team", UID: types.UID("uid-" + name), Labels: map[string]string{}},
		Spec: corev1.PodSpec{
			SchedulerName: schedulertest.SchedulerName,
			Containers: []corev1.Container{{
				Name: "c",
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")},
					Limits:   corev1.ResourceList{gpu.ResourceGPU: *resource.NewQuantity(gpus, resource.DecimalSI)},
				},
			}},
		},
	}
	p.Spec.Containers[0].Resources.Requests[gpu.ResourceGPU] = *resource.NewQuantity(gpus, resource.DecimalSI)
	for _, o := range opts {
		o(p)
	}
	return p
}

func (c *cluster) ungate(name string) {
	c.t.Helper()
	c.Update(name, func(p *corev1.Pod) { p.Spec.SchedulingGates = nil })
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

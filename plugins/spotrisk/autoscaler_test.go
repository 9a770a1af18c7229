package spotrisk

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/api/expander"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/metricstest"
	"github.com/pennysched/penny/pkg/pricing"
)

func marshal(t *testing.T, obj interface{ Marshal() ([]byte, error) }) []byte {
	t.Helper()
	b, err := obj.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// caRequest is what Cluster Autoscaler sends: every option offers the same
// pods, each node group's template node by its ID. Pods without a
// scheduler name are penny-scheduler's (the profile newEnv builds).
func caRequest(t *testing.T, pods []*corev1.Pod, templates ...*corev1.Node) *expander.BestOptionsRequest {
	t.Helper()
	req := &expander.BestOptionsRequest{NodeBytesMap: map[string][]byte{}}
	for _, n := range templates {
		o := &expander.Option{NodeGroupId: n.Name, NodeCount: 1}
		for _, p := range pods {
			if p.Spec.SchedulerName == "" {
				p = p.DeepCopy()
				p.Spec.SchedulerName = "penny-scheduler"
			}
			o.PodBytes = append(o.PodBytes, marshal(t, p))
		}
		req.Options = append(req.Options, o)
		req.NodeBytesMap[n.Name] = marshal(t, n)
	}
	return req
}

func best(t *testing.T, s *ExpanderServer, req *expander.BestOptionsRequest) []string {
	t.Helper()
	resp, err := s.BestOptions(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, o := range resp.GetOptions() {
		ids = append(ids, o.GetNodeGroupId())
	}
	return ids
}

// Cluster Autoscaler's gRPC expander gets SpotRisk's answer: the rules
// first (a never-on-Spot pod's Spot group is not an option, a pod waiting
// for Spot does not get on-demand), then the expected price of the pods'
// useful work per slot.
func TestExpanderServerRanksClusterAutoscalerOptions(t *testing.T) {
	registerMetrics()
	counted := map[string]float64{}
	for _, r := range []string{"unavailable", "ranked", "none"} {
		counted[r] = metricstest.Counter(t, "penny_expander_requests_total", "result", r)
	}
	s := NewExpanderServer()
	od, spotA, spotC := node("od", pricing.OnDemand, "us-east-1a"), node("spot-a", pricing.Spot, "us-east-1a"), node("spot-c", pricing.Spot, "us-east-1c")
	inference := pod("serve", map[string]string{AnnotationWorkload: "inference"})
	if _, err := s.BestOptions(context.Background(), caRequest(t, []*corev1.Pod{inference}, od)); status.Code(err) != codes.Unavailable {
		t.Fatalf("before SpotRisk runs: %v, want Unavailable", err)
	}
	e := newEnv(t, nil, Deps{Prices: catalog(t)})
	s.Use(e.plugin)

	cases := []struct {
		name string
		ann  map[string]string
		want string
	}{
		{"inference never on Spot", map[string]string{AnnotationWorkload: "inference"}, "od"},
		{"batch: the cheapest Spot pool", map[string]string{AnnotationWorkload: "batch"}, "spot-c"},
		// Waiting for Spot: on-demand is not an option; the safer pool's
		// expected cost is lower once a reclaim's lost half-hour counts.
		{"checkpointing training waits for Spot", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "30m"}, "spot-"},
		{"training without checkpoints waits for on-demand", map[string]string{AnnotationWorkload: "training"}, "od"},
	}
	for _, c := range cases {
		got := best(t, s, caRequest(t, []*corev1.Pod{pod("p", c.ann)}, od, spotA, spotC))
		if len(got) != 1 || !strings.HasPrefix(got[0], c.want) {
			t.Errorf("%s: best %v, want %s", c.name, got, c.want)
		}
	}
	// Nothing Penny's rules allow: an empty answer. Penny would place none
	// of the pods on what any option adds.
	for _, c := range []struct {
		name   string
		pod    *corev1.Pod
		groups []*corev1.Node
	}{
		{"inference with only Spot groups", inference, []*corev1.Node{spotA, spotC}},
		{"checkpointing training in its wait, only on-demand", pod("p", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "30m"}), []*corev1.Node{od}},
		{"training without checkpoints in its wait, only Spot", pod("p", map[string]string{AnnotationWorkload: "training"}), []*corev1.Node{spotA, spotC}},
	} {
		if got := best(t, s, caRequest(t, []*corev1.Pod{c.pod}, c.groups...)); len(got) != 0 {
			t.Errorf("%s: %v, want no option", c.name, got)
		}
	}
	// An option whose template is missing is kept only when nothing else
	// can be judged.
	req := caRequest(t, []*corev1.Pod{inference}, od)
	req.Options = append(req.Options, &expander.Option{NodeGroupId: "unknown", PodBytes: req.Options[0].PodBytes})
	if got := best(t, s, req); len(got) != 1 || got[0] != "od" {
		t.Errorf("with an unknown group: %v, want od", got)
	}
	delete(req.NodeBytesMap, "od")
	if got := best(t, s, req); len(got) != 2 {
		t.Errorf("with no template at all: %v, want both options back", got)
	}
	// penny_expander_requests_total: 1 unavailable, 4 + 1 ranked, 3 + 1
	// with nothing Penny's rules allow.
	for r, want := range map[string]float64{"unavailable": 1, "ranked": 5, "none": 4} {
		if n := metricstest.Counter(t, "penny_expander_requests_total", "result", r); n != counted[r]+want {
			t.Errorf("penny_expander_requests_total{result=%q} = %v, want %v", r, n, counted[r]+want)
		}
	}
}

// Cluster Autoscaler before Kubernetes 1.35 sends nodes and pods as
// embedded messages (fields nodeMap and pod); on the wire they are the same
// bytes.
func TestExpanderServerReadsTheDeprecatedFields(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)})
	s := NewExpanderServer()
	s.Use(e.plugin)
	req := caRequest(t, []*corev1.Pod{pod("serve", map[string]string{AnnotationWorkload: "inference"})},
		node("od", pricing.OnDemand, "us-east-1a"), node("spot-a", pricing.Spot, "us-east-1a"))
	req.NodeMap, req.NodeBytesMap = req.NodeBytesMap, nil
	for _, o := range req.Options {
		o.Pod, o.PodBytes = o.PodBytes, nil
	}
	if got := best(t, s, req); len(got) != 1 || got[0] != "od" {
		t.Fatalf("best %v, want od", got)
	}
}

// The option's pods fill its new node: four 1-GPU pods make a 4-GPU node
// cheaper per pod than an 8-GPU one that would run half empty, eight the
// other way round (TestExpanderCapsSlotsByPeers, through the API).
func TestExpanderServerFillsNewNodesWithTheOptionsPods(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalogOf(t, quadOctoCatalog)})
	s := NewExpanderServer()
	s.Use(e.plugin)
	quad := sized(node("quad", pricing.OnDemand, "us-east-1a"), "quad", "48", "192Gi", "4")
	octo := sized(node("octo", pricing.OnDemand, "us-east-1a"), "octo", "192", "768Gi", "8")
	pods := func(n int) []*corev1.Pod {
		var out []*corev1.Pod
		for range n {
			p := pod("serve", map[string]string{AnnotationWorkload: "inference"}) // 1 GPU, 12 CPU
			p.Spec.Containers[0].Resources.Requests[corev1.ResourceMemory] = resource.MustParse("40Gi")
			out = append(out, p)
		}
		return out
	}
	if got := best(t, s, caRequest(t, pods(4), quad, octo)); len(got) != 1 || got[0] != "quad" {
		t.Errorf("four pods: %v, want quad", got)
	}
	if got := best(t, s, caRequest(t, pods(8), quad, octo)); len(got) != 1 || got[0] != "octo" {
		t.Errorf("eight pods: %v, want octo", got)
	}

	// Cluster Autoscaler lists only pending pods; for a service the running
	// replicas of its Spot policy count too, as the simulator counts them:
	// one pending replica among seven running fills an 8-GPU node.
	runningOf := func(scheduler string, n int, workload string) func() ([]*corev1.Pod, error) {
		return func() ([]*corev1.Pod, error) {
			var out []*corev1.Pod
			for i, p := range pods(n) {
				p.Annotations[AnnotationWorkload] = workload
				p.Spec.SchedulerName = scheduler
				p.Spec.NodeName = "elsewhere"
				p.Status.Phase = corev1.PodRunning
				p.Status.StartTime = &metav1.Time{Time: t0.Add(time.Duration(i) * time.Minute)}
				out = append(out, p)
			}
			return out, nil
		}
	}
	running := func(n int, workload string) func() ([]*corev1.Pod, error) {
		return runningOf("penny-scheduler", n, workload)
	}
	// Running jobs end and say little about what comes next: they do not
	// count for a pending job.
	job, dev := pods(1), pods(1)
	job[0].Annotations[AnnotationWorkload] = "batch"
	dev[0].Annotations[AnnotationWorkload] = "dev"
	for _, c := range []struct {
		name    string
		pending []*corev1.Pod
		running func() ([]*corev1.Pod, error)
		want    string
	}{
		{"a service alone", pods(1), nil, "quad"},
		{"a service, seven replicas running", pods(1), running(7, "inference"), "octo"},
		{"a service, seven batch pods running (another policy)", pods(1), running(7, "batch"), "quad"},
		{"a batch pod, seven batch pods running", job, running(7, "batch"), "quad"},
		{"a dev session, seven batch pods running (the same policy, but jobs)", dev, running(7, "batch"), "quad"},
		{"a dev session, seven dev sessions running", dev, running(7, "dev"), "octo"},
		// Penny does not place the default scheduler's replicas, nor
		// classify them (without annotations they read as services).
		{"a service, seven replicas of the default scheduler running", pods(1), runningOf("default-scheduler", 7, "inference"), "quad"},
	} {
		s.r.Load().running = c.running
		if got := best(t, s, caRequest(t, c.pending, quad, octo)); len(got) != 1 || got[0] != c.want {
			t.Errorf("%s: %v, want %s", c.name, got, c.want)
		}
	}
}

// Cluster Autoscaler's options hold every pending pod that fits a group,
// the default scheduler's too. Penny's rules are for the pods it places:
// read as Penny's, a default-scheduler service counted as never-on-Spot and
// left an answer without any Spot group, so that the pod waited for a node
// that never came.
func TestExpanderServerJudgesOnlyItsProfilesPods(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)})
	s := NewExpanderServer()
	s.Use(e.plugin)
	od, spotA, spotC := node("od", pricing.OnDemand, "us-east-1a"), node("spot-a", pricing.Spot, "us-east-1a"), node("spot-c", pricing.Spot, "us-east-1c")
	other := pod("web", map[string]string{AnnotationWorkload: "inference"})
	other.Spec.SchedulerName = "default-scheduler"
	if got := best(t, s, caRequest(t, []*corev1.Pod{other}, spotA, spotC)); len(got) != 2 {
		t.Errorf("a default-scheduler pod, only Spot groups: %v, want both back for Cluster Autoscaler's next expander", got)
	}
	// Beside one of Penny's, the other scheduler's pod neither decides nor
	// counts: the Penny pod's best group alone comes back.
	batch := pod("job", map[string]string{AnnotationWorkload: "batch"})
	req := caRequest(t, []*corev1.Pod{other}, spotA)
	req.Options = append(req.Options, caRequest(t, []*corev1.Pod{batch, other}, od, spotC).Options...)
	req.NodeBytesMap["od"], req.NodeBytesMap["spot-c"] = marshal(t, od), marshal(t, spotC)
	if got := best(t, s, req); len(got) != 1 || got[0] != "spot-c" {
		t.Errorf("a batch pod beside a default-scheduler one: %v, want spot-c", got)
	}
}

// A scheduler may run several profiles with SpotRisk (penny-batch beside
// penny-scheduler): each profile's pods are judged by its own SpotRisk. Only
// the first profile's were, and a penny-batch service read as another
// scheduler's pod got a Spot group grown for it, which its Filter refuses.
func TestExpanderServerJudgesEachProfilesPods(t *testing.T) {
	s := NewExpanderServer()
	s.Use(newEnv(t, nil, Deps{Prices: catalog(t)}).plugin)
	s.Use(newEnvIn(t, "penny-batch", nil, Deps{Prices: catalog(t)}, nil).plugin)
	od, spotA := node("od", pricing.OnDemand, "us-east-1a"), node("spot-a", pricing.Spot, "us-east-1a")
	serve := pod("serve", map[string]string{AnnotationWorkload: "inference"})
	serve.Spec.SchedulerName = "penny-batch"
	if got := best(t, s, caRequest(t, []*corev1.Pod{serve}, spotA)); len(got) != 0 {
		t.Errorf("a penny-batch service, only a Spot group: %v, want no option", got)
	}
	if got := best(t, s, caRequest(t, []*corev1.Pod{serve}, od, spotA)); strings.Join(got, ",") != "od" {
		t.Errorf("a penny-batch service: %v, want od", got)
	}
}

// A group the price catalog does not price cannot be ranked, yet may be
// the right one: ranked last, an unpriced CPU group lost a 1-CPU pod to a
// priced p4d. It comes back beside the best priced option, for Cluster
// Autoscaler's next expander to weigh; a group Penny's rules keep the pods
// off does not.
func TestExpanderServerLeavesUnpricedGroupsToTheNextExpander(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)})
	s := NewExpanderServer()
	s.Use(e.plugin)
	p4d := node("p4d", pricing.OnDemand, "us-east-1a")
	cpu := sized(node("m7i", pricing.OnDemand, "us-east-1a"), "m7i.large", "2", "8Gi", "")
	cpuSpot := sized(node("m7i-spot", pricing.Spot, "us-east-1a"), "m7i.large", "2", "8Gi", "")
	small := pod("web", map[string]string{AnnotationWorkload: "inference"})
	small.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")}}
	got := best(t, s, caRequest(t, []*corev1.Pod{small}, p4d, cpu, cpuSpot))
	if strings.Join(got, ",") != "p4d,m7i" {
		t.Errorf("a 1-CPU service: %v, want p4d (the best priced) and m7i (unpriced); never m7i-spot", got)
	}
	if got := best(t, s, caRequest(t, []*corev1.Pod{small}, cpu, cpuSpot)); strings.Join(got, ",") != "m7i" {
		t.Errorf("only unpriced groups: %v, want m7i", got)
	}
	// Spot a pod avoids ranks last, priced or not: training without
	// checkpoints past its wait for on-demand may use Spot, but an unpriced
	// Spot group is not offered beside on-demand.
	gpuSpot := sized(node("g6e-spot", pricing.Spot, "us-east-1a"), "g6e.48xlarge", "192", "1536Gi", "8")
	train := waited(pod("train", map[string]string{AnnotationWorkload: "training"}))
	if got := best(t, s, caRequest(t, []*corev1.Pod{train}, p4d, gpuSpot)); strings.Join(got, ",") != "p4d" {
		t.Errorf("training without checkpoints: %v, want p4d, the unpriced Spot group last", got)
	}
}

// Options list different pods once Penny's rules apply: a Spot group's
// leaves out the never-Spot pods. Eight 1-GPU services fill an on-demand
// p4d at $4 a slot; beside them, a checkpointing job that has waited out
// its fallback and needs a whole p4d costs $32 there and about $8 on Spot.
// The mean over each option's own pods made on-demand look cheaper ($64 /
// 9 against $8) and put the job on a node at four times the price, for
// services that had no other option anyway. Compared by what each option
// costs its pods beyond their cheapest option each, Spot costs nothing more
// and on-demand $24 more: the job gets Spot, the services on-demand next.
func TestExpanderServerDoesNotLetPodsWithoutChoiceDecideForTheOthers(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)})
	s := NewExpanderServer()
	s.Use(e.plugin)
	od, spotA := node("od", pricing.OnDemand, "us-east-1a"), node("spot-a", pricing.Spot, "us-east-1a")
	var pods []*corev1.Pod
	for i := range 8 {
		pods = append(pods, pod(fmt.Sprint("serve-", i), map[string]string{AnnotationWorkload: "inference"}))
	}
	job := waited(pod("train", map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "30m"}))
	job.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("96"), corev1.ResourceMemory: resource.MustParse("1152Gi")}
	job.Spec.Containers[0].Resources.Limits = corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("8")}
	if got := best(t, s, caRequest(t, append(pods, job), od, spotA)); len(got) != 1 || got[0] != "spot-a" {
		t.Errorf("eight services and a job that may use Spot: %v, want spot-a", got)
	}
	// The services alone still get on-demand, and the same pods in every
	// option still rank by their mean cost.
	if got := best(t, s, caRequest(t, pods, od, spotA)); len(got) != 1 || got[0] != "od" {
		t.Errorf("eight services: %v, want od", got)
	}
}

// Bytes that are not what Cluster Autoscaler sends are refused with
// InvalidArgument naming the field.
func TestExpanderServerRejectsMalformedRequests(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)})
	s := NewExpanderServer()
	s.Use(e.plugin)
	ok := caRequest(t, []*corev1.Pod{pod("p", nil)}, node("od", pricing.OnDemand, "us-east-1a"))
	badNode := caRequest(t, []*corev1.Pod{pod("p", nil)}, node("od", pricing.OnDemand, "us-east-1a"))
	badNode.NodeBytesMap["od"] = []byte{0xff, 0xff}
	badPod := caRequest(t, []*corev1.Pod{pod("p", nil)}, node("od", pricing.OnDemand, "us-east-1a"))
	badPod.Options[0].PodBytes = append(badPod.Options[0].PodBytes, []byte("not a pod"))
	// Room for a quadrillion GPUs (or minus one) would have the ranking
	// allocate without bound, or rank the node best.
	gpus := func(q string) *expander.BestOptionsRequest {
		n := node("od", pricing.OnDemand, "us-east-1a")
		n.Status.Allocatable[gpu.ResourceGPU] = resource.MustParse(q)
		return caRequest(t, []*corev1.Pod{pod("p", nil)}, n)
	}
	negCPU := node("od", pricing.OnDemand, "us-east-1a")
	negCPU.Status.Allocatable[corev1.ResourceCPU] = resource.MustParse("-2")
	for _, c := range []struct {
		req  *expander.BestOptionsRequest
		want string
	}{
		{badNode, `nodeBytesMap["od"] is not a protobuf-serialized v1.Node`},
		{badPod, `options[0].podBytes[1] (node group "od") is not a protobuf-serialized v1.Pod`},
		{gpus("1e15"), `nodeBytesMap["od"].status.allocatable[nvidia.com/gpu] is 1e15; a node holds 0 to 1024 GPUs`},
		{gpus("-1"), `nodeBytesMap["od"].status.allocatable[nvidia.com/gpu] is -1; a node holds 0 to 1024 GPUs`},
		{caRequest(t, []*corev1.Pod{pod("p", nil)}, negCPU), `nodeBytesMap["od"].status.allocatable holds a negative cpu (-2)`},
	} {
		_, err := s.BestOptions(context.Background(), c.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want InvalidArgument naming %q", err, c.want)
		}
	}
	if _, err := s.BestOptions(context.Background(), ok); err != nil {
		t.Fatal(err)
	}
	// A caller that gave up gets no ranking worked out for it.
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.BestOptions(gone, ok); status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled request: %v, want Canceled", err)
	}
}

// Pricing Cluster Autoscaler's template nodes leaves the risk model as it
// was (a request could name any zone), while a node the scheduler places
// pods on seeds its pool's prior from the catalog.
func TestExpanderServerDoesNotGrowTheRiskModel(t *testing.T) {
	risk := pricing.NewRiskModel(pricing.RiskConfig{})
	e := newEnv(t, nil, Deps{Prices: catalog(t), Risk: risk}, node("spot-a", pricing.Spot, "us-east-1a"))
	s := NewExpanderServer()
	s.Use(e.plugin)
	unknown := risk.ReclaimRate(pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1z", Capacity: pricing.Spot})
	best(t, s, caRequest(t, []*corev1.Pod{pod("p", map[string]string{AnnotationWorkload: "batch"})}, node("spot-z", pricing.Spot, "us-east-1z")))
	if got := risk.ReclaimRate(pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1z", Capacity: pricing.Spot}); got != unknown {
		t.Errorf("a template node's pool was remembered: rate %g, want the default prior's %g", got, unknown)
	}
	e.schedule(t, pod("p", map[string]string{AnnotationWorkload: "batch"}))
	catalogRate := pricing.RateFromMonthly(pricing.Bucket5To10.MonthlyProbability()) // spot-a in the test catalog
	if got := risk.ReclaimRate(pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1a", Capacity: pricing.Spot}); got != catalogRate {
		t.Errorf("a real node's pool: rate %g, want the catalog bucket's %g", got, catalogRate)
	}
}

// The answer names the node groups, as Cluster Autoscaler reads it, without
// echoing the pods of every option it returns (with equally good options,
// an answer as large as the request); fields Penny's copy of the API does
// not know are kept.
func TestExpanderServerAnswersWithoutPods(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)})
	s := NewExpanderServer()
	s.Use(e.plugin)
	var pods []*corev1.Pod
	for i := range 50 {
		pods = append(pods, pod(fmt.Sprint("job-", i), map[string]string{AnnotationWorkload: "batch"}))
	}
	// Two equally good Spot groups (the same template in the same zone).
	a, b := node("spot-a", pricing.Spot, "us-east-1a"), node("spot-b", pricing.Spot, "us-east-1a")
	req := caRequest(t, pods, a, b)
	for _, o := range req.Options {
		o.Pod = o.PodBytes // Cluster Autoscaler sends both encodings
		// A field this copy of the API lacks (number 15, a string).
		unknown := protowire.AppendTag(nil, 15, protowire.BytesType)
		o.ProtoReflect().SetUnknown(protowire.AppendString(unknown, o.GetNodeGroupId()+"-similar"))
	}
	resp, err := s.BestOptions(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetOptions()) != 2 {
		t.Fatalf("%d options back, want the two equally good ones", len(resp.GetOptions()))
	}
	for _, o := range resp.GetOptions() {
		if len(o.GetPod()) != 0 || len(o.GetPodBytes()) != 0 {
			t.Errorf("%s comes back with %d+%d pods, want none", o.GetNodeGroupId(), len(o.GetPod()), len(o.GetPodBytes()))
		}
		if o.GetNodeCount() != 1 {
			t.Errorf("%s: nodeCount %d, want 1", o.GetNodeGroupId(), o.GetNodeCount())
		}
		if u := o.ProtoReflect().GetUnknown(); !bytes.Contains(u, []byte(o.GetNodeGroupId()+"-similar")) {
			t.Errorf("%s: unknown fields %q lost", o.GetNodeGroupId(), u)
		}
	}
	if n, limit := proto.Size(resp), proto.Size(req)/10; n > limit {
		t.Errorf("answer of %d bytes to a request of %d", n, proto.Size(req))
	}
	// The request is left as it came.
	if len(req.Options[0].GetPodBytes()) != 50 {
		t.Errorf("the request's options lost their pods")
	}
}

// Until the scheduler has listed the cluster's pods the expander answers
// Unavailable, and Cluster Autoscaler keeps its options: a ranking then
// counted no running peers and sized a service's new node for it alone.
func TestExpanderServerWaitsForThePodsToBeListed(t *testing.T) {
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	pods := factory.Core().V1().Pods().Informer() // registered before the plugin is built, as the scheduler's is
	e := newEnvWith(t, nil, Deps{Prices: catalog(t)}, []frameworkruntime.Option{frameworkruntime.WithInformerFactory(factory)})
	s := NewExpanderServer()
	s.Use(e.plugin)
	od := node("od", pricing.OnDemand, "us-east-1a")
	req := caRequest(t, []*corev1.Pod{pod("serve", map[string]string{AnnotationWorkload: "inference"})}, od)
	if _, err := s.BestOptions(context.Background(), req); status.Code(err) != codes.Unavailable {
		t.Fatalf("before the pods are listed: %v, want Unavailable", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), pods.HasSynced) {
		t.Fatal("the pod informer did not sync")
	}
	if got := best(t, s, req); len(got) != 1 || got[0] != "od" {
		t.Errorf("once the pods are listed: best %v, want od", got)
	}
}

// Cluster Autoscaler's requests describe pods the scheduler may not hold:
// deleted since, or never created, since whoever reaches the endpoint can
// send any. A start recorded in such a pod's status that had to be clamped
// was kept in the plugin's memory of ungatings, which forgets a pod only when
// its informer sees it bound or deleted: each such pod stayed for good, and
// requests of up to 128 MiB grew the scheduler without bound.
func TestExpanderKeepsNothingOfPodsTheSchedulerDoesNotHold(t *testing.T) {
	e, _ := gatedEnv(t, 2*time.Minute)
	s := NewExpanderServer()
	s.Use(e.plugin)
	var pods []*corev1.Pod
	for i := range 100 {
		p := pod(fmt.Sprintf("described-%d", i), map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "15m"})
		p.Status.Conditions = []corev1.PodCondition{{Type: ConditionSpotWaitStarted, Status: corev1.ConditionTrue,
			LastTransitionTime: metav1.NewTime(t0.Add(-time.Hour))}}
		pods = append(pods, p)
	}
	best(t, s, caRequest(t, pods, node("spot-a", pricing.Spot, "us-east-1a"), node("od", pricing.OnDemand, "us-east-1a")))
	e.plugin.ungates.mu.Lock()
	kept := len(e.plugin.ungates.at)
	e.plugin.ungates.mu.Unlock()
	if kept != 0 {
		t.Errorf("the plugin keeps %d pods of an autoscaler's request it does not hold, want none", kept)
	}
}

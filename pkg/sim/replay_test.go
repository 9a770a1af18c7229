package sim

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/plugins/spotrisk"
)

type fleet []FleetChange

func (f fleet) Changes() []FleetChange { return f }

type flatPrice float64

func (p flatPrice) HourlyPrice(*v1.Node, time.Duration) float64 { return float64(p) }

func tracePod(name string, gpus, arrival, duration int64) TracePod {
	return TracePod{Pod: NewPod("ns", name, 1000, 1024, gpus, 1000, nil), Arrival: time.Duration(arrival) * time.Second, Duration: time.Duration(duration) * time.Second}
}

// replayOnOneT4 replays tr with bestfit on one 1-GPU node at $3.60 an hour,
// sampling every second.
func replayOnOneT4(t *testing.T, tr *Trace) *ReplayResult {
	t.Helper()
	p, _ := LookupPolicy("bestfit")
	res, err := Replay(context.Background(), ReplayOptions{
		Nodes: []*v1.Node{NewNode("n", 8000, 8192, 1, "Tesla-T4")}, Trace: tr, Policy: p, Seed: 1,
		SampleEvery: time.Second, Pricer: flatPrice(3.6),
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestReplayQueueingAndAccounting(t *testing.T) {
	withdrawn := tracePod("withdrawn", 1, 6, 100)
	withdrawn.Withdraw, withdrawn.Withdraws = 8*time.Second, true
	tr := &Trace{Pods: []TracePod{
		tracePod("a", 1, 0, 10),
		tracePod("b", 1, 5, 10), // waits for a: starts at 10, delay 5
		withdrawn,               // still waiting at 8: withdrawn
		tracePod("c", 2, 9, 5),  // never fits a 1-GPU node
	}}
	res := replayOnOneT4(t, tr)
	byName := map[string]PodOutcome{}
	for _, o := range res.PodOutcomes {
		byName[o.Pod] = o
	}
	if o := byName["ns/b"]; o.Start != 10 || o.Delay != 5 || o.State != "completed" {
		t.Fatalf("b: %+v, want start 10, delay 5", o)
	}
	if o := byName["ns/withdrawn"]; o.State != "withdrawn" || o.Start != -1 {
		t.Fatalf("withdrawn: %+v", o)
	}
	if len(res.NeverScheduled) != 1 || res.NeverScheduled[0] != "ns/c" || res.Withdrawn != 1 {
		t.Fatalf("never scheduled %v, withdrawn %d", res.NeverScheduled, res.Withdrawn)
	}
	if len(res.Impossible) != 1 || res.Impossible[0].Pod != "ns/c" {
		t.Fatalf("impossible %+v: c asks for 2 GPUs of a 1-GPU cluster", res.Impossible)
	}
	// a and b each held the GPU 10 s over a 20 s horizon.
	if math.Abs(res.AllocatedGPUHours*3600-20) > 1e-6 || math.Abs(res.HorizonHours*3600-20) > 1e-6 || math.Abs(res.MeanUtilisationPct-100) > 1e-6 {
		t.Fatalf("GPU-hours %v over %v h, utilisation %v", res.AllocatedGPUHours, res.HorizonHours, res.MeanUtilisationPct)
	}
	if res.QueueDelay.Delayed != 1 || res.QueueDelay.Max != 5 {
		t.Fatalf("delays %+v", res.QueueDelay)
	}
	// 3.6 an hour for 20 s.
	if res.Cost == nil || math.Abs(res.Cost.Fleet-0.02) > 1e-9 {
		t.Fatalf("cost %+v", res.Cost)
	}
	if s := res.Utilisation[7]; s.Running != 1 || s.Pending != 2 || s.AllocatedPct != 100 {
		t.Fatalf("sample at 7 s %+v", s)
	}
}

func TestReplayFleetChangesEvictAndRequeue(t *testing.T) {
	tr := &Trace{Pods: []TracePod{tracePod("a", 1, 0, 10)}}
	p, _ := LookupPolicy("default")
	spare := NewNode("spare", 8000, 8192, 1, "Tesla-T4")
	res, err := Replay(context.Background(), ReplayOptions{
		Nodes: []*v1.Node{NewNode("spot", 8000, 8192, 1, "Tesla-T4")}, Trace: tr, Policy: p, Seed: 1,
		Fleet: fleet{{At: 4 * time.Second, Remove: "spot", Reason: "spot-reclaim"}, {At: 6 * time.Second, Add: spare}},
	})
	if err != nil {
		t.Fatal(err)
	}
	o := res.PodOutcomes[0]
	// Placed at 0, evicted at 4, placed again on the new node at 6, runs 10 s.
	if res.Evictions != 1 || o.Evicted != 1 || o.Start != 6 || o.State != "completed" || o.Delay != 6 {
		t.Fatalf("outcome %+v, evictions %d", o, res.Evictions)
	}
	if math.Abs(res.AllocatedGPUHours*3600-14) > 1e-6 || math.Abs(res.HorizonHours*3600-16) > 1e-6 {
		t.Fatalf("GPU-hours %v (want 4 s + 10 s), horizon %v h", res.AllocatedGPUHours, res.HorizonHours)
	}
	if _, err := Replay(context.Background(), ReplayOptions{
		Nodes: []*v1.Node{spare}, Trace: tr, Policy: p, Fleet: fleet{{At: time.Second, Remove: "ghost"}},
	}); err == nil {
		t.Fatal("removing a node that is not in the cluster was accepted")
	}
}

// On a fixed fleet with room, a gang runs when its last member arrives
// under Penny's profile: the gang plugin turns the first members away until
// then and asks for them again (Handle.Activate), and a member held at
// Permit is not tried a second time. Before, the replay failed ("is in the
// cache, so can't be assumed") or left the first members waiting for
// capacity to free on an idle fleet.
func TestReplayRunsAGangWhenItsLastMemberArrives(t *testing.T) {
	tr := phillyTrace(t, "timestamp,duration,num_gpus\n0,3600,24\n60,600,1\n")
	p, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	var nodes []*v1.Node
	for _, name := range []string{"a", "b", "c", "d"} {
		nodes = append(nodes, NewNode(name, 96000, 786432, 8, "NVIDIA-A10G"))
	}
	res, err := Replay(context.Background(), ReplayOptions{Nodes: nodes, Trace: tr, Policy: p, Seed: 1, SampleEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.PodOutcomes) != 4 {
		t.Fatalf("%d pods, want 3 gang members and one more", len(res.PodOutcomes))
	}
	for _, o := range res.PodOutcomes {
		if o.State != "completed" || o.Delay != 0 {
			t.Errorf("%s: %+v, want completed without waiting", o.Pod, o)
		}
	}
}

// Percentiles are nearest-rank: the smallest delay that at least p of the
// pods did not exceed. The median of two is the shorter, and the p95 of
// twenty is the nineteenth, not the longest.
func TestDelayStatsNearestRank(t *testing.T) {
	if s := delayStats([]float64{780, 180}); s.P50 != 180 || s.P95 != 780 || s.Max != 780 || s.Mean != 480 || s.Delayed != 2 {
		t.Errorf("two delays: %+v; want p50 180, p95 780, max 780, mean 480, 2 delayed", s)
	}
	var d []float64
	for i := 20; i >= 1; i-- {
		d = append(d, float64(i))
	}
	if s := delayStats(d); s.P50 != 10 || s.P95 != 19 || s.P99 != 20 || s.Max != 20 {
		t.Errorf("delays 1..20: %+v; want p50 10, p95 19, p99 20, max 20", s)
	}
	var h []float64
	for i := 1; i <= 1000; i++ {
		h = append(h, float64(i))
	}
	if s := delayStats(h); s.P50 != 500 || s.P95 != 950 || s.P99 != 990 {
		t.Errorf("delays 1..1000: %+v; want p50 500, p95 950, p99 990", s)
	}
	if s := delayStats([]float64{7}); s.P50 != 7 || s.P95 != 7 || s.P99 != 7 {
		t.Errorf("one delay: %+v; want 7 throughout", s)
	}
}

// A pod the trace never started was deleted by its user at its
// deletion_time: placed late, it still leaves then, not its run time later.
func TestReplayNeverStartedPodLeavesWhenTheTraceDeletedIt(t *testing.T) {
	late := tracePod("late", 1, 2, 28)
	late.Withdraw, late.Withdraws = 30*time.Second, true
	tr := &Trace{Pods: []TracePod{tracePod("a", 1, 0, 10), late}}
	res := replayOnOneT4(t, tr)
	// a holds the GPU 0..10 s, late 10..30 s.
	if got := res.AllocatedGPUHours * 3600; math.Abs(got-30) > 1e-6 || math.Abs(res.HorizonHours*3600-30) > 1e-6 {
		t.Fatalf("%v GPU-seconds over %v s; want 30 over 30: late leaves at its deletion_time", got, res.HorizonHours*3600)
	}
}

// A gang held at Permit on a fixed fleet waits on trace time, as in a
// cluster: its round ends after the profile's permitTimeout (60s) and the
// gang backs off (2s, doubling to 1m) before it is tried again. Node a's one
// GPU holds a share until 600s, which the gang plugin's plan (counting whole
// GPUs) does not see but PennyGPUPack's Filter does, so member 0 is held on
// b and member 1 fits nowhere. Rounds run 10-70, 72-132, 136-196, 204-264,
// 280-340, 372-432 and 492-552 s, each released and backed off; the share
// leaves in the backoff that ends at 612 s, when the gang runs. On the wall
// clock the round never ended in trace time: member 0 held b for 590 s and
// the gang ran at 600 s, at any machine speed short of a minute.
func TestReplayGangPermitWaitRunsOnTraceTime(t *testing.T) {
	share := TracePod{Pod: NewPod("ns", "share", 1000, 1024, 1, 500, []string{"Tesla-T4"}), Duration: 600 * time.Second}
	tr := &Trace{Pods: []TracePod{share}}
	for i := range 2 {
		tr.Pods = append(tr.Pods, TracePod{Pod: newJobPod("ns", "job", i, 2, 1000, 1024, 1, 1000), Arrival: 10 * time.Second, Duration: 100 * time.Second})
	}
	p, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	nodes := []*v1.Node{NewNode("a", 8000, 8192, 1, "Tesla-T4"), NewNode("b", 8000, 8192, 1, "NVIDIA-A10G")}
	for run := range 2 {
		res, err := Replay(context.Background(), ReplayOptions{Nodes: nodes, Trace: tr, Policy: p, Seed: 1, SampleEvery: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range res.PodOutcomes[1:] {
			if o.State != "completed" || o.Start != 612 {
				t.Errorf("run %d: %s: %+v, want completed, started at 612 s once the gang's backoff ended", run, o.Pod, o)
			}
		}
		if math.Abs(res.HorizonHours*3600-712) > 1e-6 {
			t.Errorf("run %d: horizon %v s, want 712 (the gang's run ends)", run, res.HorizonHours*3600)
		}
	}
}

// A gang member held at Permit has room reserved on its node; when its gang
// is released the room is back, and a pod that found none while it was held
// is tried again then. Node b's one GPU holds member 0 of a gang from 10 s
// (member 1 fits nowhere: a's GPU holds a share); solo arrives at 20 s and
// fits nowhere either. The gang's permit wait ends at 70 s and solo runs on
// b then. Before, nothing told the replay b had room, and solo waited until
// the share left a at 600 s.
func TestReplayPodRunsWhereAReleasedGangHeldRoom(t *testing.T) {
	share := TracePod{Pod: NewPod("ns", "share", 1000, 1024, 1, 500, []string{"Tesla-T4"}), Duration: 600 * time.Second}
	tr := &Trace{Pods: []TracePod{share}}
	for i := range 2 {
		tr.Pods = append(tr.Pods, TracePod{Pod: newJobPod("ns", "job", i, 2, 1000, 1024, 1, 1000), Arrival: 10 * time.Second, Duration: 100 * time.Second})
	}
	tr.Pods = append(tr.Pods, tracePod("solo", 1, 20, 100))
	p, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	nodes := []*v1.Node{NewNode("a", 8000, 8192, 1, "Tesla-T4"), NewNode("b", 8000, 8192, 1, "NVIDIA-A10G")}
	res, err := Replay(context.Background(), ReplayOptions{Nodes: nodes, Trace: tr, Policy: p, Seed: 1, SampleEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range res.PodOutcomes {
		if o.State != "completed" {
			t.Errorf("%s: %+v, want completed", o.Pod, o)
		}
		if o.Pod == "ns/solo" && o.Start != 70 {
			t.Errorf("solo: %+v, want started at 70 s, when the gang held on b was released", o)
		}
	}
}

// A fixed fleet's pods are created as they arrive: SpotRisk dates a pod's
// wait for on-demand capacity from its creation, and the replay retries the
// pod when the wait ends, as the plugin does. Training without checkpoints
// arrives at 30 s on a fleet of one Spot node; its default 10m wait ends at
// 630 s, when it runs there if the node is free, and else when a batch pod
// that holds it until 900 s leaves. Before, the replay's pods had no creation
// time, every attempt began the wait anew, and the pod never ran; and a pod
// whose wait ended was retried only when capacity freed. The wait is the
// profile's fallbackAfter: with 20m it ends at 1230 s (the replay used to
// time it with the default 10m, retried the pod while the plugin still kept
// it waiting, and never again).
func TestReplayTrainingFallsBackToSpotAfterItsWait(t *testing.T) {
	for _, c := range []struct {
		batch    int64  // the batch pod's run on the Spot node, from 0 s
		fallback string // the profile's fallbackAfter; "" the deployed one
		start    float64
	}{{0, "", 630}, {900, "", 900}, {0, "20m", 1230}} {
		pod := NewPod("ns", "trainer", 1000, 1024, 1, 1000, nil)
		pod.Annotations = map[string]string{spotrisk.AnnotationWorkload: "training"}
		tr := &Trace{Pods: []TracePod{{Pod: pod, Arrival: 30 * time.Second, Duration: time.Hour}}}
		if c.batch > 0 {
			tr.Pods = append(tr.Pods, tracePod("batch", 1, 0, c.batch))
		}
		node := NewNode("spot", 8000, 8192, 1, "NVIDIA-A10G")
		node.Labels[capacity.LabelKarpenter] = "spot"
		p, err := LookupPolicy("penny")
		if err != nil {
			t.Fatal(err)
		}
		var cfg []byte
		if c.fallback != "" {
			cfg = withFallbackAfter(t, c.fallback)
		}
		res, err := Replay(context.Background(), ReplayOptions{Nodes: []*v1.Node{node}, Trace: tr, Policy: p, Seed: 1, SampleEvery: time.Hour, SchedulerConfig: cfg})
		if err != nil {
			t.Fatal(err)
		}
		if o := res.PodOutcomes[0]; o.State != "completed" || o.Start != c.start {
			t.Errorf("batch pod for %d s, fallbackAfter %q: %+v, want completed, started at %v s", c.batch, c.fallback, o, c.start)
		}
	}
}

// withFallbackAfter is the deployed scheduler configuration with SpotRisk's
// fallbackAfter set to d.
func withFallbackAfter(t *testing.T, d string) []byte {
	t.Helper()
	return shippedConfigWith(t, "fallbackAfter: 10m", "fallbackAfter: "+d)
}

// shippedConfigWith is deploy/scheduler/config.yaml with its one shipped
// text in place of to.
func shippedConfigWith(t *testing.T, shipped, to string) []byte {
	t.Helper()
	if strings.Count(string(deploy.SchedulerConfig), shipped) != 1 {
		t.Fatalf("deploy/scheduler/config.yaml has no single %q to change", shipped)
	}
	return []byte(strings.Replace(string(deploy.SchedulerConfig), shipped, to, 1))
}

// A gang admitted that can never complete (its two members ask for the same
// host port on the one node the gang fits on) is released and admitted again
// on trace time without end; once nothing else is left to happen, the replay
// gives up StallLimit later and ends where the trace did, reporting the gang
// never scheduled.
func TestReplayEndsWhenOnlyAGangThatCannotCompleteIsLeft(t *testing.T) {
	tr := &Trace{}
	for i := range 2 {
		pod := newJobPod("ns", "job", i, 2, 1000, 1024, 1, 1000)
		pod.Spec.Containers[0].Ports = []v1.ContainerPort{{ContainerPort: 8080, HostPort: 8080, Protocol: v1.ProtocolTCP}}
		tr.Pods = append(tr.Pods, TracePod{Pod: pod, Arrival: 10 * time.Second, Duration: 100 * time.Second})
	}
	p, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Replay(context.Background(), ReplayOptions{Nodes: []*v1.Node{NewNode("a", 8000, 8192, 2, "NVIDIA-A10G")}, Trace: tr, Policy: p, Seed: 1, SampleEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.NeverScheduled) != 2 || res.PodsScheduled != 0 {
		t.Fatalf("never scheduled %v, %d scheduled; want both members never scheduled", res.NeverScheduled, res.PodsScheduled)
	}
	if math.Abs(res.HorizonHours*3600-10) > 1e-6 || len(res.Utilisation) != 2 || res.Utilisation[1].Hours*3600 != 10 {
		t.Fatalf("horizon %v s, samples %+v; want the replay to end at the members' arrival, 10 s", res.HorizonHours*3600, res.Utilisation)
	}
}

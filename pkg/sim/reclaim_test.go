package sim

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/agent/checkpoint"
	agentreclaim "github.com/pennysched/penny/agent/reclaim"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/plugins/spotrisk"
)

func checkpointing(p *v1.Pod, hook bool, every string) *v1.Pod {
	if p.Annotations == nil {
		p.Annotations = map[string]string{}
	}
	if hook {
		p.Annotations[checkpoint.Annotation] = "http://:8080/checkpoint"
	}
	if every != "" {
		p.Annotations[spotrisk.AnnotationCheckpointInterval] = every
	}
	return p
}

func TestReclaimRuleKept(t *testing.T) {
	pod := func(hook bool, every string) *v1.Pod {
		return checkpointing(NewPod("ns", "p", 1000, 1024, 1, 1000, nil), hook, every)
	}
	penny := &ReclaimRule{NoticeCheckpoints: true, CheckpointTakes: 20 * time.Second}
	drain := &ReclaimRule{}
	progress := 100 * time.Minute
	cases := []struct {
		name   string
		rule   *ReclaimRule
		pod    *v1.Pod
		notice time.Duration
		kept   time.Duration
		how    string
	}{
		{"hook, checkpoint fits the notice", penny, pod(true, "30m"), 2 * time.Minute, 98 * time.Minute, KeptNoticeCheckpoint},
		{"hook, GCP's 30s leaves 25s for a 20s checkpoint", penny, pod(true, "30m"), 30 * time.Second, progress - 30*time.Second, KeptNoticeCheckpoint},
		{"hook, checkpoint too slow for the notice", &ReclaimRule{NoticeCheckpoints: true, CheckpointTakes: 40 * time.Second}, pod(true, "30m"), 30 * time.Second, 90 * time.Minute, KeptPeriodicCheckpoint},
		{"no hook", penny, pod(false, "30m"), 2 * time.Minute, 90 * time.Minute, KeptPeriodicCheckpoint},
		{"hook but no notice checkpoints", drain, pod(true, "30m"), 2 * time.Minute, 90 * time.Minute, KeptPeriodicCheckpoint},
		{"no checkpoints at all", penny, pod(false, ""), 2 * time.Minute, 0, KeptNothing},
		{"malformed interval", drain, pod(false, "often"), 2 * time.Minute, 0, KeptNothing},
	}
	for _, c := range cases {
		kept, how := c.rule.Kept(c.pod, progress-c.notice, progress, c.notice)
		if kept != c.kept || how != c.how {
			t.Errorf("%s: kept %v (%s), want %v (%s)", c.name, kept, how, c.kept, c.how)
		}
	}
	if d := (&ReclaimRule{}).notice(&v1.Node{Spec: v1.NodeSpec{ProviderID: "gce://p/z/n"}}); d != 30*time.Second {
		t.Errorf("GCE notice %v, want 30s", d)
	}
	if d := (&ReclaimRule{Notice: map[string]time.Duration{"aws": time.Minute}}).notice(&v1.Node{Spec: v1.NodeSpec{ProviderID: "aws:///z/i-1"}}); d != time.Minute {
		t.Errorf("configured AWS notice %v, want 1m", d)
	}
}

// A two-member gang runs an hour on two Spot nodes; the first node is
// reclaimed 2500 s in and a spare node arrives at the same moment.
func gangReplay(t *testing.T, rule *ReclaimRule, providerID string) *ReplayResult {
	t.Helper()
	var pods []TracePod
	for _, name := range []string{"member-0", "member-1"} {
		tp := tracePod(name, 1, 0, 3600)
		tp.Pod.Labels = map[string]string{gang.LabelName: "job", gang.KeySize: "2"}
		checkpointing(tp.Pod, true, "30m")
		pods = append(pods, tp)
	}
	a, b := NewNode("spot-a", 8000, 8192, 1, "Tesla-T4"), NewNode("spot-b", 8000, 8192, 1, "Tesla-T4")
	a.Spec.ProviderID, b.Spec.ProviderID = providerID, providerID
	p, _ := LookupPolicy("default")
	res, err := Replay(context.Background(), ReplayOptions{
		Nodes: []*v1.Node{a, b}, Trace: &Trace{Pods: pods}, Policy: p, Seed: 1, SampleEvery: time.Hour,
		Fleet: fleet{
			{At: 2500 * time.Second, Add: NewNode("spare", 8000, 8192, 1, "Tesla-T4")},
			{At: 2500 * time.Second, Remove: "spot-a", Reason: "spot-reclaim"},
		},
		Reclaim: rule,
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

func TestReplayReclaimKeepsTheNoticeCheckpointForTheWholeGang(t *testing.T) {
	res := gangReplay(t, &ReclaimRule{NoticeCheckpoints: true}, "aws:///us-east-1a/i-1")
	o := res.Reclaim
	// Both members stop; both keep the state at the notice, 120 s before the
	// reclaim: 2380 s of 3600.
	if o.Reclaims != 1 || o.PodsHit != 2 || o.Kept[KeptNoticeCheckpoint] != 2 {
		t.Fatalf("outcome %+v: want one reclaim, both members stopped, both kept by the notice checkpoint", o)
	}
	if !near(o.LostGPUHours, 2*120.0/3600) {
		t.Errorf("lost %v GPU-hours, want the 2 minutes of notice on both members", o.LostGPUHours)
	}
	// They resume at 2500 s with 1220 s left.
	if !near(res.HorizonHours*3600, 3720) {
		t.Errorf("the gang finished at %v s, want 3720 s", res.HorizonHours*3600)
	}
	for _, po := range res.PodOutcomes {
		if po.Evicted != 1 || po.State != "completed" {
			t.Errorf("%+v: every member is stopped once and completes", po)
		}
	}
}

func TestReplayReclaimWithoutNoticeCheckpointsLosesWorkSinceThePeriodicOne(t *testing.T) {
	res := gangReplay(t, &ReclaimRule{}, "aws:///us-east-1a/i-1")
	o := res.Reclaim
	// The last periodic checkpoint was at 1800 s: 700 s lost on each member,
	// including the one whose node was not reclaimed.
	if o.PodsHit != 2 || o.Kept[KeptPeriodicCheckpoint] != 2 || !near(o.LostGPUHours, 2*700.0/3600) {
		t.Fatalf("outcome %+v: want both members back at their 1800 s checkpoint", o)
	}
	if !near(res.HorizonHours*3600, 2500+1800) {
		t.Errorf("the gang finished at %v s, want 4300 s", res.HorizonHours*3600)
	}
}

func TestReplayReclaimNoticeTooShortForTheCheckpoint(t *testing.T) {
	// GCP's 30 s notice less the 5 s margin cannot hold a 40 s checkpoint:
	// Penny's pipeline falls back to the periodic checkpoint too.
	res := gangReplay(t, &ReclaimRule{NoticeCheckpoints: true, CheckpointTakes: 40 * time.Second}, "gce://p/us-central1-a/n")
	if o := res.Reclaim; o.Kept[KeptPeriodicCheckpoint] != 2 || !near(o.LostGPUHours, 2*700.0/3600) {
		t.Fatalf("outcome %+v: want the periodic checkpoint", o)
	}
}

func TestReplayWithoutRuleRestartsOnlyTheEvictedPod(t *testing.T) {
	res := gangReplay(t, nil, "")
	if res.Reclaim != nil || res.Evictions != 1 {
		t.Fatalf("reclaim %+v, evictions %d: without a rule only the reclaimed node's pod is evicted", res.Reclaim, res.Evictions)
	}
	if !near(res.HorizonHours*3600, 2500+3600) {
		t.Errorf("finished at %v s, want the evicted pod to start over at 2500 s", res.HorizonHours*3600)
	}
}

// The simulator and SpotRisk read the checkpoint hook by SpotRisk's
// constant, as neither pkg/ nor plugins/ import agent/; it must be the
// annotation the agent calls.
func TestCheckpointHookIsTheAgents(t *testing.T) {
	if spotrisk.AnnotationCheckpointHook != checkpoint.Annotation {
		t.Errorf("the simulator and SpotRisk read %s, the agent %s", spotrisk.AnnotationCheckpointHook, checkpoint.Annotation)
	}
}

// The rule's safety margin is the one the agent evicts by and the
// coordinator fans out with: the simulator takes the coordinator's constant,
// and the agent keeps its own (pkg/ does not import agent/).
func TestReclaimSafetyMarginIsTheAgents(t *testing.T) {
	if reclaim.DefaultSafetyMargin != agentreclaim.DefaultSafetyMargin {
		t.Errorf("the simulator and the coordinator leave %v before the deadline, the agent %v", reclaim.DefaultSafetyMargin, agentreclaim.DefaultSafetyMargin)
	}
}

// A reclaim's notice is its node's cloud's: the elastic fleet's nodes carry
// the providerID of their instance type's cloud (the catalog's provider), so
// a GCP or Azure pool gets the 30 s those clouds give, not AWS's 2 minutes.
// Until 2026-12-02 every simulated node said aws.
func TestElasticNodesGetTheirCloudsNotice(t *testing.T) {
	for _, c := range []struct {
		region, zone, instanceType string
		want                       time.Duration
	}{
		{"us-east-1", "us-east-1a", "g5.8xlarge", 2 * time.Minute},
		{"us-central1", "us-central1-a", "g2-standard-8", 30 * time.Second},
		{"eastus", "eastus-1", "Standard_NC4as_T4_v3", 30 * time.Second},
	} {
		s := scenarioOf(t, fmt.Sprintf("region: %s\npools:\n- {name: spot, instanceType: %s, capacityType: spot, zone: %s, max: 2}\n",
			c.region, c.instanceType, c.zone))
		n := s.node(&s.Pools[0], "spot-0")
		rule := s.reclaimRule("penny")
		if got := rule.notice(n); got != c.want {
			t.Errorf("%s (providerID %q): notice %v, want %v", c.instanceType, n.Spec.ProviderID, got, c.want)
		}
	}
}

// A catalog provider spelled other than aws, gcp or azure gave the pool's
// nodes no cloud's providerID and so AWS's 2-minute notice; the scenario is
// refused instead, at the catalog's line.
func TestScenarioRefusesACatalogProviderOfNoCloud(t *testing.T) {
	catalog := `apiVersion: penny.dev/v1alpha1
kind: PriceCatalog
instanceTypes:
- {name: g2-standard-8, provider: GCP, gpus: 1, gpuModel: L4, vcpus: 8, memoryGiB: 32}
prices:
- {instanceType: g2-standard-8, capacityType: spot, region: us-central1, hourly: 0.3}
`
	_, err := ParseSpotScenarioFrom("mine.yaml", []byte("region: us-central1\ncatalog: cat.yaml\npools:\n- {name: spot, instanceType: g2-standard-8, capacityType: spot, zone: us-central1-a, max: 2}\n"),
		func(string) ([]byte, error) { return []byte(catalog), nil })
	want := `mine.yaml: catalog: cat.yaml:4: instanceTypes[0].provider: g2-standard-8: provider "GCP" is not one of aws, gcp, azure`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want %q", err, want)
	}
}

package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// tinyScenario is one on-demand and one Spot pool of 1-GPU nodes priced by
// the shipped catalog (g5.8xlarge: on-demand 2.448, Spot 0.9686 $/h).
const tinyScenario = `
name: tiny
region: us-east-1
catalog: ../../deploy/pricing/catalog.yaml
restartOverhead: 5m
spotTaint: true
gpuSharing: [penny]
policies:
- {policy: spot-first, tolerateSpot: true}
- {policy: penny, tolerateSpot: true}
classes:
- {qos: [LS], annotations: {penny.dev/workload: inference}}
- {qos: [BE], annotations: {penny.dev/workload: training, penny.dev/checkpoint-interval: 30m}}
pools:
- {name: od, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 4, provisioningDelay: 3m, scaleDownAfter: 10m}
- {name: spot, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, max: SPOTMAX, provisioningDelay: 3m, scaleDownAfter: 10m,
   advertisedInterruption: "5-10%", meanTimeToReclaim: MTTR}
`

func spotScenario(t *testing.T, spotMax, mttr string) *SpotScenario {
	t.Helper()
	y := strings.NewReplacer("SPOTMAX", spotMax, "MTTR", mttr).Replace(tinyScenario)
	s, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func spotTracePod(name, qos string, gpus int64, arrival, run time.Duration) TracePod {
	p := NewPod(SimNamespace, name, 4000, 16*1024, gpus, 1000, nil)
	p.Labels[LabelQoS] = qos
	return TracePod{Pod: p, Arrival: arrival, Duration: run, Source: "test:" + name}
}

func spotReplay(t *testing.T, s *SpotScenario, policy string, seed uint64, pods ...TracePod) *ElasticResult {
	t.Helper()
	p, err := LookupPolicy(policy)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ElasticReplay(context.Background(), ElasticOptions{Scenario: s, Trace: &Trace{Pods: pods}, Policy: p, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// scenarioOf parses a scenario the test writes; it reads no files.
func scenarioOf(t *testing.T, y string) *SpotScenario {
	t.Helper()
	s, err := ParseSpotScenarioFrom("mine.yaml", []byte(y), func(path string) ([]byte, error) { return nil, fmt.Errorf("read %s: no files here", path) })
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// phillyTrace loads a Philly-format trace the test writes.
func phillyTrace(t *testing.T, csv string) *Trace {
	t.Helper()
	tr, err := LoadPhilly(writeFile(t, "jobs.csv", csv), DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func nearly(a, b float64) bool { return math.Abs(a-b) < 1e-6*math.Max(1, math.Abs(b)) }

// One inference pod and one checkpointing trainer, no reclaims: Penny puts
// the service on on-demand and the trainer on Spot; spot-first puts both on
// Spot. Nodes join after the provisioning delay and leave after the
// scale-down delay, and the bill is exactly node-hours x price.
func TestElasticPlacementAndBill(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	pods := []TracePod{
		spotTracePod("serve", "LS", 1, 0, 2*time.Hour),
		spotTracePod("train", "BE", 1, 0, 2*time.Hour),
	}
	penny := spotReplay(t, s, "penny", 42, pods...)
	if penny.NeverOnSpot != 0 || penny.NodeHoursByPool["od"] == 0 || penny.NodeHoursByPool["spot"] == 0 {
		t.Fatalf("penny: %+v", penny)
	}
	// Each node lives provisioning (3m) + run (2h); the replay, and the
	// bill, end when the last pod does.
	life := (3*time.Minute + 2*time.Hour).Hours()
	if !nearly(penny.NodeHoursByPool["od"], life) || !nearly(penny.NodeHoursByPool["spot"], life) {
		t.Fatalf("node hours %v, want %v each", penny.NodeHoursByPool, life)
	}
	if !nearly(penny.BillUSD, math.Round(life*(2.448+0.9686)*100)/100) {
		t.Fatalf("bill %v", penny.BillUSD)
	}
	// A g5.8xlarge has one GPU: it offers life GPU-hours, of which the pod
	// held the two hours it ran.
	if !nearly(penny.GPUHoursByPool["od"], life) || !nearly(penny.HeldGPUHoursByPool["od"], 2) || !nearly(penny.HeldGPUHoursByPool["spot"], 2) {
		t.Fatalf("GPU-hours offered %v, held %v", penny.GPUHoursByPool, penny.HeldGPUHoursByPool)
	}
	if penny.QueueDelayP95Seconds != 180 || penny.UsefulGPUHours != 4 || penny.LostGPUHours != 0 {
		t.Fatalf("delay %v useful %v lost %v", penny.QueueDelayP95Seconds, penny.UsefulGPUHours, penny.LostGPUHours)
	}
	naive := spotReplay(t, s, "spot-first", 42, pods...)
	if naive.NeverOnSpot != 1 || naive.NodeHoursByPool["od"] != 0 {
		t.Fatalf("spot-first: never on spot %d, pools %v", naive.NeverOnSpot, naive.NodeHoursByPool)
	}
	def := spotReplay(t, s, "default", 42, pods...)
	if def.NodeHoursByPool["spot"] != 0 || def.BillByCapacity["spot"] != 0 {
		t.Fatalf("default must stay off tainted Spot: %v", def.NodeHoursByPool)
	}
}

// A half-GPU service holds half a GPU where Penny shares GPUs and a whole one
// where the policy cannot (the scenario's gpuSharing), and the report's
// pool table says so.
func TestElasticHeldGPUHours(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	p := NewPod(SimNamespace, "half", 4000, 16*1024, 1, 500, nil)
	p.Labels[LabelQoS] = "LS"
	pods := []TracePod{{Pod: p, Arrival: 0, Duration: 2 * time.Hour, Source: "test:half"}}
	penny := spotReplay(t, s, "penny", 42, pods...)
	def := spotReplay(t, s, "default", 42, pods...)
	if !nearly(penny.HeldGPUHoursByPool["od"], 1) || !nearly(def.HeldGPUHoursByPool["od"], 2) {
		t.Fatalf("held GPU-hours: penny %v, default %v; want 1 and 2", penny.HeldGPUHoursByPool, def.HeldGPUHoursByPool)
	}
	life := (3*time.Minute + 2*time.Hour).Hours()
	rep := &SpotReport{Runs: []*ElasticResult{def, penny}, Summary: map[string]SpotSummary{}}
	md := rep.Markdown()
	for _, row := range []string{
		fmt.Sprintf("| default | od | %.0f | %.0f | %.0f | %.0f%% | 0 |", life, def.BillByPool["od"], def.BillByPool["od"]-def.AllocatedByPool["od"], 100*2/life),
		fmt.Sprintf("| penny | od | %.0f | %.0f | %.0f | %.0f%% | 0 |", life, penny.BillByPool["od"], penny.BillByPool["od"]-penny.AllocatedByPool["od"], 100*1/life),
	} {
		if !strings.Contains(md, row) {
			t.Errorf("report lacks %q:\n%s", row, md)
		}
	}
}

// Each namespace is charged what its own pods' requests cost, and the
// report names who spent what when the trace has more than one.
func TestElasticCostByNamespace(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	a := spotTracePod("a", "LS", 1, 0, 2*time.Hour)
	a.Pod.Namespace = "team-a"
	b := spotTracePod("b", "LS", 1, 0, time.Hour)
	b.Pod.Namespace = "team-b"
	res := spotReplay(t, s, "default", 42, a, b)
	ta, tb := res.ByNamespace["team-a"], res.ByNamespace["team-b"]
	if ta == nil || tb == nil || len(res.ByNamespace) != 2 {
		t.Fatalf("by namespace %+v, want team-a and team-b", res.ByNamespace)
	}
	// The same shape of pod on the same instance type: team-a ran twice as
	// long, so it is charged twice as much.
	if ta.UsefulGPUHours != 2 || tb.UsefulGPUHours != 1 || math.Abs(ta.AllocatedUSD-2*tb.AllocatedUSD) > 0.01 ||
		math.Abs(ta.AllocatedUSD+tb.AllocatedUSD-res.AllocatedUSD) > 0.01 {
		t.Fatalf("team-a %+v, team-b %+v, allocated %v", *ta, *tb, res.AllocatedUSD)
	}
	rep := &SpotReport{Runs: []*ElasticResult{res}, Summary: map[string]SpotSummary{}}
	md := rep.Markdown()
	for _, row := range []string{
		fmt.Sprintf("| team-a | 2 | %.0f / 0.0 |", ta.AllocatedUSD),
		fmt.Sprintf("| team-b | 1 | %.0f / 0.0 |", tb.AllocatedUSD),
	} {
		if !strings.Contains(md, row) {
			t.Errorf("report lacks %q:\n%s", row, md)
		}
	}
	if strings.Index(md, "| team-a |") > strings.Index(md, "| team-b |") {
		t.Errorf("team-a spent more and comes first:\n%s", md)
	}
}

// A trainer on Spot nodes that live about an hour: every reclaim loses at
// most the half hour since the last checkpoint plus the restart, and the
// work still completes.
func TestElasticReclaimLosesWorkSinceCheckpoint(t *testing.T) {
	s := spotScenario(t, "4", "1h")
	res := spotReplay(t, s, "penny", 7, spotTracePod("train", "BE", 1, 0, 10*time.Hour))
	if res.Reclaims == 0 {
		t.Fatal("no reclaim in 10h on nodes that live 1h on average")
	}
	if res.PodsCompleted != 1 || !nearly(res.UsefulGPUHours, 10) {
		t.Fatalf("completed %d, useful %v GPU-h, want 1 and 10", res.PodsCompleted, res.UsefulGPUHours)
	}
	perReclaim := res.LostGPUHours / float64(res.Reclaims)
	if res.LostGPUHours <= 0 || perReclaim > (35*time.Minute).Hours()+1e-9 {
		t.Fatalf("lost %v GPU-h over %d reclaims: %v h each, want (0, 35m]", res.LostGPUHours, res.Reclaims, perReclaim)
	}
	if !nearly(res.AllocatedGPUHours, res.UsefulGPUHours+res.LostGPUHours) {
		t.Fatalf("allocated %v != useful %v + lost %v", res.AllocatedGPUHours, res.UsefulGPUHours, res.LostGPUHours)
	}
	if ns := res.ByNamespace[SimNamespace]; len(res.ByNamespace) != 1 || ns == nil || math.Abs(ns.LostGPUHours-res.LostGPUHours) > 0.01 ||
		math.Abs(ns.UsefulGPUHours-res.UsefulGPUHours) > 0.01 {
		t.Fatalf("by namespace %+v, want all of lost %v and useful %v in %s", res.ByNamespace, res.LostGPUHours, res.UsefulGPUHours, SimNamespace)
	}
	// The same trainer without checkpoints loses everything at each reclaim.
	s.Classes[1].Annotations = map[string]string{spotrisk.AnnotationWorkload: "training", spotrisk.AnnotationSpot: "only"}
	res2 := spotReplay(t, s, "penny", 7, spotTracePod("train", "BE", 1, 0, 3*time.Hour))
	if res2.PodsCompleted != 1 || !nearly(res2.UsefulGPUHours, 3) || res2.Reclaims == 0 {
		t.Fatalf("without checkpoints: %+v", res2)
	}
	if res2.LostGPUHours/float64(res2.Reclaims) <= res.LostGPUHours/float64(res.Reclaims) {
		t.Fatalf("without checkpoints each reclaim lost %v GPU-h, with %v: want more",
			res2.LostGPUHours/float64(res2.Reclaims), res.LostGPUHours/float64(res.Reclaims))
	}
}

// With the Penny agent (noticeCheckpoints) a trainer with a checkpoint hook
// saves its work when the notice comes: each reclaim that stops it loses at
// most the checkpoint's 20s and the restart, not the half hour since the
// periodic checkpoint; without the agent the same seed loses more. (A node
// reclaimed within its notice of joining never takes the trainer: the
// reclaims outnumber the checkpoints.)
func TestElasticNoticeCheckpoints(t *testing.T) {
	s := spotScenario(t, "4", "1h")
	s.Classes[1].Annotations["penny.dev/checkpoint"] = "http://:8080/checkpoint"
	run := func(agent bool) *ElasticResult {
		s.Policies[1].NoticeCheckpoints = agent
		return spotReplay(t, s, "penny", 7, spotTracePod("train", "BE", 1, 0, 10*time.Hour))
	}
	with, without := run(true), run(false)
	if with.NoticeCheckpoints == 0 || with.NoticeCheckpoints > with.Reclaims || with.PodsReclaimed != 1 {
		t.Fatalf("reclaims %d, notice checkpoints %d, pods reclaimed %d: want the trainer to checkpoint at its reclaims", with.Reclaims, with.NoticeCheckpoints, with.PodsReclaimed)
	}
	if perStop := with.LostGPUHours / float64(with.NoticeCheckpoints); perStop > (5*time.Minute+20*time.Second).Hours()+1e-9 {
		t.Fatalf("lost %v GPU-h per reclaim with notice checkpoints, want at most the 20s checkpoint + 5m restart", perStop)
	}
	if without.NoticeCheckpoints != 0 || without.LostGPUHours <= with.LostGPUHours {
		t.Fatalf("without the agent: %d notice checkpoints, lost %v GPU-h (with: %v); want none and more lost",
			without.NoticeCheckpoints, without.LostGPUHours, with.LostGPUHours)
	}
	if with.PodsCompleted != 1 || !nearly(with.UsefulGPUHours, 10) {
		t.Fatalf("completed %d, useful %v GPU-h, want 1 and 10", with.PodsCompleted, with.UsefulGPUHours)
	}
}

// A Spot-preferring pod whose Spot pool is full falls back to on-demand
// once its fallbackAfter (10m, the deployed profile) has passed.
func TestElasticFallback(t *testing.T) {
	s := spotScenario(t, "1", "0s")
	res := spotReplay(t, s, "penny", 42,
		spotTracePod("first", "BE", 1, 0, 5*time.Hour),
		spotTracePod("second", "BE", 1, time.Minute, 5*time.Hour))
	if res.Fallbacks != 1 || res.NodeHoursByPool["od"] == 0 {
		t.Fatalf("fallbacks %d pools %v", res.Fallbacks, res.NodeHoursByPool)
	}
	// spot-first puts the second pod on on-demand too, once the Spot pool is
	// full, but nothing made it wait: no fallback.
	if naive := spotReplay(t, s, "spot-first", 42,
		spotTracePod("first", "BE", 1, 0, 5*time.Hour),
		spotTracePod("second", "BE", 1, time.Minute, 5*time.Hour)); naive.Fallbacks != 0 || naive.NodeHoursByPool["od"] == 0 {
		t.Fatalf("spot-first: fallbacks %d pools %v; want 0 and an on-demand node", naive.Fallbacks, naive.NodeHoursByPool)
	}
	// second waits from 1m to 11m (its fallback), then 3m for the node.
	if res.QueueDelay.Max != (13 * time.Minute).Seconds() {
		t.Fatalf("max delay %v, want 780s", res.QueueDelay.Max)
	}
	// The Spot pool's one node is launched at once and removed 10m after
	// first ends (3m + 5h): the pool is at its max all that time, the
	// on-demand pool (max 4) never.
	if at := res.HoursAtMaxByPool; !nearly(at["spot"], (5*time.Hour+13*time.Minute).Hours()) || at["od"] != 0 {
		t.Fatalf("hours at max %v, want spot %v and od 0", at, (5*time.Hour + 13*time.Minute).Hours())
	}
	// With fallback-after 0s the second pod never waits for Spot: it takes
	// the on-demand node at once, as an allow pod would, and that is no
	// fallback (spotrisk.Class.FellBack).
	s.Classes[1].Annotations[spotrisk.AnnotationFallbackAfter] = "0s"
	res = spotReplay(t, s, "penny", 42,
		spotTracePod("first", "BE", 1, 0, 5*time.Hour),
		spotTracePod("second", "BE", 1, time.Minute, 5*time.Hour))
	if res.Fallbacks != 0 || res.NodeHoursByPool["od"] == 0 || res.QueueDelay.Max != (3*time.Minute).Seconds() {
		t.Fatalf("fallback-after 0s: fallbacks %d, pools %v, max delay %vs; want 0, an on-demand node and 180s",
			res.Fallbacks, res.NodeHoursByPool, res.QueueDelay.Max)
	}
}

// The elastic fleet times a Spot-preferring pod's wait with the profile's
// fallbackAfter, as the plugin does: "second" (arriving at 1m, the one Spot
// node taken by "first") may use on-demand capacity at 1m + fallbackAfter
// and waits 3m more for the node. The replay used to time every wait with
// the default 10m: with 2m the pod waited until 11m, and with 30m the
// autoscaler, asked at 11m while the plugin still kept it off on-demand
// nodes, never asked again, and the pod waited for the Spot node to free 5h
// later.
func TestElasticWaitIsTheProfilesFallbackAfter(t *testing.T) {
	s := spotScenario(t, "1", "0s")
	p, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		fallback string
		delay    time.Duration
	}{{"2m", 5 * time.Minute}, {"30m", 33 * time.Minute}} {
		res, err := ElasticReplay(context.Background(), ElasticOptions{Scenario: s, Policy: p, Seed: 42, SchedulerConfig: withFallbackAfter(t, c.fallback),
			Trace: &Trace{Pods: []TracePod{
				spotTracePod("first", "BE", 1, 0, 5*time.Hour),
				spotTracePod("second", "BE", 1, time.Minute, 5*time.Hour)}}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Fallbacks != 1 || res.QueueDelay.Max != c.delay.Seconds() {
			t.Errorf("fallbackAfter %s: %d fallbacks, longest wait %v s; want 1 and %v s", c.fallback, res.Fallbacks, res.QueueDelay.Max, c.delay.Seconds())
		}
	}
}

// The delay a prefer pod spends waiting out its fallback is its class's,
// not the service's beside it: the Spot pool's one node goes to "first",
// "second" waits 10m for Spot and 3m for an on-demand node, and the
// service waits only for the on-demand node launched at its arrival.
func TestElasticQueueDelayByClass(t *testing.T) {
	s := spotScenario(t, "1", "0s")
	res := spotReplay(t, s, "penny", 42,
		spotTracePod("first", "BE", 1, 0, 5*time.Hour),
		spotTracePod("second", "BE", 1, time.Minute, 5*time.Hour),
		spotTracePod("service", "LS", 1, 2*time.Minute, 5*time.Hour))
	provisioning, fellBack := (3 * time.Minute).Seconds(), (13 * time.Minute).Seconds()
	by := res.QueueDelayByClass
	if len(by) != 2 || by["never"].Max != provisioning || by["never"].Delayed != 1 || by["prefer"].Max != fellBack || by["prefer"].Delayed != 2 {
		t.Fatalf("queue delay by class %+v, want never at most %vs (1 pod) and prefer at most %vs (2 pods)", by, provisioning, fellBack)
	}
	rep := &SpotReport{Runs: []*ElasticResult{res}}
	// The prefer pods waited 180 s and 780 s: a nearest-rank median of
	// two is the shorter.
	if md := rep.Markdown(); !strings.Contains(md, "| penny | 180 / 180 / 180 | - | - | 180 / 780 / 780 | - |") {
		t.Fatalf("Markdown lacks the class delay row:\n%s", md)
	}
}

func TestSpotScenarioErrors(t *testing.T) {
	bad := strings.NewReplacer("SPOTMAX", "4", "MTTR", "soon").Replace(tinyScenario)
	_, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(bad))
	if err == nil || !strings.Contains(err.Error(), `"soon" is not a duration`) {
		t.Fatalf("bad duration: %v", err)
	}
	bad = strings.NewReplacer("SPOTMAX", "4", "MTTR", "1h",
		"capacityType: on-demand", "capacityType: ondemand",
		"instanceType: g5.8xlarge, capacityType: spot", "instanceType: g5.8xlarg, capacityType: spot").Replace(tinyScenario)
	_, err = ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(bad))
	for _, want := range []string{
		`tiny.yaml:15: pools[0].capacityType: capacity type "ondemand": want one of spot, on-demand, reserved`,
		`tiny.yaml:16: pools[1].instanceType: "g5.8xlarg" is not in the catalog`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	// A pool without a valid capacity type has no price to miss: the
	// capacity type is the one thing to fix there.
	if err != nil && strings.Contains(err.Error(), "pools[0].instanceType") {
		t.Errorf("error %v also blames pools[0]'s price, which only its capacity type left out", err)
	}
	for name, c := range map[string]struct{ yaml, want string }{
		"empty": {"", "tiny.yaml: empty file: a scenario needs at least region and pools"},
		// The parser's own words name no tab.
		"tab":           {strings.Replace(tinyScenario, "- {name: od,", "\t- {name: od,", 1), "tiny.yaml:15: the line is indented with a tab (yaml: line 15: found character that cannot start any token): YAML indents with spaces only"},
		"unknown field": {strings.Replace(tinyScenario, "max: 4,", "maxx: 4,", 1), `tiny.yaml:15: pools[0].maxx: unknown field "maxx"; this part of a scenario takes name, instanceType, capacityType, zone, min, max,`},
		"negative":      {strings.Replace(tinyScenario, "provisioningDelay: 3m", "provisioningDelay: -3m", 1), `tiny.yaml:15: pools[0].provisioningDelay: "-3m" is negative`},
		"half a node":   {strings.Replace(tinyScenario, "max: 4,", "max: 1.5,", 1), `tiny.yaml:15: pools[0].max: "1.5" is not a whole number of nodes`},
		"other region":  {strings.Replace(tinyScenario, "zone: us-east-1a, max: 4,", "zone: eu-west-1a, max: 4,", 1), `tiny.yaml:15: pools[0].zone: "eu-west-1a" is not a zone of region us-east-1`},
		"nan price":     {strings.Replace(tinyScenario, "zone: us-east-1a, max: 4,", "zone: us-east-1a, hourlyPrice: .nan, max: 4,", 1), "tiny.yaml:15: pools[0].hourlyPrice: NaN: a price must be a finite number >= 0"},
		// A misspelt class annotation is the scenario's error, named there,
		// even if no trace row ever matches the rule.
		"class annotation": {strings.Replace(tinyScenario, "- {qos: [BE], annotations: {penny.dev/workload: training,", "- {qos: [none-such], annotations: {penny.dev/workload: trainig,", 1),
			`tiny.yaml:13: classes[1].annotations: annotation penny.dev/workload="trainig" is not valid: use one of training, inference, batch, dev`},
	} {
		y := strings.NewReplacer("SPOTMAX", "4", "MTTR", "1h").Replace(c.yaml)
		if _, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(y)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// An error about a top-level field names that field's line, as errors about
// a pool's do; they all named line 1. A field left out is named at line 1.
func TestSpotScenarioTopLevelErrorsNameTheirLine(t *testing.T) {
	y := strings.NewReplacer("SPOTMAX", "4", "MTTR", "1h").Replace(tinyScenario)
	for name, c := range map[string]struct{ from, to, want string }{
		"empty region":   {"region: us-east-1", `region: ""`, `tiny.yaml:3: region: required`},
		"missing region": {"region: us-east-1\n", "", `tiny.yaml:1: region: required`},
		"unknown sharing policy": {"gpuSharing: [penny]", "gpuSharing:\n- penny\n- pennyy",
			`tiny.yaml:9: gpuSharing[1]: `},
	} {
		bad := strings.Replace(y, c.from, c.to, 1)
		if bad == y {
			t.Fatalf("%s: %q is not in the scenario", name, c.from)
		}
		_, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(bad))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		} else if strings.Contains(err.Error(), "catalog has no") {
			t.Errorf("%s: %v: without a region, no price is missing", name, err)
		}
	}
}

// Values past the scenario's limits broke the replay rather than modelling
// a larger fleet: min nodes started by the billion hung it, a delay near a
// Duration's end overflowed the clock (pods never ran, a negative bill) and
// a price near a float's end made the bill +Inf, which JSON cannot hold. The
// limits themselves are accepted.
func TestSpotScenarioRefusesValuesPastItsLimits(t *testing.T) {
	y := strings.NewReplacer("SPOTMAX", "4", "MTTR", "1h").Replace(tinyScenario)
	for name, c := range map[string]struct{ from, to, want string }{
		"max": {"max: 4,", "max: 9223372036854775807,",
			`tiny.yaml:15: pools[0].max: 9223372036854775807 nodes: a pool may have at most 10000; split the fleet into more pools`},
		"min": {"max: 4,", "min: 100000000, max: 100000000,", `tiny.yaml:15: pools[0].max: 100000000 nodes: a pool may have at most 10000`},
		"provisioningDelay": {"provisioningDelay: 3m, scaleDownAfter: 10m}", "provisioningDelay: 2562047h, scaleDownAfter: 10m}",
			`tiny.yaml:15: pools[0].provisioningDelay: 2562047h0m0s: want at most 8760h0m0s (a year)`},
		"scaleDownAfter": {"scaleDownAfter: 10m,\n", "scaleDownAfter: 8761h,\n",
			`tiny.yaml:16: pools[1].scaleDownAfter: 8761h0m0s: want at most 8760h0m0s (a year)`},
		"restartOverhead": {"restartOverhead: 5m", "restartOverhead: 2562047h", `tiny.yaml:5: restartOverhead: 2562047h0m0s: want at most 8760h0m0s (a year)`},
		"hourlyPrice": {"zone: us-east-1a, max: 4,", "zone: us-east-1a, hourlyPrice: 1e308, max: 4,",
			`tiny.yaml:15: pools[0].hourlyPrice: 1e+308: a price must be a finite number >= 0 and at most 10000 USD per hour`},
	} {
		bad := strings.Replace(y, c.from, c.to, 1)
		if bad == y {
			t.Fatalf("%s: %q is not in the scenario", name, c.from)
		}
		if _, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(bad)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	atLimits := strings.NewReplacer("max: 4,", "max: 10000, hourlyPrice: 10000,", "restartOverhead: 5m", "restartOverhead: 8760h",
		"provisioningDelay: 3m", "provisioningDelay: 8760h", "scaleDownAfter: 10m", "scaleDownAfter: 8760h").Replace(y)
	if _, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(atLimits)); err != nil {
		t.Fatalf("a scenario at the limits: %v", err)
	}
}

// A duration the scenario cannot read is reported with the field that holds
// it, as every other error is (docs/spot.md, Scenario file): a pool's line
// holds a dozen fields.
func TestSpotScenarioDurationErrorsNameTheField(t *testing.T) {
	y := strings.NewReplacer("SPOTMAX", "4", "MTTR", "1h").Replace(tinyScenario)
	for name, c := range map[string]struct{ yaml, want string }{
		"top level": {strings.Replace(y, "restartOverhead: 5m", "restartOverhead: 5", 1),
			`tiny.yaml:5: restartOverhead: "5" is not a duration: use a Go duration such as 90s, 10m or 4h`},
		"pool": {strings.Replace(y, "scaleDownAfter: 10m,\n", "scaleDownAfter: -10m,\n", 1),
			`tiny.yaml:16: pools[1].scaleDownAfter: "-10m" is negative: a delay or interval must be 0 or more`},
		"pool, next line": {strings.Replace(y, "meanTimeToReclaim: 1h", "meanTimeToReclaim: soon", 1),
			`tiny.yaml:17: pools[1].meanTimeToReclaim: "soon" is not a duration`},
		"class": {strings.Replace(y, "- {qos: [LS], annotations:", "- {qos: [LS], minRuntime: 1 hour, annotations:", 1),
			`tiny.yaml:12: classes[0].minRuntime: "1 hour" is not a duration`},
	} {
		if _, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(c.yaml)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// A value of the wrong kind is reported at its field, not by the line alone
// and the Go type the decoder wanted: a pool's line holds a dozen fields.
func TestSpotScenarioTypeErrorsNameTheField(t *testing.T) {
	y := strings.NewReplacer("SPOTMAX", "4", "MTTR", "1h").Replace(tinyScenario)
	for name, c := range map[string]struct{ old, new, want string }{
		"text for a count": {"max: 4,", "max: lots,",
			`tiny.yaml:15: pools[0].max: want a whole number, not "lots"`},
		"text for a price": {"zone: us-east-1a, max: 4,", "zone: us-east-1a, hourlyPrice: cheap, max: 4,",
			`tiny.yaml:15: pools[0].hourlyPrice: want a number, not "cheap"`},
		"text for a list": {"gpuSharing: [penny]", "gpuSharing: penny",
			`tiny.yaml:7: gpuSharing: want a list, not "penny"`},
		"a map for a list": {"gpuSharing: [penny]", "gpuSharing: {penny: true}",
			`tiny.yaml:7: gpuSharing: want a list, not a map`},
		// qos, on the same line, is a list too: the field is told by the
		// type it decodes into.
		"a list for a map": {"annotations: {penny.dev/workload: inference}", "annotations: [penny.dev/workload]",
			`tiny.yaml:12: classes[0].annotations: want a map of key: value, not a list`},
		"text for a flag": {"spotTaint: true", "spotTaint: maybe",
			`tiny.yaml:6: spotTaint: want true or false, not "maybe"`},
		"text for a share": {"- {qos: [LS], annotations:", "- {qos: [LS], share: half, annotations:",
			`tiny.yaml:12: classes[0].share: want a number, not "half"`},
		"a list for a duration": {"restartOverhead: 5m", "restartOverhead: [5m]",
			`tiny.yaml:5: restartOverhead: want a Go duration such as 90s, 10m or 4h, not a list`},
	} {
		_, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(strings.Replace(y, c.old, c.new, 1)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// Two bad values on one line are each placed at their own field.
	_, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(strings.Replace(y, "max: 4,", "max: lots, min: few,", 1)))
	for _, want := range []string{`tiny.yaml:15: pools[0].max: want a whole number, not "lots"`, `tiny.yaml:15: pools[0].min: want a whole number, not "few"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("two on a line: %v, want %q", err, want)
		}
	}
}

// A class rule's penny.dev/ annotation that Penny does not read (a misspelt
// one) is refused where it is written: the rule would still match and its
// pods would run as if it said nothing.
func TestSpotScenarioRefusesUnknownPennyAnnotations(t *testing.T) {
	y := strings.NewReplacer("SPOTMAX", "4", "MTTR", "1h").Replace(tinyScenario)
	for name, c := range map[string]struct{ old, new, want string }{
		"flow style": {"penny.dev/workload: inference", "penny.dev/workoad: inference",
			"tiny.yaml:12: classes[0].annotations.penny.dev/workoad: Penny reads no such annotation, so the rule would not change how its pods run: use one of penny.dev/workload, penny.dev/spot, "},
		"block style, on the key's line": {"- {qos: [BE], annotations: {penny.dev/workload: training, penny.dev/checkpoint-interval: 30m}}",
			"- qos: [BE]\n  annotations:\n    penny.dev/workload: training\n    penny.dev/checkpoint-intervall: 30m",
			"tiny.yaml:16: classes[1].annotations.penny.dev/checkpoint-intervall: Penny reads no such annotation"},
		// A gang's name must be a label, which a class rule cannot set.
		"gang name": {"penny.dev/workload: inference", "penny.dev/workload: inference, penny.dev/gang: g",
			"tiny.yaml:12: classes[0].annotations.penny.dev/gang: Penny reads no such annotation"},
	} {
		_, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(strings.Replace(y, c.old, c.new, 1)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// Every key the plugins and the agent read is taken, as are keys
	// outside penny.dev/ (a team's own).
	for _, k := range classAnnotations {
		v := map[string]string{spotrisk.AnnotationSpot: "allow", spotrisk.AnnotationCheckpointInterval: "30m", spotrisk.AnnotationMaxReclaimRisk: "0.1",
			spotrisk.AnnotationExpectedRuntime: "2h", spotrisk.AnnotationFallbackAfter: "10m", gang.KeySize: "2", gang.KeyTimeout: "90s",
			gang.KeySameZone: "true", gang.KeySameCapacityType: "true"}[k]
		if v == "" {
			v = "x"
		}
		rule := fmt.Sprintf("penny.dev/workload: training, %q: %q, example.com/team: ml", k, v)
		if k == spotrisk.AnnotationWorkload {
			rule = "penny.dev/workload: training, example.com/team: ml"
		}
		if _, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(strings.Replace(y, "penny.dev/workload: inference", rule, 1))); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
}

// A scenario is refused where a part of it would be silently ignored: a
// second policies entry for a policy (only the first is read), a share that
// is not a number (NaN takes every pod), a second YAML document.
func TestSpotScenarioRefusesWhatItWouldIgnore(t *testing.T) {
	y := strings.NewReplacer("SPOTMAX", "4", "MTTR", "1h").Replace(tinyScenario)
	for name, c := range map[string]struct{ yaml, want string }{
		"policy twice": {strings.Replace(y, "- {policy: penny, tolerateSpot: true}", "- {policy: penny, tolerateSpot: true}\n- {policy: Penny, tolerateSpot: false}", 1),
			"tiny.yaml:11: policies[2].policy: Penny is already listed as policies[1] (line 10): give each policy one entry"},
		"nan share": {strings.Replace(y, "- {qos: [LS], annotations:", "- {qos: [LS], share: .nan, annotations:", 1),
			"tiny.yaml:12: classes[0].share: NaN: want a fraction in (0, 1]"},
		"second document": {y + "---\npools:\n- {name: big, instanceType: g5.48xlarge, capacityType: on-demand, zone: us-east-1a, max: 9}\n",
			`tiny.yaml:19: a second YAML document starts here: a scenario is one document; move its fields into the first and remove the "---"`},
	} {
		if _, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(c.yaml)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// An empty document after the scenario, as some tools end a file, loses
	// nothing.
	if _, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(y+"---\n")); err != nil {
		t.Errorf("trailing empty document: %v", err)
	}
}

// The catalog prices a node by its instance type, capacity type and zone, not
// by its pool: one pool's hourlyPrice priced another pool of the same type,
// capacity type and zone that gave none, and two pools' prices were refused
// as "prices[56] ... listed twice", an index of no file the user wrote.
func TestSpotScenarioPoolsThatShareAPriceAgreeOnIt(t *testing.T) {
	const head = "region: us-east-1\npools:\n"
	a := "- {name: a, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 1, hourlyPrice: 1}\n"
	for name, c := range map[string]struct{ pools, want string }{
		"one priced": {a + "- {name: b, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 3}\n",
			"mine.yaml:4: pools[1].hourlyPrice: pools[0] (a, line 3) has the same instanceType, capacityType and zone"},
		"two prices": {a + "- {name: b, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 3, hourlyPrice: 2}\n",
			"mine.yaml:4: pools[1].hourlyPrice: pools[0] (a, line 3)"},
		"two buckets": {"- {name: a, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, max: 1, advertisedInterruption: \"<5%\"}\n" +
			"- {name: b, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, max: 3, advertisedInterruption: \">20%\"}\n",
			"mine.yaml:4: pools[1].advertisedInterruption: pools[0] (a, line 3)"},
	} {
		_, err := ParseSpotScenarioFrom("mine.yaml", []byte(head+c.pools), func(string) ([]byte, error) { return nil, fmt.Errorf("no files here") })
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// Pools that agree (a different min, max or delay) are one price.
	s := scenarioOf(t, head+a+"- {name: b, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 3, hourlyPrice: 1, scaleDownAfter: 1h}\n"+
		"- {name: c, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1b, max: 3}\n")
	for i, want := range []float64{1, 1, 2.448} {
		if _, price, _, err := s.poolShape(&s.Pools[i]); err != nil || price.NodeHourly != want {
			t.Errorf("pool %s: %v USD/h (%v), want %v", s.Pools[i].Name, price.NodeHourly, err, want)
		}
	}
}

// hourlyPrice: 0 was read as left out: a reserved pool, which the catalog
// lets cost nothing more (paid up front), was billed at the on-demand price,
// and an on-demand or Spot pool took the catalog's price unasked.
func TestSpotScenarioHourlyPriceZero(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
pools:
- {name: r, instanceType: g5.12xlarge, capacityType: reserved, zone: us-east-1a, min: 1, max: 1, hourlyPrice: 0}
`)
	if p, ok := s.PriceCatalog().Lookup("g5.12xlarge", pricing.Reserved, "us-east-1", "us-east-1a"); !ok || p.NodeHourly != 0 {
		t.Errorf("reserved at hourlyPrice 0: %v USD/h (%v), want 0", p.NodeHourly, ok)
	}
	if res := spotReplay(t, s, "default", 42, spotTracePod("p", "", 1, 0, time.Hour)); res.BillUSD != 0 || res.BillByPool["r"] != 0 {
		t.Errorf("reserved pool paid up front billed %v (by pool %v), want 0", res.BillUSD, res.BillByPool)
	}
	_, err := ParseSpotScenarioFrom("mine.yaml", []byte("region: us-east-1\npools:\n- {name: od, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 2, hourlyPrice: 0}\n"),
		func(string) ([]byte, error) { return nil, fmt.Errorf("no files here") })
	if want := "mine.yaml:3: pools[0].hourlyPrice: 0: only reserved capacity, paid up front, may cost nothing"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("on-demand at hourlyPrice 0: %v, want %q", err, want)
	}
}

// A scenario that names no catalog is priced by the one Penny ships, and a
// Spot pool that gives no meanTimeToReclaim is reclaimed as it advertises
// (0s still means never).
func TestSpotScenarioDefaults(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
pools:
- {name: od, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 2}
- {name: spot, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, max: 2, advertisedInterruption: "5-10%"}
- {name: quiet, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1b, max: 2, advertisedInterruption: "5-10%", meanTimeToReclaim: 0s}
- {name: unrated, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1c, max: 2}
`)
	if s.Catalog != BuiltInCatalog {
		t.Errorf("catalog %q, want %q", s.Catalog, BuiltInCatalog)
	}
	if p, ok := s.PriceCatalog().Lookup("g5.8xlarge", pricing.OnDemand, "us-east-1", "us-east-1a"); !ok || p.NodeHourly != 2.448 {
		t.Errorf("g5.8xlarge on-demand: %+v %v, want the shipped 2.448 USD/h", p, ok)
	}
	// 5-10% a month is taken as 7.5%: a Poisson rate of -ln(0.925)/730 h.
	want := time.Duration(float64(time.Hour) * pricing.HoursPerMonth / -math.Log(1-0.075))
	if got := s.Pools[1].MeanTimeToReclaim.Duration; got < want-time.Second || got > want+time.Second {
		t.Errorf("advertised 5-10%%: mean time to reclaim %v, want %v", got, want)
	}
	if s.Pools[2].MeanTimeToReclaim.Duration != 0 || s.Pools[3].MeanTimeToReclaim.Duration != 0 || s.Pools[0].MeanTimeToReclaim.Duration != 0 {
		t.Errorf("0s, no bucket and on-demand must stay unreclaimed: %v, %v, %v",
			s.Pools[2].MeanTimeToReclaim, s.Pools[3].MeanTimeToReclaim, s.Pools[0].MeanTimeToReclaim)
	}
	// Delays left out take their defaults; 0s written is no delay.
	if p := s.Pools[0]; p.ProvisioningDelay.Duration != DefaultProvisioningDelay || p.ScaleDownAfter.Duration != DefaultScaleDownAfter || s.RestartOverhead.Duration != DefaultRestartOverhead {
		t.Errorf("defaults: provisioning %v, scale-down %v, restart %v", p.ProvisioningDelay, p.ScaleDownAfter, s.RestartOverhead)
	}
	zero := scenarioOf(t, `
region: us-east-1
restartOverhead: 0s
pools:
- {name: od, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 2, provisioningDelay: 0s, scaleDownAfter: 0s}
`)
	if p := zero.Pools[0]; p.ProvisioningDelay.Duration != 0 || p.ScaleDownAfter.Duration != 0 || zero.RestartOverhead.Duration != 0 {
		t.Errorf("0s written: provisioning %v, scale-down %v, restart %v; want none", p.ProvisioningDelay, p.ScaleDownAfter, zero.RestartOverhead)
	}
	// Policies it does not list run as they mean to.
	for policy, want := range map[string]PolicyTweaks{
		"default":    {Policy: "default"},
		"spot-first": {Policy: "spot-first", TolerateSpot: true},
		"penny":      {Policy: "penny", TolerateSpot: true, NoticeCheckpoints: true},
	} {
		if got := s.tweaks(policy); got != want {
			t.Errorf("%s: %+v, want %+v", policy, got, want)
		}
	}
	// With the Spot taint and no policies listed, Penny still runs a
	// checkpointing trainer on Spot and default keeps it off.
	s.SpotTaint = true
	s.Classes = []ClassRule{{QoS: []string{"BE"}, Annotations: map[string]string{"penny.dev/workload": "training", "penny.dev/checkpoint-interval": "30m"}}}
	pod := spotTracePod("train", "BE", 1, 0, time.Hour)
	if penny := spotReplay(t, s, "penny", 42, pod); penny.BillByCapacity["spot"] == 0 {
		t.Errorf("penny kept the trainer off Spot: %v", penny.BillByCapacity)
	}
	if def := spotReplay(t, s, "default", 42, pod); def.BillByCapacity["spot"] != 0 {
		t.Errorf("default ran the trainer on Spot: %v", def.BillByCapacity)
	}
}

// shapesScenario is a fleet of two on-demand pools, 1-GPU and 4-GPU nodes,
// for Penny only, with classes (YAML list items).
func shapesScenario(t *testing.T, classes string) *SpotScenario {
	t.Helper()
	s, err := ParseSpotScenario("../../benchmarks/scenarios/shapes.yaml", []byte(`
name: shapes
region: us-east-1
catalog: ../../deploy/pricing/catalog.yaml
gpuSharing: [penny]
policies:
- {policy: penny, tolerateSpot: true}
classes:
`+classes+`pools:
- {name: one, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 10, provisioningDelay: 3m, scaleDownAfter: 10m}
- {name: four, instanceType: g5.12xlarge, capacityType: on-demand, zone: us-east-1a, max: 10, provisioningDelay: 3m, scaleDownAfter: 10m}
`))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Penny's autoscaler sizes a new node by the work that could fill it: a
// lone service gets a 1-GPU node (a 4-GPU one is cheaper per slot only when
// filled), while a burst of services fills 4-GPU nodes.
func TestElasticExpanderCountsPeers(t *testing.T) {
	s := shapesScenario(t, "- {qos: [LS], annotations: {penny.dev/workload: inference}}\n")
	lone := spotReplay(t, s, "penny", 42, spotTracePod("serve", "LS", 1, 0, 2*time.Hour))
	if lone.NodeHoursByPool["four"] != 0 || lone.NodeHoursByPool["one"] == 0 {
		t.Errorf("a lone service: node-hours %v, want only the 1-GPU pool", lone.NodeHoursByPool)
	}
	var burst []TracePod
	for i := 0; i < 8; i++ {
		burst = append(burst, spotTracePod(fmt.Sprintf("serve-%d", i), "LS", 1, 0, 2*time.Hour))
	}
	many := spotReplay(t, s, "penny", 42, burst...)
	if many.NodeHoursByPool["four"] <= many.NodeHoursByPool["one"] {
		t.Errorf("a burst of services: node-hours %v, want mostly 4-GPU nodes", many.NodeHoursByPool)
	}
}

// The pods that could fill a new node are all those waiting that pass their
// filters on its pool's template, whatever their Spot policy: Cluster
// Autoscaler hands penny-scheduler's expander every pending pod an option
// helps, and BestOptions counts each one's peers among all of them
// (spotrisk.ExpanderServer). Two services and two batch jobs arriving
// together fill a 4-GPU node; until 2026-12-02 the replay counted only the
// peers of the pod's own Spot policy, sized each node for two pods, and
// launched four 1-GPU nodes.
func TestElasticExpanderPeersAreEveryWaitingPodOfTheOption(t *testing.T) {
	s := shapesScenario(t, "- {qos: [LS], annotations: {penny.dev/workload: inference}}\n- {qos: [BE], annotations: {penny.dev/workload: batch}}\n")
	var pods []TracePod
	for i, qos := range []string{"LS", "BE", "LS", "BE"} {
		pods = append(pods, spotTracePod(fmt.Sprintf("pod-%d", i), qos, 1, 0, 2*time.Hour))
	}
	res := spotReplay(t, s, "penny", 42, pods...)
	// The first pod asks before the others arrive and gets a 1-GPU node,
	// which the 4-GPU node launched for the rest leaves empty.
	if res.NodeHoursByPool["four"] <= res.NodeHoursByPool["one"] {
		t.Errorf("two services and two batch jobs at once: node-hours %v, want mostly a 4-GPU node", res.NodeHoursByPool)
	}
}

// The autoscaler ranks pools with the SpotRisk args of the profile the
// replay runs, as penny-scheduler's expander does: a restart overhead long
// enough that a reclaim costs more than Spot saves grows on-demand for a
// checkpointing trainer the default args would put on Spot. (It ranked
// with the default args whatever the profile said.)
func TestElasticExpanderUsesTheProfilesSpotRiskArgs(t *testing.T) {
	// fallback-after 0s: the trainer may use on-demand at once, so both
	// pools pass its filters and the ranking alone decides.
	s := scenarioOf(t, `
name: overhead
region: us-east-1
policies:
- {policy: penny, tolerateSpot: true}
classes:
- {qos: [BE], annotations: {penny.dev/workload: training, penny.dev/checkpoint-interval: 30m, penny.dev/fallback-after: 0s}}
pools:
- {name: od, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 4, provisioningDelay: 3m, scaleDownAfter: 10m}
- {name: spot, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, max: 4, provisioningDelay: 3m, scaleDownAfter: 10m,
   advertisedInterruption: "5-10%", meanTimeToReclaim: 0s}
`)
	p, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	replay := func(cfg []byte) *ElasticResult {
		t.Helper()
		res, err := ElasticReplay(context.Background(), ElasticOptions{Scenario: s, Policy: p, Seed: 42, SchedulerConfig: cfg,
			Trace: &Trace{Pods: []TracePod{spotTracePod("train", "BE", 1, 0, 2*time.Hour)}}})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := replay(nil); res.NodeHoursByPool["spot"] == 0 || res.NodeHoursByPool["od"] != 0 {
		t.Fatalf("shipped profile: node-hours %v, want only Spot", res.NodeHoursByPool)
	}
	// 20000h x the 5-10% bucket's ~1e-4 reclaims an hour doubles Spot's
	// expected cost, past on-demand's price (2.5x Spot's here).
	if res := replay(shippedConfigWith(t, "restartOverhead: 5m", "restartOverhead: 20000h")); res.NodeHoursByPool["od"] == 0 || res.NodeHoursByPool["spot"] != 0 {
		t.Fatalf("profile with restartOverhead 20000h: node-hours %v, want only on-demand", res.NodeHoursByPool)
	}
}

// A gang under the penny policy: its first member finds the gang incomplete
// and waits, pending in the API as in a cluster, so the gang plugin counts
// it when the second arrives; the autoscaler brings a node per member and
// both run. (Before pending pods were kept, no gang ever started.)
func TestElasticPennyGangRuns(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	var pods []TracePod
	for i := range 2 {
		p := spotTracePod(fmt.Sprint("job-", i), "BE", 1, 0, time.Hour)
		p.Pod.Labels[gang.LabelName], p.Pod.Labels[gang.KeySize] = "job", "2"
		pods = append(pods, p)
	}
	res := spotReplay(t, s, "penny", 42, pods...)
	if res.PodsCompleted != 2 || res.NeverScheduled != 0 || res.UsefulGPUHours != 2 {
		t.Fatalf("gang: completed %d, never scheduled %d, useful %v GPU-h; want 2, 0, 2", res.PodsCompleted, res.NeverScheduled, res.UsefulGPUHours)
	}
}

// A class share is drawn per job: the members of a gang get one class.
func TestSpotScenarioShareIsPerGang(t *testing.T) {
	s, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(strings.Replace(
		strings.NewReplacer("SPOTMAX", "4", "MTTR", "0s").Replace(tinyScenario),
		"- {qos: [BE], annotations: {penny.dev/workload: training, penny.dev/checkpoint-interval: 30m}}",
		"- {qos: [BE], share: 0.5, annotations: {penny.dev/workload: training, penny.dev/checkpoint-interval: 30m}}\n- {qos: [BE], annotations: {penny.dev/workload: training}}", 1)))
	if err != nil {
		t.Fatal(err)
	}
	classes := map[string]int{}
	for g := range 40 {
		var seen []string
		for m := range 2 {
			p := spotTracePod(fmt.Sprintf("job-%d-%d", g, m), "BE", 1, 0, 2*time.Hour)
			p.Pod.Labels[gang.LabelName] = fmt.Sprint("job-", g)
			s.annotate(p.Pod, p.Duration, 42)
			seen = append(seen, p.Pod.Annotations["penny.dev/checkpoint-interval"])
		}
		if seen[0] != seen[1] {
			t.Fatalf("gang %d: members got checkpoint intervals %q and %q", g, seen[0], seen[1])
		}
		classes[seen[0]]++
	}
	if len(classes) != 2 {
		t.Fatalf("classes drawn %v: want both rules to take some gangs", classes)
	}
}

// A gang's members may go on a node already up with room: the autoscaler
// launches nodes only for the rest, and only once the whole gang has
// arrived, all in one pool.
func TestElasticGangUsesNodesAlreadyUp(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	first := spotTracePod("first", "BE", 1, 0, time.Hour)
	pods := []TracePod{first}
	for i := range 2 {
		p := spotTracePod(fmt.Sprint("job-", i), "BE", 1, time.Hour+5*time.Minute, time.Hour)
		p.Pod.Labels[gang.LabelName], p.Pod.Labels[gang.KeySize] = "job", "2"
		pods = append(pods, p)
	}
	res := spotReplay(t, s, "penny", 42, pods...)
	// first's node (up from 0:03 to 1:03, then empty) takes one member; one
	// more node is launched for the other.
	if res.PodsCompleted != 3 || res.ScaleUps != 2 {
		t.Fatalf("completed %d pods with %d scale-ups; want 3 pods, 2 scale-ups (one node reused)", res.PodsCompleted, res.ScaleUps)
	}
}

// A gang wider than any pool waits for ever, but a pod that runs longer than
// StallLimit still finishes: the replay ends when nothing can happen any
// more, not while a running pod has yet to finish.
func TestElasticLongRunBesideAnImpossibleGang(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	pods := []TracePod{spotTracePod("long", "BE", 1, 0, 100*time.Hour)}
	for i := range 10 {
		p := spotTracePod(fmt.Sprint("wide-", i), "BE", 1, time.Minute, time.Hour)
		p.Pod.Labels[gang.LabelName], p.Pod.Labels[gang.KeySize] = "wide", "10"
		pods = append(pods, p)
	}
	res := spotReplay(t, s, "penny", 42, pods...)
	if res.Stalled || res.PodsCompleted != 1 || res.NeverScheduled != 10 || !nearly(res.UsefulGPUHours, 100) {
		t.Fatalf("stalled %v, completed %d, never scheduled %d, useful %v GPU-h; want false, 1, 10, 100",
			res.Stalled, res.PodsCompleted, res.NeverScheduled, res.UsefulGPUHours)
	}
}

// mayTake only rules out a pod that no node has the CPU, memory or whole GPUs
// for; shares of a GPU are left to the filters.
func TestNodeRoomMayTake(t *testing.T) {
	room := nodeRoom{{cpu: 4000, mem: 8 << 30, gpus: 0}, {cpu: 2000, mem: 32 << 30, gpus: 2}}
	for _, c := range []struct {
		u    pricing.Usage
		want bool
	}{
		{pricing.Usage{CPUMilli: 4000, MemoryBytes: 8 << 30}, true},
		{pricing.Usage{CPUMilli: 4000, MemoryBytes: 16 << 30}, false}, // CPU on one node, memory on the other
		{pricing.Usage{CPUMilli: 1000, MemoryBytes: 1 << 30, GPUMilli: 2000}, true},
		{pricing.Usage{CPUMilli: 1000, MemoryBytes: 1 << 30, GPUMilli: 3000}, false},
		{pricing.Usage{CPUMilli: 3000, MemoryBytes: 1 << 30, GPUMilli: 1000}, false}, // GPUs only where CPU is short
		{pricing.Usage{CPUMilli: 3000, MemoryBytes: 1 << 30, GPUMilli: 500}, true},   // a share: the filters decide
	} {
		if got := room.mayTake(c.u); got != c.want {
			t.Errorf("mayTake(%+v) = %v, want %v", c.u, got, c.want)
		}
	}
	if (nodeRoom{}).mayTake(pricing.Usage{}) {
		t.Error("no node: mayTake = true")
	}
}

// A gang lacks room when its waiting members need more whole GPUs than are
// free, or more nodes with room for a member than there are, though the
// free GPUs add up.
func TestGangLacksRoom(t *testing.T) {
	g := &elGang{members: []int{0, 1, 2}}
	member := func(name string, state elPodState, gpus int64) *elPod {
		pod := NewPod(SimNamespace, name, 4000, 1024, gpus, 1000, nil)
		pod.Labels[gang.LabelName], pod.Labels[gang.KeySize] = "g", "3"
		spec, ok, err := gang.Of(pod)
		if !ok || err != nil {
			t.Fatalf("gang.Of: %v, %v", ok, err)
		}
		return &elPod{pod: pod, gang: "g", mates: g, gangSpec: spec, inGang: true, state: state, usage: pricing.Usage{CPUMilli: 4000, MemoryBytes: 1 << 30, GPUMilli: gpus * 1000}}
	}
	r := &elastic{
		pods:  []*elPod{member("a", podRunning, 8), member("b", podWaiting, 8), member("c", podWaiting, 4)},
		gangs: map[string]*elGang{"g": g},
	}
	node := func(cpu, gpus int64) freeRoom { return freeRoom{cpu: cpu, mem: 64 << 30, gpus: gpus} }
	for _, c := range []struct {
		name  string
		ready nodeRoom
		want  bool
	}{
		{"room for both", nodeRoom{node(32000, 8), node(32000, 4)}, false},
		{"11 GPUs free, 12 needed", nodeRoom{node(32000, 8), node(32000, 3)}, true},
		{"12 GPUs free on one node", nodeRoom{node(32000, 12)}, false},
		{"12 GPUs free, in threes", nodeRoom{node(32000, 3), node(32000, 3), node(32000, 3), node(32000, 3)}, true},
		{"GPUs free where CPU is short", nodeRoom{node(32000, 6), node(3000, 6)}, true},
	} {
		if got := r.gangLacksRoom(1, c.ready); got != c.want {
			t.Errorf("%s: gangLacksRoom = %v, want %v", c.name, got, c.want)
		}
	}
	r.pods[2].usage.GPUMilli = 500 // a share: the gang plugin decides
	if r.gangLacksRoom(1, nodeRoom{}) {
		t.Error("a member asking for a share: gangLacksRoom = true")
	}
}

// A job without checkpoints that its Spot pool reclaims far more often than
// it can finish restarts forever under spot-first; the replay gives up on it
// LivelockRuns runs (StallLimit at least) after the last arrival, reports it
// unfinished and bills the nodes up to then.
func TestElasticEndsAJobThatCannotFinish(t *testing.T) {
	s := spotScenario(t, "4", "1h")
	pol, err := LookupPolicy("spot-first")
	if err != nil {
		t.Fatal(err)
	}
	// No class rule takes QoS "none": no checkpoints, not a service.
	pods := []TracePod{spotTracePod("no-checkpoint", "none", 1, 0, 10*time.Hour)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := ElasticReplay(ctx, ElasticOptions{Scenario: s, Trace: &Trace{Pods: pods}, Policy: pol, Seed: 42})
	if err != nil {
		t.Fatalf("the replay did not end: %v", err)
	}
	if !res.Stalled || res.PodsCompleted != 0 || res.Unfinished != 1 || res.NeverScheduled != 0 || res.Reclaims < 10 {
		t.Fatalf("stalled %v, completed %d, unfinished %d, never scheduled %d, reclaims %d; want true, 0, 1, 0, >= 10",
			res.Stalled, res.PodsCompleted, res.Unfinished, res.NeverScheduled, res.Reclaims)
	}
	if h := res.HorizonHours; h < StallLimit.Hours() || h > StallLimit.Hours()+10 {
		t.Errorf("replay ended at %.1f h, want within a run of %v", h, StallLimit)
	}
	if res.LostGPUHours < 50 || res.BillUSD <= 0 {
		t.Errorf("lost %.1f GPU-h, bill %.2f: the restarts cost nothing", res.LostGPUHours, res.BillUSD)
	}
}

// A long job whose node is reclaimed after the cluster has been quiet for
// days starts again on a new node and finishes: the replay does not take
// the quiet before the reclaim for a stall.
func TestElasticLongGangRecoversFromAReclaim(t *testing.T) {
	s := spotScenario(t, "4", "100h")
	var pods []TracePod
	for i := range 3 {
		p := spotTracePod(fmt.Sprint("gang-", i), "BE", 1, 0, 200*time.Hour)
		p.Pod.Labels[gang.LabelName], p.Pod.Labels[gang.KeySize] = "long", "3"
		pods = append(pods, p)
	}
	res := spotReplay(t, s, "penny", 42, pods...)
	if res.Reclaims == 0 {
		t.Fatal("no reclaim: the test needs one")
	}
	if res.Stalled || res.PodsCompleted != 3 || res.Unfinished != 0 || res.HorizonHours < 200 {
		t.Fatalf("stalled %v, completed %d, unfinished %d, ended at %.1f h after %d reclaims; want false, 3, 0, >= 200 h",
			res.Stalled, res.PodsCompleted, res.Unfinished, res.HorizonHours, res.Reclaims)
	}
}

// referencePhilly is the reference scenario and a Philly-derived trace of
// the given lines.
func referencePhilly(t *testing.T, jobs string) (*SpotScenario, *Trace) {
	t.Helper()
	s, err := LoadSpotScenario("../../benchmarks/scenarios/spot-openb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s, phillyTrace(t, jobs)
}

// A 12-GPU Philly job becomes an 8-GPU and a 4-GPU pod. Arriving just after
// a 128-GPU job, the 4-GPU member is held at Permit on a node the 8-GPU one
// cannot share; once PennyGang's permit wait runs out in trace time the gang
// is released, backs off and is placed whole. Before the plugins' timers ran
// on trace time, the held member kept its node for good: the job never ran
// and the autoscaler launched and drained nodes for it hundreds of times.
func TestElasticMixedGangIsPlacedAfterItsPermitWait(t *testing.T) {
	s, tr := referencePhilly(t, "timestamp,duration,num_gpus,gpu_time,cluster\n3720,59,128,7552,a\n4320,60,12,720,b\n")
	pol, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	res, err := ElasticReplay(context.Background(), ElasticOptions{Scenario: s, Trace: tr, Policy: pol, Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	if res.PodsCompleted != res.PodsTotal || res.NeverScheduled != 0 || res.Stalled || res.ScaleUps > 40 {
		t.Fatalf("completed %d of %d, never scheduled %d, stalled %v, %d scale-ups; want all, 0, false, <= 40",
			res.PodsCompleted, res.PodsTotal, res.NeverScheduled, res.Stalled, res.ScaleUps)
	}
}

// A gang member held at Permit has reserved room on its node: the node is
// not empty, and the autoscaler does not remove it, as Cluster Autoscaler
// and Karpenter count pods reserved on a node as using it. The 128-GPU job's
// sixteen 8-GPU Spot nodes are empty from 4m59s and due to scale down at
// 14m59s; the 12-GPU job's 4-GPU member is held on one of them from 14m30s
// until its permit wait ends at 15m30s. Removed under it, that node took the
// gang's reservation with it and the job never ran; kept, it is the one of
// the sixteen that does not scale down, and the job runs on it and a new node.
func TestElasticNodeWithAMemberHeldAtPermitIsNotScaledDown(t *testing.T) {
	s, tr := referencePhilly(t, "timestamp,duration,num_gpus,gpu_time,cluster\n3720,59,128,7552,a\n4590,60,12,720,b\n")
	res := spotReplay(t, s, "penny", 42, tr.Pods...)
	if res.PodsCompleted != res.PodsTotal || res.NeverScheduled != 0 || res.ScaleDowns != 15 {
		t.Fatalf("completed %d of %d, never scheduled %d, %d scale-downs; want all, 0 and 15 (the node the member was held on stays)",
			res.PodsCompleted, res.PodsTotal, res.NeverScheduled, res.ScaleDowns)
	}
}

// A gang member held at Permit has room reserved on its node; when its gang
// is released the room is back, and a pod that found none while it was held
// runs there then. Two 1-GPU reserved nodes, one with half its GPU shared
// until 600 s: a 2-member gang arrives at 10 s and holds the free node for
// its member 0, and solo, arriving at 20 s, fits nowhere. The gang's permit
// wait ends at 70 s and solo runs (50 s late); the gang runs at 600 s,
// when the share leaves. Before, solo waited until 600 s as well, and the
// gang, finding its nodes taken again, until 820 s.
func TestElasticPodRunsWhereAReleasedGangHeldRoom(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
gpuSharing: [penny]
pools:
- {name: res, instanceType: g5.8xlarge, capacityType: reserved, zone: us-east-1a, min: 2, max: 2}
`)
	tr := []TracePod{{Pod: NewPod(SimNamespace, "share", 1000, 1024, 1, 500, nil), Duration: 600 * time.Second, Source: "share"}}
	for i := range 2 {
		tr = append(tr, TracePod{Pod: newJobPod(SimNamespace, "job", i, 2, 1000, 1024, 1, 1000), Arrival: 10 * time.Second, Duration: 100 * time.Second, Source: "job"})
	}
	tr = append(tr, TracePod{Pod: NewPod(SimNamespace, "solo", 1000, 1024, 1, 1000, nil), Arrival: 20 * time.Second, Duration: 100 * time.Second, Source: "solo"})
	res := spotReplay(t, s, "penny", 42, tr...)
	if d := res.QueueDelay; res.PodsCompleted != 4 || d.Delayed != 3 || d.P50 != 50 || d.Max != 590 || !nearly(res.HorizonHours*3600, 700) {
		t.Fatalf("completed %d of 4, delays %+v, horizon %.0f s; want all, 3 delayed: solo 50 s, the gang's members 590 s, ending at 700 s",
			res.PodsCompleted, d, res.HorizonHours*3600)
	}
}

// Without PennyGang nothing keeps a gang together, so under default and
// spot-first a member on the reserved 4-GPU node does not tie the rest to
// that pool: a 12-GPU job's 8-GPU member gets its own 8-GPU node. (Members
// waited forever, never scheduled, before.)
func TestElasticGangWithoutTheGangPluginPlacesMembersAlone(t *testing.T) {
	s, tr := referencePhilly(t, "timestamp,duration,num_gpus\n0,3600,12\n7200,3600,129\n")
	for _, policy := range []string{"default", "spot-first", "penny"} {
		pol, err := LookupPolicy(policy)
		if err != nil {
			t.Fatal(err)
		}
		res, err := ElasticReplay(context.Background(), ElasticOptions{Scenario: s, Trace: tr, Policy: pol, Seed: 42})
		if err != nil {
			t.Fatal(err)
		}
		if res.PodsTotal != 19 || res.PodsCompleted != res.PodsTotal || res.NeverScheduled != 0 {
			t.Errorf("%s: completed %d of %d pods, never scheduled %d; want all 19, 0", policy, res.PodsCompleted, res.PodsTotal, res.NeverScheduled)
		}
	}
}

// Training without checkpoints goes to Spot only while on-demand capacity is
// full, and once a reclaim has cut its run short it waits for on-demand
// capacity instead of going back: a 3-node gang that needs 200 h on nodes
// that last 100 h would otherwise restart on Spot until on-demand frees up
// (1,651 GPU-hours lost without this rule; 64 with it).
func TestElasticInterruptedTrainingWaitsForOnDemand(t *testing.T) {
	y := strings.NewReplacer("SPOTMAX", "4", "MTTR", "100h",
		"pools:\n", "- {qos: [Burstable], annotations: {penny.dev/workload: training}}\npools:\n").Replace(tinyScenario)
	s, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	var pods []TracePod
	for i := range 4 { // services fill the on-demand pool for 500 h
		pods = append(pods, spotTracePod(fmt.Sprint("svc-", i), "LS", 1, 0, 500*time.Hour))
	}
	for i := range 3 {
		p := spotTracePod(fmt.Sprint("train-", i), "Burstable", 1, time.Hour, 200*time.Hour)
		p.Pod.Labels[gang.LabelName], p.Pod.Labels[gang.KeySize] = "train", "3"
		pods = append(pods, p)
	}
	res := spotReplay(t, s, "penny", 42, pods...)
	if res.PodsCompleted != res.PodsTotal || res.Unfinished != 0 {
		t.Fatalf("completed %d of %d, unfinished %d", res.PodsCompleted, res.PodsTotal, res.Unfinished)
	}
	avoid := res.GPUHoursByClass[string(spotrisk.Avoid)]
	if avoid[string(pricing.Spot)] == 0 || res.PodsReclaimed != 3 {
		t.Fatalf("the gang ran %.1f GPU-h on Spot and %d pods were reclaimed: the test needs it on Spot and reclaimed once",
			avoid[string(pricing.Spot)], res.PodsReclaimed)
	}
	// One run lost (the gang's three GPUs until the first reclaim), then
	// the whole 200 h on on-demand nodes.
	if res.LostGPUHours >= 3*200 || avoid[string(pricing.OnDemand)] < 3*200 {
		t.Fatalf("lost %.1f GPU-h, %.1f GPU-h on on-demand; want less than one whole run lost and all 600 GPU-h on on-demand",
			res.LostGPUHours, avoid[string(pricing.OnDemand)])
	}
	// All of it lost by the gang (avoid): the run on the Spot pool, and the
	// restart (5 min on three GPUs) on the on-demand one.
	if lost := res.LostGPUHoursByClass; len(lost) != 1 || len(lost[string(spotrisk.Avoid)]) != 2 ||
		math.Abs(lost[string(spotrisk.Avoid)]["od"]-0.25) > 1e-9 ||
		math.Abs(lost[string(spotrisk.Avoid)]["spot"]+0.25-res.LostGPUHours) > 0.01 {
		t.Fatalf("lost by class and pool %v, want %.1f GPU-h under avoid: 0.25 on od, the rest on spot", lost, res.LostGPUHours)
	}
	// The gang's three Spot nodes leave within their scale-down delay of
	// the reclaim (the members' nodes stayed up, idle, until their own
	// reclaim before).
	if spot := res.NodeHoursByPool["spot"]; spot > avoid[string(pricing.Spot)]+3 {
		t.Fatalf("%.1f Spot node-hours for %.1f GPU-hours of work on 1-GPU nodes: idle nodes stayed up", spot, avoid[string(pricing.Spot)])
	}
}

// Training without checkpoints that declares no runtime is taken to run as
// long as the training runs that succeeded before it: after runs of 2,000
// hours, a gang of three stays off a Spot pool that would cost it more than
// 5% of such a run and waits for on-demand capacity; without that history
// it takes the Spot room.
func TestElasticTrainingWithoutCheckpointsLearnsHowLongRunsLast(t *testing.T) {
	// A pool advertised at >20% a month that reclaims nothing here: ten
	// nodes observed for 2,000 h bring its estimate down to ~5e-5 per hour.
	y := strings.NewReplacer("SPOTMAX", "16", "MTTR", "1000000h", `"5-10%"`, `">20%"`,
		"pools:\n", "- {qos: [Burstable], annotations: {penny.dev/workload: training}}\npools:\n").Replace(tinyScenario)
	s, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	replay := func(history bool) *ElasticResult {
		var pods []TracePod
		for i := range 4 { // services fill the on-demand pool until 2,600 h
			pods = append(pods, spotTracePod(fmt.Sprint("svc-", i), "LS", 1, 0, 2600*time.Hour))
		}
		if history {
			for i := range 10 { // checkpointing training, on Spot
				pods = append(pods, spotTracePod(fmt.Sprint("past-", i), "BE", 1, 0, 2000*time.Hour))
			}
		}
		for i := range 3 {
			p := spotTracePod(fmt.Sprint("train-", i), "Burstable", 1, 2100*time.Hour, 100*time.Hour)
			p.Pod.Labels[gang.LabelName], p.Pod.Labels[gang.KeySize] = "train", "3"
			pods = append(pods, p)
		}
		res := spotReplay(t, s, "penny", 42, pods...)
		if res.PodsCompleted != res.PodsTotal {
			t.Fatalf("completed %d of %d", res.PodsCompleted, res.PodsTotal)
		}
		return res
	}
	if avoid := replay(false).GPUHoursByClass[string(spotrisk.Avoid)]; avoid[string(pricing.Spot)] != 300 {
		t.Fatalf("without history the gang ran %v GPU-h on Spot, want all 300 (on-demand is full)", avoid)
	}
	res := replay(true)
	if avoid := res.GPUHoursByClass[string(spotrisk.Avoid)]; avoid[string(pricing.Spot)] != 0 || avoid[string(pricing.OnDemand)] != 300 {
		t.Fatalf("after 2,000-hour runs the gang ran %v GPU-h by capacity, want all 300 on on-demand", avoid)
	}
}

// A replay stopped by its caller (Ctrl-C, a timeout) says so, rather than
// reporting whatever the event under way tripped over.
func TestElasticReplaySaysWhenItWasStopped(t *testing.T) {
	s := spotScenario(t, "4", "1h")
	pol, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errors.New("interrupt signal received"))
	_, err = ElasticReplay(ctx, ElasticOptions{Scenario: s, Trace: &Trace{Pods: []TracePod{spotTracePod("a", "BE", 1, 0, time.Hour)}}, Policy: pol, Seed: 1})
	if err == nil || !strings.Contains(err.Error(), "replay stopped at 0s of trace time: interrupt signal received") {
		t.Fatalf("got %v, want the replay stopped by its caller", err)
	}
}

// A pod that no pool's node could ever take (a GPU model the fleet lacks)
// is told apart from one that waited for room: the scenario kept it out.
func TestElasticCountsPodsThatFitNoPool(t *testing.T) {
	s := spotScenario(t, "4", "1h")
	v100 := spotTracePod("v100", "BE", 1, 0, time.Hour)
	v100.Pod = NewPod(SimNamespace, "v100", 1000, 1024, 1, 1000, []string{openbProduct("V100M32")})
	v100.Pod.Labels[LabelQoS] = "BE"
	v100.Source = "trace.csv:2"
	res := spotReplay(t, s, "default", 1, v100, spotTracePod("any", "BE", 1, 0, time.Hour))
	if res.NeverScheduled != 1 || res.FitsNoPool != 1 || res.FitsNoPoolExample != "v100 (trace.csv:2)" || res.PodsCompleted != 1 {
		t.Fatalf("never scheduled %d, fit no pool %d (%q), completed %d; want 1, 1 (v100 (trace.csv:2)), 1",
			res.NeverScheduled, res.FitsNoPool, res.FitsNoPoolExample, res.PodsCompleted)
	}
}

// A gang that needs more nodes at once than any pool that runs its members
// may have is told apart from one that waited for room: the gang plugin
// places a gang in one pool or not at all, and the pools' max kept it out.
// A 128-GPU job (16 nodes) fits the 24-node pool and is not counted.
func TestElasticCountsGangsLargerThanAnyPool(t *testing.T) {
	s, tr := referencePhilly(t, "timestamp,duration,num_gpus,gpu_time,cluster\n0,7200,512,0,a\n60,7200,128,0,a\n120,600,1,600,b\n")
	res := spotReplay(t, s, "penny", 42, tr.Pods...)
	if res.NeverScheduled != 64 || res.GangTooLarge != 64 || res.FitsNoPool != 0 || res.PodsCompleted != 17 {
		t.Fatalf("never scheduled %d, in gangs too large %d, fit no pool %d, completed %d; want 64, 64, 0, 17",
			res.NeverScheduled, res.GangTooLarge, res.FitsNoPool, res.PodsCompleted)
	}
	if want := "job-000001 (" + tr.Pods[0].Source + "): 64 pods at once; the pools that run its members hold at most 24"; res.GangTooLargeExample != want {
		t.Fatalf("example %q, want %q", res.GangTooLargeExample, want)
	}
	rep := &SpotReport{Runs: []*ElasticResult{res}, Summary: map[string]SpotSummary{}}
	if md, want := rep.Markdown(), "penny: 64 pods were never scheduled (0 fit no pool, 64 belong to gangs larger than any pool that runs their members)"; !strings.Contains(md, want) {
		t.Fatalf("the report lacks %q:\n%s", want, md)
	}
}

// A pool whose empty node lacks a pod's CPU, memory or GPUs is never asked
// about the pod (the filters would reject it there).
func TestPoolMayHold(t *testing.T) {
	gpuPool := &elPool{size: pricing.Usage{CPUMilli: 48000, MemoryBytes: 192 << 30, GPUMilli: 4000}}
	cpuPool := &elPool{size: pricing.Usage{CPUMilli: 32000, MemoryBytes: 128 << 30}}
	for _, c := range []struct {
		pool *elPool
		u    pricing.Usage
		want bool
	}{
		{gpuPool, pricing.Usage{CPUMilli: 16000, MemoryBytes: 64 << 30, GPUMilli: 4000}, true},
		{gpuPool, pricing.Usage{CPUMilli: 16000, MemoryBytes: 64 << 30, GPUMilli: 8000}, false},
		{gpuPool, pricing.Usage{CPUMilli: 64000, MemoryBytes: 64 << 30, GPUMilli: 1000}, false},
		{gpuPool, pricing.Usage{CPUMilli: 1000, MemoryBytes: 256 << 30}, false},
		{cpuPool, pricing.Usage{CPUMilli: 1000, MemoryBytes: 1 << 30, GPUMilli: 470}, false}, // a share needs a GPU
		{cpuPool, pricing.Usage{CPUMilli: 32000, MemoryBytes: 128 << 30}, true},
	} {
		if got := c.pool.mayHold(c.u); got != c.want {
			t.Errorf("pool %+v, pod %+v: mayHold = %v, want %v", c.pool.size, c.u, got, c.want)
		}
	}
}

// Pods with the same pool verdict share one copy of it.
func TestInternFits(t *testing.T) {
	r := &elastic{}
	a, ida := r.internFits([]bool{true, false, true})
	b, idb := r.internFits([]bool{true, false, true})
	c, idc := r.internFits([]bool{true, true, true})
	if &a[0] != &b[0] || ida != idb {
		t.Errorf("equal verdicts are two copies (numbers %d, %d)", ida, idb)
	}
	if &a[0] == &c[0] || !c[1] || ida == idc {
		t.Errorf("different verdicts share a copy: %v, %v (numbers %d, %d)", a, c, ida, idc)
	}
	if &r.verdictList[idc][0] != &c[0] {
		t.Error("a verdict's number does not index it")
	}
}

// A replay reports its progress when asked: a long trace replays for
// minutes.
func TestElasticReplayReportsProgress(t *testing.T) {
	defer func(every time.Duration) { ProgressEvery = every }(ProgressEvery)
	ProgressEvery = 0
	p, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	pods := []TracePod{spotTracePod("serve", "LS", 1, 0, 2*time.Hour), spotTracePod("train", "BE", 1, time.Hour, time.Hour)}
	if _, err := ElasticReplay(context.Background(), ElasticOptions{Scenario: spotScenario(t, "4", "0s"), Trace: &Trace{Pods: pods}, Policy: p, Seed: 42, Progress: &out}); err != nil {
		t.Fatal(err)
	}
	if want := "policy penny: 0 h of trace time (last arrival at 1 h), 0 of 2 pods finished, 0 waiting, 0 nodes up"; !strings.Contains(out.String(), want) {
		t.Fatalf("progress:\n%s\nwant a line with %q", out.String(), want)
	}
}

// A scan that passes over the pods it would turn away at once (podHot)
// changes nothing: on a small fleet that a burst of jobs, gangs among them,
// keeps at its limits for days, with reclaims and waits for Spot, every
// policy's replay is the same with and without it.
func TestFastScanChangesNothing(t *testing.T) {
	var jobs strings.Builder
	jobs.WriteString("timestamp,duration,num_gpus,gpu_time,cluster\n")
	for k := 0; k < 120; k++ {
		gpus := []int{1, 1, 2, 4, 8, 12, 16, 1, 3}[k%9]
		fmt.Fprintf(&jobs, "%d,%d,%d,%d,c%d\n", k*400, 3600+(k*7919)%90000, gpus, gpus*3600, k%3)
	}
	s, tr := referencePhilly(t, jobs.String())
	for k := range s.Pools {
		s.Pools[k].Max = min(s.Pools[k].Max, 2)
	}
	for _, name := range []string{"default", SpotFirstPolicy, "penny"} {
		p, err := LookupPolicy(name)
		if err != nil {
			t.Fatal(err)
		}
		run := func(fast bool) *ElasticResult {
			defer func(was bool) { fastScan = was }(fastScan)
			fastScan = fast
			res, err := ElasticReplay(context.Background(), ElasticOptions{Scenario: s, Trace: tr, Policy: p, Seed: 7})
			if err != nil {
				t.Fatal(err)
			}
			res.WallSeconds = 0
			return res
		}
		fast, slow := run(true), run(false)
		if !reflect.DeepEqual(fast, slow) {
			t.Errorf("%s: the fast scan changed the replay:\nfast %+v\nslow %+v", name, *fast, *slow)
		}
		if slow.QueueDelayP95Seconds < 3600 || slow.Reclaims == 0 && name != "default" {
			t.Errorf("%s: p95 queue %.0f s, %d reclaims: the fleet was not kept at its limits, or nothing was reclaimed", name, slow.QueueDelayP95Seconds, slow.Reclaims)
		}
	}
}

// Replaying the policies at once (penny sim replay --parallel) gives the
// report one at a time gives: the replays share the scenario and the trace
// and must only read them.
func TestSpotReplaysAtOnceMatchOneAtATime(t *testing.T) {
	var jobs strings.Builder
	jobs.WriteString("timestamp,duration,num_gpus,gpu_time,cluster\n")
	for k := 0; k < 60; k++ {
		gpus := []int{1, 2, 4, 8, 16, 1}[k%6]
		fmt.Fprintf(&jobs, "%d,%d,%d,%d,c%d\n", k*600, 1800+(k*7919)%200000, gpus, gpus*3600, k%3)
	}
	s, tr := referencePhilly(t, jobs.String())
	for k := range s.Pools {
		s.Pools[k].Max = min(s.Pools[k].Max, 3)
	}
	policies, err := ParsePolicies("default,spot-first,penny")
	if err != nil {
		t.Fatal(err)
	}
	run := func(parallel int) *SpotReport {
		var progress strings.Builder
		rep, err := RunSpotReplays(context.Background(), s, tr, policies, 9, nil, &progress, parallel)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rep.Runs {
			r.WallSeconds = 0
		}
		return rep
	}
	one, all := run(1), run(3)
	if !reflect.DeepEqual(one, all) {
		for i := range one.Runs {
			if !reflect.DeepEqual(one.Runs[i], all.Runs[i]) {
				t.Errorf("%s: one at a time %+v\nall at once %+v", one.Runs[i].Policy, *one.Runs[i], *all.Runs[i])
			}
		}
		t.Fatalf("summaries: one at a time %+v, all at once %+v", one.Summary, all.Summary)
	}
	if got := []string{all.Runs[0].Policy, all.Runs[1].Policy, all.Runs[2].Policy}; !reflect.DeepEqual(got, []string{"default", "spot-first", "penny"}) {
		t.Errorf("runs in order %v, want the policies' order", got)
	}
	if all.Summary["spot-first"].Reclaims == 0 {
		t.Errorf("spot-first saw no reclaim: the trace does not exercise the reclaim draws")
	}
}

// A scan reads the verdicts it began with, and also one first worked out
// during it: the first member of a gang that a scan asks the autoscaler for
// gets its mates' verdicts too, and a risk model that learned since may give
// one no pod had before. Such a verdict used to be read past the end of the
// scan's table (a replay of a Philly trace with 64-GPU gangs without
// checkpoints panicked).
func TestScanReadsVerdictsFirstSeenDuringIt(t *testing.T) {
	full := &elPool{index: 0, spec: &ElasticPool{Max: 2}, live: 2}
	open := &elPool{index: 1, spec: &ElasticPool{Max: 2}, live: 1}
	r := &elastic{pools: []*elPool{full, open}}
	_, onFull := r.internFits([]bool{true, false})
	o := r.openVerdicts()
	_, onOpen := r.internFits([]bool{true, true})
	if o.open(onFull) || !o.open(onOpen) {
		t.Fatalf("verdict on the full pool open %v, on both pools open %v; want false, true", o.open(onFull), o.open(onOpen))
	}
}

// A gang that waits while the pool is at its max for a job already running
// gets its nodes when that job ends, even when that job was the last one
// running: the replay does not end before the autoscaler has looked again.
// Before, the 24-GPU job never ran (a 128-GPU job of a random 300-job trace
// was left unscheduled behind a 7-day, 96-GPU one the same way).
func TestElasticWaitingGangRunsAfterTheLastJobEnds(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
pools:
- {name: od, instanceType: g5.48xlarge, capacityType: on-demand, zone: us-east-1a, max: 3}
`)
	tr := phillyTrace(t, "timestamp,duration,num_gpus\n0,7200,16\n600,3600,24\n")
	res := spotReplay(t, s, "penny", 42, tr.Pods...)
	if res.NeverScheduled != 0 || res.PodsCompleted != 5 {
		t.Fatalf("never scheduled %d, completed %d; want 0 and all 5", res.NeverScheduled, res.PodsCompleted)
	}
}

// A distributed job's work starts when all its workers run. On a pool of 3
// eight-GPU nodes, two 8-GPU jobs (0 s; 1 h and 2 h) hold two nodes when a
// 24-GPU job (60 s, 1 h, three members) arrives; the autoscaler launches a
// gang's nodes only all at once, which the pool's max does not allow.
// default places a member on the node the first job frees (1h3m) and one on
// the second job's (2h3m), and the autoscaler then launches the third's
// node: the work starts when it joins (2h6m). The first two waited on
// their GPUs (63 and 3 min), and all three queued until 2h6m. PennyGang
// admits the gang only when all of it has room, so nothing waits on a GPU.
func TestElasticGangWorkStartsWhenAllItsMembersRun(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
pools:
- {name: od, instanceType: g5.48xlarge, capacityType: on-demand, zone: us-east-1a, max: 3, provisioningDelay: 3m, scaleDownAfter: 10m}
`)
	tr := phillyTrace(t, "timestamp,duration,num_gpus\n0,3600,8\n0,7200,8\n60,3600,24\n")
	gangQueued := (2*time.Hour + 5*time.Minute).Seconds()
	policies, err := ParsePolicies("default,penny")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := RunSpotReplays(context.Background(), s, tr, policies, 42, nil, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	wait := map[string]float64{"default": 8 * (66 * time.Minute).Hours(), "penny": 0}
	for _, res := range rep.Runs {
		if res.PodsCompleted != 5 {
			t.Fatalf("%s: completed %d pods; want 5", res.Policy, res.PodsCompleted)
		}
		if w := wait[res.Policy]; !nearly(res.GangWaitGPUHours, w) || rep.Summary[res.Policy].GangWaitGPUHours != round2(w) {
			t.Errorf("%s: gang wait %.4f GPU-h (summary %.2f); want %.4f", res.Policy, res.GangWaitGPUHours, rep.Summary[res.Policy].GangWaitGPUHours, w)
		}
		if !nearly(res.UsefulGPUHours, 48) || res.LostGPUHours != 0 {
			t.Errorf("%s: useful %.4f, lost %.4f GPU-h; want 48 and 0", res.Policy, res.UsefulGPUHours, res.LostGPUHours)
		}
		// The two short jobs queued for their nodes (3 min each), every
		// member of the gang until the last could run.
		if want := (2*180 + 3*gangQueued) / 5; res.QueueDelay.Max != gangQueued || !nearly(res.QueueDelay.Mean, want) {
			t.Errorf("%s: queue delay mean %.0f s, max %.0f s; want %.0f and %.0f", res.Policy, res.QueueDelay.Mean, res.QueueDelay.Max, want, gangQueued)
		}
		if h := time.Duration(res.HorizonHours * float64(time.Hour)).Round(time.Second); h != 3*time.Hour+6*time.Minute {
			t.Errorf("%s: replay ran %v; want 3h6m0s", res.Policy, h)
		}
	}
	md := rep.Markdown()
	if want := "default: gang members held 8.8 GPU-hours waiting for the rest of their gang"; !strings.Contains(md, want) {
		t.Errorf("the report lacks %q:\n%s", want, md)
	}
	if strings.Contains(md, "penny: gang members held") {
		t.Errorf("the report says Penny's gang members waited:\n%s", md)
	}
}

// Every GPU-hour a pod held is useful, lost to a reclaim, or spent waiting
// for the rest of its gang, under every policy, on a trace dense in big
// gangs where spot-first's gangs are reclaimed while members wait and
// default's members wait on their GPUs. Each pod does its whole run once.
func TestElasticAccountsForEveryHeldGPUHour(t *testing.T) {
	s, err := LoadSpotScenario("../../benchmarks/scenarios/spot-openb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := LoadPhilly("../../benchmarks/spot/traces/gangs-philly.csv", DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	work := 0.0
	for _, tp := range tr.Pods {
		work += podGPUs(tp.Pod) * tp.Duration.Hours()
	}
	for _, policy := range []string{"default", "spot-first", "penny"} {
		res := spotReplay(t, s, policy, 42, tr.Pods...)
		if res.PodsCompleted != res.PodsTotal {
			t.Fatalf("%s: completed %d of %d pods", policy, res.PodsCompleted, res.PodsTotal)
		}
		if sum := res.UsefulGPUHours + res.LostGPUHours + res.GangWaitGPUHours; !nearly(sum, res.AllocatedGPUHours) {
			t.Errorf("%s: useful %.2f + lost %.2f + gang wait %.2f = %.2f GPU-h; held %.2f", policy,
				res.UsefulGPUHours, res.LostGPUHours, res.GangWaitGPUHours, sum, res.AllocatedGPUHours)
		}
		if !nearly(res.UsefulGPUHours, work) {
			t.Errorf("%s: useful %.2f GPU-h; the trace's work is %.2f", policy, res.UsefulGPUHours, work)
		}
		if waited := res.GangWaitGPUHours > 0; waited != (policy != "penny") {
			t.Errorf("%s: gang wait %.2f GPU-h; want some only without the gang plugin", policy, res.GangWaitGPUHours)
		}
		if policy == "spot-first" && res.Reclaims == 0 {
			t.Errorf("spot-first: no reclaims; the test needs some")
		}
	}
}

// A 12-GPU job is an 8-GPU and a 4-GPU pod; on a fleet of 4-GPU nodes only
// the 4-GPU one fits. default places it, and it holds its node waiting for a
// peer that can never come, until the replay gives up StallLimit after the
// last run ended: unfinished, its wait billed and counted. PennyGang never
// admits the gang, so nothing is held and the replay ends with the last run.
func TestElasticGangThatCannotCompleteHoldsItsNodeUntilTheReplayStalls(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
pools:
- {name: od, instanceType: g5.12xlarge, capacityType: on-demand, zone: us-east-1a, max: 2, provisioningDelay: 3m}
`)
	tr := phillyTrace(t, "timestamp,duration,num_gpus\n0,3600,12\n0,3600,1\n")
	res := spotReplay(t, s, "default", 42, tr.Pods...)
	if !res.Stalled || res.Unfinished != 1 || res.NeverScheduled != 1 || res.FitsNoPool != 1 || res.PodsCompleted != 1 {
		t.Fatalf("default: stalled %v, unfinished %d, never scheduled %d (fit no pool %d), completed %d; want true, 1, 1 (1), 1",
			res.Stalled, res.Unfinished, res.NeverScheduled, res.FitsNoPool, res.PodsCompleted)
	}
	end := time.Duration(res.HorizonHours * float64(time.Hour))
	// It looks an hourly sample ahead: the replay ends within an hour of it.
	if lastRun := time.Hour + 3*time.Minute; (end - lastRun - StallLimit).Abs() > time.Hour {
		t.Errorf("default: the replay ended at %v; want within an hour of %v", end, lastRun+StallLimit)
	}
	// The 4-GPU member held its node from 3m, when the node joined.
	if held := 4 * (end - 3*time.Minute).Hours(); !nearly(res.GangWaitGPUHours, held) || res.UsefulGPUHours != 1 {
		t.Errorf("default: gang wait %.2f, useful %.2f GPU-h; want %.2f and 1", res.GangWaitGPUHours, res.UsefulGPUHours, held)
	}
	rep := &SpotReport{Runs: []*ElasticResult{res}, Summary: map[string]SpotSummary{}}
	if md, want := rep.Markdown(), "default: the replay ended early, at 73 h of trace time, with 1 pods that had run and not finished and 1 never scheduled: nothing could make progress ("+StallCauses; !strings.Contains(md, want) {
		t.Errorf("the report lacks %q:\n%s", want, md)
	}
	res = spotReplay(t, s, "penny", 42, tr.Pods...)
	if res.Stalled || res.Unfinished != 0 || res.NeverScheduled != 2 || res.GangWaitGPUHours != 0 || res.HorizonHours > 2 {
		t.Errorf("penny: stalled %v, unfinished %d, never scheduled %d, gang wait %.2f GPU-h, ended at %.1f h; want false, 0, 2, 0, by 2 h",
			res.Stalled, res.Unfinished, res.NeverScheduled, res.GangWaitGPUHours, res.HorizonHours)
	}
}

// On the reference scenario an Alibaba Spot GPU trace's high-priority jobs
// (job_type HP) are never-class: Penny keeps them off Spot, where
// spot-first puts those the reserved node has no room for, and its jobs of
// type Spot are best-effort work that Penny sends to Spot.
func TestSpotGPUTraceClassesOnTheReferenceScenario(t *testing.T) {
	s, err := LoadSpotScenario("../../benchmarks/scenarios/spot-openb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rows := "job_name,organization,gpu_model,cpu_request,gpu_request,worker_num,submit_time,duration,job_type\n"
	for i := range 6 {
		rows += fmt.Sprintf("%d,13,A10,8,1,1,%d,36000,HP\n", i, 60*i)
	}
	rows += "100,57,A100-SXM4-80GB,8,1,4,600,7200,Spot\n"
	tr, err := LoadSpotGPU(writeFile(t, "job_info_df.csv", rows), DefaultPhillyOptions())
	if err != nil {
		t.Fatal(err)
	}
	penny := spotReplay(t, s, "penny", 42, tr.Pods...)
	never := penny.GPUHoursByClass["never"]
	if penny.NeverOnSpot != 0 || never["spot"] != 0 || !nearly(never["on-demand"]+never["reserved"], 60) {
		t.Errorf("penny: %d HP pods on Spot; HP GPU-hours by capacity %v, want 60 off Spot", penny.NeverOnSpot, never)
	}
	if h := penny.GPUHoursByClass; h["prefer"]["spot"]+h["avoid"]["on-demand"]+h["avoid"]["reserved"] == 0 {
		t.Errorf("penny: the Spot-type job ran as neither checkpointing training on Spot nor training without checkpoints off it: %v", h)
	}
	if first := spotReplay(t, s, "spot-first", 42, tr.Pods...); first.NeverOnSpot == 0 {
		t.Errorf("spot-first kept every HP pod off Spot (%v); the test no longer shows the class", first.GPUHoursByClass)
	}
}

// A pod the trace deleted at the moment it created it (openb has one:
// creation_time = deletion_time, never scheduled) is withdrawn as it
// arrives: it never runs and no node is launched for it. The withdrawal
// used to come first at that instant and the arrival then placed the pod
// anyway, so it counted as withdrawn and completed and was billed a node.
func TestElasticPodDeletedAsItArrivesNeverRuns(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	gone := spotTracePod("gone", "LS", 1, time.Hour, 0)
	gone.Withdraw, gone.Withdraws = time.Hour, true
	res := spotReplay(t, s, "default", 42, gone)
	if res.Withdrawn != 1 || res.PodsCompleted != 0 || res.ScaleUps != 0 || res.BillUSD != 0 || res.QueueDelay != (DelayStats{}) {
		t.Fatalf("withdrawn %d, completed %d, scale-ups %d, bill %.2f, delays %+v; want 1, 0, 0, 0 and none",
			res.Withdrawn, res.PodsCompleted, res.ScaleUps, res.BillUSD, res.QueueDelay)
	}
}

// A node launched for a pod that then finds room elsewhere before the node
// joins is free again for the next pod: the min node's pod leaves at 1m and
// x, waiting since 30s for the node launched for it, takes its place; y
// arrives at 2m and is nominated to x's node, which joins at 3m30s. One
// node launched, not two (Cluster Autoscaler counts upcoming nodes without
// the pods the scheduler placed elsewhere).
func TestElasticNodeOnItsWayIsFreedWhenItsPodRunsElsewhere(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
pools:
- {name: od, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, min: 1, max: 4, provisioningDelay: 3m, scaleDownAfter: 10m}
`)
	res := spotReplay(t, s, "default", 42,
		spotTracePod("first", "LS", 1, 0, time.Minute),
		spotTracePod("x", "LS", 1, 30*time.Second, 2*time.Hour),
		spotTracePod("y", "LS", 1, 2*time.Minute, 2*time.Hour))
	end := 3*time.Minute + 30*time.Second + 2*time.Hour
	// The min node for the whole replay, x's node from its launch at 30s.
	want := (end.Hours() + (end - 30*time.Second).Hours()) * 2.448
	if res.ScaleUps != 1 || res.PodsCompleted != 3 || !nearly(res.HorizonHours, end.Hours()) || !nearly(res.BillUSD, round2(want)) {
		t.Fatalf("scale-ups %d, completed %d, ended at %.4f h, bill %.2f; want 1, 3, %.4f h, %.2f",
			res.ScaleUps, res.PodsCompleted, res.HorizonHours, res.BillUSD, end.Hours(), round2(want))
	}
}

// A reclaimed pod that waits for good (training without checkpoints, kept
// off Spot once a reclaim cut its run short, on a fleet with no other
// capacity) has queued from its arrival to its first start and from the
// reclaim to the end of the replay: its run (all of it lost) is the only
// time it did not wait. Its wait before it first ran, without the one after
// the reclaim, is its 10m for on-demand capacity that never comes and 3m for
// the Spot node launched then.
func TestElasticQueueDelayCountsAWaitAfterAReclaimUntilTheEnd(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
classes:
- {qos: [BE], annotations: {penny.dev/workload: training}}
pools:
- {name: spot, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, max: 2, advertisedInterruption: "<5%", meanTimeToReclaim: 1h}
`)
	res := spotReplay(t, s, "penny", 42, spotTracePod("train", "BE", 1, 0, 10*time.Hour))
	if res.Reclaims != 1 || res.PodsReclaimed != 1 || res.Unfinished != 1 || res.PodsCompleted != 0 || res.LostGPUHours <= 0 {
		t.Fatalf("reclaims %d, reclaimed %d, unfinished %d, completed %d, lost %.2f GPU-h; want one reclaim, the pod unfinished and its run lost",
			res.Reclaims, res.PodsReclaimed, res.Unfinished, res.PodsCompleted, res.LostGPUHours)
	}
	if want := (res.HorizonHours - res.LostGPUHours) * 3600; math.Abs(res.QueueDelay.Max-want) > 1e-3 {
		t.Fatalf("queue delay %.1f s over a %.4f h replay with a %.4f h run; want %.1f s", res.QueueDelay.Max, res.HorizonHours, res.LostGPUHours, want)
	}
	if first := res.FirstStartDelay; first.Max != (13*time.Minute).Seconds() || first.P95 != first.Max {
		t.Fatalf("first-start delay %+v; want 780 s", first)
	}
}

// A service reclaimed and not back when the replay ends was down from the
// reclaim to the end. A service that may use only Spot pools reclaimed less
// than 5% a month loses its node within the hour, after which the pool's
// estimated rate keeps it off: it waits from then to the end, the queue
// delay past its first 3 min, and is down all that time.
func TestElasticServiceStillDownAtTheEndCountsItsDowntime(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
classes:
- {qos: [LS], annotations: {penny.dev/workload: inference, penny.dev/spot: only, penny.dev/max-reclaim-risk: "5%"}}
pools:
- {name: spot, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, max: 2, advertisedInterruption: "<5%", meanTimeToReclaim: 1h}
`)
	res := spotReplay(t, s, "penny", 42, spotTracePod("serve", "LS", 1, 0, 10*time.Hour))
	if res.InterruptedServices != 1 || res.Unfinished != 1 || res.PodsCompleted != 0 {
		t.Fatalf("interrupted services %d, unfinished %d, completed %d; want the service reclaimed once and not back", res.InterruptedServices, res.Unfinished, res.PodsCompleted)
	}
	down := (res.QueueDelay.Max - (3 * time.Minute).Seconds()) / 3600
	if down <= 0 || math.Abs(res.ServiceDowntimeHours-down) > 1e-9 {
		t.Fatalf("service downtime %v h; want %v h, from the reclaim to the end of the replay", res.ServiceDowntimeHours, down)
	}
}

// A reclaim of an idle node (a Spot pool's min node, replaced at once) is no
// progress for the pods: a replay that can make none still ends StallLimit
// after its last run, not only when the livelock rule gives up (three times
// the 100 h run after it). default's 4-GPU member of a 12-GPU job that fits
// no pool holds its node for good.
func TestElasticReclaimedIdleNodesDoNotKeepAStalledReplayGoing(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
spotTaint: true
pools:
- {name: od, instanceType: g5.12xlarge, capacityType: on-demand, zone: us-east-1a, max: 2, provisioningDelay: 3m}
- {name: spot, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, min: 1, max: 1, meanTimeToReclaim: 1h}
`)
	tr := phillyTrace(t, "timestamp,duration,num_gpus\n0,360000,1\n0,3600,12\n")
	res := spotReplay(t, s, "default", 42, tr.Pods...)
	if !res.Stalled || res.PodsCompleted != 1 || res.Reclaims < 10 {
		t.Fatalf("stalled %v, completed %d, %d reclaims; want true, 1 and the idle Spot node reclaimed often", res.Stalled, res.PodsCompleted, res.Reclaims)
	}
	end := time.Duration(res.HorizonHours * float64(time.Hour))
	if lastRun := 100*time.Hour + 3*time.Minute; (end - lastRun - StallLimit).Abs() > time.Hour {
		t.Errorf("the replay ended at %v; want within an hour of %v", end, lastRun+StallLimit)
	}
}

// The autoscaler weighs a gang member's pools with SpotRisk's rules for the
// whole gang, as the scheduler then places it: training without checkpoints
// on 4 Spot nodes of a pool reclaimed 25% a month (a rate of 3.9e-4 per
// node-hour) for 48h expects to lose 4 x 3.9e-4 x 48 / 2 = 3.8% of its work,
// over the 2% SpotRisk accepts, though one member alone would lose 0.9%. With
// a Spot pool only, no pool may take the gang: the autoscaler launches
// nothing and the report says so. (Asked about a member as a pod alone, it
// launched four Spot nodes the gang plugin then would not use.)
func TestElasticWeighsAGangMembersSpotRiskForTheWholeGang(t *testing.T) {
	s := scenarioOf(t, `
name: risky
region: us-east-1
policies:
- {policy: penny, tolerateSpot: true}
classes:
- {qos: [BE], annotations: {penny.dev/workload: training, penny.dev/expected-runtime: 48h, penny.dev/fallback-after: 0s}}
pools:
- {name: spot, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, max: 4, provisioningDelay: 3m, scaleDownAfter: 10m,
   advertisedInterruption: ">20%", meanTimeToReclaim: 0s}
`)
	member := func(g string, size, i int) TracePod {
		p := spotTracePod(fmt.Sprintf("%s-%d", g, i), "BE", 1, 0, time.Hour)
		p.Pod.Labels[gang.LabelName], p.Pod.Labels[gang.KeySize] = g, fmt.Sprint(size)
		return p
	}
	var pods []TracePod
	for i := range 4 {
		pods = append(pods, member("wide", 4, i))
	}
	res := spotReplay(t, s, "penny", 42, pods...)
	if res.ScaleUps != 0 || res.NeverScheduled != 4 || res.FitsNoPool != 4 {
		t.Fatalf("a 4-node gang: %d scale-ups, never scheduled %d, fit no pool %d; want 0, 4, 4", res.ScaleUps, res.NeverScheduled, res.FitsNoPool)
	}
	// A gang of one on the same pool expects to lose 0.9%: it runs on Spot.
	one := spotReplay(t, s, "penny", 42, member("narrow", 1, 0))
	if one.PodsCompleted != 1 || one.NodeHoursByPool["spot"] == 0 {
		t.Fatalf("a 1-node gang: completed %d, node-hours %v; want 1 on Spot", one.PodsCompleted, one.NodeHoursByPool)
	}
}

// A gang member that holds its node waiting for the rest of its gang queues
// all that time, also when a reclaim ends the wait: default places the
// 4-GPU member of a 12-GPU job whose 8-GPU member fits no pool on the Spot
// node a 1-GPU job leaves, where it waits until the node is reclaimed, and
// then waits for good. Its work never starts, so it queued from its arrival
// to the end of the replay.
func TestElasticGangMemberReclaimedWhileItWaitsForItsGangQueuedAllTheTime(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
pools:
- {name: spot, instanceType: g5.12xlarge, capacityType: spot, zone: us-east-1a, max: 2, provisioningDelay: 3m, meanTimeToReclaim: 10h}
`)
	tr := phillyTrace(t, "timestamp,duration,num_gpus\n0,3600,12\n0,3600,1\n")
	res := spotReplay(t, s, "default", 42, tr.Pods...)
	if res.Reclaims == 0 || res.Unfinished != 1 || res.NeverScheduled != 1 || res.UsefulGPUHours != 1 || res.LostGPUHours != 0 {
		t.Fatalf("reclaims %d, unfinished %d, never scheduled %d, useful %.2f, lost %.2f; want some reclaims, 1, 1, 1, 0",
			res.Reclaims, res.Unfinished, res.NeverScheduled, res.UsefulGPUHours, res.LostGPUHours)
	}
	if !nearly(res.GangWaitGPUHours+1, res.AllocatedGPUHours) {
		t.Errorf("gang wait %.4f GPU-h, held %.4f; want all of it waited", res.GangWaitGPUHours, res.AllocatedGPUHours)
	}
	end := res.HorizonHours * 3600
	if math.Abs(res.QueueDelay.Max-end) > 1e-3 || math.Abs(res.FirstStartDelay.Max-end) > 1e-3 {
		t.Errorf("queue delay %.1f s, before its first start %.1f s; want the whole %.1f s replay", res.QueueDelay.Max, res.FirstStartDelay.Max, end)
	}
}

// A pod the trace deleted while it waited to run again after a reclaim is
// withdrawn then, as one that never ran is: its wait ends at the deletion
// and so does the replay. Training without checkpoints on a Spot-only fleet
// waits 10m for on-demand and 3m for a Spot node, is reclaimed, and then
// waits for on-demand for good; the replay without the deletion says when
// the node was reclaimed: the pod lost all it had run since 13m.
func TestElasticPodDeletedWhileItWaitsAfterAReclaimIsWithdrawn(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
classes:
- {qos: [BE], annotations: {penny.dev/workload: training}}
pools:
- {name: spot, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, max: 2, advertisedInterruption: "<5%", meanTimeToReclaim: 1h}
`)
	pod := func() TracePod { return spotTracePod("train", "BE", 1, 0, 10*time.Hour) }
	first := spotReplay(t, s, "penny", 42, pod())
	if first.Reclaims != 1 || first.Unfinished != 1 || first.LostGPUHours <= 0 {
		t.Fatalf("reclaims %d, unfinished %d, lost %.4f GPU-h; want the pod reclaimed once and then waiting", first.Reclaims, first.Unfinished, first.LostGPUHours)
	}
	reclaimed := 13*time.Minute + time.Duration(first.LostGPUHours*float64(time.Hour))
	p := pod()
	p.Withdraw, p.Withdraws = reclaimed+time.Minute, true
	res := spotReplay(t, s, "penny", 42, p)
	if res.Reclaims != 1 || res.Withdrawn != 1 || res.Unfinished != 0 || res.PodsCompleted != 0 {
		t.Fatalf("reclaims %d, withdrawn %d, unfinished %d, completed %d; want 1, 1, 0, 0", res.Reclaims, res.Withdrawn, res.Unfinished, res.PodsCompleted)
	}
	if want := (14 * time.Minute).Seconds(); math.Abs(res.QueueDelay.Max-want) > 1e-3 {
		t.Errorf("queue delay %.1f s; want %.0f s, 13m before it ran and 1m from the reclaim to the deletion", res.QueueDelay.Max, want)
	}
	if end := p.Withdraw.Hours(); math.Abs(res.HorizonHours-end) > 1e-9 {
		t.Errorf("the replay ended at %.4f h; want %.4f h, when the pod was deleted", res.HorizonHours, end)
	}
}

// A GPU that a share holds is no room for a whole-GPU pod, though
// nvidia.com/gpu counts it free (shares ask for penny.dev/gpu-milli): the
// trainer that fell back while a half-GPU trainer held the one Spot node's
// GPU is not moved there, as penny-scheduler's mover would not move it.
func TestElasticMovesNothingOntoAGPUAShareHolds(t *testing.T) {
	s := spotScenario(t, "1", "0s")
	ann := s.Classes[1].Annotations
	ann["penny.dev/checkpoint"], ann[spotrisk.AnnotationExpectedRuntime] = "http://:8080/checkpoint", "20h"
	share := TracePod{Pod: NewPod(SimNamespace, "share", 4000, 16*1024, 1, 500, nil), Duration: 25 * time.Hour, Source: "test:share"}
	share.Pod.Labels[LabelQoS] = "BE"
	res := spotReplay(t, s, "penny", 42, share, spotTracePod("second", "BE", 1, time.Minute, 20*time.Hour))
	if res.Returns != 0 {
		t.Fatalf("%d moves back to Spot (%d pods), want none: the Spot node's one GPU is shared", res.Returns, res.ReturnedPods)
	}
	if res.Fallbacks == 0 {
		t.Fatalf("no fallback: the trainer did not wait for the shared GPU, so the test shows nothing")
	}
}

// A Spot-preferring trainer that fell back to on-demand (the one Spot node
// taken by "first") moves back to Spot once "first" ends and leaves the
// node free: checkpointed on request, it keeps its work, loses only the
// restart, and the rest of its 20h run costs Spot's price. With
// returnToSpot off it stays on on-demand to the end.
func TestElasticMovesFallenBackWorkBackToSpot(t *testing.T) {
	s := spotScenario(t, "1", "0s")
	ann := s.Classes[1].Annotations
	ann["penny.dev/checkpoint"], ann[spotrisk.AnnotationExpectedRuntime] = "http://:8080/checkpoint", "20h"
	p, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	replay := func(cfg []byte) *ElasticResult {
		t.Helper()
		res, err := ElasticReplay(context.Background(), ElasticOptions{Scenario: s, Policy: p, Seed: 42, SchedulerConfig: cfg,
			Trace: &Trace{Pods: []TracePod{
				spotTracePod("first", "BE", 1, 0, 5*time.Hour),
				spotTracePod("second", "BE", 1, time.Minute, 20*time.Hour)}}})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	moved, stayed := replay(nil), replay(shippedConfigWith(t, "enabled: true\n        every: 10m", "enabled: false\n        every: 10m"))
	if stayed.Returns != 0 || moved.Returns != 1 || moved.ReturnedPods != 1 {
		t.Fatalf("returns: %d with returnToSpot on (%d pods), %d with it off; want 1 (1 pod) and 0", moved.Returns, moved.ReturnedPods, stayed.Returns)
	}
	// first ends at 5h03m and leaves the Spot node empty; the round at
	// 5h10m moves second there, where it runs the rest of its work (20h
	// less the 4h56m it did on on-demand from 14m) after a 5m restart.
	left := 20*time.Hour - (5*time.Hour + 10*time.Minute - 14*time.Minute) + 5*time.Minute
	if !nearly(moved.ReturnedGPUHours, left.Hours()) {
		t.Fatalf("GPU-hours run on Spot after the move %v, want %v", moved.ReturnedGPUHours, left.Hours())
	}
	if !nearly(moved.UsefulGPUHours, 25) || !nearly(moved.LostGPUHours, (5*time.Minute).Hours()) {
		t.Fatalf("useful %v lost %v GPU-hours; want 25 and the restart's 5m", moved.UsefulGPUHours, moved.LostGPUHours)
	}
	if !(moved.BillUSD < stayed.BillUSD*0.7) {
		t.Fatalf("bill %.2f with the move, %.2f without; want well under", moved.BillUSD, stayed.BillUSD)
	}
}

// A pool that removes empty nodes at once (scaleDownAfter: 0s) still gives a
// node that joins for a waiting pod to that pod: removed as it joined, before
// the pod was placed, it was launched again and again while the pod waited.
func TestElasticZeroScaleDownKeepsTheNodeItsPodWaitsFor(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
pools:
- {name: od, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 2, provisioningDelay: 3m, scaleDownAfter: 0s}
`)
	for _, policy := range []string{"default", "penny"} {
		res := spotReplay(t, s, policy, 42, spotTracePod("job", "BE", 1, 0, time.Hour))
		if res.ScaleUps != 1 || res.QueueDelayP95Seconds != 180 {
			t.Errorf("%s: %d scale-ups and a p95 wait of %v s; want 1 node and the 180 s it takes to join", policy, res.ScaleUps, res.QueueDelayP95Seconds)
		}
	}
}

// An empty list item ("-" alone) is refused where it is: the decoder drops
// it, and the pools after it were given the line and the hourlyPrice
// written of the pool before each, and refused for another pool's price.
func TestSpotScenarioRefusesAnEmptyListItem(t *testing.T) {
	y := strings.NewReplacer("SPOTMAX", "4", "MTTR", "1h").Replace(tinyScenario)
	for name, c := range map[string]struct{ from, to, want string }{
		"pool":   {"pools:\n", "pools:\n-\n", `tiny.yaml:15: pools[0]: the item is empty (a "-" with nothing after it): remove the "-", or write the pool's fields after it`},
		"class":  {"classes:\n", "classes:\n- ~\n", `tiny.yaml:12: classes[0]: the item is empty`},
		"policy": {"- {policy: penny, tolerateSpot: true}\n", "- {policy: penny, tolerateSpot: true}\n-\n", `tiny.yaml:11: policies[2]: the item is empty`},
	} {
		bad := strings.Replace(y, c.from, c.to, 1)
		if bad == y {
			t.Fatalf("%s: %q is not in the scenario", name, c.from)
		}
		if _, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(bad)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// Not blamed on the pool after the empty item, which was given the
	// hourlyPrice of the pool before it.
	priced := strings.Replace(y, "pools:\n", "pools:\n-\n- {name: cheap, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1b, max: 1, hourlyPrice: 2}\n", 1)
	if _, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(priced)); err == nil || strings.Contains(err.Error(), "hourlyPrice") {
		t.Errorf("pools after an empty item: %v, want the empty item named, not a price", err)
	}
}

// A trace QoS value no class rule names is listed, once, with its pods: they
// ran unclassed (batch) with nothing said, a misspelt LS too.
func TestSpotScenarioUnclassedQoS(t *testing.T) {
	s := spotScenario(t, "4", "1h") // classes for LS and BE
	tr := &Trace{Pods: []TracePod{
		spotTracePod("a", "LS", 1, 0, time.Hour),
		spotTracePod("b", "ls", 1, 0, time.Hour),
		spotTracePod("c", "BE", 1, 0, time.Hour),
		spotTracePod("d", "ls", 1, 0, time.Hour),
		spotTracePod("e", "", 1, 0, time.Hour),
	}}
	want := []UnclassedQoS{{QoS: "ls", Pods: 2, First: "b (test:b)"}, {QoS: "", Pods: 1, First: "e (test:e)"}}
	if got := s.UnclassedQoS(tr); !reflect.DeepEqual(got, want) {
		t.Errorf("unclassed %+v, want %+v", got, want)
	}
	// A rule for any QoS, or no classes at all, leaves none unclassed.
	s.Classes = append(s.Classes, ClassRule{Annotations: map[string]string{"penny.dev/workload": "batch"}})
	if got := s.UnclassedQoS(tr); got != nil {
		t.Errorf("with a rule for any QoS: %+v", got)
	}
	s.Classes = nil
	if got := s.UnclassedQoS(tr); got != nil {
		t.Errorf("without classes: %+v", got)
	}
}

// A tab inside a block scalar is valid YAML: a syntax error elsewhere is not
// blamed on its line.
func TestSpotScenarioTabInABlockScalarIsNotBlamed(t *testing.T) {
	y := "region: us-east-1\nnote: |\n  a\n  \tb\npools: [{name: od\n"
	_, err := ParseSpotScenario("../../benchmarks/scenarios/tiny.yaml", []byte(y))
	if err == nil || strings.Contains(err.Error(), "indented with a tab") || !strings.Contains(err.Error(), "tiny.yaml: yaml: line") {
		t.Errorf("an unclosed flow mapping after a block scalar with a tab: %v, want the parser's own error", err)
	}
}

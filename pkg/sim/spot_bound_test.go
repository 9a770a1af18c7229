package sim

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// By hand on the tiny fleet (g5.8xlarge, 1 GPU: on-demand 2.448, Spot
// 0.9686 $/h): the service needs an on-demand node for its 2 hours; the
// trainer's GPU for its hour costs at least the Spot price of a GPU.
func TestBillBoundByHand(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	tr := &Trace{Pods: []TracePod{
		spotTracePod("serve", "LS", 1, 0, 2*time.Hour),
		spotTracePod("train", "BE", 1, 0, time.Hour),
	}}
	b, err := BillLowerBound(s, tr, 42, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !nearly(b.NeverUSD, 2*2.448) || !nearly(b.RestUSD, 0.9686) || b.FixedUSD != 0 || !nearly(b.BillUSD, 2*2.448+0.9686) || b.HorizonHours != 2 || b.LeftOut != 0 {
		t.Fatalf("bound %+v; want never 4.896, rest 0.9686, fixed 0, bill 5.8646 over 2 h, none left out", *b)
	}
}

// The bound reads classes with the profile's SpotRisk args: a trainer at
// priority 5000 is never-class under neverSpotPriority 1000, and then needs
// an on-demand node for its hour.
func TestBillBoundUsesTheProfilesClasses(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	train := spotTracePod("train", "BE", 1, 0, time.Hour)
	train.Pod.Spec.Priority = ptrInt32(5000)
	cfg := strings.Replace(string(withFallbackAfter(t, "10m")), "fallbackAfter: 10m", "fallbackAfter: 10m\n      neverSpotPriority: 1000", 1)
	args, err := pennyClassArgs([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cfg         string
		never, rest float64
	}{{"deployed", 0, 0.9686}, {"neverSpotPriority 1000", 2.448, 0}} {
		a := args
		if c.cfg == "deployed" {
			if a, err = pennyClassArgs(nil); err != nil {
				t.Fatal(err)
			}
		}
		b, err := BillLowerBound(s, &Trace{Pods: []TracePod{train}}, 42, a)
		if err != nil {
			t.Fatal(err)
		}
		if !nearly(b.NeverUSD, c.never) || !nearly(b.RestUSD, c.rest) {
			t.Errorf("%s: bound %+v; want never %v, rest %v", c.cfg, *b, c.never, c.rest)
		}
	}
}

// Two shares of over half a GPU cannot share one, two of under half can:
// the first pair of services needs two on-demand nodes, the second one.
func TestBillBoundSharesOverHalfTakeAGPUEach(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	share := func(name string, milli int64) TracePod {
		p := NewPod(SimNamespace, name, 1000, 1024, 1, milli, nil)
		p.Labels[LabelQoS] = "LS"
		return TracePod{Pod: p, Duration: time.Hour, Source: "test:" + name}
	}
	for _, c := range []struct {
		milli int64
		nodes float64
	}{{600, 2}, {400, 1}, {500, 1}} {
		b, err := BillLowerBound(s, &Trace{Pods: []TracePod{share("a", c.milli), share("b", c.milli)}}, 42, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !nearly(b.NeverUSD, c.nodes*2.448) {
			t.Errorf("two services of %d thousandths of a GPU: never-class part %.4f; want %.0f on-demand node(s), %.4f", c.milli, b.NeverUSD, c.nodes, c.nodes*2.448)
		}
	}
}

// A service without GPUs shares a GPU node's spare CPU only where GPU
// nodes are not tainted; where they are (gpuTaint), it needs a CPU node.
func TestBillBoundKeepsCPUPodsOffTaintedGPUNodes(t *testing.T) {
	const fleet = `
name: cpu-and-gpu
region: us-east-1
catalog: ../../deploy/pricing/catalog.yaml
gpuTaint: TAINT
policies: [{policy: penny}]
classes: [{qos: [LS], annotations: {penny.dev/workload: inference}}]
pools:
- {name: gpu, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 4}
- {name: cpu, instanceType: m7i.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 4}
`
	tr := &Trace{Pods: []TracePod{spotTracePod("gpu-service", "LS", 1, 0, time.Hour), spotTracePod("cpu-service", "LS", 0, 0, time.Hour)}}
	for taint, want := range map[string]float64{"true": 2.448 + 1.6128, "false": 2.448} {
		s, err := ParseSpotScenario("../../benchmarks/scenarios/cpu-and-gpu.yaml", []byte(strings.ReplaceAll(fleet, "TAINT", taint)))
		if err != nil {
			t.Fatal(err)
		}
		b, err := BillLowerBound(s, tr, 42, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !nearly(b.NeverUSD, want) {
			t.Errorf("gpuTaint %s: never-class part %.4f; want %.4f", taint, b.NeverUSD, want)
		}
	}
}

// Pods the trace withdrew, and services no non-Spot pool can hold, are left
// out: no policy runs them.
func TestBillBoundLeavesOutWhatNoPolicyRuns(t *testing.T) {
	s := spotScenario(t, "4", "0s")
	withdrawn := spotTracePod("never-started", "BE", 1, 0, time.Hour)
	withdrawn.Withdraw, withdrawn.Withdraws = time.Hour, true
	b, err := BillLowerBound(s, &Trace{Pods: []TracePod{withdrawn, spotTracePod("too-big", "LS", 2, 0, time.Hour)}}, 42, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.LeftOut != 2 || b.BillUSD != 0 {
		t.Fatalf("bound %+v; want both pods left out and nothing to pay", *b)
	}
}

// The bound is below what every policy that keeps never-class pods off Spot
// pays, on a slice of openb (services on shares, a reserved node, four kinds
// of nodes) and on a training trace with gangs: a bound above such a
// replay's bill is wrong. spot-first runs services on Spot, which the bound
// does not allow, and pays less.
func TestBillBoundIsBelowEveryPolicysBill(t *testing.T) {
	sc, err := LoadSpotScenario("../../benchmarks/scenarios/spot-openb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ob, err := LoadOpenbPods(filepath.Join(openbDir(t), "openb_pod_list_default.csv"))
	if err != nil {
		t.Fatal(err)
	}
	ob.Pods = ob.Pods[:1500]
	_, philly := referencePhilly(t, "timestamp,duration,num_gpus,gpu_time,cluster\n"+
		"0,36000,16,576000,a\n600,7200,1,7200,a\n1200,90000,4,360000,b\n1800,3600,2,7200,a\n5000,40000,8,320000,c\n9000,600,1,600,a\n")
	var policies []*Policy
	for _, name := range []string{"default", SpotFirstPolicy, "penny"} {
		p, err := LookupPolicy(name)
		if err != nil {
			t.Fatal(err)
		}
		policies = append(policies, p)
	}
	for name, tr := range map[string]*Trace{"openb[:1500]": ob, "philly": philly} {
		rep, err := RunSpotReplays(context.Background(), sc, tr, policies, 42, nil, nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Bound.BillUSD <= rep.Bound.FixedUSD {
			t.Errorf("%s: bound %+v pays nothing beyond the min nodes", name, *rep.Bound)
		}
		for _, r := range rep.Runs {
			if r.NeverOnSpot > 0 {
				continue
			}
			if r.BillUSD < rep.Bound.BillUSD {
				t.Errorf("%s: %s paid %.2f, under the bound %+v", name, r.Policy, r.BillUSD, *rep.Bound)
			}
			if got := rep.Summary[r.Policy].BillVsBound; got < 1 {
				t.Errorf("%s: %s bill_vs_bound %.3f; want >= 1", name, r.Policy, got)
			}
		}
		if name == "openb[:1500]" && rep.Summary[SpotFirstPolicy].NeverOnSpot == 0 {
			t.Errorf("%s: spot-first ran no service on Spot; the check above then proves less than it should", name)
		}
	}
}

// A Spot pool's min node that is reclaimed is replaced at once, as an Auto
// Scaling group keeps its minimum: the pool is billed for the whole replay,
// and the bound, which counts the min nodes for the trace's span, stays
// under the bill. Before, the pool lost its node at the first reclaim and
// the bill fell under the bound.
func TestElasticSpotMinNodeIsReplacedAfterAReclaim(t *testing.T) {
	s := scenarioOf(t, `
region: us-east-1
spotTaint: true
classes:
- {qos: [LS], annotations: {penny.dev/workload: inference}}
pools:
- {name: od, instanceType: g5.8xlarge, capacityType: on-demand, zone: us-east-1a, max: 4}
- {name: spot, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, min: 1, max: 2, meanTimeToReclaim: 1h}
`)
	pods := []TracePod{spotTracePod("serve", "LS", 1, 0, 10*time.Hour)}
	res := spotReplay(t, s, "default", 42, pods...)
	if res.Reclaims == 0 {
		t.Fatal("no reclaim in 10 h of nodes that live 1 h: the test needs some")
	}
	// The service's on-demand node joins at 3m; the replay ends 10 h later.
	end := (10*time.Hour + 3*time.Minute).Hours()
	if !nearly(res.HorizonHours, end) || !nearly(res.NodeHoursByPool["spot"], end) || !nearly(res.BillUSD, round2(end*(2.448+0.9686))) {
		t.Fatalf("ended at %.4f h; Spot pool up %.4f h, bill %.2f; want %.4f h, %.4f h and %.2f",
			res.HorizonHours, res.NodeHoursByPool["spot"], res.BillUSD, end, end, round2(end*(2.448+0.9686)))
	}
	b, err := BillLowerBound(s, &Trace{Pods: pods}, 42, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.BillUSD < b.BillUSD {
		t.Fatalf("bill %.2f under the bound %+v", res.BillUSD, *b)
	}
}

package spotrisk

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/pricing"
)

// movable is a checkpointing training pod with a hook and a declared
// runtime: the kind of pod the mover takes back to Spot.
func movable(name, runtime string) *corev1.Pod {
	p := pod(name, map[string]string{AnnotationWorkload: "training", AnnotationCheckpointInterval: "30m",
		AnnotationCheckpointHook: "http://:8080/checkpoint", AnnotationExpectedRuntime: runtime})
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: "train", UID: "job-uid", Controller: ptr.To(true)}}
	return p
}

func member(p *corev1.Pod, on, spot *corev1.Node, started time.Time) ReturnMember {
	return ReturnMember{Pod: p, Node: on, Usage: pricing.PodUsage(p), Started: started, Spot: spot}
}

func never(string) (time.Time, bool) { return time.Time{}, false }

func TestPlanReturnPicksTheLargestSaving(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)})
	od, spot := node("od", pricing.OnDemand, "us-east-1a"), node("spot", pricing.Spot, "us-east-1a")
	now := t0.Add(2 * time.Hour)
	short, long := movable("short", "4h"), movable("long", "24h")
	move, ok := e.plugin.PlanReturn(now, []ReturnCandidate{
		{Workload: "default/short", Members: []ReturnMember{member(short, od, spot, t0)}},
		{Workload: "default/long", Members: []ReturnMember{member(long, od, spot, t0)}},
	}, never)
	if !ok || move.Workload != "default/long" {
		t.Fatalf("PlanReturn = %+v, %v; want the 24h run moved (22h left against 2h)", move, ok)
	}
	if move.Remaining != 22*time.Hour || !(move.From > move.To) || move.Saving <= 0 {
		t.Fatalf("move %+v: want 22h remaining, a dearer on-demand hour and a positive saving", move)
	}
	// On-demand p4d $32/h for 1 of 8 GPUs = $4/h; Spot $8/h at a 5-10%
	// bucket: $1/h plus the expected reclaim loss. The saving over 22h
	// less a 5m restart on Spot.
	want := (move.From-move.To)*22 - move.To*(5.0/60)
	if d := move.Saving - want; d > 1e-9 || d < -1e-9 {
		t.Fatalf("saving %v, want %v", move.Saving, want)
	}
	if len(move.Pods) != 1 || move.Pods[0].Name != "long" {
		t.Fatalf("pods %v", move.Pods)
	}
}

func TestPlanReturnLeavesAlone(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)})
	od, spot, reserved := node("od", pricing.OnDemand, "us-east-1a"), node("spot", pricing.Spot, "us-east-1a"), node("r", pricing.Reserved, "us-east-1a")
	now := t0.Add(2 * time.Hour)
	noHook := movable("nohook", "24h")
	delete(noHook.Annotations, AnnotationCheckpointHook)
	badHook := movable("badhook", "24h")
	badHook.Annotations[AnnotationCheckpointHook] = "http:8080/checkpoint"
	noInterval := movable("nointerval", "24h")
	delete(noInterval.Annotations, AnnotationCheckpointInterval)
	allow := movable("allow", "24h")
	allow.Annotations[AnnotationSpot] = "allow"
	bare := movable("bare", "24h")
	bare.OwnerReferences = nil
	for _, tc := range []struct {
		name string
		m    ReturnMember
	}{
		{"no checkpoint hook: a move would lose the work since its last checkpoint", member(noHook, od, spot, t0)},
		{"a checkpoint hook the agent refuses to call: as good as none", member(badHook, od, spot, t0)},
		{"no checkpoints", member(noInterval, od, spot, t0)},
		{"allow, not prefer: it did not fall back", member(allow, od, spot, t0)},
		{"a bare pod: nothing would replace it", member(bare, od, spot, t0)},
		{"already on Spot", member(movable("p", "24h"), spot, spot, t0)},
		{"on reserved capacity, already paid for", member(movable("p", "24h"), reserved, spot, t0)},
		{"no room on Spot", member(movable("p", "24h"), od, nil, t0)},
		{"room on a node that is not Spot", member(movable("p", "24h"), od, od, t0)},
		{"ran under minRunning (15m)", member(movable("p", "24h"), od, spot, now.Add(-10*time.Minute))},
		{"ends within minRemaining (1h)", member(movable("p", "2h30m"), od, spot, t0)},
	} {
		if move, ok := e.plugin.PlanReturn(now, []ReturnCandidate{{Workload: "w", Members: []ReturnMember{tc.m}}}, never); ok {
			t.Errorf("%s: moved %+v", tc.name, move)
		}
	}
	// The cooldown keeps a workload moved 5h ago where it is; one moved 7h
	// ago may move again.
	c := []ReturnCandidate{{Workload: "w", Members: []ReturnMember{member(movable("p", "24h"), od, spot, t0)}}}
	if _, ok := e.plugin.PlanReturn(now, c, func(string) (time.Time, bool) { return now.Add(-5 * time.Hour), true }); ok {
		t.Error("moved within the 6h cooldown")
	}
	if _, ok := e.plugin.PlanReturn(now, c, func(string) (time.Time, bool) { return now.Add(-7 * time.Hour), true }); !ok {
		t.Error("not moved 7h after its last move")
	}
}

// A run a reclaim cut short kept its work (the workload checkpoints): a
// 24h job reclaimed after 21h30m, 2h into its run on on-demand, has 30m
// left, not 22h, and stays where it is.
func TestPlanReturnCountsTheRunAReclaimCutShort(t *testing.T) {
	interrupted := pricing.NewInterrupted(0)
	e := newEnv(t, nil, Deps{Prices: catalog(t), Interrupted: interrupted})
	od, spot := node("od", pricing.OnDemand, "us-east-1a"), node("spot", pricing.Spot, "us-east-1a")
	now := t0.Add(2 * time.Hour)
	p := movable("p", "24h")
	c := []ReturnCandidate{{Workload: "w", Members: []ReturnMember{member(p, od, spot, t0)}}}
	if move, ok := e.plugin.PlanReturn(now, c, never); !ok || move.Remaining != 22*time.Hour {
		t.Fatalf("no reclaim yet: PlanReturn = %+v, %v; want a move with 22h left", move, ok)
	}
	// The pod it replaced, of the same Job, was reclaimed after 21h30m.
	interrupted.Observe(movable("p-before", "24h"), 21*time.Hour+30*time.Minute, t0.Add(-5*time.Minute))
	if move, ok := e.plugin.PlanReturn(now, c, never); ok {
		t.Fatalf("moved with %v left: 21h30m done before the reclaim and 2h since leave 30m, under minRemaining", move.Remaining)
	}
	longer := []ReturnCandidate{{Workload: "w", Members: []ReturnMember{member(movable("p", "48h"), od, spot, t0)}}}
	if move, ok := e.plugin.PlanReturn(now, longer, never); !ok || move.Remaining != 24*time.Hour+30*time.Minute {
		t.Fatalf("a 48h job reclaimed after 21h30m: moved %v with %v left; want a move with 24h30m left", ok, move.Remaining)
	}
}

func TestPlanReturnMovesAGangWhole(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)})
	od, spot := node("od", pricing.OnDemand, "us-east-1a"), node("spot", pricing.Spot, "us-east-1a")
	now := t0.Add(2 * time.Hour)
	a, b := movable("a", "24h"), movable("b", "24h")
	move, ok := e.plugin.PlanReturn(now, []ReturnCandidate{{Workload: "gang:label:default/g",
		Members: []ReturnMember{member(b, od, spot, t0), member(a, od, spot, t0.Add(time.Minute))}}}, never)
	if !ok || len(move.Pods) != 2 || move.Pods[0].Name != "a" || move.Pods[1].Name != "b" {
		t.Fatalf("PlanReturn = %+v, %v; want both members", move, ok)
	}
	// One member without room keeps the whole gang where it is.
	if move, ok := e.plugin.PlanReturn(now, []ReturnCandidate{{Workload: "gang:label:default/g",
		Members: []ReturnMember{member(a, od, spot, t0), member(b, od, nil, t0)}}}, never); ok {
		t.Fatalf("moved %+v with a member that has no room on Spot", move)
	}
	// So does one that started under minRunning ago (a replacement that has
	// just loaded its work), however long the others have run.
	if move, ok := e.plugin.PlanReturn(now, []ReturnCandidate{{Workload: "gang:label:default/g",
		Members: []ReturnMember{member(a, od, spot, t0), member(b, od, spot, now.Add(-5*time.Minute))}}}, never); ok {
		t.Fatalf("moved %s (saving $%.2f) with a member that started 5m ago, under minRunning (15m)", move.Workload, move.Saving)
	}
}

func TestPlanReturnNeedsASaving(t *testing.T) {
	// Spot dearer than on-demand here: nothing to gain.
	c := catalogOf(t, strings.Replace(testCatalog, "capacityType: spot, region: us-east-1, hourly: 8,", "capacityType: spot, region: us-east-1, hourly: 40,", 1))
	e := newEnv(t, nil, Deps{Prices: c})
	od, spot := node("od", pricing.OnDemand, "us-east-1a"), node("spot", pricing.Spot, "us-east-1a")
	if move, ok := e.plugin.PlanReturn(t0.Add(2*time.Hour), []ReturnCandidate{{Workload: "w",
		Members: []ReturnMember{member(movable("p", "24h"), od, spot, t0)}}}, never); ok {
		t.Fatalf("moved %+v to a dearer pool", move)
	}
}

func TestReturnToSpotArgs(t *testing.T) {
	a := &Args{}
	a.SetDefaults()
	rs := a.ReturnToSpot
	if !*rs.Enabled || rs.Every.Duration != 10*time.Minute || rs.MinRunning.Duration != 15*time.Minute ||
		rs.MinRemaining.Duration != time.Hour || rs.Cooldown.Duration != 6*time.Hour || rs.CheckpointTimeout.Duration != 10*time.Minute {
		t.Fatalf("defaults %+v", rs)
	}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	c := a.DeepCopyObject().(*Args)
	if c.ReturnToSpot.Every == a.ReturnToSpot.Every || c.ReturnToSpot.Enabled == a.ReturnToSpot.Enabled {
		t.Fatal("DeepCopyObject shares returnToSpot's fields")
	}
	for _, tc := range []struct {
		set  func(*ReturnToSpot)
		want string
	}{
		{func(r *ReturnToSpot) { r.Every = &metav1.Duration{} }, "args.returnToSpot.every: Invalid value: \"0s\": must be positive"},
		{func(r *ReturnToSpot) { r.CheckpointTimeout = &metav1.Duration{} }, "args.returnToSpot.checkpointTimeout: Invalid value: \"0s\": must be positive"},
		{func(r *ReturnToSpot) { r.Cooldown = &metav1.Duration{Duration: -time.Hour} }, "args.returnToSpot.cooldown: Invalid value: \"-1h0m0s\": must not be negative"},
	} {
		b := &Args{}
		tc.set(&b.ReturnToSpot)
		b.SetDefaults()
		if err := b.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate = %v, want %q", err, tc.want)
		}
	}
}

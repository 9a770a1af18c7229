package sim

import (
	"math/rand/v2"
	"testing"
	"time"
)

// firstLives are the lives ElasticReplay draws for the first two nodes of
// the scenario's first pool that become ready, with the given seed: the
// reclaim draw of a pool is its own seeded stream (nodeReady).
func firstLives(seed uint64, mttr time.Duration) (time.Duration, time.Duration) {
	rng := rand.New(rand.NewPCG(seed, 0x51ed))
	a := time.Duration(rng.ExpFloat64() * float64(mttr))
	b := time.Duration(rng.ExpFloat64() * float64(mttr))
	return a, b
}

// seedWhere is the first seed whose first two lives pass ok.
func seedWhere(t *testing.T, mttr time.Duration, ok func(a, b time.Duration) bool) (uint64, time.Duration, time.Duration) {
	t.Helper()
	for seed := uint64(1); seed < 1000; seed++ {
		if a, b := firstLives(seed, mttr); ok(a, b) {
			return seed, a, b
		}
	}
	t.Fatal("no seed draws such lives")
	return 0, 0, 0
}

// As Penny's agent does (docs/reclaim.md): at the notice (AWS, 2m) a trainer
// with a checkpoint hook writes its checkpoint (20s), is evicted once it is
// in, and is placed again at once on a node the autoscaler launches then
// (3m). It loses the 20s it ran after the notice and the 5m restart, not
// the notice, and finishes 100s before it would had it run until the node
// went. (Until 2026-12-02 the replay stopped it at the removal: 2m20s of
// work lost, a restart 100s later.)
func TestElasticNoticeCheckpointedPodLosesTheCheckpointNotTheNotice(t *testing.T) {
	mttr := 2 * time.Hour
	seed, life, next := seedWhere(t, mttr, func(a, b time.Duration) bool { return a > 30*time.Minute && b > 2*time.Hour })
	s := scenarioOf(t, `
name: notice
region: us-east-1
restartOverhead: 5m
policies:
- {policy: penny, tolerateSpot: true, noticeCheckpoints: true}
classes:
- {qos: [BE], annotations: {penny.dev/workload: training, penny.dev/spot: only, penny.dev/checkpoint: "http://:8080/checkpoint"}}
pools:
- {name: spot, instanceType: g5.8xlarge, capacityType: spot, zone: us-east-1a, min: 1, max: 2, provisioningDelay: 3m, meanTimeToReclaim: 2h}
`)
	work := life + 10*time.Minute
	res := spotReplay(t, s, "penny", seed, spotTracePod("train", "BE", 1, 0, work))
	if res.Reclaims != 1 || res.NoticeCheckpoints != 1 || res.PodsCompleted != 1 {
		t.Fatalf("seed %d (lives %v, %v): %d reclaims, %d notice checkpoints, %d completed; want 1, 1, 1", seed, life, next, res.Reclaims, res.NoticeCheckpoints, res.PodsCompleted)
	}
	if want := (20*time.Second + 5*time.Minute).Hours(); !nearly(res.LostGPUHours, want) {
		t.Errorf("lost %v GPU-h, want the checkpoint's 20s and the restart: %v", res.LostGPUHours, want)
	}
	// Notice at life-2m, evicted 20s later, a node 3m later, the restart
	// 5m, and the 12m of work since the notice again.
	end := life - 2*time.Minute + 20*time.Second + 3*time.Minute + 5*time.Minute + 12*time.Minute
	if got := time.Duration(res.HorizonHours * float64(time.Hour)); (got - end).Abs() > time.Second {
		t.Errorf("the trainer finished at %v, want %v (restarted from its eviction, not from the node's removal at %v)", got, end, life)
	}
	if !nearly(res.AllocatedGPUHours, res.UsefulGPUHours+res.LostGPUHours) {
		t.Errorf("allocated %v != useful %v + lost %v", res.AllocatedGPUHours, res.UsefulGPUHours, res.LostGPUHours)
	}
}

// A node under a reclaim notice takes no pod (the agent's taint): a pod that
// arrives 30s into the notice of the only node a full pool has waits for
// the node to go and for the replacement the pool's minimum launches (3m),
// rather than being placed there and reclaimed 90s later. The pod on the
// node has no hook and no agent to wait for (default: a handler that
// cordons and drains) and is evicted at the notice, billed until the node
// goes.
func TestElasticNodeTakesNoPodDuringItsNotice(t *testing.T) {
	mttr := 2 * time.Hour
	seed, life, _ := seedWhere(t, mttr, func(a, b time.Duration) bool { return a > 30*time.Minute && b > 2*time.Hour })
	s := scenarioOf(t, `
name: notice
region: us-east-1
restartOverhead: 5m
policies:
- {policy: default, tolerateSpot: true}
pools:
- {name: spot, instanceType: g5.12xlarge, capacityType: spot, zone: us-east-1a, min: 1, max: 1, provisioningDelay: 3m, meanTimeToReclaim: 2h}
`)
	notice := life - 2*time.Minute
	res := spotReplay(t, s, "default", seed,
		spotTracePod("first", "BE", 1, 0, life+time.Hour),
		spotTracePod("late", "BE", 1, notice+30*time.Second, 10*time.Minute))
	if res.Reclaims < 1 || res.PodsCompleted != 2 {
		t.Fatalf("seed %d: %d reclaims, %d completed; want a reclaim and both done: %+v", seed, res.Reclaims, res.PodsCompleted, res)
	}
	if res.PodsReclaimed != 1 {
		t.Errorf("%d pods reclaimed, want only the one on the node before its notice", res.PodsReclaimed)
	}
	if want := (90*time.Second + 3*time.Minute).Seconds(); !nearly(res.FirstStartDelay.Max, want) {
		t.Errorf("the late pod first started %vs after it came, want %vs (the rest of the notice and the replacement's provisioning)", res.FirstStartDelay.Max, want)
	}
	// The drained pod lost all it had done, its GPU-hours up to the notice,
	// and its restart.
	if got, want := res.LostGPUHours, (notice + 5*time.Minute).Hours(); !nearly(got, want) {
		t.Errorf("lost %v GPU-h, want the %v h the first pod ran before the notice and its restart", got, want)
	}
	if bill := res.NodeHoursByPool["spot"]; bill < (life + 3*time.Minute).Hours() {
		t.Errorf("%v node-hours, want the reclaimed node billed until it went (%v) and its replacement after", bill, life)
	}
}

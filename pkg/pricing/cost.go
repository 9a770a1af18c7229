package pricing

import "time"

// Work describes what a reclaim costs a workload.
type Work struct {
	// CheckpointInterval is how often the workload saves its progress; 0
	// means it never does.
	CheckpointInterval time.Duration
	// ExpectedRuntime is how long the workload is expected to run; 0 when
	// unknown.
	ExpectedRuntime time.Duration
	// Stateless workloads (services) keep no progress: a reclaim costs only
	// the restart.
	Stateless bool
	// RestartOverhead is the time a reclaimed workload needs to be useful
	// again: rescheduling, image pull, loading a model or a checkpoint.
	RestartOverhead time.Duration
	// Nodes is how many nodes' reclaims interrupt the workload: a gang of k
	// members stops when any member's node goes, so it counts k (as if each
	// member had a node of its own); 0 or 1 for a pod alone.
	Nodes int
}

// LostPerReclaim is the work a reclaim destroys, on average: half a
// checkpoint interval when the workload checkpoints (a reclaim lands
// uniformly between two checkpoints), half the runtime when it does not
// (everything since the start is lost), nothing for a stateless service.
// undeclared stands in for a runtime nobody declared (SpotRisk: how long
// training runs in the cluster typically last, else its unknownRuntime).
func (w Work) LostPerReclaim(undeclared time.Duration) time.Duration {
	if w.Stateless {
		return 0
	}
	run := w.ExpectedRuntime
	if run <= 0 {
		run = undeclared
	}
	if w.CheckpointInterval > 0 && w.CheckpointInterval < run {
		return w.CheckpointInterval / 2
	}
	return run / 2
}

// CostPerUsefulHour is the expected price of one hour of useful work on
// capacity that costs hourly and is reclaimed at rate (per node-hour):
// every reclaim wastes the lost work and the restart, so an hour of useful
// work takes 1 + rate*nodes*(lost + restart) hours of capacity on average,
// where a gang on nodes of the pool is interrupted nodes times as often as
// one pod (GangReclaimProbability). undeclared is as for LostPerReclaim.
func CostPerUsefulHour(hourly, rate float64, w Work, undeclared time.Duration) float64 {
	if rate <= 0 {
		return hourly
	}
	waste := (w.LostPerReclaim(undeclared) + w.RestartOverhead).Hours()
	return hourly * (1 + rate*float64(max(1, w.Nodes))*waste)
}

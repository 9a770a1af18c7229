package sim

// FirstFitScoreName is the first-fit baseline: every feasible node scores
// the same, so the engine's node-order tie-break takes the first node of its
// seeded node order that fits, and the devices are the lowest-indexed ones
// that fit (NodeDevices.FirstFit) — what a scheduler without a packing
// policy and a device plugin without advice do.
const FirstFitScoreName = "FirstFitScore"

func firstFitScore(*podRequest, *nodeView) int64 { return 0 }

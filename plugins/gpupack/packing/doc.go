// Package packing is gpupack's placement model, free of the scheduler
// framework so that it can be tested and benchmarked on its own: the
// workload's demand learned from arrivals (Learner, Demand), one node's
// devices and free resources as the scorer reads them (Node), and the
// measure that scores and chooses a placement (Measure, Choose).
//
// The measure is the expected waste of a node against the demand: for each
// typical pod shape s (weight w_s), the free GPU capacity of the node that
// copies of s could not use if s alone filled the node,
//
//	W(node) = sum_s w_s * (free(node) - copies_s(node) * size(s))
//
// where copies_s is bounded by every resource the shape needs on that node:
// GPUs of a model it accepts (per GPU for shares, whole idle GPUs for
// multi-GPU pods, MIG geometry for MIG instances), CPU and memory. A
// placement is scored by how much it grows W. This extends FGD (Weng et al.,
// ATC'23), whose measure asks only whether one copy of s fits and counts
// only the GPUs with less free than s needs: FGD cannot see capacity that
// CPU or memory will strand after a few more pods, nor the remainder a share
// leaves on a GPU it fits on.
package packing

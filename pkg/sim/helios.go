package sim

import (
	"fmt"

	"github.com/pennysched/penny/pkg/gpu"
)

// The job log of SenseTime's Helios GPU datacenter (S-Lab-System-Group/
// HeliosData, each cluster's cluster_log.csv): job_id,user,vc,gpu_num,
// cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue,
// one row per Slurm job, deep learning training and the CPU jobs around it,
// times as date-times ("2020-06-09 18:41:01"), duration and queue in
// seconds. How a row becomes pods (docs/sim.md):
//   - node_num pods, more if a pod would take more than GPUsPerGangPod GPUs;
//     the job's GPUs and CPUs are split evenly between them (the first pods
//     take one more where they do not divide; without cpu_num a pod asks
//     MilliCPUPerGPU per GPU), and a job of more than one pod is a gang, as
//     its nodes' workers run together or not at all;
//   - memory is not recorded: 4 GiB per CPU, at least MemMiBPerGPU per GPU,
//     as for Alibaba's Spot GPU trace;
//   - vc (the virtual cluster) becomes the namespace, as a Philly trace's
//     cluster does (namespaceFor);
//   - a job runs its recorded duration from wherever the replay starts it;
//     start_time, end_time and queue say what Slurm did and are not read.
//     Jobs of every state run: a cancelled or failed job held its GPUs for
//     its duration too.

// HeliosColumns are the columns LoadHelios reads; the first three are
// required.
var HeliosColumns = []string{"submit_time", "duration", "gpu_num", "cpu_num", "node_num", "vc"}

// heliosHeader are the columns by which DetectFormat tells a Helios job
// log: the required ones, node_num and vc.
var heliosHeader = []string{"submit_time", "duration", "gpu_num", "node_num", "vc"}

// LoadHelios reads a Helios job log. Of opts it uses MilliCPUPerGPU (for a
// row without cpu_num), MemMiBPerGPU and GPUsPerGangPod.
func LoadHelios(path string, opts PhillyOptions) (*Trace, error) {
	podGPUs := opts.gangPodGPUs()
	required := HeliosColumns[:3]
	t, closeFn, err := openTable(path, required...)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	jobs := newJobList(path)
	var kinds instantKinds
	for t.next() {
		t.required(required...)
		ts, dated := t.instant("submit_time")
		kinds.check(t, "submit_time", dated)
		dur := t.seconds("duration", 0)
		gpus := t.int64("gpu_num", 0, 4096, 0)
		cpus := t.int64("cpu_num", 0, maxJobCPUs, -1)
		// A job that never got nodes (cancelled while queued) may record 0.
		nodes := max(t.int64("node_num", 0, 4096, 1), 1)
		ns := namespaceFor(t.str("vc"))
		if t.err != nil {
			break
		}
		n := max(nodes, (gpus+podGPUs-1)/podGPUs)
		job := fmt.Sprintf("job-%06d", t.line()-1)
		source := fmt.Sprintf("%s:%d", path, t.line())
		for i := range n {
			g := evenShare(gpus, n, i)
			c := max(g, 1) * opts.MilliCPUPerGPU
			if cpus >= 0 {
				c = max(evenShare(cpus, n, i)*1000, minPodMilliCPU)
			}
			mem := max(c*memMiBPerCPU/1000, g*opts.MemMiBPerGPU, memMiBPerCPU)
			jobs.add(newJobPod(ns, job, int(i), int(n), c, mem, g, gpu.MilliPerGPU), dur, source, ts)
		}
	}
	return jobs.trace(t, "submit_time")
}

// maxJobCPUs bounds a trace's CPU counts, far above any node's, so that
// their millicores and memory (4 GiB each) stay well within an int64.
const maxJobCPUs = 1 << 20

// minPodMilliCPU is what a pod of a job that records no CPUs for it asks:
// Slurm gives every job step at least one CPU; a tenth of a core keeps such
// a pod from packing without bound.
const minPodMilliCPU = 100

// evenShare is part i of total split into n parts as evenly as whole units
// allow, the first parts taking one more.
func evenShare(total, n, i int64) int64 {
	share := total / n
	if i < total%n {
		share++
	}
	return share
}

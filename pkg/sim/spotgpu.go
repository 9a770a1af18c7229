package sim

import (
	"fmt"
	"math"

	"github.com/pennysched/penny/pkg/gpu"
)

// The job list of Alibaba's trace of AI jobs on Spot GPUs
// (clusterdata/cluster-trace-v2026-spot-gpu, job_info_df.csv):
// job_name,organization,gpu_model,cpu_request,gpu_request,worker_num,
// submit_time,duration,job_type, one row per job, times in seconds from the
// first submission. How a row becomes pods (docs/sim.md):
//   - worker_num pods, each asking cpu_request vCPUs and gpu_request GPUs
//     (the requests are a worker's: the published rows ask 15 vCPUs and one
//     GPU for each of 94 workers); a job of more than one worker is a gang,
//     labelled with Penny's gang convention, as a distributed job's workers
//     run together or not at all;
//   - gpu_request under 1 is a share of one GPU (penny.dev/gpu-milli), as in
//     openb; 1 or more must be whole;
//   - memory is not recorded: 4 GiB per vCPU (what GPU and general-purpose
//     cloud nodes carry per vCPU), at least MemMiBPerGPU per GPU;
//   - job_type (HP: high-priority with strict SLOs; Spot: ran on Spot
//     instances) is kept where openb keeps its QoS (LabelQoS), so a spot
//     scenario's classes map it to Penny's workload classes;
//   - organization (the cost organization) becomes the namespace, as a
//     Philly trace's virtual cluster does (namespaceFor);
//   - gpu_model is kept as the annotation AnnotationTraceGPUModel and does not
//     constrain placement: the trace's models (A10, A100-SXM4-80GB and
//     undisclosed ones) are not the fleet a replay prices.

// SpotGPUColumns are the columns LoadSpotGPU reads; the first four are
// required.
var SpotGPUColumns = []string{"submit_time", "duration", "gpu_request", "worker_num", "cpu_request", "job_type", "organization", "gpu_model", "job_name"}

// AnnotationTraceGPUModel is the GPU model a trace's job asked for, where
// the replay does not hold it to that model.
const AnnotationTraceGPUModel = "penny.dev/trace-gpu-model"

// memMiBPerCPU is the memory a spot-GPU trace's pod asks per vCPU.
const memMiBPerCPU = 4 * 1024

// LoadSpotGPU reads the job list of Alibaba's Spot GPU trace. Of opts it
// uses MilliCPUPerGPU (for a row without cpu_request) and MemMiBPerGPU.
func LoadSpotGPU(path string, opts PhillyOptions) (*Trace, error) {
	required := SpotGPUColumns[:4]
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
		workers := t.int64("worker_num", 1, 4096, 1)
		gpus := t.float("gpu_request", 0, 0)
		if gpus > 1 && gpus != math.Trunc(gpus) {
			t.fail("gpu_request", "%v GPUs: a request over one GPU must be whole (under one it is a share of a GPU)", gpus)
		}
		if gpus > 4096 {
			t.fail("gpu_request", "%v GPUs per worker is more than any node holds", gpus)
		}
		if gpus > 0 && math.Round(gpus*gpu.MilliPerGPU) == 0 {
			// It would ask for no GPU at all.
			t.fail("gpu_request", "%v GPUs is under the thousandth of a GPU a share is counted in; give 0 for a job without GPUs", gpus)
		}
		cpus := t.float("cpu_request", 0, -1)
		if cpus > maxJobCPUs {
			// Its millicores and memory would overflow, to a pod that asks
			// for none.
			t.fail("cpu_request", "%s vCPUs per worker is more than any node holds (at most %d)", t.str("cpu_request"), maxJobCPUs)
		}
		qos := t.str("job_type")
		ns := namespaceFor(t.str("organization"))
		model := t.str("gpu_model")
		if t.err != nil {
			break
		}
		milliCPU := int64(math.Round(cpus * 1000))
		if cpus < 0 {
			milliCPU = opts.MilliCPUPerGPU * int64(math.Max(1, math.Ceil(gpus)))
		}
		numGPU, milliPerGPU := int64(gpus), int64(gpu.MilliPerGPU)
		if gpus > 0 && gpus < 1 {
			numGPU, milliPerGPU = 1, int64(math.Round(gpus*gpu.MilliPerGPU))
		}
		mem := max(milliCPU*memMiBPerCPU/1000, int64(math.Ceil(gpus*float64(opts.MemMiBPerGPU))))
		job := fmt.Sprintf("job-%06d", t.line()-1)
		source := fmt.Sprintf("%s:%d", path, t.line())
		for i := range int(workers) {
			pod := newJobPod(ns, job, i, int(workers), milliCPU, mem, numGPU, milliPerGPU)
			if qos != "" {
				pod.Labels[LabelQoS] = qos
			}
			if model != "" {
				pod.Annotations = map[string]string{AnnotationTraceGPUModel: model}
			}
			jobs.add(pod, dur, source, ts)
		}
	}
	return jobs.trace(t, "submit_time")
}

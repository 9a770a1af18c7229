package sim

import (
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
)

// The Philly-derived job format used by several GPU scheduling papers:
// timestamp,duration,num_gpus,gpu_time,cluster — one row per job, times in
// seconds (timestamp may instead hold date-times, as the raw job log does).
// A job is one pod asking for num_gpus whole GPUs; a job over
// GPUsPerGangPod GPUs becomes a gang of pods of GPUsPerGangPod GPUs each (the
// last takes the remainder), labelled with Penny's gang convention so the
// gang plugin places them all or none. The cluster column (the virtual
// cluster that submitted the job) becomes the pod's namespace (namespaceFor).

// PhillyColumns are the format's columns in the order a file without a header
// row holds them. gpu_time and cluster may be left out.
var PhillyColumns = []string{"timestamp", "duration", "num_gpus", "gpu_time", "cluster"}

// PhillyOptions sizes the pods of a Philly-derived trace, which records GPUs
// only.
type PhillyOptions struct {
	// MilliCPUPerGPU and MemMiBPerGPU are requested per GPU.
	MilliCPUPerGPU int64
	MemMiBPerGPU   int64
	// GPUsPerGangPod is the size of each pod of a large job (default 8).
	GPUsPerGangPod int64
}

// DefaultPhillyOptions: 4 cores and 32 GiB per GPU, 8-GPU gang pods.
func DefaultPhillyOptions() PhillyOptions {
	return PhillyOptions{MilliCPUPerGPU: 4000, MemMiBPerGPU: 32 * 1024, GPUsPerGangPod: 8}
}

// gangPodGPUs is GPUsPerGangPod, or the default where it is unset.
func (o PhillyOptions) gangPodGPUs() int64 {
	if o.GPUsPerGangPod > 0 {
		return o.GPUsPerGangPod
	}
	return DefaultPhillyOptions().GPUsPerGangPod
}

// LoadPhilly reads a Philly-derived job trace.
func LoadPhilly(path string, opts PhillyOptions) (*Trace, error) {
	podGPUs := opts.gangPodGPUs()
	t, closeFn, err := openPositionalTable(path, PhillyColumns, PhillyColumns[:3]...)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	jobs := newJobList(path)
	var kinds instantKinds
	for t.next() {
		t.required(PhillyColumns[:3]...)
		ts, dated := t.instant("timestamp")
		kinds.check(t, "timestamp", dated)
		dur := t.seconds("duration", 0)
		n := t.int64("num_gpus", 0, 4096, 0)
		t.float("gpu_time", 0, 0)
		ns := namespaceFor(t.str("cluster"))
		if t.err != nil {
			break
		}
		job := fmt.Sprintf("job-%06d", t.line()-1)
		source := fmt.Sprintf("%s:%d", path, t.line())
		sizes := []int64{n}
		if n > podGPUs {
			sizes = nil
			for left := n; left > 0; left -= podGPUs {
				sizes = append(sizes, min(left, podGPUs))
			}
		}
		for i, g := range sizes {
			jobs.add(newJobPod(ns, job, i, len(sizes), opts.MilliCPUPerGPU*max(g, 1), opts.MemMiBPerGPU*max(g, 1), g, gpu.MilliPerGPU), dur, source, ts)
		}
	}
	return jobs.trace(t, "timestamp")
}

// jobList collects a job list's pods as its rows are read, with each row's
// time, for setArrivals.
type jobList struct {
	tr     *Trace
	stamps []float64
}

func newJobList(path string) *jobList { return &jobList{tr: &Trace{Source: path}} }

// add is a pod of the job on line source, submitted at stamp (seconds) to
// run dur seconds.
func (l *jobList) add(pod *v1.Pod, dur float64, source string, stamp float64) {
	l.tr.Pods = append(l.tr.Pods, TracePod{Pod: pod, Duration: seconds(dur), Source: source})
	l.stamps = append(l.stamps, stamp)
}

// trace ends the read: t's error, if any, else the pods in order of arrival,
// counted from the first row's time in column col.
func (l *jobList) trace(t *table, col string) (*Trace, error) {
	if t.err != nil {
		return nil, t.err
	}
	if err := setArrivals(l.tr, l.stamps, col, t.cols[col]+1); err != nil {
		return nil, err
	}
	return l.tr, nil
}

// newJobPod is pod i of a job's n (NewPod's requests): named after the job
// alone, or with its index and labelled with Penny's gang convention when
// the job has more than one pod, so that the gang plugin places them all or
// none.
func newJobPod(ns, job string, i, n int, milliCPU, memMiB, numGPU, milliPerGPU int64) *v1.Pod {
	if n == 1 {
		return NewPod(ns, job, milliCPU, memMiB, numGPU, milliPerGPU, nil)
	}
	pod := NewPod(ns, fmt.Sprintf("%s-%d", job, i), milliCPU, memMiB, numGPU, milliPerGPU, nil)
	pod.Labels[gang.LabelName] = job
	pod.Labels[gang.KeySize] = strconv.Itoa(n)
	return pod
}

// setArrivals gives a job list's pods their arrivals, stamps (each pod's
// row's time in seconds) counted from the earliest, and orders the pods by
// them; col names the time column and colNum its place, for errors.
func setArrivals(tr *Trace, stamps []float64, col string, colNum int) error {
	if len(tr.Pods) == 0 {
		return fmt.Errorf("%s: no jobs", tr.Source)
	}
	first := slices.Min(stamps)
	for i := range tr.Pods {
		if at := stamps[i] - first; at > MaxTraceSeconds {
			return fmt.Errorf("%s: column %d (%s): the job arrives %v s after the first, more than a hundred years; times are in seconds", tr.Pods[i].Source, colNum, col, at)
		}
		tr.Pods[i].Arrival = seconds(stamps[i] - first)
	}
	sortByArrival(tr.Pods)
	return nil
}

func namespaceFor(cluster string) string {
	if cluster == "" {
		return SimNamespace
	}
	ns := strings.ToLower(cluster)
	if len(validation.IsDNS1123Label(ns)) == 0 {
		return ns
	}
	// Any other name (VC_1, "team a", a long id) still names its own
	// namespace: the characters a namespace cannot hold become '-', and a
	// hash of the original keeps two such names apart.
	clean := strings.Trim(strings.Map(func(r rune) rune {
		if ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') {
			return r
		}
		return '-'
	}, ns), "-")
	sum := fnv.New32a()
	sum.Write([]byte(cluster))
	suffix := fmt.Sprintf("%08x", sum.Sum32())
	if max := validation.DNS1123LabelMaxLength - len(suffix) - 1; len(clean) > max {
		clean = strings.TrimRight(clean[:max], "-")
	}
	if clean == "" {
		return "vc-" + suffix
	}
	return clean + "-" + suffix
}

// sortByArrival orders pods by arrival, keeping file order on ties (so a
// gang's pods stay together).
func sortByArrival(pods []TracePod) {
	sort.SliceStable(pods, func(i, j int) bool { return pods[i].Arrival < pods[j].Arrival })
}

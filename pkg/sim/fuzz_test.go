package sim

import (
	"os"
	"strconv"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
)

// A trace file is user input: whatever it holds, reading it ends in an
// error or in pods a replay can run (valid names and requests, arrivals and
// run times that are not negative, in order). make test runs the seeds;
// make fuzz-short leaves it out, since building this package for fuzzing
// (it links the scheduler) takes minutes: go test -run '^$' -fuzz
// FuzzLoadTrace ./pkg/sim (150,000 inputs found nothing, 2026-11-29).
func FuzzLoadTrace(f *testing.F) {
	for _, seed := range []string{
		"name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n" +
			"p1,8000,30000,1,460,,LS,Running,0,3600,10\np2,4000,1000,2,1000,V100M32|A100,BE,Succeeded,5,,\n",
		"timestamp,duration,num_gpus,gpu_time,cluster\n100,3600,4,14400,vc1\n40,60,20,1200,VC2\n",
		"2017-10-03 03:03:46,60,1\n2017-10-03 04:03:46,3600,16\n",
		"job_name,organization,gpu_model,cpu_request,gpu_request,worker_num,submit_time,duration,job_type\n" +
			"1,13,A10,20,1,1,0,2764799,HP\n2,57,A100-SXM4-80GB,15,0.5,16,9589663,41060,Spot\n",
		"job_id,user,vc,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue\n" +
			"1,uX,vcJkd,1,1,1,COMPLETED,2020-06-09 18:41:01,2020-06-09 18:41:01,2020-06-10 04:55:09,36848,0\n" +
			"2,uY,vcpDC,17,,2,FAILED,2020-06-09 18:42:01,,,3600,0\n",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte) {
		file, err := os.CreateTemp(dir, "trace-*.csv")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(file.Name())
		if _, err := file.Write(content); err != nil {
			t.Fatal(err)
		}
		file.Close()
		tr, err := LoadTrace(file.Name(), FormatAuto, DefaultPhillyOptions())
		if err != nil {
			return
		}
		if len(tr.Pods) == 0 {
			t.Fatal("a trace without pods and without an error")
		}
		for i, tp := range tr.Pods {
			p := tp.Pod
			if errs := validation.IsDNS1123Label(p.Namespace); len(errs) > 0 {
				t.Fatalf("pod %d: namespace %q: %v", i, p.Namespace, errs)
			}
			if errs := validation.IsDNS1123Subdomain(p.Name); len(errs) > 0 {
				t.Fatalf("pod %d: name %q: %v", i, p.Name, errs)
			}
			if tp.Arrival < 0 || tp.Duration < 0 || (i > 0 && tp.Arrival < tr.Pods[i-1].Arrival) {
				t.Fatalf("pod %s: arrival %v (previous %v), run %v", p.Name, tp.Arrival, tr.Pods[max(i-1, 0)].Arrival, tp.Duration)
			}
			if _, err := gpu.ParsePodRequest(p); err != nil {
				t.Fatalf("pod %s: %v", p.Name, err)
			}
			if size, ok := p.Labels[gang.KeySize]; ok {
				if n, err := strconv.Atoi(size); err != nil || n < 2 {
					t.Fatalf("pod %s: gang size %q", p.Name, size)
				}
			}
		}
	})
}

package sim

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
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

// A scenario file is user input: whatever it holds, it loads into a fleet a
// replay can run (a region, pools with 0 <= min <= max, max >= 1, delays
// that are not negative, each pool priced by a finite price >= 0, class
// shares in (0,1]) or it is refused with an error whose every line names
// the scenario or its catalog. Like FuzzLoadTrace it is left out of make
// fuzz-short: go test -run '^$' -fuzz FuzzParseSpotScenario ./pkg/sim.
func FuzzParseSpotScenario(f *testing.F) {
	const file, catalog = "scenario.yaml", "catalog.yaml"
	read := func(path string) ([]byte, error) {
		if path != catalog {
			return nil, fmt.Errorf("open %s: no such file", path)
		}
		return deploy.PriceCatalog, nil
	}
	tiny := strings.NewReplacer("SPOTMAX", "4", "MTTR", "1h", "../../deploy/pricing/catalog.yaml", catalog).Replace(tinyScenario)
	for _, seed := range []string{
		tiny,
		strings.Replace(tiny, "catalog: "+catalog+"\n", "", 1),
		strings.Replace(tiny, "capacityType: on-demand", "capacityType: reserved, min: 2", 1),
		strings.Replace(tiny, "zone: us-east-1a, max: 4,", "zone: us-east-1a, hourlyPrice: 1.5, max: 4,", 1),
		strings.Replace(tiny, "- {qos: [LS], annotations:", "- {qos: [LS], share: 0.5, minRuntime: 1h, annotations:", 1),
		strings.Replace(tiny, "meanTimeToReclaim: 1h", "meanTimeToReclaim: 0s", 1),
		strings.Replace(tiny, "max: 4,", "max: 1.5,", 1),
		strings.Replace(tiny, "provisioningDelay: 3m", "provisioningDelay: -3m", 1),
		strings.Replace(tiny, "penny.dev/workload: training,", "penny.dev/workload: trainig,", 1),
		strings.Replace(tiny, "catalog: "+catalog, "catalog: none.yaml", 1),
		tiny + "---\n" + tiny,
		"", "region: us-east-1\n", "- pools\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSpotScenarioFrom(file, data, read)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, file) && !strings.HasPrefix(line, catalog) && !strings.HasPrefix(line, BuiltInCatalog) {
					t.Fatalf("error line %q names neither the scenario nor its catalog; whole error:\n%v", line, err)
				}
			}
			return
		}
		if s.Region == "" || len(s.Pools) == 0 || s.RestartOverhead.Duration < 0 || s.PriceCatalog() == nil {
			t.Fatalf("scenario %+v", s)
		}
		for i := range s.Pools {
			p := &s.Pools[i]
			if p.Min < 0 || p.Max < p.Min || p.Max < 1 || p.ProvisioningDelay.Duration < 0 || p.ScaleDownAfter.Duration < 0 || p.MeanTimeToReclaim.Duration < 0 {
				t.Fatalf("pool %+v", p)
			}
			// What the replay prices a pool's nodes by (ElasticReplay).
			_, price, _, err := s.poolShape(p)
			if err != nil || !pricing.ValidPrice(price.NodeHourly) || math.IsNaN(price.NodeHourly) {
				t.Fatalf("pool %s: price %+v, %v", p.Name, price, err)
			}
		}
		for _, c := range s.Classes {
			if c.Share != nil && !(*c.Share > 0 && *c.Share <= 1) || c.MinRuntime.Duration < 0 {
				t.Fatalf("class %+v", c)
			}
		}
	})
}

package sim

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const fillPodsHeader = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"

func fillTestNodes(t *testing.T) *FillOptions {
	t.Helper()
	nodes, err := LoadOpenbNodes(writeFile(t, "nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\nn1,96000,393216,8,T4\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := LookupPolicy("bestfit")
	if err != nil {
		t.Fatal(err)
	}
	return &FillOptions{Nodes: nodes, Policy: p, Seed: 42, Inflate: 1.3}
}

// fillWithin runs Fill, failing the test if it does not return: a fill
// that cannot reach its target draws pods without end.
func fillWithin(t *testing.T, ctx context.Context, o FillOptions) (*FillRecord, error) {
	t.Helper()
	type result struct {
		rec *FillRecord
		err error
	}
	done := make(chan result, 1)
	go func() {
		rec, err := Fill(ctx, o)
		done <- result{rec, err}
	}()
	select {
	case r := <-done:
		return r.rec, r.err
	case <-time.After(30 * time.Second):
		t.Fatal("Fill did not return")
		return nil, nil
	}
}

// Drawing pods that ask for no GPU never brings the arrivals to a multiple
// of the GPU capacity: such a trace is refused, not filled forever.
func TestFillRefusesATraceWithoutGPUDemand(t *testing.T) {
	for name, content := range map[string]string{
		"cpu-pods.csv": fillPodsHeader + "a,1000,1024,0,0,,BE,Running,0,10,0\nb,2000,1024,0,0,,LS,Running,5,10,5\n",
		"philly.csv":   "timestamp,duration,num_gpus\n0,60,0\n10,60,0\n",
	} {
		p := writeFile(t, name, content)
		tr, err := LoadTrace(p, FormatAuto, DefaultPhillyOptions())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		o := fillTestNodes(t)
		o.Trace = tr
		_, err = fillWithin(t, context.Background(), *o)
		if err == nil || !strings.Contains(err.Error(), p+": no pod asks for a GPU") || !strings.Contains(err.Error(), "penny sim replay") {
			t.Errorf("%s: %v; want a refusal naming the file", name, err)
		}
	}
}

// A target that is not a number, or so large that the arrivals would fill
// memory, is refused before anything is drawn.
func TestFillRefusesAnInflateOutOfRange(t *testing.T) {
	tr, err := LoadOpenbPods(writeFile(t, "pods.csv", fillPodsHeader+"a,1000,1024,1,1000,,BE,Running,0,10,0\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, inflate := range []float64{math.NaN(), math.Inf(1), 1e12, MaxInflate + 0.5, -1, 0.001} {
		o := fillTestNodes(t)
		o.Trace, o.Inflate = tr, inflate
		_, err := fillWithin(t, context.Background(), *o)
		if err == nil || !strings.Contains(err.Error(), "the fill's target must be a number from 0.01 to 10 times") {
			t.Errorf("inflate %v: %v", inflate, err)
		}
	}
	o := fillTestNodes(t)
	o.Trace, o.Inflate = tr, MaxInflate
	if rec, err := fillWithin(t, context.Background(), *o); err != nil || len(rec.AllocCurve) != 1001 {
		t.Errorf("inflate %v: %v", MaxInflate, err)
	}
}

// Pods of a thousandth of a GPU take 1,300 draws per GPU of the cluster to
// fill it; the draws stop when the fill is cancelled.
func TestFillWorkloadStopsWhenCancelled(t *testing.T) {
	tr, err := LoadOpenbPods(writeFile(t, "pods.csv", fillPodsHeader+"a,1000,1024,1,1,,BE,Running,0,10,0\n"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	pods, err := FillWorkload(ctx, tr, 8000, 1.3, 42, true)
	if !errors.Is(err, context.Canceled) || pods != nil {
		t.Errorf("%d pods, %v; want context.Canceled", len(pods), err)
	}
	if pods, err := FillWorkload(context.Background(), tr, 8000, 1.3, 42, true); err != nil || len(pods) != 10400 {
		t.Errorf("%d pods, %v; want 10400", len(pods), err)
	}
}

// A fill has no time: Penny's plugins read a clock that stands at simEpoch
// for the whole fill, not the wall clock. A pod created five minutes before
// it that prefers Spot with a ten-minute fallback still waits for Spot
// there, so on a fleet with no Spot it fails, whenever the fill runs; on the
// wall clock its wait was long over and it took on-demand capacity.
func TestFillPluginsReadAClockThatStandsStill(t *testing.T) {
	o := fillTestNodes(t)
	pod := NewPod("ns", "prefers-spot", 1000, 1024, 1, 1000, nil)
	pod.Annotations = map[string]string{"penny.dev/spot": "prefer", "penny.dev/fallback-after": "10m"}
	pod.CreationTimestamp = metav1.NewTime(simEpoch.Add(-5 * time.Minute))
	o.Trace = &Trace{Pods: []TracePod{{Pod: pod}}}
	p, err := LookupPolicy("penny")
	if err != nil {
		t.Fatal(err)
	}
	o.Policy, o.Inflate, o.Creation = p, 0.01, true
	rec, err := fillWithin(t, context.Background(), *o)
	if err != nil {
		t.Fatal(err)
	}
	if rec.PodsTotal != 1 || rec.PodsFailed != 1 {
		t.Fatalf("%d of %d pods failed, want the one pod to fail: its wait for Spot is not over at the fill's instant", rec.PodsFailed, rec.PodsTotal)
	}
}

package packing

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/pennysched/penny/pkg/gpu"
)

const gib = int64(1) << 30

// share, whole and mig build requests the way ReqFor reads pods.
func share(milli, cpu int64) *Req {
	r := &Req{GPU: gpu.Request{Milli: milli}, CPU: cpu}
	r.Shape = shapeOf(r)
	return r
}

func whole(n, cpu int64) *Req {
	r := &Req{GPU: gpu.Request{GPUs: n}, CPU: cpu}
	r.Shape = shapeOf(r)
	return r
}

func cpuOnly(cpu int64) *Req {
	r := &Req{CPU: cpu}
	r.Shape = shapeOf(r)
	return r
}

func mig(profiles ...string) *Req {
	r := &Req{GPU: gpu.Request{MIG: map[string]int64{}}, CPU: 1000}
	for _, p := range profiles {
		r.GPU.MIG[p]++
		r.MIG = append(r.MIG, p)
	}
	r.Shape = shapeOf(r)
	return r
}

// demandOf weighs the requests' shapes.
func demandOf(t *testing.T, reqs []*Req, weights []float64) *Demand {
	t.Helper()
	var shapes []Shape
	for _, r := range reqs {
		shapes = append(shapes, r.Shape)
	}
	return NewDemand(shapes, append([]float64(nil), weights...), 1)
}

// t4 is a node of T4 GPUs with the given milli used on each.
func t4(cpu int64, used ...int64) *Node {
	dev := gpu.NewNodeDevices("Tesla-T4", len(used), 0)
	for i, u := range used {
		dev.GPUs[i].UsedMilli = u
	}
	return NewNode("t4", dev, cpu, 64*gib, 0)
}

func TestWasteCountsCopiesEveryResourceAllows(t *testing.T) {
	// Free 1000 and 300; 4 cores. Shapes: a 500 share needing 1 core (the
	// 1000 GPU takes two copies: 1000 usable, waste 300), two whole GPUs
	// (only one GPU idle: waste 1300), a CPU-only pod (waste 1300).
	d := demandOf(t, []*Req{share(500, 1000), whole(2, 1000), cpuOnly(1000)}, []float64{0.5, 0.25, 0.25})
	n := t4(4000, 0, 700)
	n.Prepare(d)
	want := 0.5*300 + 0.25*1300 + 0.25*1300
	if math.Abs(n.Waste()-want) > 1e-9 {
		t.Fatalf("waste %v, want %v", n.Waste(), want)
	}
	// With 1.5 cores the share fits once: 500 usable of 1300.
	n = t4(1500, 0, 700)
	n.Prepare(d)
	want = 0.5*800 + 0.25*1300 + 0.25*1300
	if math.Abs(n.Waste()-want) > 1e-9 {
		t.Fatalf("waste with 1.5 cores %v, want %v", n.Waste(), want)
	}
}

// Before the scheduler has seen a GPU pod (just started) or while only CPU
// pods come, nothing says any free GPU is too small for the work: the
// stranded metric must not report every idle GPU as stranded then.
func TestStrandedWithoutGPUDemand(t *testing.T) {
	for _, d := range []*Demand{NewDemand(nil, nil, 0), demandOf(t, []*Req{cpuOnly(1000)}, []float64{1})} {
		if got := t4(4000, 0, 700).Stranded(d); got != 0 {
			t.Errorf("demand of %d CPU shapes: %d milli stranded on a node with CPU and memory free, want 0", len(d.Shapes), got)
		}
		if got := t4(0, 0, 700).Stranded(d); got != 1300 {
			t.Errorf("demand of %d CPU shapes: %d milli stranded on a node without free CPU, want all 1300", len(d.Shapes), got)
		}
	}
	// With GPU demand the measure stands: a 500 share uses 1000 of the
	// 1300 free (two copies on GPU 0, none in the 300 of GPU 1).
	if got := t4(4000, 0, 700).Stranded(demandOf(t, []*Req{share(500, 1000)}, []float64{1})); got != 300 {
		t.Errorf("500 shares: %d milli stranded, want 300", got)
	}
}

// evaluate is the node's cost for the cycle's pod as the plugin's Score
// composes it.
func evaluate(n *Node, c *Cycle) (float64, bool) {
	var w Scratch
	parts, ok := n.Measure(c, &w)
	if !ok {
		return 0, false
	}
	return c.Compose(parts, n.GPUMemoryGB), true
}

func cycleFor(r *Req, d *Demand) *Cycle {
	return &Cycle{Req: r, Demand: d, W: Weights{Fragmentation: 1}}
}

func TestShareGoesWhereTheDemandStillFits(t *testing.T) {
	// The demand is 600-milli shares. A 300 share on GPU 0 leaves 700 and
	// 700 (two more 600s fit); on GPU 1 it leaves 1000 and 400 (one fits).
	// Best fit would take GPU 1.
	d := demandOf(t, []*Req{share(600, 1000)}, []float64{1})
	n := t4(64000, 0, 300)
	n.Prepare(d)
	a, cost, err := n.Choose(cycleFor(share(300, 1000), d))
	if err != nil || a.String() != "0:300m" {
		t.Fatalf("chose %v (%v), want 0:300m", a, err)
	}
	// Waste before: 1700 free, two 600s usable: 500. After: 1400 - 1200.
	if math.Abs(cost-(-300)) > 1e-9 {
		t.Fatalf("cost %v, want -300 (waste 500 -> 200)", cost)
	}
}

func TestCPUThatWouldStrandGPUsCosts(t *testing.T) {
	// Whole-GPU pods need 8 cores each. A CPU-only pod of 8 cores on a node
	// with 2 idle GPUs and 20 cores leaves room for one of them (1000
	// stranded); on a node with 64 cores it strands nothing. FGD, which
	// asks only whether one copy fits, sees no difference.
	d := demandOf(t, []*Req{whole(1, 8000)}, []float64{1})
	poor, rich := t4(20000, 0, 0), t4(64000, 0, 0)
	poor.Prepare(d)
	rich.Prepare(d)
	c := cycleFor(cpuOnly(8000), d)
	cp, _ := evaluate(poor, c)
	cr, _ := evaluate(rich, c)
	if cp != 1000 || cr != 0 {
		t.Fatalf("cost on the CPU-poor node %v (want 1000), on the rich one %v (want 0)", cp, cr)
	}
}

func TestWholeNodesStayWholeForMultiGPUDemand(t *testing.T) {
	// Demand: mostly single GPUs, some 4-GPU pods. A single GPU on an idle
	// 4-GPU node breaks the only place a 4-GPU pod fits; on the node that
	// already runs one GPU it breaks nothing.
	d := demandOf(t, []*Req{whole(1, 1000), whole(4, 1000)}, []float64{0.9, 0.1})
	idle, used := t4(64000, 0, 0, 0, 0), t4(64000, 1000, 0, 0, 0)
	idle.Prepare(d)
	used.Prepare(d)
	c := cycleFor(whole(1, 1000), d)
	ci, _ := evaluate(idle, c)
	cu, _ := evaluate(used, c)
	if !(cu < ci) {
		t.Fatalf("one GPU costs %v on the idle node and %v on the used one; the used one must be cheaper", ci, cu)
	}
}

func a100(gpus int) *Node {
	dev := gpu.NewNodeDevices("A100-80GB", gpus, 0)
	dev.OnDemand = true
	return NewNode("a100", dev, 64000, 512*gib, 0)
}

func apply(t *testing.T, n *Node, a gpu.Assignment) *Node {
	t.Helper()
	dev := n.Dev.Clone()
	if err := dev.Apply(a); err != nil {
		t.Fatalf("apply %v: %v", a, err)
	}
	return NewNode(n.Name, dev, n.CPUFree, n.MemFree, n.GPUMemoryGB)
}

func TestMIGKeepsLargestProfilesPlaceable(t *testing.T) {
	d := demandOf(t, []*Req{mig("1g.10gb"), mig("3g.40gb"), mig("7g.80gb")}, []float64{0.6, 0.3, 0.1})
	n := a100(2)
	n = apply(t, n, gpu.Assignment{{GPU: 1, MIG: gpu.Placement{Profile: "3g.40gb", Start: 4}}})
	n.Prepare(d)
	// A 1g goes next to the 3g on GPU 1, keeping GPU 0 whole for a 7g.
	a, _, err := n.Choose(cycleFor(mig("1g.10gb"), d))
	if err != nil || a[0].GPU != 1 {
		t.Fatalf("1g: %v %v, want GPU 1", a, err)
	}
	n = apply(t, n, a)
	n.Prepare(d)
	// A second 3g takes GPU 1's last 3g slot only if it is still free; it
	// is not (the 1g sits in 0..3), so it must go to GPU 0, at an offset
	// that leaves the other 3g slot free: 0 or 4 both do.
	a, _, err = n.Choose(cycleFor(mig("3g.40gb"), d))
	if err != nil || a[0].GPU != 0 {
		t.Fatalf("3g: %v %v, want GPU 0", a, err)
	}
}

func TestMIGPrefersOffsetsThatLeaveBigRuns(t *testing.T) {
	// Only 4g.40gb (offset 0) and 1g.10gb arrive. A 1g on an empty GPU at
	// offset 0 kills the 4g; anywhere in 4..6 it does not.
	d := demandOf(t, []*Req{mig("1g.10gb"), mig("4g.40gb")}, []float64{0.5, 0.5})
	n := a100(1)
	n.Prepare(d)
	a, _, err := n.Choose(cycleFor(mig("1g.10gb"), d))
	if err != nil || a[0].MIG.Start < 4 {
		t.Fatalf("1g placed at %v (%v); offsets 0..3 block the 4g", a, err)
	}
}

func TestStaticLayoutInstances(t *testing.T) {
	dev := gpu.NewNodeDevices("A100-80GB", 2, 0)
	layout := []gpu.Placement{{Profile: "3g.40gb", Start: 4}, {Profile: "2g.20gb", Start: 0}, {Profile: "1g.10gb", Start: 2}, {Profile: "1g.10gb", Start: 3}}
	if err := dev.SetLayout(1, layout); err != nil {
		t.Fatal(err)
	}
	n := NewNode("static", dev, 64000, 512*gib, 0)
	d := demandOf(t, []*Req{mig("1g.10gb"), whole(1, 1000)}, []float64{0.5, 0.5})
	n.Prepare(d)
	// The layout has no 4g instance, and GPU 0 takes no instances: freeing
	// devices cannot help, so preemption must not be tried.
	if f := n.Fits(mig("4g.40gb")); f != TooManyInstances {
		t.Fatalf("4g on a static node without a 4g instance: %v, want TooManyInstances", f)
	}
	for i := 0; i < 2; i++ {
		a, _, err := n.Choose(cycleFor(mig("1g.10gb"), d))
		if err != nil || a[0].GPU != 1 {
			t.Fatalf("1g #%d: %v %v", i, a, err)
		}
		n = apply(t, n, a)
		n.Prepare(d)
	}
	if f := n.Fits(mig("1g.10gb")); f != NoRoom {
		t.Fatalf("third 1g with both 1g instances held: %v, want NoRoom", f)
	}
	if f := n.Fits(whole(1, 1000)); f != Fits {
		t.Fatalf("whole GPU 0 stays available: %v", f)
	}
	if f := n.Fits(whole(2, 1000)); f != Partitioned {
		t.Fatalf("the partitioned GPU is not a whole GPU, held or not: %v, want Partitioned", f)
	}
}

// A node whose pods ask for more CPU or memory than it has (its allocatable
// shrank, or static pods) still takes a pod that asks for none, as
// NodeResourcesFit lets it: Fits says so, and Choose must not then refuse
// the devices, which failed the pod at Reserve with "does not fit on the
// GPUs" although they were free.
func TestChooseAgreesWithFitsOnAnOvercommittedNode(t *testing.T) {
	dev := gpu.NewNodeDevices("Tesla-T4", 2, 0)
	n := NewNode("t4", dev, -500, -gib, 0)
	for _, r := range []*Req{whole(1, 0), share(300, 0)} {
		r.Shape.MilliCPU = 0
		d := demandOf(t, []*Req{r}, []float64{1})
		n.Prepare(d)
		if f := n.Fits(r); f != Fits {
			t.Fatalf("%s: Fits %v", r.GPU, f)
		}
		if _, _, err := n.Choose(cycleFor(r, d)); err != nil {
			t.Errorf("%s without CPU or memory: %v", r.GPU, err)
		}
	}
	if _, _, err := n.Choose(cycleFor(whole(1, 100), NewDemand(nil, nil, 1))); err == nil {
		t.Error("a pod asking for CPU got a node with none free")
	}
}

// Fits and Choose agree, and Choose's devices always apply, on random
// on-demand MIG states and requests.
func TestFitsAgreesWithChoose(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	profiles := []string{"1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"}
	d := demandOf(t, []*Req{mig("1g.10gb"), mig("3g.40gb"), whole(1, 1000)}, []float64{0.4, 0.4, 0.2})
	for iter := 0; iter < 300; iter++ {
		n := a100(1 + rng.IntN(3))
		for k := rng.IntN(6); k > 0; k-- {
			r := mig(profiles[rng.IntN(len(profiles))])
			if n.Fits(r) == Fits {
				n.Prepare(d)
				a, _, err := n.Choose(cycleFor(r, d))
				if err != nil {
					t.Fatalf("setup: %v", err)
				}
				n = apply(t, n, a)
			}
		}
		var ps []string
		for k := 1 + rng.IntN(3); k > 0; k-- {
			ps = append(ps, profiles[rng.IntN(len(profiles))])
		}
		r := mig(ps...)
		r.MIG = sortedLargestFirst(r.MIG)
		n.Prepare(d)
		fit := n.Fits(r)
		a, _, err := n.Choose(cycleFor(r, d))
		if (fit == Fits) != (err == nil) {
			t.Fatalf("request %v on %v: Fits says %v, Choose says %v (%v)", ps, describe(n), fit, a, err)
		}
		if err == nil {
			apply(t, n, a)
		}
	}
}

func sortedLargestFirst(ps []string) []string {
	out := append([]string(nil), ps...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && compareProfilesLargestFirst(out[j], out[j-1]) < 0; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func describe(n *Node) string {
	s := ""
	for i, g := range n.Dev.GPUs {
		s += fmt.Sprintf("[%d: %v used %d]", i, g.MIG, g.UsedMilli)
	}
	return s
}

func TestEvaluateAllocatesNothing(t *testing.T) {
	d := demandOf(t, []*Req{share(460, 4000), whole(1, 8000), whole(8, 64000), cpuOnly(8000), mig("1g.10gb"), mig("3g.40gb")},
		[]float64{0.3, 0.3, 0.1, 0.1, 0.1, 0.1})
	sharing := t4(64000, 200, 0, 500, 1000)
	partitioned := a100(4)
	partitioned = apply(t, partitioned, gpu.Assignment{{GPU: 0, MIG: gpu.Placement{Profile: "3g.40gb", Start: 0}}})
	for _, tc := range []struct {
		name string
		n    *Node
		r    *Req
	}{
		{"share", sharing, share(300, 4000)},
		{"whole", sharing, whole(1, 4000)},
		{"cpu", sharing, cpuOnly(4000)},
		{"mig", partitioned, mig("3g.40gb", "1g.10gb")},
	} {
		tc.n.Prepare(d)
		c := cycleFor(tc.r, d)
		if _, ok := evaluate(tc.n, c); !ok {
			t.Fatalf("%s: does not fit", tc.name)
		}
		if allocs := testing.AllocsPerRun(100, func() {
			evaluate(tc.n, c)
			tc.n.Fits(tc.r)
		}); allocs != 0 {
			t.Errorf("%s: Evaluate and Fits allocate %v times", tc.name, allocs)
		}
	}
}

func TestOverkillPrefersSmallerGPUs(t *testing.T) {
	d := demandOf(t, []*Req{share(500, 1000)}, []float64{1})
	small := NewNode("l4", gpu.NewNodeDevices("L4", 1, 0), 64000, 64*gib, 0)
	big := NewNode("h100", gpu.NewNodeDevices("H100-80GB", 1, 0), 64000, 64*gib, 0)
	small.Prepare(d)
	big.Prepare(d)
	c := &Cycle{Req: share(500, 1000), Demand: d, W: Weights{Fragmentation: 1, Overkill: 0.05}, MinGPUMemoryGB: 24, MaxGPUMemoryGB: 80}
	cs, _ := evaluate(small, c)
	cb, _ := evaluate(big, c)
	if cb-cs != 0.05*500 {
		t.Fatalf("H100 costs %v more than L4, want %v", cb-cs, 0.05*500)
	}
}

func TestMIGTiesGoToTheFullerGPU(t *testing.T) {
	// With only 4g and 3g seen, a 3g next to a 4g and a 3g at offset 4 of an
	// empty GPU cost the same (one 3g slot gone, the 4g slots kept); the
	// fuller GPU wins, and the capacity arithmetic must not tip the balance
	// by a rounding of sevenths.
	d := demandOf(t, []*Req{mig("4g.40gb"), mig("3g.40gb")}, []float64{0.5, 0.5})
	n := apply(t, a100(2), gpu.Assignment{{GPU: 0, MIG: gpu.Placement{Profile: "4g.40gb", Start: 0}}})
	n.Prepare(d)
	a, _, err := n.Choose(cycleFor(mig("3g.40gb"), d))
	if err != nil || a.String() != "0:3g.40gb@4" {
		t.Fatalf("3g: %v %v, want 0:3g.40gb@4", a, err)
	}
}

// BenchmarkEvaluate is the measure's cost for one node and pod: a share on
// a half-used 8-GPU node against a demand of 32 shapes.
func BenchmarkEvaluate(b *testing.B) {
	var reqs []*Req
	var ws []float64
	for i := 0; i < 16; i++ {
		reqs = append(reqs, share(int64(50+60*i), int64(1000+500*i)), whole(int64(1+i%4), int64(4000+1000*i)))
		ws = append(ws, 1, 1)
	}
	d := NewDemand(func() []Shape {
		var s []Shape
		for _, r := range reqs {
			s = append(s, r.Shape)
		}
		return s
	}(), ws, 1)
	dev := gpu.NewNodeDevices("A100-80GB", 8, 0)
	for i, u := range []int64{1000, 0, 460, 810, 0, 230, 1000, 320} {
		dev.GPUs[i].UsedMilli = u
	}
	n := NewNode("n", dev, 48000, 256*gib, 0)
	n.Prepare(d)
	// Five requests in turn: more than the node remembers, so each is
	// measured.
	var cs []*Cycle
	for _, m := range []int64{470, 460, 320, 230, 650} {
		cs = append(cs, cycleFor(share(m, 4000), d))
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		evaluate(n, cs[i%len(cs)])
	}
}

func TestBalanceKeepsCPUPoorNodesForLightPods(t *testing.T) {
	// Half the pods need 11.3 cores per GPU, half 3.2. On a node with 2
	// GPUs and 16 cores a heavy pod leaves one GPU that only light pods can
	// use; on one with 8 GPUs and 96 cores it strands nothing. Counting
	// copies shape by shape sees no difference (the CPU-poor node could
	// only ever take one heavy pod); the demand's mix does.
	heavy, light := whole(1, 11300), whole(1, 3152)
	d := demandOf(t, []*Req{heavy, light}, []float64{0.5, 0.5})
	poor := NewNode("p100", gpu.NewNodeDevices("Tesla-P100-PCIE-16GB", 2, 0), 16000, 256*gib, 0)
	rich := NewNode("g2", gpu.NewNodeDevices("Tesla-T4", 8, 0), 96000, 256*gib, 0)
	poor.Prepare(d)
	rich.Prepare(d)
	cost := func(n *Node, w Weights) float64 {
		c, ok := evaluate(n, &Cycle{Req: heavy, Demand: d, W: w})
		if !ok {
			t.Fatal("does not fit")
		}
		return c
	}
	frag := Weights{Fragmentation: 1}
	if a, b := cost(poor, frag), cost(rich, frag); a != b {
		t.Fatalf("without balance the heavy pod costs %v on the CPU-poor node and %v on the rich one; want equal", a, b)
	}
	bal := Weights{Fragmentation: 1, Balance: 1}
	if a, b := cost(poor, bal), cost(rich, bal); !(a > b+300) {
		t.Fatalf("with balance the heavy pod costs %v on the CPU-poor node and %v on the rich one; want the poor one dearer by ~350", a, b)
	}
}

func TestDeadPiecesCost(t *testing.T) {
	// Whole GPUs and 470s are nearly all of the demand; a 160 share is 1%.
	// An 810 leaves 190 of an idle GPU, which only the 160s fit in: dead
	// capacity. A 470 leaves 530, which most of the demand fits in.
	d := demandOf(t, []*Req{whole(1, 8000), share(470, 8000), share(160, 2000)}, []float64{0.6, 0.39, 0.01})
	if got, want := d.dead[190], 190*math.Pow(0.99, deadSharpness); math.Abs(got-want) > 1e-9 {
		t.Fatalf("dead[190] = %v, want %v", got, want)
	}
	if d.dead[100] != 100 || d.dead[1000] != 0 || d.dead[530] > 1e-6 {
		t.Fatalf("dead[100], dead[530], dead[1000] = %v %v %v; want 100, about 0, 0", d.dead[100], d.dead[530], d.dead[1000])
	}
	cost := func(r *Req, w Weights) float64 {
		n := t4(64000, 0)
		n.Prepare(d)
		c, ok := evaluate(n, &Cycle{Req: r, Demand: d, W: w})
		if !ok {
			t.Fatal("does not fit")
		}
		return c
	}
	frag, dead := Weights{Fragmentation: 1}, Weights{Fragmentation: 1, Dead: 2}
	if a, b := cost(share(810, 3000), dead), cost(share(810, 3000), frag); math.Abs(a-b-2*d.dead[190]) > 1e-9 {
		t.Fatalf("an 810 on an idle GPU costs %v with the dead-piece weight and %v without; want %v more", a, b, 2*d.dead[190])
	}
	for _, r := range []*Req{share(470, 8000), whole(1, 8000)} {
		if a, b := cost(r, dead), cost(r, frag); math.Abs(a-b) > 1e-6 {
			t.Fatalf("%v leaves no dead piece but costs %v with the dead-piece weight and %v without", r.GPU.String(), a, b)
		}
	}
}

func TestShareAvoidsLeavingADeadPiece(t *testing.T) {
	// GPU 0 has 560 free, GPU 1 has 700. A 470 on GPU 0 leaves 90, which
	// nothing but the rare 50s fit in; on GPU 1 it leaves 230 that the
	// 230s (a tenth of the demand) fit in.
	d := demandOf(t, []*Req{whole(1, 8000), share(470, 8000), share(230, 2000), share(50, 1000)}, []float64{0.5, 0.395, 0.1, 0.005})
	n := t4(64000, 440, 300)
	n.Prepare(d)
	a, _, err := n.Choose(&Cycle{Req: share(470, 8000), Demand: d, W: Weights{Fragmentation: 1, Dead: 3}})
	if err != nil || a.String() != "1:470m" {
		t.Fatalf("chose %v (%v), want 1:470m", a, err)
	}
}

func TestMeasureMemoAnswersAsAFreshMeasure(t *testing.T) {
	// The same shape (shapes average memory) in two requests: after the
	// heavy one, the node's memory leaves room for fewer 8 GiB pods.
	light, heavy := share(300, 1000), share(300, 1000)
	light.Mem, heavy.Mem = 8*gib, 48*gib
	light.Shape, heavy.Shape = shapeOf(light), shapeOf(light)
	d1 := demandOf(t, []*Req{share(600, 1000), light, whole(1, 8000)}, []float64{0.5, 0.3, 0.2})
	d2 := demandOf(t, []*Req{share(600, 1000), light, whole(1, 8000)}, []float64{0.1, 0.1, 0.8})
	fresh := func(d *Demand, r *Req) (Parts, bool) {
		n := t4(4000, 0, 300, 700)
		n.Prepare(d)
		var w Scratch
		return n.Measure(&Cycle{Req: r, Demand: d, W: Weights{Fragmentation: 1}, Slot: -1}, &w)
	}
	n := t4(4000, 0, 300, 700)
	var w Scratch
	for i, step := range []struct {
		d *Demand
		r *Req
	}{{d1, light}, {d1, light}, {d1, heavy}, {d1, light}, {d2, light}, {d2, heavy}} {
		n.Prepare(step.d)
		c := &Cycle{Req: step.r, Demand: step.d, W: Weights{Fragmentation: 1}, Slot: step.d.Slot(&step.r.Shape)}
		if c.Slot != 1 {
			t.Fatalf("step %d: slot %d, want 1", i, c.Slot)
		}
		got, gotOK := n.Measure(c, &w)
		want, wantOK := fresh(step.d, step.r)
		if got != want || gotOK != wantOK {
			t.Fatalf("step %d: memo says %+v (%v), a fresh measure %+v (%v)", i, got, gotOK, want, wantOK)
		}
	}
	if fl, _ := fresh(d1, light); fl == func() Parts { p, _ := fresh(d1, heavy); return p }() {
		t.Fatal("the light and heavy requests cost the same; the test cannot tell the memo's key")
	}
	if d1.Slot(&whole(2, 8000).Shape) != -1 {
		t.Fatal("a shape the demand does not hold has a slot")
	}
}

// Every set of instances the model's geometry lets one GPU hold fits an
// empty GPU: Fits must not answer from one greedy placement. First-fit puts
// a 3g.40gb at offset 0, where two 2g.20gb no longer fit beside it (a 2g
// cannot start at 6), and refused 3g.40gb + 2 x 2g.20gb on an idle A100,
// which holds them at 4, 0 and 2.
func TestFitsFindsEveryLayoutOfOneGPU(t *testing.T) {
	for _, model := range []string{"A100-40GB", "A100-80GB", "H100-80GB", "H100-NVL", "H200-141GB"} {
		m, _ := gpu.LookupModel(model)
		names := m.ProfileNames()
		var combos [][]string
		var rec func(from int, cur []string)
		rec = func(from int, cur []string) {
			if len(cur) > 0 {
				if _, err := m.Layout(cur); err != nil {
					return // more than one GPU holds; no superset fits either
				}
				combos = append(combos, cur)
			}
			for i := from; i < len(names); i++ {
				rec(i, append(append([]string(nil), cur...), names[i]))
			}
		}
		rec(0, nil)
		for _, ps := range combos {
			r := mig(ps...)
			r.MIG = sortedLargestFirst(r.MIG)
			for _, gpus := range []int{1, 2} {
				dev := gpu.NewNodeDevices(model, gpus, 0)
				dev.OnDemand = true
				n := NewNode("n", dev, 64000, 512*gib, 0)
				if f := n.Fits(r); f != Fits {
					t.Errorf("%s x %d: %v fit one GPU, but Fits says %v", model, gpus, r.MIG, f)
					continue
				}
				d := demandOf(t, []*Req{r}, []float64{1})
				n.Prepare(d)
				a, _, err := n.Choose(cycleFor(r, d))
				if err != nil {
					t.Errorf("%s x %d: %v: Choose: %v", model, gpus, r.MIG, err)
					continue
				}
				apply(t, n, a)
			}
			// On a static GPU in MIG mode with no layout, likewise.
			dev := gpu.NewNodeDevices(model, 0, 1)
			if f := NewNode("n", dev, 64000, 512*gib, 0).Fits(r); f != Fits {
				t.Errorf("%s static: %v fit one GPU, but Fits says %v", model, r.MIG, f)
			}
		}
	}
}

// Nodes in one state share MIG measures (SharedMemo); a node that differs
// from another in anything the measure reads, however little, must never
// get the other's answer. Each node here differs from the first in one
// thing, and each is built afresh for every request, so only the shared
// memo could answer it; every answer must be what a measure without memos
// gives. Other requests are measured alongside, to tell the states apart.
func TestSharedMemoAnswersOnlyNodesInTheSameState(t *testing.T) {
	static := func(i int, layout ...gpu.Placement) func(*gpu.NodeDevices) {
		return func(dev *gpu.NodeDevices) {
			if err := dev.SetLayout(i, layout); err != nil {
				t.Fatal(err)
			}
		}
	}
	use := func(a ...gpu.Slot) func(*gpu.NodeDevices) {
		return func(dev *gpu.NodeDevices) {
			if err := dev.Apply(a); err != nil {
				t.Fatal(err)
			}
		}
	}
	type state struct {
		name     string
		product  string
		onDemand bool
		cpu, mem int64
		edit     []func(*gpu.NodeDevices)
	}
	base := state{"base", "A100-80GB", true, 64000, 512 * gib, []func(*gpu.NodeDevices){use(gpu.Slot{GPU: 0, Milli: 300})}}
	states := []state{
		base,
		{"same as base", "A100-80GB", true, 64000, 512 * gib, base.edit},
		{"less CPU", "A100-80GB", true, 7000, 512 * gib, base.edit},
		{"less memory", "A100-80GB", true, 64000, 20 * gib, base.edit},
		{"another model", "H100-80GB", true, 64000, 512 * gib, base.edit},
		{"not on demand", "A100-80GB", false, 64000, 512 * gib, base.edit},
		{"a bigger share", "A100-80GB", true, 64000, 512 * gib, []func(*gpu.NodeDevices){use(gpu.Slot{GPU: 0, Milli: 310})}},
		{"an instance", "A100-80GB", true, 64000, 512 * gib, append([]func(*gpu.NodeDevices){use(gpu.Slot{GPU: 1, MIG: gpu.Placement{Profile: "1g.10gb", Start: 0}})}, base.edit...)},
		{"the instance elsewhere", "A100-80GB", true, 64000, 512 * gib, append([]func(*gpu.NodeDevices){use(gpu.Slot{GPU: 1, MIG: gpu.Placement{Profile: "1g.10gb", Start: 6}})}, base.edit...)},
		{"a static layout", "A100-80GB", false, 64000, 512 * gib, append([]func(*gpu.NodeDevices){static(1, gpu.Placement{Profile: "3g.40gb", Start: 4}, gpu.Placement{Profile: "3g.40gb", Start: 0})}, base.edit...)},
		{"another static layout", "A100-80GB", false, 64000, 512 * gib, append([]func(*gpu.NodeDevices){static(1, gpu.Placement{Profile: "4g.40gb", Start: 0}, gpu.Placement{Profile: "2g.20gb", Start: 4})}, base.edit...)},
	}
	build := func(s state) *Node {
		dev := gpu.NewNodeDevices(s.product, 2, 0)
		dev.OnDemand = s.onDemand
		for _, e := range s.edit {
			e(dev)
		}
		return NewNode(s.name, dev, s.cpu, s.mem, 0)
	}
	heavy := whole(1, 6000)
	heavy.Mem = 100 * gib
	onA100 := share(230, 2000)
	onA100.Products = []string{"A100-80GB"}
	onA100.Shape = shapeOf(onA100)
	// The 1g.10gb pods ask for memory too; the last one, of their shape,
	// for more.
	small, big := mig("1g.10gb"), mig("1g.10gb")
	small.Mem, big.Mem = 8*gib, 60*gib
	reqs := []*Req{share(460, 4000), share(650, 1000), onA100, whole(1, 8000), whole(2, 1000), heavy, small, mig("3g.40gb"), mig("3g.40gb", "3g.40gb"), mig("2g.20gb", "1g.10gb")}
	var shapes []Shape
	for _, r := range reqs {
		shapes = append(shapes, r.Shape)
	}
	d := NewDemand(shapes, []float64{4, 2, 2, 3, 1, 1, 3, 1, 1, 1}, 1)
	reqs = append(reqs, big)
	w := Weights{Fragmentation: 1, Balance: 3, Dead: 3}
	var shared SharedMemo
	var scratch Scratch
	type measure struct {
		parts Parts
		ok    bool
	}
	fresh := make([][]measure, len(states))
	for _, r := range reqs {
		for i, s := range states {
			c := &Cycle{Req: r, Demand: d, W: w, Slot: d.Slot(&r.Shape), Shared: &shared}
			got, gotOK := build(s).Measure(c, &scratch)
			c.Shared = nil
			want, wantOK := build(s).Measure(c, &scratch)
			if got != want || gotOK != wantOK {
				t.Errorf("%v on %s: the shared memo says %+v (%v), a fresh measure %+v (%v)", r.GPU.String(), s.name, got, gotOK, want, wantOK)
			}
			fresh[i] = append(fresh[i], measure{want, wantOK})
		}
	}
	// Each state but the twin is measured differently from the base by some
	// request, so an answer from the base's entry would be caught above.
	for i, s := range states[2:] {
		if slices.Equal(fresh[i+2], fresh[0]) {
			t.Errorf("%s: every request measures as on the base node; the test cannot tell the states apart", s.name)
		}
	}
	// The memo holds MIG requests only (the others measure about as fast
	// as it looks up), but for the mixed one: the twin shares the base's
	// entries, the other states have their own.
	if n, want := len(shared.m), 3*(len(states)-1); n != want {
		t.Fatalf("the shared memo holds %d entries, want %d", n, want)
	}
	// Against another demand the entries are for nothing.
	d2 := NewDemand(shapes, []float64{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 2)
	c := &Cycle{Req: big, Demand: d2, W: w, Slot: d2.Slot(&big.Shape), Shared: &shared}
	got, _ := build(base).Measure(c, &scratch)
	c.Shared = nil
	first := fresh[0][slices.Index(reqs, big)].parts
	if want, _ := build(base).Measure(c, &scratch); got != want || want == first {
		t.Errorf("a 1g.10gb against another demand: the shared memo says %+v, a fresh measure %+v (%+v against the first)", got, want, first)
	}
}

// A node remembers MIG requests too, by their shape's profile and count; a
// request that mixes profiles has the shape of its largest and must not be
// answered from that shape's entry.
func TestMeasureMemoTellsMIGRequestsApart(t *testing.T) {
	one, two, mixed := mig("3g.40gb"), mig("3g.40gb", "3g.40gb"), mig("3g.40gb", "1g.10gb")
	d := demandOf(t, []*Req{one, two, mig("1g.10gb")}, []float64{0.5, 0.25, 0.25})
	if d.Slot(&mixed.Shape) != d.Slot(&one.Shape) {
		t.Fatal("the mixed request has a shape of its own; the test needs it to share the 3g.40gb's")
	}
	fresh := func(r *Req) (Parts, bool) {
		var w Scratch
		return a100(2).Measure(&Cycle{Req: r, Demand: d, W: Weights{Fragmentation: 1}, Slot: -1}, &w)
	}
	n := a100(2)
	var w Scratch
	for i, r := range []*Req{one, one, mixed, one, two, mixed, two} {
		got, gotOK := n.Measure(&Cycle{Req: r, Demand: d, W: Weights{Fragmentation: 1}, Slot: d.Slot(&r.Shape)}, &w)
		if want, wantOK := fresh(r); got != want || gotOK != wantOK {
			t.Fatalf("step %d, %v: memo says %+v (%v), a fresh measure %+v (%v)", i, r.MIG, got, gotOK, want, wantOK)
		}
	}
	if a, _ := fresh(one); a == func() Parts { p, _ := fresh(mixed); return p }() {
		t.Fatal("the 3g.40gb alone and with a 1g.10gb cost the same; the test cannot tell them apart")
	}
}

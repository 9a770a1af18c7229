package sim

import (
	"context"
	"math/rand/v2"
	"testing"

	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/gpu"
)

// view builds a node view with the given free milli per GPU and free CPU.
func view(t *testing.T, cpuFree int64, free ...int64) *nodeView {
	t.Helper()
	n := &nodeView{dev: gpu.NewNodeDevices("Tesla-T4", len(free), 0), cpuFree: cpuFree, cpuAlloc: 96000, tags: map[string]int{}}
	for i, f := range free {
		if f < gpu.MilliPerGPU {
			if err := n.dev.Apply(gpu.Assignment{{GPU: i, Milli: gpu.MilliPerGPU - f}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	n.free = n.dev.FreeList(nil)
	for _, f := range n.free {
		n.freeSum += f
	}
	return n
}

func share(milli, cpu int64) *podRequest {
	p, _ := newPodRequest(NewPod("ns", "p", cpu, 1024, 1, milli, nil))
	return p
}

func whole(n, cpu int64) *podRequest {
	p, _ := newPodRequest(NewPod("ns", "p", cpu, 1024, n, 1000, nil))
	return p
}

// Device choices: best fit takes the fullest GPU that fits, FGD the GPU that
// leaves the least unusable capacity for the workload, random any GPU that
// fits.
func TestDeviceChoiceByPolicy(t *testing.T) {
	n := view(t, 32000, 600, 1000)
	p := share(400, 1000)
	a, err := choosers["best"](p, n)
	if err != nil || a.String() != "0:400m" {
		t.Fatalf("best fit: %v %v, want GPU 0 (600 free)", a, err)
	}
	// Every typical pod needs 500m: GPU 0 down to 200 free would strand 200;
	// GPU 1 down to 600 leaves both GPUs usable.
	f := &fgd{workload: gpu.Workload{{MilliCPU: 1000, GPUs: 1, MilliPerGPU: 500, Weight: 1}}}
	a, err = f.choose(p, n)
	if err != nil || a.String() != "1:400m" {
		t.Fatalf("FGD: %v %v, want GPU 1", a, err)
	}
	seen := map[string]bool{}
	rc := randomChooser(rand.New(rand.NewPCG(1, 2)))
	for i := 0; i < 50; i++ {
		a, err := rc(p, n)
		if err != nil {
			t.Fatal(err)
		}
		seen[a.String()] = true
	}
	if !seen["0:400m"] || !seen["1:400m"] || len(seen) != 2 {
		t.Fatalf("random choices %v, want both GPUs", seen)
	}
	if a, err := rc(share(700, 1000), n); err != nil || a.String() != "1:700m" {
		t.Fatalf("random 700m: %v %v, want the only GPU that fits", a, err)
	}
	if a, err := f.choose(whole(1, 1000), n); err != nil || a.String() != "1" {
		t.Fatalf("FGD whole GPU: %v %v", a, err)
	}
}

func TestFGDScore(t *testing.T) {
	f := &fgd{workload: gpu.Workload{{MilliCPU: 1000, GPUs: 1, MilliPerGPU: 500, Weight: 1}}}
	// No fragmentation change: sigmoid(0) = 0.5.
	if got := f.score(whole(1, 1000), view(t, 32000, 1000, 1000)); got != 50 {
		t.Fatalf("whole GPU on an idle node: %d, want 50", got)
	}
	// 400m on the 600-free GPU strands 200: sigmoid(-0.2) = 0.450 -> 45; on
	// the idle one, none: 50. The node's score is its best GPU's.
	if got := f.score(share(400, 1000), view(t, 32000, 600, 1000)); got != 50 {
		t.Fatalf("share: %d, want 50", got)
	}
	if got := f.score(share(400, 1000), view(t, 32000, 600)); got != 45 {
		t.Fatalf("share stranding 200m: %d, want 45", got)
	}
	// Taking the node's CPU strands both GPUs (1900m left): sigmoid(-1.9) =
	// 0.130 -> 13.
	if got := f.score(share(100, 31500), view(t, 32000, 1000, 1000)); got != 13 {
		t.Fatalf("share taking the CPU: %d, want 13", got)
	}
	// A pod limited to another GPU model scores 0.
	p, _ := newPodRequest(NewPod("ns", "p", 1000, 1024, 1, 500, []string{"NVIDIA-A10"}))
	if got := f.score(p, view(t, 32000, 1000)); got != 0 {
		t.Fatalf("wrong model: %d", got)
	}
}

func TestGpuPackingScore(t *testing.T) {
	cases := []struct {
		name string
		p    *podRequest
		n    *nodeView
		want int64
	}{
		{"idle node with 2 GPUs", share(300, 1), view(t, 1, 1000, 1000), 31},
		{"idle node with 8 GPUs", whole(1, 1), view(t, 1, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000), 25},
		{"idle GPU of a used node", whole(1, 1), view(t, 1, 1000, 500), 49},
		{"two idle GPUs of a used node", whole(2, 1), view(t, 1, 1000, 1000, 500), 48},
		{"shared GPU with 600 free", share(300, 1), view(t, 1, 600, 1000), 94},
		{"shared GPU with 300 free", share(300, 1), view(t, 1, 300, 1000), 97},
		{"no GPU", whole(0, 1), view(t, 1, 1000), 0},
	}
	for _, c := range cases {
		if got := gpuPackingScore(c.p, c.n); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

func TestGpuClusteringScore(t *testing.T) {
	n := view(t, 1, 1000, 1000, 500, 1000) // 3500 free of 8000 -> fill 25*4500/8000 = 14
	if got := gpuClusteringScore(share(300, 1), n); got != 14+25 {
		t.Fatalf("node without GPU pods: %d", got)
	}
	n.tags["share-gpu"] = 1
	if got := gpuClusteringScore(share(300, 1), n); got != 14+75 {
		t.Fatalf("node with only shares: %d", got)
	}
	n.tags["1-gpu"] = 1
	if got := gpuClusteringScore(share(300, 1), n); got != 14+50 {
		t.Fatalf("node with shares and whole GPUs: %d", got)
	}
	if got := gpuClusteringScore(whole(2, 1), n); got != 14 {
		t.Fatalf("2-GPU pod on a node of other kinds: %d", got)
	}
	if got := gpuClusteringScore(whole(0, 1), n); got != 0 {
		t.Fatalf("CPU pod: %d", got)
	}
}

func TestBestFitAndDotProductScores(t *testing.T) {
	// Left after placement: 64000m CPU and 1000m GPU of 128000 and 8000:
	// 0.5*0.5 + 0.5*0.125 = 0.3125 -> (1-0.3125)*100 = 68.
	if got := bestFitScore(whole(1, 32000), view(t, 96000, 1000, 1000)); got != 68 {
		t.Fatalf("best fit: %d, want 68", got)
	}
	// Dot product: (96000/128000)(32000/128000) + (2000/8000)(1000/8000) =
	// 0.1875 + 0.03125 = 0.21875; 1 - 0.21875/2 = 0.890625 -> 89.
	if got := dotProductScore(whole(1, 32000), view(t, 96000, 1000, 1000)); got != 89 {
		t.Fatalf("dot product: %d, want 89", got)
	}
	if got := dotProductScore(whole(1, 97000), view(t, 96000, 1000, 1000)); got != 0 {
		t.Fatalf("dot product without CPU room: %d, want 0", got)
	}
	// BestFit's scores are spread over 0..100 among the feasible nodes.
	list := fwk.NodeScoreList{{Name: "a", Score: 10}, {Name: "b", Score: 30}, {Name: "c", Score: 20}}
	if st := (&baseline{}).NormalizeScore(context.Background(), nil, nil, list); st != nil || list[0].Score != 0 || list[1].Score != 100 || list[2].Score != 50 {
		t.Fatalf("normalized %+v %v", list, st)
	}
}

package sim

import (
	"context"
	"path/filepath"
	"testing"
)

// BenchmarkFillOpenb times one fill experiment of the fill protocol on the
// whole openb cluster (1,523 nodes, about 10,600 pods). The 10-seed sweeps
// live in `make bench-sim`; run this one with
//
//	go test -run '^$' -bench FillOpenb -benchtime 1x ./pkg/sim/
func BenchmarkFillOpenb(b *testing.B) {
	dir := openbDir(b)
	nodes, err := LoadOpenbNodes(filepath.Join(dir, "openb_node_list_all_node.csv"))
	if err != nil {
		b.Fatal(err)
	}
	tr, err := LoadOpenbPods(filepath.Join(dir, "openb_pod_list_default.csv"))
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"fgd", "default"} {
		p, err := LookupPolicy(name)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				rec, err := Fill(context.Background(), FillOptions{Nodes: nodes, Trace: tr, Policy: p, Seed: 42, Inflate: 1.3})
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(rec.PodsTotal), "pods/op")
				b.ReportMetric(rec.UnallocatedGPUPct, "unallocated-%")
			}
		})
	}
}

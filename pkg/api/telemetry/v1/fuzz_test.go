package telemetryv1

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/pennysched/penny/pkg/gpu"
)

// The fuzz targets run their seeds as ordinary tests (go test) and briefly
// under the fuzzer in CI (make fuzz-short). Each checks a property that must
// hold for every input, not a fixed answer.

func seedReports() [][]byte {
	var seeds [][]byte
	add := func(r *NodeReport) {
		b, err := proto.Marshal(r)
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, b)
	}
	add(sampleReport())
	r := sampleReport()
	r.Gpus[1].MigInstances[1].PlacementStart = 2 // overlapping
	add(r)
	r = sampleReport()
	r.Gpus = nil
	r.Nvml = &CollectorStatus{State: CollectorStatus_STATE_UNAVAILABLE, Message: "no driver"}
	add(r)
	add(&NodeReport{})
	return seeds
}

// FuzzNodeReport feeds arbitrary bytes through the path a report takes on
// receipt: unmarshal, validate. Validation must never panic, and whatever it
// accepts must satisfy the limits the store and plugins rely on.
func FuzzNodeReport(f *testing.F) {
	for _, s := range seedReports() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r NodeReport
		if err := proto.Unmarshal(data, &r); err != nil {
			return
		}
		if err := ValidateNodeReport(&r); err != nil {
			return
		}
		checkAcceptedReport(t, &r)
		// Acceptance is a property of the content, not of the encoding.
		again, err := proto.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		var r2 NodeReport
		if err := proto.Unmarshal(again, &r2); err != nil {
			t.Fatal(err)
		}
		if err := ValidateNodeReport(&r2); err != nil {
			t.Fatalf("accepted report refused after a round trip: %v", err)
		}
	})
}

func checkAcceptedReport(t *testing.T, r *NodeReport) {
	t.Helper()
	if r.NodeName == "" || r.Sequence == 0 || r.CollectedAt == nil {
		t.Fatalf("accepted a report without identity: %q seq %d", r.NodeName, r.Sequence)
	}
	if len(r.Gpus) > MaxGPUs {
		t.Fatalf("accepted %d GPUs", len(r.Gpus))
	}
	if len(r.Gpus) > 0 && r.Nvml.GetState() != CollectorStatus_STATE_OK {
		t.Fatalf("accepted GPUs with NVML state %v", r.Nvml.GetState())
	}
	uuids := map[string]bool{}
	for _, g := range r.Gpus {
		if !IsGPUUUID(g.Uuid) || uuids[g.Uuid] {
			t.Fatalf("accepted GPU uuid %q", g.Uuid)
		}
		uuids[g.Uuid] = true
		if g.GetUtilizationPercent() > 100 || g.GetMemoryUtilizationPercent() > 100 {
			t.Fatalf("accepted utilisation %d/%d", g.GetUtilizationPercent(), g.GetMemoryUtilizationPercent())
		}
		if (g.MemoryTotalBytes == 0 && g.GetHealth().GetHealthy()) || g.MemoryTotalBytes > MaxGPUMemoryBytes || g.GetMemoryUsedBytes() > g.MemoryTotalBytes {
			t.Fatalf("accepted memory %d used %d", g.MemoryTotalBytes, g.GetMemoryUsedBytes())
		}
		if g.Health == nil || g.Health.Healthy == (len(g.Health.Reasons) > 0) {
			t.Fatalf("accepted health %v", g.Health)
		}
		if len(g.MigInstances) > 0 && g.MigMode != MIGMode_MIG_MODE_ENABLED {
			t.Fatalf("accepted MIG instances in mode %v", g.MigMode)
		}
		var slices [gpu.MemorySlices]uint32 // which GI holds each slice, +1
		compute := map[uint32]int{}
		for _, m := range g.MigInstances {
			p, err := ParseMIGProfile(m.Profile)
			if err != nil {
				t.Fatalf("accepted profile %q: %v", m.Profile, err)
			}
			if !IsMIGUUID(m.Uuid) || uuids[m.Uuid] {
				t.Fatalf("accepted MIG uuid %q", m.Uuid)
			}
			uuids[m.Uuid] = true
			if m.PlacementSize == 0 || m.PlacementStart+m.PlacementSize > gpu.MemorySlices {
				t.Fatalf("accepted placement %d+%d", m.PlacementStart, m.PlacementSize)
			}
			for s := m.PlacementStart; s < m.PlacementStart+m.PlacementSize; s++ {
				if slices[s] != 0 && slices[s] != m.GpuInstanceId+1 {
					t.Fatalf("accepted overlapping GPU instances on slice %d", s)
				}
				slices[s] = m.GpuInstanceId + 1
			}
			compute[m.GpuInstanceId] = p.Compute
		}
		total := 0
		for _, c := range compute {
			total += c
		}
		if total > gpu.ComputeSlices {
			t.Fatalf("accepted %d compute slices", total)
		}
	}
	for _, n := range r.ReclaimNotices {
		if n.Kind == ReclaimKind_RECLAIM_KIND_UNSPECIFIED || n.DetectedAt == nil {
			t.Fatalf("accepted notice %v", n)
		}
	}
}

// FuzzGPUFields varies the fields most likely to carry garbage from a broken
// agent and checks that validation accepts exactly the values in range.
func FuzzGPUFields(f *testing.F) {
	f.Add(uint32(50), uint64(40<<30), uint64(1<<30), "3g.20gb", uint32(0), uint32(4), 0.5)
	f.Add(uint32(101), uint64(0), uint64(1), "1g.5gb+me", uint32(7), uint32(2), math.NaN())
	f.Add(uint32(0), uint64(1), uint64(2), "7g.80gb", uint32(0), uint32(8), -0.1)
	f.Fuzz(func(t *testing.T, util uint32, total, used uint64, profile string, start, size uint32, ratio float64) {
		r := sampleReport()
		g0, g1 := r.Gpus[0], r.Gpus[1]
		g0.UtilizationPercent = proto.Uint32(util)
		g0.MemoryTotalBytes, g0.MemoryUsedBytes = total, proto.Uint64(used)
		g0.Profiling.TensorActive = proto.Float64(ratio)
		g1.MigInstances = g1.MigInstances[:1]
		m := g1.MigInstances[0]
		m.Profile, m.PlacementStart, m.PlacementSize = profile, start, size

		_, profErr := ParseMIGProfile(profile)
		want := util <= 100 && total > 0 && total <= MaxGPUMemoryBytes && used <= total &&
			!math.IsNaN(ratio) && ratio >= 0 && ratio <= 1 &&
			profErr == nil && size > 0 && uint64(start)+uint64(size) <= gpu.MemorySlices
		err := ValidateNodeReport(r)
		if (err == nil) != want {
			t.Fatalf("util=%d total=%d used=%d profile=%q start=%d size=%d ratio=%v: accepted=%v want %v (%v)",
				util, total, used, profile, start, size, ratio, err == nil, want, err)
		}
	})
}

// FuzzMIGProfile checks that every profile name the validation accepts reads
// back to the same compute and memory it was written with.
func FuzzMIGProfile(f *testing.F) {
	for _, s := range []string{"1g.5gb", "1g.5gb+me", "7g.80gb", "3g.40gb-me", "0g.5gb", "01g.5gb", "+1g.5gb", "1g.gb", "g.5gb", "1g.5gb+me+me", "12g.5gb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := ParseMIGProfile(name)
		if err != nil {
			return
		}
		if p.Compute < 1 || p.Compute > gpu.ComputeSlices || p.MemoryGB < 1 {
			t.Fatalf("%q accepted as %+v", name, p)
		}
		base := fmt.Sprintf("%dg.%dgb", p.Compute, p.MemoryGB)
		if !strings.HasPrefix(name, base) || !slices.Contains(migProfileSuffixes, name[len(base):]) && name != base {
			t.Fatalf("%q accepted as %+v, which is not its canonical form %q plus a known suffix", name, p, base)
		}
	})
}

package pricing

import (
	"testing"
	"time"
)

func TestCostPerUsefulHour(t *testing.T) {
	h := time.Hour
	ckpt := Work{CheckpointInterval: h, RestartOverhead: 6 * time.Minute}
	if got := ckpt.LostPerReclaim(4 * h); got != 30*time.Minute {
		t.Fatalf("checkpointing loses half an interval, got %v", got)
	}
	noCkpt := Work{ExpectedRuntime: 10 * h}
	if got := noCkpt.LostPerReclaim(4 * h); got != 5*h {
		t.Fatalf("no checkpoint loses half the runtime, got %v", got)
	}
	if got := (Work{}).LostPerReclaim(4 * h); got != 2*h {
		t.Fatalf("unknown runtime uses the stand-in, got %v", got)
	}
	if got := (Work{Stateless: true, RestartOverhead: h}).LostPerReclaim(4 * h); got != 0 {
		t.Fatalf("a service loses no progress, got %v", got)
	}
	// price x (1 + rate x (lost + restart)) = 2 x (1 + 0.1 x 0.6).
	if got := CostPerUsefulHour(2, 0.1, ckpt, 4*h); !near(got, 2.12, 1e-12) {
		t.Fatalf("cost %g", got)
	}
	if got := CostPerUsefulHour(2, 0, noCkpt, 4*h); got != 2 {
		t.Fatalf("no risk, no overhead: %g", got)
	}
	// A gang of 4 stops when any of its 4 nodes goes: 2 x (1 + 4 x 0.1 x 0.6).
	gang := ckpt
	gang.Nodes = 4
	if got := CostPerUsefulHour(2, 0.1, gang, 4*h); !near(got, 2.48, 1e-12) {
		t.Fatalf("gang cost %g, want 2.48", got)
	}
}

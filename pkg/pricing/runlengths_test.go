package pricing

import (
	"testing"
	"time"
)

func TestRunLengthsIsTheRunATypicalGPUHourBelongsTo(t *testing.T) {
	r := NewRunLengths(1 << 30) // no forgetting within the test
	for range MinRunLengths - 1 {
		r.Observe(1, time.Hour)
	}
	if _, ok := r.Typical(); ok {
		t.Fatalf("Typical speaks after %d runs, want %d first", MinRunLengths-1, MinRunLengths)
	}
	r.Observe(1, time.Hour)
	if got, ok := r.Typical(); !ok || got.Round(time.Second) != time.Hour {
		t.Fatalf("ten 1h runs: %v %v", got, ok)
	}
	// One 20-day run among a hundred 1-hour ones holds most GPU-hours: the
	// size-biased mean is (480^2 + 100) / (480 + 100) h.
	for range 90 {
		r.Observe(1, time.Hour)
	}
	r.Observe(1, 480*time.Hour)
	if got, _ := r.Typical(); got.Round(time.Minute) != 397*time.Hour+25*time.Minute {
		t.Fatalf("got %v, want 397h25m", got)
	}
	// GPUs weigh: an 8-GPU hour-long run counts as eight.
	w := NewRunLengths(1 << 30)
	for range MinRunLengths {
		w.Observe(8, time.Hour)
	}
	w.Observe(1, 9*time.Hour)
	if got, _ := w.Typical(); got.Round(time.Minute) != time.Hour+49*time.Minute {
		t.Fatalf("got %v, want (80 + 81) / (80 + 9) h = 1h49m", got)
	}
	// Runs without GPUs or time are not counted; nil is safe.
	w.Observe(0, 100*time.Hour)
	w.Observe(4, 0)
	var none *RunLengths
	none.Observe(1, time.Hour)
	if _, ok := none.Typical(); ok {
		t.Fatal("a nil RunLengths knows a runtime")
	}
}

func TestRunLengthsForgetsOldRuns(t *testing.T) {
	r := NewRunLengths(10)
	for range MinRunLengths {
		r.Observe(1, 1000*time.Hour)
	}
	for range 200 {
		r.Observe(1, time.Hour)
	}
	if got, _ := r.Typical(); got > 2*time.Hour {
		t.Fatalf("after 200 runs of 1h with a half-life of 10 runs, still %v", got)
	}
}

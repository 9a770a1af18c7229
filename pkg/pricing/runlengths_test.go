package pricing

import (
	"testing"
	"time"

	"k8s.io/component-base/metrics/testutil"
)

var runsEnd = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func TestRunLengthsIsTheRunATypicalGPUHourBelongsTo(t *testing.T) {
	r := NewRunLengths(0)
	for range MinRunLengths - 1 {
		r.Observe(1, time.Hour, runsEnd)
	}
	if _, ok := r.Typical(); ok {
		t.Fatalf("Typical speaks after %d runs, want %d first", MinRunLengths-1, MinRunLengths)
	}
	r.Observe(1, time.Hour, runsEnd)
	if got, ok := r.Typical(); !ok || got.Round(time.Second) != time.Hour {
		t.Fatalf("ten 1h runs: %v %v", got, ok)
	}
	// One 20-day run among a hundred 1-hour ones holds most GPU-hours: the
	// size-biased mean is (480^2 + 100) / (480 + 100) h.
	for range 90 {
		r.Observe(1, time.Hour, runsEnd)
	}
	r.Observe(1, 480*time.Hour, runsEnd)
	if got, _ := r.Typical(); got.Round(time.Minute) != 397*time.Hour+25*time.Minute {
		t.Fatalf("got %v, want 397h25m", got)
	}
	// GPUs weigh: an 8-GPU hour-long run counts as eight.
	w := NewRunLengths(0)
	for range MinRunLengths {
		w.Observe(8, time.Hour, runsEnd)
	}
	w.Observe(1, 9*time.Hour, runsEnd)
	if got, _ := w.Typical(); got.Round(time.Minute) != time.Hour+49*time.Minute {
		t.Fatalf("got %v, want (80 + 81) / (80 + 9) h = 1h49m", got)
	}
	// Runs without GPUs or time are not counted; nil is safe.
	w.Observe(0, 100*time.Hour, runsEnd)
	w.Observe(4, 0, runsEnd)
	if got, _ := w.Typical(); got.Round(time.Minute) != time.Hour+49*time.Minute {
		t.Fatalf("empty runs moved it to %v", got)
	}
	var none *RunLengths
	none.Observe(1, time.Hour, runsEnd)
	if _, ok := none.Typical(); ok {
		t.Fatal("a nil RunLengths knows a runtime")
	}
}

func TestRunLengthsForgetsOldRunsByTime(t *testing.T) {
	r := NewRunLengths(24 * time.Hour)
	for range MinRunLengths {
		r.Observe(1, 1000*time.Hour, runsEnd)
	}
	// A month later, ten 1-hour runs: the old runs weigh 2^-30 as much
	// (at 2^-10 they would still make it ~490h: long runs dominate).
	later := runsEnd.Add(30 * 24 * time.Hour)
	for range 10 {
		r.Observe(1, time.Hour, later)
	}
	if got, _ := r.Typical(); got > 2*time.Hour {
		t.Fatalf("a month after, with a half-life of a day, still %v", got)
	}
	// A run that ended long ago, told now, counts as old.
	r.Observe(1, 1000*time.Hour, runsEnd)
	if got, _ := r.Typical(); got > 2*time.Hour {
		t.Fatalf("a run told late counted as new: %v", got)
	}
	// Many short runs at once do not wash out a recent long one.
	busy := NewRunLengths(0)
	busy.Observe(8, 480*time.Hour, runsEnd)
	for range 5000 {
		busy.Observe(1, 10*time.Minute, runsEnd.Add(time.Hour))
	}
	// (8 x 480^2 + 5000 x (1/6)^2) / (8 x 480 + 5000 / 6) h
	if got, _ := busy.Typical(); got.Round(time.Hour) != 394*time.Hour {
		t.Fatalf("5,000 short runs in an hour after a 20-day 8-GPU one: %v, want 394h", got)
	}
}

// The metric shows the typical run only once SpotRisk uses it: before
// MinRunLengths runs, unknownRuntime is in force.
func TestTypicalRunMetricWaitsUntilItIsInForce(t *testing.T) {
	RegisterMetrics()
	metricTypicalRunHours.Set(-1)
	r := NewRunLengths(0)
	for range MinRunLengths - 1 {
		r.Observe(1, 5*time.Hour, runsEnd)
	}
	if got, _ := testutil.GetGaugeMetricValue(metricTypicalRunHours); got != -1 {
		t.Fatalf("published %g after %d runs, before it is in force", got, MinRunLengths-1)
	}
	r.Observe(1, 5*time.Hour, runsEnd)
	if got, _ := testutil.GetGaugeMetricValue(metricTypicalRunHours); !near(got, 5, 1e-9) {
		t.Fatalf("published %g after %d runs of 5h, want 5", got, MinRunLengths)
	}
}

// The runs Typical needs are counted as the runs' weight: ten runs seen
// long ago and forgotten since do not leave the model speaking for the one
// run seen after them, which would then decide alone whether training
// without checkpoints may take Spot room.
func TestRunLengthsForgetsHowManyRunsItSaw(t *testing.T) {
	RegisterMetrics()
	r := NewRunLengths(24 * time.Hour)
	for range MinRunLengths {
		r.Observe(1, 10*time.Hour, runsEnd)
	}
	if got, ok := r.Typical(); !ok || got.Round(time.Second) != 10*time.Hour {
		t.Fatalf("ten 10h runs: %v %v", got, ok)
	}
	// Thirty half-lives later the ten weigh 10 x 2^-30 runs: one new run
	// is all the model knows.
	r.Observe(1, 1000*time.Hour, runsEnd.Add(30*24*time.Hour))
	if got, ok := r.Typical(); ok {
		t.Fatalf("after the ten runs aged out, one 1000h run still speaks: %v", got)
	}
	if got, _ := testutil.GetGaugeMetricValue(metricTypicalRunHours); got != 0 {
		t.Fatalf("penny_training_run_typical_hours = %g once the model fell back to unknownRuntime, want 0", got)
	}
	// Ten fresh runs bring it back.
	for range MinRunLengths - 1 {
		r.Observe(1, 1000*time.Hour, runsEnd.Add(30*24*time.Hour))
	}
	if got, ok := r.Typical(); !ok || got.Round(time.Hour) != 1000*time.Hour {
		t.Fatalf("ten fresh 1000h runs: %v %v", got, ok)
	}
	// Runs a half-life old count half: sixteen of them and one new run are
	// nine runs' worth, one more new run ten.
	h := NewRunLengths(24 * time.Hour)
	for range 16 {
		h.Observe(1, time.Hour, runsEnd)
	}
	h.Observe(1, time.Hour, runsEnd.Add(24*time.Hour))
	if _, ok := h.Typical(); ok {
		t.Fatal("16 runs a half-life old and one new, nine runs' worth, speak")
	}
	h.Observe(1, time.Hour, runsEnd.Add(24*time.Hour))
	if _, ok := h.Typical(); !ok {
		t.Fatal("16 runs a half-life old and two new, ten runs' worth, do not speak")
	}
	// Ten runs that ended a second apart, as a cluster's succeeded pods
	// often do, are ten runs, not 9.99999.
	s := NewRunLengths(0)
	for i := range MinRunLengths {
		s.Observe(1, time.Hour, runsEnd.Add(time.Duration(i)*time.Second))
	}
	if _, ok := s.Typical(); !ok {
		t.Fatal("ten runs a second apart do not speak")
	}
}

package sim

import (
	"testing"
	"time"
)

// Timers run when the replay passes them, in the order they are due; a
// callback may read the time and arm another timer (FakeClock, which runs
// callbacks under its lock, deadlocks there); Stop and Reset work.
func TestSimClockTimers(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newSimClock(start)
	var ran []string
	c.AfterFunc(2*time.Second, func() { ran = append(ran, "b") })
	c.AfterFunc(time.Second, func() {
		ran = append(ran, "a@"+c.Now().Sub(start).String())
		c.AfterFunc(time.Second, func() { ran = append(ran, "c") })
	})
	stopped := c.AfterFunc(time.Second, func() { ran = append(ran, "stopped") })
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop: want true, then false")
	}
	later := c.AfterFunc(time.Second, func() { ran = append(ran, "reset") })
	later.Reset(10 * time.Second)

	if n := c.advance(start.Add(500 * time.Millisecond)); n != 0 {
		t.Fatalf("%d timers ran before any was due", n)
	}
	if n := c.advance(start.Add(3 * time.Second)); n != 3 {
		t.Fatalf("%d timers ran by 3s, want 3 (%v)", n, ran)
	}
	if at, ok := c.next(); !ok || !at.Equal(start.Add(10*time.Second)) {
		t.Fatalf("next timer at %v (%v), want 10s", at, ok)
	}
	c.advance(start.Add(10 * time.Second))
	want := []string{"a@1s", "b", "c", "reset"}
	if len(ran) != len(want) {
		t.Fatalf("ran %v, want %v", ran, want)
	}
	for i := range want {
		if ran[i] != want[i] {
			t.Fatalf("ran %v, want %v", ran, want)
		}
	}
}

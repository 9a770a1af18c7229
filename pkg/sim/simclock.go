package sim

import (
	"sync"
	"time"

	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

// simClock is trace time for the plugins of a replay (a fill's stands
// still). Its AfterFunc timers (the gang plugin's permit wait and backoff,
// SpotRisk's wake-up at the end of a Spot wait) run when the replay moves
// the time past them, in the order they are due, and outside any lock: a
// callback may read the time or arm another timer, which FakeClock, running
// callbacks under its own lock, would deadlock on. On the wall clock a
// replay that takes minutes would expire a gang's permit wait at a point of
// trace time that depends on the machine, and never in one that takes less.
type simClock struct {
	*clocktesting.FakeClock

	mu     sync.Mutex
	seq    int
	timers []*simTimer
}

var _ clock.WithDelayedExecution = &simClock{}

func newSimClock(t time.Time) *simClock {
	return &simClock{FakeClock: clocktesting.NewFakeClock(t)}
}

type simTimer struct {
	c   *simClock
	at  time.Time
	seq int
	f   func()
	ch  chan time.Time
	// armed: the timer is in c.timers.
	armed bool
}

// AfterFunc runs f once the replay's time reaches now + d.
func (c *simClock) AfterFunc(d time.Duration, f func()) clock.Timer {
	t := &simTimer{c: c, f: f, ch: make(chan time.Time, 1)}
	c.arm(t, d)
	return t
}

func (c *simClock) arm(t *simTimer, d time.Duration) {
	at := c.Now().Add(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	t.at, t.seq = at, c.seq
	c.seq++
	if !t.armed {
		t.armed = true
		c.timers = append(c.timers, t)
	}
}

// earliest is the index of the timer due first (armed first among those
// due together); -1 when none is armed. Callers hold c.mu.
func (c *simClock) earliest() int {
	k := -1
	for i, t := range c.timers {
		if k < 0 || t.at.Before(c.timers[k].at) || t.at.Equal(c.timers[k].at) && t.seq < c.timers[k].seq {
			k = i
		}
	}
	return k
}

// next is when the earliest armed timer is due.
func (c *simClock) next() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k := c.earliest(); k >= 0 {
		return c.timers[k].at, true
	}
	return time.Time{}, false
}

// nextEvent is when a replay queues its timer event for the earliest armed
// timer, in trace time since epoch and not before now; false when none is
// armed or the timer event already queued at queued (-1: none) is as early.
func (c *simClock) nextEvent(epoch time.Time, now, queued time.Duration) (time.Duration, bool) {
	at, ok := c.next()
	if !ok {
		return 0, false
	}
	if d := at.Sub(epoch); queued < 0 || d < queued {
		return max(d, now), true
	}
	return 0, false
}

// advance moves the time to now, running the timers due by then each at
// its own time; it returns how many ran.
func (c *simClock) advance(now time.Time) int {
	defer c.SetTime(now)
	ran := 0
	for {
		c.mu.Lock()
		k := c.earliest()
		if k < 0 || c.timers[k].at.After(now) {
			c.mu.Unlock()
			return ran
		}
		t := c.timers[k]
		c.timers = append(c.timers[:k], c.timers[k+1:]...)
		t.armed = false
		c.mu.Unlock()
		if t.at.After(c.Now()) {
			c.SetTime(t.at)
		}
		select {
		case t.ch <- now:
		default:
		}
		t.f()
		ran++
	}
}

func (t *simTimer) C() <-chan time.Time { return t.ch }

// Stop keeps the timer from running; it reports whether it was armed.
func (t *simTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if !t.armed {
		return false
	}
	t.armed = false
	for i, x := range t.c.timers {
		if x == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			break
		}
	}
	return true
}

// Reset arms the timer again for now + d; it reports whether it was armed.
func (t *simTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	was := t.armed
	t.c.mu.Unlock()
	t.c.arm(t, d)
	return was
}

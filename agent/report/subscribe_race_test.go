package report

import (
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// Subscribe registers the new channel and then signals it when a report
// exists. A report published in between fills the channel first: the
// signal must not wait for a reader that has not got the channel yet (the
// stream's goroutine would hang before its loop, sending nothing while its
// stream counts as open).
func TestSubscribeWhilePublishingNeverBlocks(t *testing.T) {
	loop := NewLoop(&Builder{Node: "n1", AgentID: "a"}, LoopOptions{Log: testr.New(t)})
	loop.publish(telemetrytest.Report("n1", 1, 0, time.Now()))
	stop := make(chan struct{})
	defer close(stop)
	// Publishers wake the subscribers as fast as they can (the rest of
	// publishing, validation above all, would make the window rare).
	for range 4 {
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
					loop.notify()
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200000; i++ {
			_, unsubscribe := loop.Subscribe()
			unsubscribe()
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Subscribe blocked: a report published while it subscribed filled the channel before its own signal")
	}
}

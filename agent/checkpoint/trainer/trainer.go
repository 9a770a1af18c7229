// Package trainer is a stand-in for a training process, for tests of the
// reclaim flow: it counts steps, writes a checkpoint (its step) to a shared
// store when its penny.dev/checkpoint hook is called, and a new trainer with
// the same key resumes from the last checkpoint — the behaviour of a real
// trainer with a checkpoint callback, minus the GPU.
package trainer

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pennysched/penny/agent/checkpoint"
)

// Store holds checkpoints, like the object store real trainers write to; it
// outlives the trainers.
type Store struct {
	mu    sync.Mutex
	steps map[string]Saved
}

// Saved is one checkpoint.
type Saved struct {
	Step int64
	At   time.Time
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{steps: map[string]Saved{}} }

// Save records a checkpoint of key.
func (s *Store) Save(key string, step int64) Saved {
	s.mu.Lock()
	defer s.mu.Unlock()
	sv := Saved{Step: step, At: time.Now()}
	s.steps[key] = sv
	return sv
}

// Load returns key's last checkpoint.
func (s *Store) Load(key string) (Saved, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sv, ok := s.steps[key]
	return sv, ok
}

// Options tune a trainer.
type Options struct {
	// StepEvery is how long a step takes (10ms).
	StepEvery time.Duration
	// CheckpointTakes is how long writing a checkpoint takes (20ms).
	CheckpointTakes time.Duration
	// Address to listen on ("127.0.0.1:0").
	Address string
	// Hold, when set, keeps every checkpoint writing until it is closed, on
	// top of CheckpointTakes: a test that needs a checkpoint still being
	// written at some point holds it there instead of racing a timer.
	Hold <-chan struct{}
}

// Received is one checkpoint request as the trainer saw it.
type Received struct {
	At      time.Time
	Request checkpoint.Request
	// Saved is the checkpoint written, zero when it could not be.
	Saved Saved
}

// Trainer is one running trainer.
type Trainer struct {
	key     string
	store   *Store
	opts    Options
	resumed int64
	step    atomic.Int64

	lis    net.Listener
	srv    *http.Server
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	received []Received
}

// Start resumes key from its last checkpoint in store (step 0 without one)
// and serves its checkpoint hook at POST /checkpoint.
func Start(key string, store *Store, opts Options) (*Trainer, error) {
	if opts.StepEvery <= 0 {
		opts.StepEvery = 10 * time.Millisecond
	}
	if opts.CheckpointTakes <= 0 {
		opts.CheckpointTakes = 20 * time.Millisecond
	}
	if opts.Address == "" {
		opts.Address = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", opts.Address)
	if err != nil {
		return nil, fmt.Errorf("trainer %s: %w", key, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Trainer{key: key, store: store, opts: opts, lis: lis, cancel: cancel, done: make(chan struct{})}
	if sv, ok := store.Load(key); ok {
		t.resumed = sv.Step
	}
	t.step.Store(t.resumed)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /checkpoint", t.checkpoint)
	t.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go t.srv.Serve(lis)
	go func() {
		defer close(t.done)
		tick := time.NewTicker(opts.StepEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				t.step.Add(1)
			}
		}
	}()
	return t, nil
}

// Addr is host:port of the hook.
func (t *Trainer) Addr() string { return t.lis.Addr().String() }

// Key names the trainer's checkpoints.
func (t *Trainer) Key() string { return t.key }

// ResumedFrom is the step the trainer started at.
func (t *Trainer) ResumedFrom() int64 { return t.resumed }

// Step is the current step.
func (t *Trainer) Step() int64 { return t.step.Load() }

// Received lists the checkpoint requests so far.
func (t *Trainer) Received() []Received {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Received(nil), t.received...)
}

// Stop kills the trainer, as the container's end would.
func (t *Trainer) Stop() {
	t.cancel()
	<-t.done
	t.srv.Close()
}

func (t *Trainer) checkpoint(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	var req checkpoint.Request
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		http.Error(w, "want a JSON checkpoint request: "+err.Error(), http.StatusBadRequest)
		return
	}
	// Recorded on arrival, so a test sees a request that is still being
	// written; Saved is filled in once the checkpoint is.
	t.mu.Lock()
	idx := len(t.received)
	t.received = append(t.received, Received{At: at, Request: req})
	t.mu.Unlock()
	if req.Deadline.IsZero() {
		http.Error(w, "the request carries no deadline", http.StatusBadRequest)
		return
	}
	if time.Until(req.Deadline) < t.opts.CheckpointTakes {
		http.Error(w, fmt.Sprintf("a checkpoint takes %v; the deadline leaves %v", t.opts.CheckpointTakes, time.Until(req.Deadline)), http.StatusServiceUnavailable)
		return
	}
	// The step being checkpointed is the one reached when asked; writing
	// takes a while.
	step := t.step.Load()
	select {
	case <-time.After(t.opts.CheckpointTakes):
	case <-r.Context().Done():
		return
	}
	if t.opts.Hold != nil {
		select {
		case <-t.opts.Hold:
		case <-r.Context().Done():
			return
		}
	}
	saved := t.store.Save(t.key, step)
	t.mu.Lock()
	t.received[idx].Saved = saved
	t.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(checkpoint.Answer{Step: step, Location: "memory://" + t.key})
}

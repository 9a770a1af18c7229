package report

import (
	"sort"
	"sync"
	"time"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// MaxLiveStatuses bounds the checkpoint statuses the agent keeps to send
// again: one per pod of each command whose deadline is still ahead. A node
// holds a few hundred pods at most and a command names at most
// telemetryv1.MaxCheckpointPods, so this holds every pod of several commands
// at once; beyond it the status updated longest ago is dropped (counted and
// logged).
const MaxLiveStatuses = 1024

// DefaultStatusRetention is how long a status is sent again when its sender
// does not say until when (a zero until).
const DefaultStatusRetention = 10 * time.Minute

// minStatusLife is how long a status is kept however close its command's
// deadline: one produced at the deadline (a checkpoint that ran out of time)
// still reaches the streams open then, and the scheduler's clock may be a
// little behind the agent's.
const minStatusLife = 10 * time.Second

// statusKey is one pod of one command: a later status for it replaces the
// earlier one.
type statusKey struct {
	command, namespace, name string
}

func keyOf(st *telemetryv1.CheckpointStatus) statusKey {
	return statusKey{st.GetCommandId(), st.GetPod().GetNamespace(), st.GetPod().GetName()}
}

// liveStatus is the latest status of one pod of a command.
type liveStatus struct {
	key statusKey
	st  *telemetryv1.CheckpointStatus
	// seq orders the updates the agent made (client-wide, from 1): a stream
	// that sent an older version of this status sends this one.
	seq uint64
	// until is the command's deadline: after it nobody waits for the status.
	until time.Time
}

// statusBook holds the latest status of each pod of every command that is
// still live. The protocol does not acknowledge statuses, and a Send that
// returned nil only put the message in gRPC's buffer, which a stream that
// breaks then loses; so every stream a scheduler accepts is sent every live
// status, and a command that arrives again (a restarted replica sending it
// anew) is answered with the statuses the agent has for it. The scheduler
// takes a status as where the pod's checkpoint stands, so a repeat changes
// nothing there.
type statusBook struct {
	mu   sync.Mutex
	seq  uint64
	live map[statusKey]*liveStatus
	now  func() time.Time
}

func newStatusBook(now func() time.Time) *statusBook {
	if now == nil {
		now = time.Now
	}
	return &statusBook{live: map[statusKey]*liveStatus{}, now: now}
}

// put makes st its pod's latest status until until, and returns the status
// it dropped to stay within MaxLiveStatuses, if any.
func (b *statusBook) put(st *telemetryv1.CheckpointStatus, until time.Time) *liveStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if until.IsZero() {
		until = now.Add(DefaultStatusRetention)
	}
	if least := now.Add(minStatusLife); until.Before(least) {
		until = least
	}
	b.seq++
	k := keyOf(st)
	if s, ok := b.live[k]; ok {
		s.st, s.seq, s.until = st, b.seq, until
		return nil
	}
	b.live[k] = &liveStatus{key: k, st: st, seq: b.seq, until: until}
	if len(b.live) <= MaxLiveStatuses {
		return nil
	}
	b.pruneLocked(now)
	if len(b.live) <= MaxLiveStatuses {
		return nil
	}
	var oldest *liveStatus
	for _, s := range b.live {
		if oldest == nil || s.seq < oldest.seq {
			oldest = s
		}
	}
	delete(b.live, oldest.key)
	return oldest
}

// pruneLocked forgets the statuses whose command's deadline has passed.
func (b *statusBook) pruneLocked(now time.Time) {
	for k, s := range b.live {
		if now.After(s.until) {
			delete(b.live, k)
		}
	}
}

// pending returns the live statuses sent does not have in their current
// version, in the order they were last updated, and records them in sent.
// sent is one stream's record: the caller sends what is returned and, if a
// send fails, drops the stream (the next stream starts with an empty one).
func (b *statusBook) pending(sent map[statusKey]uint64) []*liveStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pruneLocked(b.now())
	// What the book forgot, the stream need not remember: the record held
	// every status a stream ever carried, an hour's worth on a long stream.
	for k := range sent {
		if _, ok := b.live[k]; !ok {
			delete(sent, k)
		}
	}
	var out []*liveStatus
	for k, s := range b.live {
		if sent[k] < s.seq {
			out = append(out, &liveStatus{key: k, st: s.st, seq: s.seq, until: s.until})
			sent[k] = s.seq
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

// commandKeys returns the pods of command the book holds a status for.
func (b *statusBook) commandKeys(command string) []statusKey {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []statusKey
	for k := range b.live {
		if k.command == command {
			out = append(out, k)
		}
	}
	return out
}

// size returns how many statuses are live.
func (b *statusBook) size() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pruneLocked(b.now())
	return len(b.live)
}

package packing

import (
	"encoding/binary"
	"sync"
	"unique"
)

// SharedMemo remembers what placing a MIG request costs on a node in a
// given state, for every node in that state. A cluster's nodes are few
// kinds filled by few pod shapes, and a packing scheduler leaves most of
// them idle or full: a thousand nodes are a few dozen states, each measured
// once per request and demand rather than once per node. The node's own
// memo answers first (no lock); this one answers a node the request is new
// to.
//
// It holds entries for one Demand and Weights at a time, and forgets them
// all when either changes or when it is full. The key is the node's whole
// state as the measure reads it (see Node.stateKey), compared exactly, so a
// node that changed is a new key and never gets a stale answer. Safe for
// concurrent use; two nodes of one state measured at once are measured
// twice, to the same answer.
type SharedMemo struct {
	mu     sync.Mutex
	demand *Demand
	w      Weights
	m      map[sharedKey]sharedEntry
}

// maxShared bounds the entries of a SharedMemo: states times shapes within
// one demand.
const maxShared = 1 << 16

// sharedKey is a state and a slot of the demand (see Cycle.Slot): like a
// node's memo, the entry holds the last request of the slot's shape.
type sharedKey struct {
	state unique.Handle[string]
	slot  int
}

type sharedEntry struct {
	req   memoKey
	parts Parts
	ok    bool
}

// get returns the remembered measure of the request on nodes in state
// against d and w. A nil memo remembers nothing.
func (s *SharedMemo) get(d *Demand, w Weights, state unique.Handle[string], slot int, req memoKey) (Parts, bool, bool) {
	if s == nil {
		return Parts{}, false, false
	}
	s.mu.Lock()
	e, found := s.m[sharedKey{state, slot}]
	found = found && e.req == req && s.demand == d && s.w == w
	s.mu.Unlock()
	return e.parts, e.ok, found
}

// put remembers a measure taken against d and w, forgetting the entries of
// another demand or weights.
func (s *SharedMemo) put(d *Demand, w Weights, state unique.Handle[string], slot int, req memoKey, parts Parts, ok bool) {
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.demand != d || s.w != w || len(s.m) >= maxShared {
		s.demand, s.w = d, w
		if s.m == nil {
			s.m = make(map[sharedKey]sharedEntry, 1024)
		}
		clear(s.m)
	}
	s.m[sharedKey{state, slot}] = sharedEntry{req, parts, ok}
	s.mu.Unlock()
}

// stateKey encodes everything the measure reads of the node (all but its
// name, device view and GPU memory, which only Choose and Compose read), so
// that two nodes whose measures could differ never share a key. A field
// the measure comes to read belongs here. It is computed the first time,
// by Measure (one goroutine per node at a time).
func (n *Node) stateKey() unique.Handle[string] {
	if n.state != (unique.Handle[string]{}) {
		return n.state
	}
	b := make([]byte, 0, 64+len(n.product)+12*len(n.free)+16*len(n.static))
	for _, v := range []int64{n.CPUFree, n.MemFree, n.idle, n.freeUnits, int64(n.model), n.unpartitioned, int64(len(n.free)), int64(len(n.static))} {
		b = binary.AppendVarint(b, v)
	}
	b = append(binary.AppendUvarint(b, uint64(len(n.product))), n.product...)
	for i := range n.free {
		g := &n.mig[i]
		b = binary.AppendVarint(b, n.free[i])
		b = append(b, g.used, byte(g.compute), flag(g.mode)|flag(g.static)<<1|flag(g.blocked)<<2)
	}
	for _, in := range n.static {
		for _, v := range []int64{int64(in.gpu), int64(in.start), in.compute} {
			b = binary.AppendVarint(b, v)
		}
		b = append(binary.AppendUvarint(b, uint64(len(in.profile))), in.profile...)
	}
	n.state = unique.Make(string(b))
	return n.state
}

func flag(b bool) byte {
	if b {
		return 1
	}
	return 0
}

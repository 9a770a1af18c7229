package telemetry_test

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/benchtest"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// The load: 5,000 nodes with 8 GPUs each, one report per node every
// 5 seconds, i.e. 1,000 reports a second.
const (
	benchNodes       = 5000
	benchGPUs        = 8
	benchPeriod      = 5 * time.Second
	reportsPerSecond = float64(benchNodes) / 5
)

func encodedReports(b *testing.B, seqs int) [][][]byte {
	b.Helper()
	out := make([][][]byte, seqs)
	for s := range out {
		out[s] = make([][]byte, benchNodes)
		for n := 0; n < benchNodes; n++ {
			data, err := proto.Marshal(telemetrytest.Report(fmt.Sprintf("gpu-node-%04d", n), benchGPUs, uint64(s+1), time.Now()))
			if err != nil {
				b.Fatal(err)
			}
			out[s][n] = data
		}
	}
	return out
}

// BenchmarkIngest is the server's work per report, minus the gRPC transport:
// decode the wire bytes, validate every field, build the node's snapshot
// and publish it in the store. Reports cycle over 5,000 nodes, so the store
// holds the full fleet. cores@1000rps is the share of one core this takes at
// the load: CPU seconds per report x 1,000 reports per second.
func BenchmarkIngest(b *testing.B) {
	const seqs = 2 // alternate so each update differs from the stored one
	wire := encodedReports(b, seqs)
	heapBefore := liveHeap()
	store := telemetry.NewStore(telemetry.StoreOptions{})
	b.SetBytes(int64(len(wire[0][0])))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := benchtest.ProcessCPU()
	seq := uint64(0)
	for i := 0; i < b.N; i++ {
		n := i % benchNodes
		if n == 0 {
			seq++
		}
		var r telemetryv1.NodeReport
		if err := proto.Unmarshal(wire[int(seq)%seqs][n], &r); err != nil {
			b.Fatal(err)
		}
		r.Sequence = seq // monotonic per node, as an agent's are
		if err := telemetryv1.ValidateNodeReport(&r); err != nil {
			b.Fatal(err)
		}
		if !store.Update(&r, time.Now()) {
			b.Fatalf("report %d of node %d not applied", seq, n)
		}
	}
	cpu := benchtest.ProcessCPU() - cpu0
	b.StopTimer()
	perReport := float64(cpu.Nanoseconds()) / float64(b.N)
	b.ReportMetric(perReport, "cpu-ns/report")
	b.ReportMetric(perReport*reportsPerSecond/1e9, "cores@1000rps")
	if b.N >= benchNodes {
		b.ReportMetric(float64(liveHeap()-heapBefore)/benchNodes, "heap-B/node")
	}
	runtime.KeepAlive(store)
	runtime.KeepAlive(wire)
}

// liveHeap is the heap in use after a full collection.
func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// mutexStore is the baseline the lock-free store is measured against: one
// map behind a read-write lock, the obvious way to share node state, with
// the same freshness check.
type mutexStore struct {
	mu    sync.RWMutex
	nodes map[string]*telemetry.NodeState
}

func (m *mutexStore) Node(name string) (*telemetry.NodeState, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	s, ok := m.nodes[name]
	if !ok || time.Since(s.ReceivedAt) > time.Hour {
		return nil, false
	}
	return s, true
}

func (m *mutexStore) update(s *telemetry.NodeState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nodes[s.Node] = s
}

// BenchmarkScoreRead is the lookup a Filter or Score call makes: find a
// node's state (and touch it), from every core at once,
// with no writer ("idle"), while reports arrive at the rate (1,000 a
// second) and while one writer applies them as fast as it can ("flood").
// The baseline is the obvious alternative measured in the same run: one map
// behind a read-write lock. Both writers do the same work per report (the
// store's Update, which builds the snapshot); the baseline's then also takes
// its write lock to publish it.
func BenchmarkScoreRead(b *testing.B) {
	names := make([]string, benchNodes)
	reports := make([]*telemetryv1.NodeReport, benchNodes)
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Hour})
	base := &mutexStore{nodes: map[string]*telemetry.NodeState{}}
	for n := range names {
		names[n] = fmt.Sprintf("gpu-node-%04d", n)
		reports[n] = telemetrytest.Report(names[n], benchGPUs, 1, time.Now())
		store.Update(reports[n], time.Now())
		st, _ := store.Node(names[n])
		base.update(st)
	}
	readers := map[string]telemetry.Reader{"store": store, "mutex-baseline": base}
	for _, load := range []string{"idle", "1000rps", "flood"} {
		for _, impl := range []string{"store", "mutex-baseline"} {
			b.Run(impl+"/"+load, func(b *testing.B) {
				stop := make(chan struct{})
				var writes atomic.Int64
				var wg sync.WaitGroup
				if load != "idle" {
					wg.Add(1)
					go func() {
						defer wg.Done()
						scratch := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Hour})
						start := time.Now()
						seq := uint64(1)
						for i := 0; ; {
							select {
							case <-stop:
								return
							default:
							}
							due := i + 1
							if load == "1000rps" {
								// Catch up on every write that is due: a sleeping
								// writer wakes late on a busy machine.
								time.Sleep(time.Millisecond)
								due = int(time.Since(start).Seconds() * reportsPerSecond)
							}
							for ; i < due; i++ {
								n := i % benchNodes
								if n == 0 {
									seq++
								}
								r := reports[n]
								r.Sequence = seq
								if impl == "store" {
									store.Update(r, time.Now())
								} else {
									scratch.Update(r, time.Now())
									st, _ := scratch.Node(names[n])
									base.update(st)
								}
								writes.Add(1)
							}
						}
					}()
				}
				r := readers[impl]
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					i := 0
					free := 0
					for pb.Next() {
						if st, ok := r.Node(names[i%benchNodes]); ok {
							free += len(st.GPUs)
						}
						i += 7
					}
					if free < 0 {
						b.Fatal(free)
					}
				})
				b.StopTimer()
				close(stop)
				wg.Wait()
				b.ReportMetric(float64(writes.Load())/b.Elapsed().Seconds(), "writes/s")
			})
		}
	}
}

// Package schedperf runs Penny's scheduler_perf workloads: kube-scheduler's
// own benchmark harness (k8s.io/kubernetes/test/integration/scheduler_perf)
// with Penny's plugin registry, on a real etcd and kube-apiserver per
// workload. performance-config.yaml lists the workloads and how the two
// sides of each comparison pair up.
//
//	make bench-schedperf                                  # 2-core sizes, both sides, results in benchmarks/results (bench.sh)
//	go test ./benchmarks/schedperf -run '^$' -bench . -benchtime 1x -short \
//	    -perf-scheduling-label-filter integration-test    # the small variants `make test` runs
//
// An etcd binary must be on PATH (`make bin/etcd` builds one).
package schedperf

import (
	"fmt"
	"os"
	"testing"

	_ "k8s.io/component-base/logs/json/register"
	perf "k8s.io/kubernetes/test/integration/scheduler_perf"

	"github.com/pennysched/penny/plugins"
)

func TestMain(m *testing.M) {
	if err := perf.InitTests(); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func BenchmarkPerfScheduling(b *testing.B) {
	perf.RunBenchmarkPerfScheduling(b, "performance-config.yaml", "penny", plugins.Registry(plugins.Deps{}))
}

package reclaim

import (
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Every step, origin and result is on /metrics at 0 before the agent's
// first reclaim: an agent mostly sees one reclaim, its node's, and a series
// born at its first observation shows no increase(), so that reclaim would
// never show.
func TestLabelledMetricsStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// got holds each series' value (a histogram's count), keyed
	// "name{label=value,...}" in the registry's label order.
	got := map[string]float64{}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			v := m.GetCounter().GetValue()
			if h := m.GetHistogram(); h != nil {
				v = float64(h.GetSampleCount())
			}
			got[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	var want []string
	for _, s := range []string{"taint", "checkpoint_request", "checkpoint_done", "evicted", "acknowledged"} {
		want = append(want, "penny_reclaim_step_seconds{step="+s+"}")
	}
	for _, origin := range []string{"notice", "command"} {
		for _, r := range []string{"done", "failed", "no_hook"} {
			want = append(want, "penny_reclaim_checkpoints_total{origin="+origin+",result="+r+"}")
		}
	}
	for _, r := range []string{"evicted", "gone", "blocked", "unavailable", "failed"} {
		want = append(want, "penny_reclaim_evictions_total{result="+r+"}")
	}
	for _, series := range want {
		if v, ok := got[series]; !ok || v != 0 {
			t.Errorf("%s before any reclaim: %v (exported: %v), want 0", series, v, ok)
		}
	}
	// A value the code lists but dashboards and the Help text do not name
	// is a series nobody reads.
	for series := range got {
		for _, name := range []string{"penny_reclaim_step_seconds{", "penny_reclaim_checkpoints_total{", "penny_reclaim_evictions_total{"} {
			if strings.HasPrefix(series, name) && !slices.Contains(want, series) {
				t.Errorf("%s is on /metrics before any reclaim, but is not one of the documented series", series)
			}
		}
	}
}

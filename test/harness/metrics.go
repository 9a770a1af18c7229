package harness

import (
	"slices"
	"testing"

	"k8s.io/component-base/metrics/legacyregistry"
)

// Gauges reads the gauges of the named families from the registry
// penny-scheduler serves on /metrics, keyed "name,label=value,..." in the
// registry's label order.
func Gauges(t testing.TB, names ...string) map[string]float64 {
	t.Helper()
	families, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, f := range families {
		if !slices.Contains(names, f.GetName()) {
			continue
		}
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			values[key] = m.GetGauge().GetValue()
		}
	}
	return values
}

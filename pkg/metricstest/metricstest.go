// Package metricstest reads, for tests, the counters Penny's scheduler-side
// packages register with component-base's legacy registry, without creating
// series as WithLabelValues would: a label value a package does not put on
// /metrics at 0 from registration then fails the test, since increase()
// would miss that value's first increment.
package metricstest

import (
	"fmt"
	"testing"

	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
)

// Counter returns the value of metric's series whose label is value, and
// fails the test when that series is not on /metrics.
func Counter(t testing.TB, metric, label, value string) float64 {
	t.Helper()
	got, err := testutil.GetCounterValuesFromGatherer(legacyregistry.DefaultGatherer, metric, map[string]string{}, label)
	if err != nil {
		t.Fatalf("%s: %v", metric, err)
	}
	v, ok := got[value]
	if !ok {
		t.Fatalf("%s{%s=%q} is not on /metrics before its first increment (have %v), so increase() would miss that increment: add it to the package's list of %s values", metric, label, value, got, label)
	}
	return v
}

// LabelValues checks that metric has a series for each of values, as
// registration must create them, and that code, the package's list of the
// label's values that registration creates, holds those values in that
// order (the order its Help names them): a value the code lists that
// dashboards, alerts and the Help text do not name is a series nobody
// reads.
func LabelValues(t testing.TB, metric, label string, code any, values []string) {
	t.Helper()
	got, err := testutil.GetCounterValuesFromGatherer(legacyregistry.DefaultGatherer, metric, map[string]string{}, label)
	if err != nil {
		t.Fatalf("%s: %v", metric, err)
	}
	for _, v := range values {
		if _, ok := got[v]; !ok {
			t.Errorf("%s{%s=%q} is not on /metrics before its first increment (have %v), so increase() would miss that increment", metric, label, v, got)
		}
	}
	if code, want := fmt.Sprint(code), fmt.Sprint(values); code != want {
		t.Errorf("%s: the code's %s values are %s, want %s, in the order its Help names them", metric, label, code, want)
	}
}

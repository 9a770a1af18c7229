package pricing

import (
	"math"
	"testing"
	"time"

	"k8s.io/component-base/metrics/testutil"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol*math.Max(math.Abs(b), 1e-12) }

func TestBucketRates(t *testing.T) {
	for b := BucketUnder5; b <= BucketOver20; b++ {
		r := RateFromMonthly(b.MonthlyProbability())
		if got := MonthlyFromRate(r); !near(got, b.MonthlyProbability(), 1e-9) {
			t.Errorf("%v: round trip %g", b, got)
		}
		if b > BucketUnder5 && r <= RateFromMonthly((b-1).MonthlyProbability()) {
			t.Errorf("%v: rate not above the bucket below", b)
		}
	}
	if _, err := ParseBucket("15 - 20%"); err != nil {
		t.Error(err)
	}
}

func TestRiskModelPriorUpdateForget(t *testing.T) {
	m := NewRiskModel(RiskConfig{PriorNodeHours: 100, HalfLife: 24 * time.Hour})
	pool := Pool{InstanceType: "p4d.24xlarge", Zone: "a", Capacity: Spot}
	m.SetPrior(pool, Bucket5To10)
	prior := RateFromMonthly(0.075)
	if got := m.ReclaimRate(pool); !near(got, prior, 1e-9) {
		t.Fatalf("prior rate %g, want %g", got, prior)
	}
	// 100 node-hours with 10 reclaims: the posterior mean is
	// (prior*100 + 10) / (100 + 100).
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m.ObserveExposure(pool, 100, t0)
	for i := 0; i < 10; i++ {
		m.ObserveReclaim(pool, "n", t0)
	}
	want := (prior*100 + 10) / 200
	if got := m.ReclaimRate(pool); !near(got, want, 1e-9) {
		t.Fatalf("posterior %g, want %g", got, want)
	}
	// One half-life later the evidence weighs half: a quiet hour decays it.
	m.ObserveExposure(pool, 1e-9, t0.Add(24*time.Hour))
	want = (prior*100 + 5) / (100 + 50)
	if got := m.ReclaimRate(pool); !near(got, want, 1e-6) {
		t.Fatalf("after one half-life %g, want %g", got, want)
	}
	// Months later only the prior is left.
	m.ObserveExposure(pool, 1e-9, t0.Add(90*24*time.Hour))
	if got := m.ReclaimRate(pool); !near(got, prior, 1e-6) {
		t.Fatalf("old evidence not forgotten: %g, want %g", got, prior)
	}
	if m.Reclaims(pool) != 10 {
		t.Fatalf("reclaims %d", m.Reclaims(pool))
	}
	if m.ReclaimRate(Pool{InstanceType: "p4d.24xlarge", Zone: "a", Capacity: OnDemand}) != 0 {
		t.Fatal("on-demand pools are not reclaimed")
	}
	// Unknown spot pools start from the conservative default bucket.
	if got := m.ReclaimRate(Pool{InstanceType: "x", Capacity: Spot}); !near(got, RateFromMonthly(BucketOver20.MonthlyProbability()), 1e-9) {
		t.Fatalf("default prior %g", got)
	}
}

func TestRiskModelQuietPoolGetsSafer(t *testing.T) {
	m := NewRiskModel(RiskConfig{})
	pool := Pool{InstanceType: "g5.xlarge", Zone: "b", Capacity: Spot}
	start := m.ReclaimRate(pool)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for d := 0; d < 14; d++ {
		m.ObserveExposure(pool, 24*10, t0.Add(time.Duration(d)*24*time.Hour)) // 10 nodes, no reclaims
	}
	if got := m.ReclaimRate(pool); got >= start/2 {
		t.Fatalf("two quiet weeks on 10 nodes: rate %g, prior %g; want it well below the prior", got, start)
	}
}

func TestRiskMetrics(t *testing.T) {
	RegisterMetrics()
	m := NewRiskModel(RiskConfig{})
	pool := Pool{InstanceType: "metric-test", Zone: "z", Capacity: Spot}
	before, _ := testutil.GetCounterMetricValue(metricReclaims.WithLabelValues("metric-test", "z", "spot"))
	m.ObserveReclaim(pool, "n1", time.Now())
	m.ObserveReclaim(pool, "n2", time.Now())
	got, err := testutil.GetCounterMetricValue(metricReclaims.WithLabelValues("metric-test", "z", "spot"))
	if err != nil || got != before+2 {
		t.Fatalf("penny_pool_reclaims_total %v %v", got, err)
	}
	rate, err := testutil.GetGaugeMetricValue(metricReclaimRate.WithLabelValues("metric-test", "z", "spot"))
	if err != nil || !near(rate, m.ReclaimRate(pool), 1e-12) {
		t.Fatalf("penny_pool_reclaim_rate_per_hour %v, model %v (%v)", rate, m.ReclaimRate(pool), err)
	}
}

func TestGangReclaimProbability(t *testing.T) {
	one := ReclaimProbability(0.01, 10*time.Hour)
	if !near(one, 1-math.Exp(-0.1), 1e-12) {
		t.Fatalf("one node %g", one)
	}
	// Any of 8 independent nodes: 1 - (1-p)^8.
	rates := []float64{0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01}
	if got := GangReclaimProbability(rates, 10*time.Hour); !near(got, 1-math.Pow(1-one, 8), 1e-12) {
		t.Fatalf("gang %g", got)
	}
	if GangReclaimProbability([]float64{0, 0}, time.Hour) != 0 {
		t.Fatal("on-demand gang is never reclaimed")
	}
}

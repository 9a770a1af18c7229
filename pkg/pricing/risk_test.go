package pricing

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
	clocktesting "k8s.io/utils/clock/testing"
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
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(t0)
	m := NewRiskModel(RiskConfig{PriorNodeHours: 100, HalfLife: 24 * time.Hour, Clock: clk})
	pool := Pool{InstanceType: "p4d.24xlarge", Zone: "a", Capacity: Spot}
	m.SetPrior(pool, Bucket5To10)
	prior := RateFromMonthly(0.075)
	if got := m.ReclaimRate(pool); !near(got, prior, 1e-9) {
		t.Fatalf("prior rate %g, want %g", got, prior)
	}
	// 100 node-hours with 10 reclaims: the posterior mean is
	// (prior*100 + 10) / (100 + 100).
	m.ObserveExposure(pool, 100, t0)
	for i := 0; i < 10; i++ {
		m.ObserveReclaim(pool, fmt.Sprint("n", i), t0)
	}
	want := (prior*100 + 10) / 200
	if got := m.ReclaimRate(pool); !near(got, want, 1e-9) {
		t.Fatalf("posterior %g, want %g", got, want)
	}
	// One half-life later the evidence weighs half, though nothing new was
	// observed: the pool may have no nodes left to observe.
	clk.SetTime(t0.Add(24 * time.Hour))
	want = (prior*100 + 5) / (100 + 50)
	if got := m.ReclaimRate(pool); !near(got, want, 1e-6) {
		t.Fatalf("after one half-life %g, want %g", got, want)
	}
	// Reading does not change the evidence: a reclaim reported late, with
	// the time it happened, weighs as old as it is.
	m.ObserveReclaim(pool, "late", t0)
	want = (prior*100 + 5.5) / (100 + 50)
	if got := m.ReclaimRate(pool); !near(got, want, 1e-6) {
		t.Fatalf("late reclaim %g, want %g", got, want)
	}
	// So it does once newer evidence has been added: a day old, it adds
	// half a reclaim, as the one above.
	m.ObserveExposure(pool, 50, t0.Add(24*time.Hour))
	m.ObserveReclaim(pool, "later", t0)
	want = (prior*100 + 6) / (100 + 100)
	if got := m.ReclaimRate(pool); !near(got, want, 1e-6) {
		t.Fatalf("late reclaim after newer evidence %g, want %g", got, want)
	}
	// Months later only the prior is left.
	clk.SetTime(t0.Add(90 * 24 * time.Hour))
	if got := m.ReclaimRate(pool); !near(got, prior, 1e-6) {
		t.Fatalf("old evidence not forgotten: %g, want %g", got, prior)
	}
	if m.Reclaims(pool) != 12 {
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

// A reclaim dated in the future (an agent whose clock runs ahead) is
// evidence of now: it decays from now on, and so does what is reported
// after it. Dated a year ahead, it weighed in full for that year. Exposure
// of NaN or +Inf node-hours is no evidence at all.
func TestRiskModelWeighsOnlyEvidenceItCan(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(t0)
	m := NewRiskModel(RiskConfig{PriorNodeHours: 100, HalfLife: 24 * time.Hour, Clock: clk})
	pool := Pool{InstanceType: "p4d.24xlarge", Zone: "a", Capacity: Spot}
	m.SetPrior(pool, Bucket5To10)
	prior := RateFromMonthly(0.075)
	for i := 0; i < 10; i++ {
		m.ObserveReclaim(pool, fmt.Sprint("n", i), t0.Add(365*24*time.Hour))
	}
	if got, want := m.ReclaimRate(pool), (prior*100+10)/100; !near(got, want, 1e-9) {
		t.Fatalf("rate %g, want %g", got, want)
	}
	// An hour of exposure reported now is not added undiscounted to
	// evidence dated later: one half-life on, both weigh half.
	m.ObserveExposure(pool, 100, t0)
	clk.SetTime(t0.Add(24 * time.Hour))
	if got, want := m.ReclaimRate(pool), (prior*100+5)/(100+50); !near(got, want, 1e-6) {
		t.Fatalf("one half-life on: %g, want %g", got, want)
	}
	clk.SetTime(t0.Add(90 * 24 * time.Hour))
	if got := m.ReclaimRate(pool); !near(got, prior, 1e-6) {
		t.Fatalf("90 days on the evidence is still in force: %g, want the prior %g", got, prior)
	}
	if r, h := m.Evidence(pool, clk.Now()); r > 1e-9 || h > 1e-9 {
		t.Fatalf("evidence %g reclaims over %g node-hours, want next to none", r, h)
	}
	// Exposure that is not a number of hours is not evidence.
	for _, h := range []float64{math.NaN(), math.Inf(1)} {
		m.ObserveExposure(pool, h, clk.Now())
		if got := m.ReclaimRate(pool); !near(got, prior, 1e-6) {
			t.Fatalf("after %g node-hours: rate %g, want the prior %g", h, got, prior)
		}
	}
}

// RateFrom prices a pool from the bucket it is given, with the evidence the
// model holds, without remembering anything (a template node in an
// autoscaler's request could name any zone); EnsurePrior, for pools whose
// nodes exist, keeps the bucket and publishes the rate.
func TestRiskModelRateFrom(t *testing.T) {
	RegisterMetrics()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := NewRiskModel(RiskConfig{Clock: clocktesting.NewFakePassiveClock(t0)})
	template := Pool{InstanceType: "rate-from-test", Zone: "made-up-zone", Capacity: Spot}
	if got, want := m.RateFrom(template, Bucket5To10), RateFromMonthly(Bucket5To10.MonthlyProbability()); !near(got, want, 1e-12) {
		t.Fatalf("template pool %g, want its bucket's rate %g", got, want)
	}
	if len(m.priors) != 0 || len(m.pools) != 0 {
		t.Fatalf("a pool with no nodes was remembered: priors %v, evidence %v", m.priors, m.pools)
	}
	families, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetValue() == "made-up-zone" {
					t.Fatalf("a pool with no nodes was published: %s %v", f.GetName(), mt.GetLabel())
				}
			}
		}
	}
	// Evidence counts in RateFrom too, under the bucket given.
	real := Pool{InstanceType: "rate-from-test", Zone: "z", Capacity: Spot}
	m.ObserveExposure(real, HoursPerMonth, t0)
	prior := RateFromMonthly(Bucket5To10.MonthlyProbability())
	if got, want := m.RateFrom(real, Bucket5To10), prior*HoursPerMonth/(2*HoursPerMonth); !near(got, want, 1e-9) {
		t.Fatalf("observed pool %g, want %g", got, want)
	}
	m.EnsurePrior(real, Bucket5To10)
	if rate, err := testutil.GetGaugeMetricValue(metricReclaimRate.WithLabelValues("rate-from-test", "z", "spot")); err != nil || !near(rate, m.ReclaimRate(real), 1e-12) {
		t.Fatalf("published rate %g (%v), want %g", rate, err, m.ReclaimRate(real))
	}
	// The catalog's bucket moves the prior when the catalog changes, the
	// evidence kept.
	m.EnsurePrior(real, BucketUnder5)
	if got, want := m.ReclaimRate(real), RateFromMonthly(BucketUnder5.MonthlyProbability())/2; !near(got, want, 1e-9) {
		t.Fatalf("after the catalog moved the pool to <5%%: rate %g, want %g", got, want)
	}
	if rate, _ := testutil.GetGaugeMetricValue(metricReclaimRate.WithLabelValues("rate-from-test", "z", "spot")); !near(rate, m.ReclaimRate(real), 1e-12) {
		t.Fatalf("published rate %g after the catalog changed, want %g", rate, m.ReclaimRate(real))
	}
	// A template read before any node of the pool after a reload is priced
	// from the catalog's new bucket, as EnsurePrior would move the prior
	// to: a pool scaled to zero has no node to move it, and the autoscaler
	// judged its templates by the bucket of a catalog long replaced.
	if got, want := m.RateFrom(real, BucketOver20), RateFromMonthly(BucketOver20.MonthlyProbability())/2; !near(got, want, 1e-9) {
		t.Fatalf("template of a pool the catalog moved to >20%%: rate %g, want %g (the old prior's %g)", got, want, m.ReclaimRate(real))
	}
	if m.priors[real] != BucketUnder5 {
		t.Fatalf("RateFrom moved the pool's prior to %v", m.priors[real])
	}
	// A prior that was set is what RateFrom uses, and the catalog does not
	// replace it.
	m.SetPrior(real, BucketOver20)
	m.EnsurePrior(real, Bucket5To10)
	if got := m.RateFrom(real, Bucket5To10); m.priors[real] != BucketOver20 || !near(got, m.ReclaimRate(real), 1e-12) {
		t.Fatalf("set prior: %v, rate %g, want %v and %g", m.priors[real], got, BucketOver20, m.ReclaimRate(real))
	}
	if m.RateFrom(Pool{InstanceType: "x", Capacity: OnDemand}, Bucket5To10) != 0 {
		t.Fatal("on-demand pools are not reclaimed")
	}
}

func TestRiskModelQuietPoolGetsSafer(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := NewRiskModel(RiskConfig{Clock: clocktesting.NewFakePassiveClock(t0.Add(14 * 24 * time.Hour))})
	pool := Pool{InstanceType: "g5.xlarge", Zone: "b", Capacity: Spot}
	start := m.ReclaimRate(pool)
	for d := 0; d < 14; d++ {
		m.ObserveExposure(pool, 24*10, t0.Add(time.Duration(d)*24*time.Hour)) // 10 nodes, no reclaims
	}
	if got := m.ReclaimRate(pool); got >= start/2 {
		t.Fatalf("two quiet weeks on 10 nodes: rate %g, prior %g; want it well below the prior", got, start)
	}
}

func TestRiskMetrics(t *testing.T) {
	RegisterMetrics()
	// A fixed "now": the rate forgets evidence as time passes, so on the
	// wall clock the published rate and a later read of it differ.
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := NewRiskModel(RiskConfig{Clock: clocktesting.NewFakePassiveClock(now)})
	pool := Pool{InstanceType: "metric-test", Zone: "z", Capacity: Spot}
	before, _ := testutil.GetCounterMetricValue(metricReclaims.WithLabelValues("metric-test", "z", "spot"))
	m.ObserveReclaim(pool, "n1", now)
	m.ObserveReclaim(pool, "n2", now)
	got, err := testutil.GetCounterMetricValue(metricReclaims.WithLabelValues("metric-test", "z", "spot"))
	if err != nil || got != before+2 {
		t.Fatalf("penny_pool_reclaims_total %v %v", got, err)
	}
	rate, err := testutil.GetGaugeMetricValue(metricReclaimRate.WithLabelValues("metric-test", "z", "spot"))
	if err != nil || !near(rate, m.ReclaimRate(pool), 1e-12) {
		t.Fatalf("penny_pool_reclaim_rate_per_hour %v, model %v (%v)", rate, m.ReclaimRate(pool), err)
	}
}

// The published rate follows the model as evidence ages, also for a pool
// that gets no new evidence (no nodes left): it used to keep showing the
// rate of its last reclaims.
func TestRiskMetricsFollowAgeingEvidence(t *testing.T) {
	RegisterMetrics()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(now)
	m := NewRiskModel(RiskConfig{Clock: clk})
	pool := Pool{InstanceType: "refresh-test", Zone: "z", Capacity: Spot}
	m.SetPrior(pool, Bucket5To10)
	for i := range 5 {
		m.ObserveReclaim(pool, fmt.Sprint("n", i), now)
	}
	published := func() float64 {
		rate, err := testutil.GetGaugeMetricValue(metricReclaimRate.WithLabelValues("refresh-test", "z", "spot"))
		if err != nil {
			t.Fatal(err)
		}
		return rate
	}
	hot := published()
	clk.Step(60 * 24 * time.Hour)
	if cooled := m.ReclaimRate(pool); cooled > hot/5 {
		t.Fatalf("sixty quiet days: rate %g, was %g; want it well down", cooled, hot)
	}
	// FeedExposure refreshes at each count, though the pool has no nodes.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go FeedExposure(ctx, m, func() ([]*corev1.Node, error) { return nil, nil }, clk, time.Minute)
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	clk.Step(time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for !near(published(), m.ReclaimRate(pool), 1e-12) {
		if time.Now().After(deadline) {
			t.Fatalf("published %g after a count, model %g", published(), m.ReclaimRate(pool))
		}
		time.Sleep(time.Millisecond)
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

// A replay must not depend on how often the scheduler asked: two models fed
// the same evidence give bit-identical rates whether one was read every
// minute for a week and the other once.
func TestRiskModelReadsLeaveItAsItWas(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pool := Pool{InstanceType: "g5.48xlarge", Zone: "a", Capacity: Spot}
	clkA, clkB := clocktesting.NewFakePassiveClock(t0), clocktesting.NewFakePassiveClock(t0)
	a := NewRiskModel(RiskConfig{Clock: clkA})
	b := NewRiskModel(RiskConfig{Clock: clkB})
	for _, m := range []*RiskModel{a, b} {
		m.SetPrior(pool, Bucket10To15)
		m.ObserveExposure(pool, 40, t0)
		m.ObserveReclaim(pool, "n1", t0)
	}
	for at := t0; at.Before(t0.Add(7 * 24 * time.Hour)); at = at.Add(time.Minute) {
		clkA.SetTime(at)
		a.ReclaimRate(pool)
		a.RateFrom(pool, Bucket10To15)
		a.Evidence(pool, at)
	}
	end := t0.Add(7 * 24 * time.Hour)
	clkA.SetTime(end)
	clkB.SetTime(end)
	if ra, rb := a.ReclaimRate(pool), b.ReclaimRate(pool); ra != rb {
		t.Fatalf("read every minute: rate %v; read once: %v", ra, rb)
	}
	ra, na := a.Evidence(pool, end)
	rb, nb := b.Evidence(pool, end)
	if ra != rb || na != nb {
		t.Fatalf("evidence read every minute (%v, %v) against once (%v, %v)", ra, na, rb, nb)
	}
}

// FallsTo says when a pool's estimate, with no new evidence, comes down to
// a rate: the estimate there is that rate, a moment before it is above.
// Decay only takes an estimate towards its prior, so a rate below the prior
// is never reached, and an estimate under its prior (a pool that ran long
// without a reclaim) only rises.
func TestRiskModelFallsTo(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(t0)
	m := NewRiskModel(RiskConfig{HalfLife: 24 * time.Hour, Clock: clk})
	pool := Pool{InstanceType: "p4d.24xlarge", Zone: "a", Capacity: Spot}
	m.SetPrior(pool, Bucket5To10)
	m.ObserveExposure(pool, 200, t0)
	m.ObserveReclaim(pool, "n", t0)
	m.ObserveReclaim(pool, "n", t0)
	limit := RateFromMonthly(0.10)
	d, ok := m.FallsTo(pool, limit)
	if !ok || d <= 0 {
		t.Fatalf("FallsTo(10%%) = %v, %v; want a time ahead", d, ok)
	}
	clk.SetTime(t0.Add(d - time.Millisecond))
	if got := m.ReclaimRate(pool); got <= limit {
		t.Errorf("%v after the reclaims, %v before FallsTo's %v, the rate %g is already at most %g", d-time.Millisecond, time.Millisecond, d, got, limit)
	}
	clk.SetTime(t0.Add(d))
	if got := m.ReclaimRate(pool); !near(got, limit, 1e-9) {
		t.Errorf("at FallsTo's %v the rate is %g, want %g", d, got, limit)
	}
	if d, ok := m.FallsTo(pool, limit); !ok || d > time.Microsecond {
		t.Errorf("at the crossing FallsTo = %v, %v; want about 0, true", d, ok)
	}
	if d, ok := m.FallsTo(pool, RateFromMonthly(0.05)); ok {
		t.Errorf("FallsTo(5%%) under the 5-10%% prior = %v, true; want never", d)
	}

	quiet := Pool{InstanceType: "p4d.24xlarge", Zone: "b", Capacity: Spot}
	m.SetPrior(quiet, Bucket5To10)
	m.ObserveExposure(quiet, 10000, clk.Now())
	now := m.ReclaimRate(quiet)
	if d, ok := m.FallsTo(quiet, now*1.01); !ok || d != 0 {
		t.Errorf("FallsTo above a quiet pool's rate = %v, %v; want 0, true", d, ok)
	}
	if d, ok := m.FallsTo(quiet, now*0.99); ok {
		t.Errorf("FallsTo under a quiet pool's rate, which rises to its prior = %v, true; want never", d)
	}
	if d, ok := m.FallsTo(Pool{InstanceType: "p4d.24xlarge", Zone: "a", Capacity: OnDemand}, 0); !ok || d != 0 {
		t.Errorf("FallsTo on-demand = %v, %v; want 0, true", d, ok)
	}
}

// OnChange hears every change of a pool's evidence or prior, after the
// model's lock is let go (a hook reads the rate), and nothing for a read or
// a prior set again to what it was.
func TestRiskModelOnChange(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(t0)
	m := NewRiskModel(RiskConfig{Clock: clk})
	pool := Pool{InstanceType: "p4d.24xlarge", Zone: "a", Capacity: Spot}
	var heard []string
	m.OnChange(func(p Pool) { heard = append(heard, fmt.Sprintf("%s %.3g", p, m.ReclaimRate(p))) })
	expect := func(what string, want ...string) {
		t.Helper()
		if fmt.Sprint(heard) != fmt.Sprint(want) {
			t.Errorf("%s: heard %v, want %v", what, heard, want)
		}
		heard = nil
	}
	m.EnsurePrior(pool, Bucket5To10)
	expect("a first prior", "p4d.24xlarge/a/spot 0.000107")
	m.EnsurePrior(pool, Bucket5To10)
	m.ReclaimRate(pool)
	m.Refresh()
	expect("the same prior, a read, a refresh")
	m.ObserveReclaim(pool, "n", t0)
	expect("a reclaim", "p4d.24xlarge/a/spot 0.00148")
	m.ObserveExposure(pool, 730, t0)
	expect("exposure", "p4d.24xlarge/a/spot 0.000738")
	m.SetPrior(pool, BucketUnder5)
	expect("a pinned prior", "p4d.24xlarge/a/spot 0.000702")
	m.Merge([]SavedPool{{Pool: pool, Reclaims: 3, NodeHours: 730, At: t0}})
	expect("a merged copy", "p4d.24xlarge/a/spot 0.00207")
}

// A reclaim or exposure older than the evidence, told late, counts as old:
// added in full, a reclaim from a half-life ago weighed as one from now.
func TestRiskModelWeighsLateEvidenceByItsAge(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(t0)
	m := NewRiskModel(RiskConfig{PriorNodeHours: 100, HalfLife: 10 * time.Hour, Clock: clk})
	pool := Pool{InstanceType: "p4d.24xlarge", Zone: "a", Capacity: Spot}
	m.ObserveExposure(pool, 1, t0)
	m.ObserveReclaim(pool, "n1", t0.Add(-10*time.Hour))
	m.ObserveExposure(pool, 4, t0.Add(-20*time.Hour))
	if r, h := m.Evidence(pool, t0); !near(r, 0.5, 1e-9) || !near(h, 2, 1e-9) {
		t.Fatalf("evidence %g reclaims over %g node-hours, want 0.5 over 2", r, h)
	}
}

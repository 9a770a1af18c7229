package spot

import (
	"testing"
	"time"

	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/test/harness"
)

// penny-scheduler feeds the risk model the node-hours each Spot pool runs,
// from its own node informer: without them the reclaims its coordinator
// feeds would only ever raise a pool's estimated rate.
func TestSpotExposureFedFromTheCluster(t *testing.T) {
	catalog := shippedCatalog(t)
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	risk := pricing.NewRiskModel(pricing.RiskConfig{})
	began := time.Now()
	harness.StartScheduler(t, c, plugins.Deps{Prices: catalog, Risk: risk, ExposureEvery: 100 * time.Millisecond})

	spot := pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1a", Capacity: pricing.Spot}
	onDemand := pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1a", Capacity: pricing.OnDemand}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, h := risk.Evidence(spot, time.Now()); h > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no exposure of the Spot pool reached the risk model within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	_, h := risk.Evidence(spot, time.Now())
	// One Spot node, counted at most since the scheduler started.
	if limit := time.Since(began).Hours(); h > limit {
		t.Fatalf("Spot pool exposure %g node-hours, more than one node for %g hours", h, limit)
	}
	if h < (500 * time.Millisecond).Hours() {
		t.Fatalf("Spot pool exposure %g node-hours after a second of counting, want about a node-second per second", h)
	}
	if _, h := risk.Evidence(onDemand, time.Now()); h != 0 {
		t.Fatalf("on-demand pool exposure %g, want none: the cloud does not reclaim it", h)
	}
}

package spot

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/pricing"
)

// A restarted scheduler does not start every Spot pool again from its
// bucket: the risk model's evidence is saved next to the interrupted runs,
// under the deployed RBAC, by replicas that do not count it twice, and
// tenants cannot write it.
func TestRiskEvidenceOutlivesARestart(t *testing.T) {
	c, opts := deployedScheduler(t)
	ctx := context.Background()
	pool := pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1a", Capacity: pricing.Spot}
	now := time.Now()

	// Two replicas see the same ten reclaims in 500 node-hours, and save at
	// once.
	r1, r2 := pricing.NewRiskModel(pricing.RiskConfig{}), pricing.NewRiskModel(pricing.RiskConfig{})
	for _, r := range []*pricing.RiskModel{r1, r2} {
		r.ObserveExposure(pool, 500, now)
		for i := range 10 {
			r.ObserveReclaim(pool, fmt.Sprint("node-", i), now)
		}
	}
	var wg sync.WaitGroup
	for _, r := range []*pricing.RiskModel{r1, r2} {
		wg.Go(func() {
			if err := r.Save(ctx, opts); err != nil {
				t.Errorf("penny-scheduler's ServiceAccount cannot save the risk evidence: %v", err)
			}
		})
	}
	wg.Wait()

	after := pricing.NewRiskModel(pricing.RiskConfig{})
	if err := after.Load(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if r, h := after.Evidence(pool, now); r != 10 || h != 500 {
		t.Fatalf("after the restart the pool's evidence is %g reclaims in %g node-hours, want 10 in 500 (one replica's, not the sum)", r, h)
	}

	cms := as(t, c, "default", "default").CoreV1().ConfigMaps(opts.Namespace)
	cm, err := c.Client.CoreV1().ConfigMaps(opts.Namespace).Get(ctx, opts.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[pricing.RiskKey] = ""
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("a tenant's ServiceAccount cleared the saved risk evidence: err=%v", err)
	}
}

package pricing

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// DefaultExposureEvery is how often FeedExposure counts the Spot nodes.
const DefaultExposureEvery = time.Minute

// ObserveNodes tells feed that each Spot pool ran its nodes among nodes for
// hours up to at. Other capacity is never reclaimed by the cloud.
func ObserveNodes(feed ReclaimFeed, nodes []*corev1.Node, hours float64, at time.Time) {
	count := map[Pool]int{}
	for _, n := range nodes {
		if c := NodeCapacity(n); c.IsSpot() {
			count[PoolOf(n, c)]++
		}
	}
	for pool, k := range count {
		feed.ObserveExposure(pool, float64(k)*hours, at)
	}
}

// FeedExposure counts, every interval until ctx ends, the Spot nodes that
// list returns and tells feed the node-hours each pool ran since the last
// count (each node counted for the whole interval, which a one-minute
// interval makes exact enough for rates of reclaims per hundreds of
// node-hours). Without exposure a reclaim count says nothing about a rate:
// a pool of a hundred nodes that lost one in a month would look as risky as
// one node lost in its first hour. A RiskModel also republishes every
// pool's rate at each count (Refresh).
func FeedExposure(ctx context.Context, feed ReclaimFeed, list func() ([]*corev1.Node, error), clk clock.WithTicker, every time.Duration) {
	if every <= 0 {
		every = DefaultExposureEvery
	}
	log := klog.FromContext(ctx).WithName("exposure")
	tick := clk.NewTicker(every)
	defer tick.Stop()
	last := clk.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C():
			nodes, err := list()
			if err != nil {
				log.Error(err, "Listing nodes; this interval's Spot exposure is not counted")
				last = now
				continue
			}
			ObserveNodes(feed, nodes, now.Sub(last).Hours(), now)
			last = now
			if m, ok := feed.(*RiskModel); ok {
				m.Refresh()
			}
		}
	}
}

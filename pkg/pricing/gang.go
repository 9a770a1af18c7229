package pricing

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// DefaultGangHorizon is the runtime GangRisk assumes for a gang. Placements
// are ranked by their risk, and the chance that any node is reclaimed grows
// with the sum of the nodes' rates whatever the horizon, so the horizon only
// sets the scale of the number.
const DefaultGangHorizon = 24 * time.Hour

// GangRisk scores a gang placement for the gang plugin: the chance that at
// least one of the nodes is reclaimed within Horizon (GangReclaimProbability
// over the nodes' pools).
type GangRisk struct {
	Risk    RiskSource
	Horizon time.Duration
}

// GangRisk implements the gang plugin's ReclaimRisk.
func (g GangRisk) GangRisk(nodes []*corev1.Node) float64 {
	h := g.Horizon
	if h <= 0 {
		h = DefaultGangHorizon
	}
	rates := make([]float64, 0, len(nodes))
	for _, n := range nodes {
		if c := NodeCapacity(n); c.IsSpot() && g.Risk != nil {
			rates = append(rates, g.Risk.ReclaimRate(NodePool(n)))
		}
	}
	return GangReclaimProbability(rates, h)
}

// NodePool is the risk pool a node belongs to: its instance type and zone
// labels and its capacity type.
func NodePool(node *corev1.Node) Pool {
	return PoolOf(node, NodeCapacity(node))
}

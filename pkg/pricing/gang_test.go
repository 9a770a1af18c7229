package pricing

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/capacity"
)

func TestGangRiskRanksPlacements(t *testing.T) {
	m := NewRiskModel(RiskConfig{})
	mk := func(name, ct, zone string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			capacity.LabelKarpenter: ct, corev1.LabelTopologyZone: zone, corev1.LabelInstanceTypeStable: "p4d.24xlarge"}}}
	}
	m.SetPrior(Pool{InstanceType: "p4d.24xlarge", Zone: "a", Capacity: Spot}, BucketUnder5)
	m.SetPrior(Pool{InstanceType: "p4d.24xlarge", Zone: "b", Capacity: Spot}, BucketOver20)
	g := GangRisk{Risk: m}
	od := g.GangRisk([]*corev1.Node{mk("1", "on-demand", "a"), mk("2", "on-demand", "a")})
	safe := g.GangRisk([]*corev1.Node{mk("1", "spot", "a"), mk("2", "spot", "a")})
	risky := g.GangRisk([]*corev1.Node{mk("1", "spot", "b"), mk("2", "spot", "b")})
	if od != 0 || !(safe > 0 && safe < risky) {
		t.Fatalf("on-demand %g, safe spot %g, risky spot %g", od, safe, risky)
	}
	rate := m.ReclaimRate(Pool{InstanceType: "p4d.24xlarge", Zone: "b", Capacity: Spot})
	if want := GangReclaimProbability([]float64{rate, rate}, DefaultGangHorizon); risky != want {
		t.Fatalf("risky %g, want %g", risky, want)
	}
	if g2 := (GangRisk{Risk: m, Horizon: time.Hour}).GangRisk([]*corev1.Node{mk("1", "spot", "b")}); g2 >= risky {
		t.Fatalf("one node for an hour %g should be below two for a day %g", g2, risky)
	}
}

// A node that carries only the beta instance-type label is priced by it, so
// its risk pool is of that type too, not one with an empty type that every
// such node shares whatever its type.
func TestPoolsReadTheBetaInstanceTypeLabelAsPricesDo(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "old", Labels: map[string]string{
		capacity.LabelKarpenter: "spot", corev1.LabelTopologyRegion: "us-east-1", corev1.LabelTopologyZone: "us-east-1a",
		corev1.LabelInstanceType: "p4d.24xlarge"}}}
	if _, ok := testCatalog(t).NodePrice(node); !ok {
		t.Fatal("the node is not priced by its beta instance-type label")
	}
	want := Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1a", Capacity: Spot}
	if got := NodePool(node); got != want {
		t.Errorf("NodePool %v, want %v", got, want)
	}
	if got := PoolOf(node, NodeCapacity(node)); got != want {
		t.Errorf("PoolOf %v, want %v", got, want)
	}
	// The stable label wins where a node has both.
	node.Labels[corev1.LabelInstanceTypeStable] = "p5.48xlarge"
	if got := NodePool(node).InstanceType; got != "p5.48xlarge" {
		t.Errorf("with both labels the pool's instance type is %q, want the stable label's p5.48xlarge", got)
	}
}

package spot

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/api/expander"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
	"github.com/pennysched/penny/test/harness"
)

// The expander Cluster Autoscaler asks ranks node groups with the SpotRisk
// the running scheduler built: its catalog, its rules. The cluster's own
// nodes stand in for the node groups' templates.
func TestExpanderRanksWithTheSchedulersSpotRisk(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	srv := spotrisk.NewExpanderServer()
	harness.StartScheduler(t, c, plugins.Deps{Prices: shippedCatalog(t), Expander: srv})
	ctx := context.Background()

	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	req := func(p *corev1.Pod) *expander.BestOptionsRequest {
		pb, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		r := &expander.BestOptionsRequest{NodeBytesMap: map[string][]byte{}}
		for i := range nodes.Items {
			n := &nodes.Items[i]
			pool := n.Labels[localcluster.LabelPool]
			b, err := n.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			r.NodeBytesMap[pool] = b
			r.Options = append(r.Options, &expander.Option{NodeGroupId: pool, NodeCount: 1, PodBytes: [][]byte{pb}})
		}
		return r
	}
	bestFor := func(p *corev1.Pod) string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			resp, err := srv.BestOptions(ctx, req(p))
			if status.Code(err) == codes.Unavailable && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetOptions()) != 1 {
				t.Fatalf("%s: %d options, want one", p.Name, len(resp.GetOptions()))
			}
			return resp.GetOptions()[0].GetNodeGroupId()
		}
	}
	if got := bestFor(gpuPod("serve", "1", map[string]string{"penny.dev/workload": "inference"})); got != "ondemand" {
		t.Errorf("inference: grow %s, want ondemand", got)
	}
	if got := bestFor(gpuPod("train", "4", map[string]string{"penny.dev/workload": "training", "penny.dev/checkpoint-interval": "30m"})); got != "spot" {
		t.Errorf("checkpointing training: grow %s, want spot", got)
	}
}

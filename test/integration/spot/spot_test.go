// Package spot checks the SpotRisk plugin against a real API server: a
// local control plane with KWOK GPU nodes on Spot and on-demand capacity and
// an in-process penny-scheduler with the deployed profile.
package spot

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
	"github.com/pennysched/penny/test/harness"
)

// One 8-GPU node of each kind, priced by the shipped catalog (us-east-1):
// Spot costs a fifth of on-demand, so a scheduler that only looked at price
// would put everything on Spot.
const fleet = `
region: us-east-1
pools:
- {name: ondemand, count: 1, cloud: aws, instanceType: p4d.24xlarge, gpuModel: A100-40GB, gpusPerNode: 8, capacityType: on-demand, zone: us-east-1a, cpu: "96", memory: 1152Gi}
- {name: spot, count: 1, cloud: aws, instanceType: p4d.24xlarge, gpuModel: A100-40GB, gpusPerNode: 8, capacityType: spot, zone: us-east-1a, cpu: "96", memory: 1152Gi}
`

// shippedCatalog is deploy/pricing/catalog.yaml, the catalog Penny ships.
func shippedCatalog(t *testing.T) *pricing.Catalog {
	t.Helper()
	catalog, err := pricing.LoadFile(filepath.Join(harness.RepoRoot(), "deploy", "pricing", "catalog.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return catalog
}

func gpuPod(name string, gpus string, ann map[string]string) *corev1.Pod {
	p := harness.Pod(name, corev1.ResourceList{gpu.ResourceGPU: resource.MustParse(gpus), corev1.ResourceCPU: resource.MustParse("4")})
	p.Annotations = ann
	return p
}

func TestSpotRiskOnRealAPIServer(t *testing.T) {
	catalog := shippedCatalog(t)
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	harness.StartScheduler(t, c, plugins.Deps{Prices: catalog})
	ctx := context.Background()

	poolOf := func(p *corev1.Pod) string {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n.Labels[localcluster.LabelPool]
	}

	t.Run("inference never lands on Spot", func(t *testing.T) {
		harness.CreatePod(t, c, gpuPod("serve", "1", map[string]string{spotrisk.AnnotationWorkload: "inference"}))
		p := harness.WaitForPod(t, c, "default", "serve", 30*time.Second, "bound", harness.Bound)
		if pool := poolOf(p); pool != "ondemand" {
			t.Fatalf("inference pod on pool %s, want ondemand", pool)
		}
	})

	t.Run("checkpointing training lands on Spot", func(t *testing.T) {
		harness.CreatePod(t, c, gpuPod("train", "4", map[string]string{
			spotrisk.AnnotationWorkload: "training", spotrisk.AnnotationCheckpointInterval: "30m"}))
		p := harness.WaitForPod(t, c, "default", "train", 30*time.Second, "bound", harness.Bound)
		if pool := poolOf(p); pool != "spot" {
			t.Fatalf("checkpointing training on pool %s, want spot", pool)
		}
	})

	t.Run("with Spot full it falls back after fallbackAfter", func(t *testing.T) {
		// Fill the rest of the Spot node.
		harness.CreatePod(t, c, gpuPod("filler", "4", map[string]string{spotrisk.AnnotationSpot: "only"}))
		p := harness.WaitForPod(t, c, "default", "filler", 30*time.Second, "bound", harness.Bound)
		if pool := poolOf(p); pool != "spot" {
			t.Fatalf("filler on pool %s", pool)
		}
		const wait = 8 * time.Second
		created := harness.CreatePod(t, c, gpuPod("patient", "2", map[string]string{
			spotrisk.AnnotationWorkload: "training", spotrisk.AnnotationCheckpointInterval: "30m",
			spotrisk.AnnotationFallbackAfter: wait.String()}))
		msg := harness.WaitForEvent(t, c, "default", "patient", "FailedScheduling", 20*time.Second)
		for _, want := range []string{"0/2 nodes are available", "1 node(s) are on-demand and the pod waits for Spot capacity", "Insufficient nvidia.com/gpu"} {
			if !strings.Contains(msg, want) {
				t.Errorf("FailedScheduling %q lacks %q", msg, want)
			}
		}
		p = harness.WaitForPod(t, c, "default", "patient", wait+20*time.Second, "bound", harness.Bound)
		if pool := poolOf(p); pool != "ondemand" {
			t.Fatalf("fallback landed on pool %s, want ondemand", pool)
		}
		// Binding is recorded on the pod's PodScheduled condition.
		var boundAt time.Time
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionTrue {
				boundAt = cond.LastTransitionTime.Time
			}
		}
		// Timestamps are whole seconds: allow one second of rounding.
		if boundAt.Before(created.CreationTimestamp.Add(wait - time.Second)) {
			t.Errorf("bound at %v, before the %v wait from creation at %v ended", boundAt, wait, created.CreationTimestamp.Time)
		}
		ev := harness.WaitForEvent(t, c, "default", "patient", spotrisk.EventFallback, 10*time.Second)
		if !strings.Contains(ev, "No Spot capacity within 8s (checkpointing training): placed on on-demand node ondemand-") {
			t.Errorf("fallback event %q", ev)
		}
	})

	t.Run("malformed annotation is rejected with an event naming it", func(t *testing.T) {
		harness.CreatePod(t, c, gpuPod("typo", "1", map[string]string{spotrisk.AnnotationSpot: "sometimes"}))
		ev := harness.WaitForEvent(t, c, "default", "typo", spotrisk.EventInvalidAnnotation, 20*time.Second)
		if !strings.Contains(ev, `annotation penny.dev/spot="sometimes" is not valid: use one of never, prefer, allow, only`) {
			t.Errorf("event %q does not name the annotation and the fix", ev)
		}
		p, err := c.Client.CoreV1().Pods("default").Get(ctx, "typo", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.NodeName != "" {
			t.Fatalf("pod with a malformed annotation was bound to %s", p.Spec.NodeName)
		}
		// Fixing the annotation requeues the pod at once. A patch, not an
		// update: the scheduler writes the pod's status meanwhile.
		fix := fmt.Sprintf(`{"metadata":{"annotations":{%q:"never"}}}`, spotrisk.AnnotationSpot)
		if _, err := c.Client.CoreV1().Pods("default").Patch(ctx, "typo", types.MergePatchType, []byte(fix), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		p = harness.WaitForPod(t, c, "default", "typo", 20*time.Second, "bound after the fix", harness.Bound)
		if pool := poolOf(p); pool != "ondemand" {
			t.Fatalf("fixed pod (never) on pool %s", pool)
		}
	})
}

package deploy

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/pennysched/penny/agent/notice"
	"github.com/pennysched/penny/agent/reclaim"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	pennyreclaim "github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/test/harness"
)

const agentSA = "system:serviceaccount:penny-system:penny-agent"

// penny-agent's reclaim flow, run as the agent's ServiceAccount with a token
// bound to its pod and deploy/agent's RBAC, webhook and policy as its only
// permissions, does all its API calls: it taints its node, lists and
// watches its pods, evicts them and records its events (core events, as
// client-go's recorder writes them). A call the code adds that the shipped
// role does not grant fails here, not on users' nodes. And the role grants
// no more than that.
func TestAgentRunsWithItsRBAC(t *testing.T) {
	c := startWithAgentManifests(t)
	harness.ServeAgentEvictions(t, c)
	ctx := context.Background()

	type check struct {
		verb, group, res, sub, ns, name string
	}
	for _, a := range []check{
		{"get", "", "nodes", "", "", "spot-0"},
		{"update", "", "nodes", "", "", "spot-0"},
		{"list", "", "pods", "", "", ""},
		{"watch", "", "pods", "", "", ""},
		{"get", "", "pods", "", "ml", "job"},
		{"create", "", "pods", "eviction", "ml", "job"},
		{"create", "", "events", "", "ml", ""},
		{"patch", "", "events", "", "ml", ""},
	} {
		if !can(t, c, agentSA, a.verb, a.group, a.res, a.sub, a.ns, a.name) {
			t.Errorf("penny-agent may not %s %s %s/%s in %q (%s): its reclaim flow needs it", a.verb, a.group, a.res, a.sub, a.ns, a.name)
		}
	}
	for _, d := range []check{
		// The recorder writes core events and never updates one.
		{"create", "events.k8s.io", "events", "", "ml", ""},
		{"update", "", "events", "", "ml", ""},
		{"patch", "", "nodes", "", "", "spot-0"},
		{"update", "", "nodes", "status", "", "spot-0"},
		{"delete", "", "nodes", "", "", "spot-0"},
		{"list", "", "nodes", "", "", ""},
		{"delete", "", "pods", "", "ml", "job"},
		{"update", "", "pods", "", "ml", "job"},
		{"create", "", "pods", "exec", "ml", "job"},
		{"get", "", "secrets", "", "ml", ""},
		{"get", "", "configmaps", "", "ml", ""},
	} {
		if can(t, c, agentSA, d.verb, d.group, d.res, d.sub, d.ns, d.name) {
			t.Errorf("penny-agent may %s %s %s/%s in %q (%s): more than it needs", d.verb, d.group, d.res, d.sub, d.ns, d.name)
		}
	}

	const node = "spot-0"
	pod := podOnNode(t, c, "job", node)
	flow, err := reclaim.New(reclaim.Options{Node: node, Client: agentClient(t, c, node), StateDir: t.TempDir(), Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); flow.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	now := time.Now()
	flow.OnNotice(notice.Notice{ID: "i-0123", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: now, Deadline: now.Add(2 * time.Minute)})

	// Evicted: gone, or being deleted.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err) || err == nil && p.DeletionTimestamp != nil, nil
	}); err != nil {
		t.Fatal("the agent did not evict its node's pod")
	}
	n, err := c.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(n.Spec.Taints, func(tt corev1.Taint) bool { return tt.Key == pennyreclaim.TaintKey }) {
		t.Errorf("node %s has taints %v, want %s", node, n.Spec.Taints, pennyreclaim.TaintKey)
	}
	harness.WaitForEvent(t, c, pod.Namespace, pod.Name, "ReclaimEvicted", 30*time.Second)
	harness.WaitForEvent(t, c, metav1.NamespaceDefault, node, "ReclaimDrained", 30*time.Second)
}

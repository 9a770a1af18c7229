package deploy

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/test/harness"
)

const agentFleet = `
region: us-east-1
pools:
- {name: spot, count: 2, cloud: aws, instanceType: p4d.24xlarge, gpuModel: A100-40GB, gpusPerNode: 8, capacityType: spot, zone: us-east-1a, cpu: "96", memory: 1152Gi}
`

// agentClient is what penny-agent on node talks to the API server as: its
// ServiceAccount, with a token bound to its pod on that node.
func agentClient(t *testing.T, c *localcluster.Cluster, node string) kubernetes.Interface {
	t.Helper()
	ctx := context.Background()
	pod := harness.CreatePod(t, c, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "penny-agent-" + node, Namespace: localcluster.SystemNamespace},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "penny-agent",
			Containers: []corev1.Container{{Name: "agent", Image: "registry.example/penny-agent"}}},
	})
	tr, err := c.Client.CoreV1().ServiceAccounts(localcluster.SystemNamespace).CreateToken(ctx, "penny-agent", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To[int64](3600),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(c.RESTConfig)
	cfg.BearerToken = tr.Status.Token
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// nodeFieldGates turn on the alpha Node fields, so that the tests see
// whether the agent may write them: spec.podPreemptionPolicy.
var nodeFieldGates = map[string]bool{"InPlacePodVerticalScalingSchedulerPreemption": true}

// startWithAgentManifests starts a cluster of agentFleet with deploy/agent's
// manifests applied.
func startWithAgentManifests(t *testing.T, configure ...func(*localcluster.Options)) *localcluster.Cluster {
	t.Helper()
	// The gates are process-wide: off again for the package's other tests
	// once this cluster has stopped (cleanups run last registered first).
	t.Cleanup(func() {
		off := map[string]bool{}
		for g := range nodeFieldGates {
			off[g] = false
		}
		if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(off); err != nil {
			t.Error(err)
		}
	})
	opts := localcluster.Options{Spec: harness.ParseSpec(t, agentFleet), FeatureGates: nodeFieldGates}
	for _, f := range configure {
		f(&opts)
	}
	c := harness.StartCluster(t, opts)
	for _, f := range []string{"deploy/agent/penny-agent.yaml", "deploy/agent/reclaim.yaml"} {
		harness.ApplyYAML(t, c, f, readRepoFile(t, f), false)
	}
	return c
}

// With deploy/agent's RBAC and admission policy, an agent may put and lift
// its penny.dev/reclaim NoSchedule taint on its own node and change nothing
// else there: not the annotations Penny and autoscalers read (a Spot node
// passed off as an autoscaler's template gets the catalog's prior risk
// instead of the one learned from its reclaims; karpenter.sh/do-not-disrupt
// or Cluster Autoscaler's scale-down-disabled keep an idle GPU node billed
// forever), not finalizers or owners (an owner that does not exist has the
// garbage collector delete the Node), not a NoExecute taint that would
// evict every pod past its PodDisruptionBudget.
func TestAgentChangesOnlyItsReclaimTaint(t *testing.T) {
	c := startWithAgentManifests(t)
	ctx := context.Background()
	own, other := "spot-0", "spot-1"
	agent := agentClient(t, c, own)

	try := func(node string, mutate func(*corev1.Node)) error {
		n, err := agent.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		mutate(n)
		_, err = agent.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err
	}
	annotate := func(k, v string) func(*corev1.Node) {
		return func(n *corev1.Node) {
			if n.Annotations == nil {
				n.Annotations = map[string]string{}
			}
			n.Annotations[k] = v
		}
	}
	reclaim := corev1.Taint{Key: "penny.dev/reclaim", Value: "spot-interruption", Effect: corev1.TaintEffectNoSchedule}
	addTaint := func(taint corev1.Taint) func(*corev1.Node) {
		return func(n *corev1.Node) { n.Spec.Taints = append(n.Spec.Taints, taint) }
	}
	// The API server starts enforcing a new policy within a few seconds
	// (until then RBAC alone decides, and lets the agent update any node).
	var last error
	probe := 0
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		probe++
		last = try(other, annotate("example.com/probe", strconv.Itoa(probe)))
		return last != nil && strings.Contains(last.Error(), "penny-agent may only change the node its token is bound to"), nil
	}); err != nil {
		t.Fatalf("changing another node was not refused by Penny's policy: %v", last)
	}
	if err := try(other, func(n *corev1.Node) { n.Spec.Taints = append(n.Spec.Taints[:0:0], reclaim) }); err == nil {
		t.Error("the agent tainted another node")
	}

	refused := map[string]func(*corev1.Node){
		"relabel as on-demand":           func(n *corev1.Node) { n.Labels["karpenter.sh/capacity-type"] = "on-demand" },
		"cordon":                         func(n *corev1.Node) { n.Spec.Unschedulable = true },
		"mark as an autoscaler template": annotate("penny.dev/autoscaler-template-of", "spot"),
		"keep from scale-down":           annotate("karpenter.sh/do-not-disrupt", "true"),
		"add a finalizer":                func(n *corev1.Node) { n.Finalizers = append(n.Finalizers, "example.com/hold") },
		"give it an owner": func(n *corev1.Node) {
			n.OwnerReferences = append(n.OwnerReferences, metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: "gone", UID: "0b7c5a36-5ef0-4bd1-9d5a-3c9a1d8a0f7e"})
		},
		"taint penny.dev/reclaim NoExecute": addTaint(corev1.Taint{Key: "penny.dev/reclaim", Value: "spot-interruption", Effect: corev1.TaintEffectNoExecute}),
		"turn resize preemption off": func(n *corev1.Node) {
			n.Spec.PodPreemptionPolicy = &corev1.NodePodPreemptionPolicy{DisableResizePreemption: []string{"example.com/hold"}}
		},
		"add another taint": addTaint(corev1.Taint{Key: "example.com/other", Effect: corev1.TaintEffectNoSchedule}),
	}
	for what, mutate := range refused {
		err := try(own, mutate)
		if err == nil {
			t.Errorf("the agent could %s on its own node", what)
		} else if !strings.Contains(err.Error(), "penny-agent") {
			t.Errorf("%s on its own node: refused, but not by Penny's policy: %v", what, err)
		}
	}
	if err := try(own, addTaint(reclaim)); err != nil {
		t.Fatalf("the agent may not taint its own node: %v", err)
	}
	if err := try(own, func(n *corev1.Node) { n.Spec.Taints = nil }); err != nil {
		t.Fatalf("the agent may not lift its own taint: %v", err)
	}
	n, err := c.Client.CoreV1().Nodes().Get(ctx, own, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, template := n.Annotations["penny.dev/autoscaler-template-of"]
	_, pinned := n.Annotations["karpenter.sh/do-not-disrupt"]
	if template || pinned || len(n.Finalizers) > 0 || len(n.OwnerReferences) > 0 || len(n.Spec.Taints) > 0 || n.Spec.PodPreemptionPolicy != nil {
		t.Errorf("the agent changed its node: annotations %v, finalizers %v, owners %v, taints %v, pod preemption policy %v",
			n.Annotations, n.Finalizers, n.OwnerReferences, n.Spec.Taints, n.Spec.PodPreemptionPolicy)
	}
}

// With deploy/agent's RBAC and webhook, an agent may evict the pods of its
// own node and no others: the Eviction API's object names only the pod, so
// RBAC alone would let it evict any pod in the cluster. The webhook fails
// closed (no scheduler answering: the agent evicts nothing), asks for the
// pod's UID, and leaves everyone else's evictions to RBAC.
func TestAgentEvictsOnlyItsNodesPods(t *testing.T) {
	c := startWithAgentManifests(t)
	ctx := context.Background()
	own, other := "spot-0", "spot-1"
	agent := agentClient(t, c, own)
	mine, theirs := podOnNode(t, c, "mine", own), podOnNode(t, c, "theirs", other)
	evict := func(client kubernetes.Interface, p *corev1.Pod, withUID, dryRun bool) error {
		opts := &metav1.DeleteOptions{}
		if withUID {
			opts.Preconditions = &metav1.Preconditions{UID: &p.UID}
		}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		return client.PolicyV1().Evictions(p.Namespace).Evict(ctx, &policyv1.Eviction{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace}, DeleteOptions: opts,
		})
	}
	// refusedBy polls dry-run evictions (the API server loads a new webhook
	// configuration within a few seconds; until then RBAC alone decides)
	// until one is refused with want in the message.
	refusedBy := func(what string, p *corev1.Pod, want string) error {
		t.Helper()
		var last error
		if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			last = evict(agent, p, true, true)
			return last != nil && strings.Contains(last.Error(), want), nil
		}); err != nil {
			t.Fatalf("%s: %v, want an error containing %q", what, last, want)
		}
		return last
	}

	// No scheduler answers the shipped Service: refused, as an error the
	// agent asks again after (agent/reclaim).
	if err := refusedBy("own pod, no webhook server", mine, `failed calling webhook "agent-evictions.penny.dev"`); !apierrors.IsInternalError(err) {
		t.Errorf("webhook unreachable: %v, want an internal error", err)
	}
	if err := evict(c.Client, theirs, false, true); err != nil {
		t.Errorf("an administrator's eviction waited on the agents' webhook: %v", err)
	}

	harness.ServeAgentEvictions(t, c)
	refusedBy("another node's pod", theirs, "penny-agent on node spot-0 may evict only pods bound to node spot-0; pod default/theirs is bound to node spot-1")
	if err := evict(agent, theirs, true, true); !apierrors.IsForbidden(err) {
		t.Errorf("another node's pod: %v, want Forbidden", err)
	}
	// A pod of another node under the name of a pod the agent had on its
	// node: the API server charges its disruption budget before the delete
	// fails the UID precondition, so the webhook refuses first, with the
	// Conflict the agent reads as "gone".
	replaced := harness.CreatePod(t, c, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "replaced", Namespace: "default", Labels: map[string]string{"app": "replaced"}},
		Spec:       corev1.PodSpec{NodeName: other, Containers: []corev1.Container{{Name: "c", Image: "registry.example/app"}}},
	})
	budget := withDisruptionsAllowed(t, c, "replaced", 1)
	gone := replaced.DeepCopy()
	gone.UID = "0b7c5a36-5ef0-4bd1-9d5a-3c9a1d8a0f7e"
	if err := evict(agent, gone, true, false); !apierrors.IsConflict(err) {
		t.Errorf("a pod replaced by one on another node: %v, want Conflict", err)
	}
	if pdb, err := c.Client.PolicyV1().PodDisruptionBudgets("default").Get(ctx, budget, metav1.GetOptions{}); err != nil || pdb.Status.DisruptionsAllowed != 1 || len(pdb.Status.DisruptedPods) > 0 {
		t.Errorf("the other node's pod's disruption budget: %v, %+v; want 1 disruption allowed and none recorded", err, pdb.Status)
	}
	if err := evict(agent, mine, false, true); err == nil || !strings.Contains(err.Error(), "deleteOptions.preconditions.uid") {
		t.Errorf("own pod without its UID: %v, want refused for want of the UID precondition", err)
	}
	if err := evict(agent, mine, true, false); err != nil {
		t.Fatalf("the agent may not evict its own node's pod: %v", err)
	}
	if p, err := c.Client.CoreV1().Pods("default").Get(ctx, "mine", metav1.GetOptions{}); err == nil && p.DeletionTimestamp == nil {
		t.Error("the evicted pod is not being deleted")
	}
	if p, err := c.Client.CoreV1().Pods("default").Get(ctx, "theirs", metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil {
		t.Errorf("the other node's pod: %v, deleting since %v", err, p.DeletionTimestamp)
	}
}

// podOnNode creates a pod in the default namespace bound to node.
func podOnNode(t *testing.T, c *localcluster.Cluster, name, node string) *corev1.Pod {
	t.Helper()
	return harness.CreatePod(t, c, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.example/app"}}},
	})
}

// withDisruptionsAllowed creates a PodDisruptionBudget that lets all the
// pods labelled app=app go, and waits for the disruption controller to
// allow n disruptions, one per such pod. It returns its name.
func withDisruptionsAllowed(t *testing.T, c *localcluster.Cluster, app string, n int32) string {
	t.Helper()
	ctx := context.Background()
	pdbs := c.Client.PolicyV1().PodDisruptionBudgets("default")
	if _, err := pdbs.Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: "default"},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: ptr.To(intstr.FromInt32(0)),
			Selector:     &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var last *policyv1.PodDisruptionBudget
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		last, err = pdbs.Get(ctx, app, metav1.GetOptions{})
		return err == nil && last.Status.ObservedGeneration == last.Generation && last.Status.DisruptionsAllowed == n, nil
	}); err != nil {
		t.Fatalf("PodDisruptionBudget %s never allowed %d disruptions: %+v", app, n, last)
	}
	return app
}

package deploy

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/test/harness"
)

const (
	schedulerSA   = "system:serviceaccount:penny-system:penny-scheduler"
	schedulerFile = "deploy/scheduler/penny-scheduler.yaml"
)

const fleet = `
region: us-east-1
pools:
- {name: cpu, count: 1, cloud: aws, instanceType: m7i.8xlarge, capacityType: on-demand, zone: us-east-1a, cpu: "32", memory: 128Gi}
- {name: a100, count: 1, cloud: aws, instanceType: p4d.24xlarge, gpuModel: A100-40GB, gpusPerNode: 8, capacityType: on-demand, zone: us-east-1a, cpu: "96", memory: 1152Gi}
`

func readRepoFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(harness.RepoRoot(), name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func schedulerDeployment(t *testing.T) *appsv1.Deployment {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(readRepoFile(t, schedulerFile)), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", schedulerFile, err)
		}
		if obj.GetKind() != "Deployment" {
			continue
		}
		d := &appsv1.Deployment{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	t.Fatalf("%s has no Deployment", schedulerFile)
	return nil
}

// can asks the API server's authorizer whether user may do verb on a
// resource; name and namespace may be empty (any, cluster-wide).
func can(t *testing.T, c *localcluster.Cluster, user, verb, group, res, sub, namespace, name string) bool {
	t.Helper()
	sar, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:penny-system", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Group: group, Resource: res, Subresource: sub, Namespace: namespace, Name: name,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sar.Status.Allowed
}

// penny-scheduler may do what kube-scheduler does, except take part in the
// default scheduler's leader election: with system:kube-scheduler bound, its
// ServiceAccount could update the kube-scheduler Lease in kube-system, so a
// compromised or misconfigured penny-scheduler could hold the default
// scheduler's lock and stop scheduling for the whole cluster. Nor may it
// write tenants' pods or read their ConfigMaps, which Penny never does.
func TestSchedulerRBACIsLeastPrivilege(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{})
	harness.ApplyYAML(t, c, schedulerFile, readRepoFile(t, schedulerFile), false)
	ctx := context.Background()

	// Every permission of the API server's own system:kube-scheduler role
	// (as its feature gates make it) but the default scheduler's lease.
	role, err := c.Client.RbacV1().ClusterRoles().Get(ctx, "system:kube-scheduler", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				if g == "coordination.k8s.io" {
					continue // leader election, below
				}
				resource, sub, _ := strings.Cut(res, "/")
				for _, v := range r.Verbs {
					if !can(t, c, schedulerSA, v, g, resource, sub, "", "") {
						t.Errorf("penny-scheduler may not %s %s %q, which kube-scheduler may", v, g, res)
					}
				}
			}
		}
	}

	type check struct {
		verb, group, res, sub, ns, name string
	}
	allowed := []check{
		// Its own leader election (config.yaml: penny-system/penny-scheduler).
		{"create", "coordination.k8s.io", "leases", "", "penny-system", ""},
		{"get", "coordination.k8s.io", "leases", "", "penny-system", "penny-scheduler"},
		{"update", "coordination.k8s.io", "leases", "", "penny-system", "penny-scheduler"},
		// SpotRisk's catalog and the reclaim coordinator's ConfigMaps.
		{"list", "", "configmaps", "", "penny-system", ""},
		{"watch", "", "configmaps", "", "penny-system", ""},
		{"get", "", "configmaps", "", "penny-system", "penny-prices"},
		{"create", "", "configmaps", "", "penny-system", ""},
		{"update", "", "configmaps", "", "penny-system", "penny-interrupted-runs"},
		{"update", "", "configmaps", "", "penny-system", "penny-reclaim-notices"},
		// Evicting the rest of a gang that lost a member to a reclaim.
		{"create", "", "pods", "eviction", "ml", ""},
		// The native gang API.
		{"list", "scheduling.k8s.io", "podgroups", "", "", ""},
		{"watch", "scheduling.k8s.io", "podgroups", "", "", ""},
		// Authenticating agents.
		{"create", "authentication.k8s.io", "tokenreviews", "", "", ""},
	}
	for _, a := range allowed {
		if !can(t, c, schedulerSA, a.verb, a.group, a.res, a.sub, a.ns, a.name) {
			t.Errorf("penny-scheduler may not %s %s %s/%s in %q (%s): Penny needs it", a.verb, a.group, a.res, a.sub, a.ns, a.name)
		}
	}
	denied := []check{
		{"update", "coordination.k8s.io", "leases", "", "kube-system", "kube-scheduler"},
		{"get", "coordination.k8s.io", "leases", "", "kube-system", "kube-scheduler"},
		{"create", "coordination.k8s.io", "leases", "", "kube-system", ""},
		{"patch", "", "pods", "", "ml", ""},
		{"update", "", "pods", "", "ml", ""},
		{"get", "", "configmaps", "", "ml", ""},
		{"list", "", "configmaps", "", "", ""},
		{"get", "", "secrets", "", "penny-system", ""},
		{"update", "", "configmaps", "", "penny-system", "penny-prices"},
		// Neither kube-scheduler nor Penny reads Workloads.
		{"list", "scheduling.k8s.io", "workloads", "", "", ""},
		{"watch", "scheduling.k8s.io", "workloads", "", "", ""},
	}
	for _, d := range denied {
		if can(t, c, schedulerSA, d.verb, d.group, d.res, d.sub, d.ns, d.name) {
			t.Errorf("penny-scheduler may %s %s %s/%s in %q (%s): more than it needs", d.verb, d.group, d.res, d.sub, d.ns, d.name)
		}
	}
}

// The shipped scheduler, with the shipped RBAC as its only permissions,
// starts, reads its price catalog and binds pods: the RBAC above is not
// tighter than the code needs.
func TestSchedulerRunsWithItsRBAC(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	harness.ApplyYAML(t, c, schedulerFile, readRepoFile(t, schedulerFile), false)
	harness.ApplyYAML(t, c, "deploy/pricing/penny-prices.yaml", readRepoFile(t, "deploy/pricing/penny-prices.yaml"), false)

	kc := clientcmdapi.NewConfig()
	kc.Clusters["penny"] = &clientcmdapi.Cluster{Server: c.RESTConfig.Host, CertificateAuthorityData: c.RESTConfig.CAData}
	kc.AuthInfos["sa"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.RESTConfig.CertData, ClientKeyData: c.RESTConfig.KeyData,
		Impersonate: schedulerSA, ImpersonateGroups: []string{"system:serviceaccounts", "system:serviceaccounts:penny-system", "system:authenticated"}}
	kc.Contexts["sa"] = &clientcmdapi.Context{Cluster: "penny", AuthInfo: "sa"}
	kc.CurrentContext = "sa"
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	s, err := plugins.StartScheduler(context.Background(), plugins.SchedulerOptions{Kubeconfig: kubeconfig, Config: deploy.SchedulerConfig})
	if err != nil {
		t.Fatalf("penny-scheduler as its ServiceAccount: %v", err)
	}
	t.Cleanup(s.Stop)

	gpuPod := harness.Pod("gpu", corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("2"), corev1.ResourceCPU: resource.MustParse("4")})
	gpuPod.Annotations = map[string]string{"penny.dev/workload": "inference"}
	harness.CreatePod(t, c, gpuPod)
	harness.CreatePod(t, c, harness.Pod("cpu", corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}))
	p := harness.WaitForPod(t, c, "default", "gpu", 60*time.Second, "bound", harness.Bound)
	if p.Annotations[gpu.AnnotationAssignment] == "" {
		t.Errorf("the GPU pod was bound without %s", gpu.AnnotationAssignment)
	}
	harness.WaitForPod(t, c, "default", "cpu", 30*time.Second, "bound", harness.Bound)
}

// Tenants' pods must not preempt the scheduler (a pod with any positive
// priority could, on a full cluster, and Penny's pods would then wait for
// the default scheduler to find the scheduler a node), and a drain must not
// take both replicas at once (their anti-affinity is only preferred, so
// both may share a node).
func TestSchedulerSurvivesPreemptionAndDrains(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{})
	harness.ApplyYAML(t, c, schedulerFile, readRepoFile(t, schedulerFile), false)
	ctx := context.Background()
	d := schedulerDeployment(t)

	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "penny-scheduler-x", Namespace: d.Namespace, Labels: d.Spec.Template.Labels},
		Spec: d.Spec.Template.Spec}
	admitted, err := c.Client.CoreV1().Pods(d.Namespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatal(err)
	}
	// User-defined priority classes go up to one billion.
	if admitted.Spec.Priority == nil || *admitted.Spec.Priority <= 1_000_000_000 {
		t.Errorf("penny-scheduler's pods get priority %v (class %q): tenants' pods can preempt them", admitted.Spec.Priority, admitted.Spec.PriorityClassName)
	}

	var pdbs []policyv1.PodDisruptionBudget
	list, err := c.Client.PolicyV1().PodDisruptionBudgets(d.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		if sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			pdbs = append(pdbs, p)
		}
	}
	if len(pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets cover penny-scheduler's pods, want 1", len(pdbs))
	}
	replicas := int32(1)
	if d.Spec.Replicas != nil {
		replicas = *d.Spec.Replicas
	}
	pdb := pdbs[0].Spec
	switch {
	case pdb.MaxUnavailable != nil:
		if pdb.MaxUnavailable.IntValue() < 1 || pdb.MaxUnavailable.IntValue() >= int(replicas) {
			t.Errorf("maxUnavailable %s of %d replicas: a drain either blocks forever or takes every replica", pdb.MaxUnavailable, replicas)
		}
	case pdb.MinAvailable != nil:
		if pdb.MinAvailable.IntValue() < 1 || pdb.MinAvailable.IntValue() >= int(replicas) {
			t.Errorf("minAvailable %s of %d replicas: a drain either blocks forever or takes every replica", pdb.MinAvailable, replicas)
		}
	default:
		t.Error("the PodDisruptionBudget sets neither minAvailable nor maxUnavailable")
	}
}

// penny-scheduler rebuilds which GPUs are taken from penny.dev/gpu-assignment
// after a restart, so a tenant who could write it would have the GPUs their
// pod holds handed to another tenant's pod. With the shipped policy only the
// Binding sets it; a tenant can neither create a pod with it nor change it.
func TestTenantsCannotWriteTheGPUAssignment(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	harness.ApplyYAML(t, c, schedulerFile, readRepoFile(t, schedulerFile), false)
	ctx := context.Background()
	const tenant = "alice"
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pods", Namespace: "default"},
		// pods/status as an operator's role may grant it: a status update
		// takes the pod's annotations as sent.
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "pods/status"}, Verbs: []string{"create", "get", "update", "patch", "delete"}}}}
	if _, err := c.Client.RbacV1().Roles("default").Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pods", Namespace: "default"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pods"},
		Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: tenant}}}
	if _, err := c.Client.RbacV1().RoleBindings("default").Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	as := func(user string, groups ...string) kubernetes.Interface {
		cfg := rest.CopyConfig(c.RESTConfig)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append(groups, "system:authenticated")}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return client
	}
	alice := as(tenant)
	scheduler := as(schedulerSA, "system:serviceaccounts", "system:serviceaccounts:penny-system")
	gpuPod := func(name string) *corev1.Pod {
		return harness.Pod(name, corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("2")})
	}

	// The policy and the tenant's role take effect once the API server has
	// loaded them.
	forged := gpuPod("forged")
	forged.Annotations = map[string]string{gpu.AnnotationAssignment: "0,1"}
	const refusal = "metadata.annotations[penny.dev/gpu-assignment] is set by penny-scheduler"
	var err error
	if werr := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		if _, err = alice.CoreV1().Pods("default").Create(ctx, forged, metav1.CreateOptions{}); err == nil {
			return false, c.Client.CoreV1().Pods("default").Delete(ctx, forged.Name, metav1.DeleteOptions{})
		}
		return strings.Contains(err.Error(), refusal), nil
	}); werr != nil {
		t.Fatalf("a tenant's pod created with %s: %v after 30s; want a refusal naming the annotation", gpu.AnnotationAssignment, err)
	}

	if _, err := alice.CoreV1().Pods("default").Create(ctx, gpuPod("train"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: "train", Namespace: "default", Annotations: map[string]string{gpu.AnnotationAssignment: "2,3"}},
		Target:     corev1.ObjectReference{Kind: "Node", Name: "a100-0"},
	}
	if err := scheduler.CoreV1().Pods("default").Bind(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("penny-scheduler binding with the assignment: %v", err)
	}
	// The simulated kubelet updates the pod's status meanwhile.
	// write updates the pod, or its status when status is set.
	write := func(client kubernetes.Interface, status bool, mutate func(*corev1.Pod)) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			pods := client.CoreV1().Pods("default")
			p, err := pods.Get(ctx, "train", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if p.Annotations[gpu.AnnotationAssignment] != "2,3" {
				t.Fatalf("the pod's assignment is %q, want the Binding's 2,3", p.Annotations[gpu.AnnotationAssignment])
			}
			mutate(p)
			if status {
				_, err = pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
			} else {
				_, err = pods.Update(ctx, p, metav1.UpdateOptions{})
			}
			return err
		})
	}
	update := func(client kubernetes.Interface, mutate func(*corev1.Pod)) error { return write(client, false, mutate) }
	for _, status := range []bool{false, true} {
		for name, mutate := range map[string]func(*corev1.Pod){
			"changed": func(p *corev1.Pod) { p.Annotations[gpu.AnnotationAssignment] = "0,1" },
			"removed": func(p *corev1.Pod) { delete(p.Annotations, gpu.AnnotationAssignment) },
		} {
			if err := write(alice, status, mutate); err == nil || !strings.Contains(err.Error(), "cannot be changed or removed") {
				t.Errorf("a tenant's update (of the status: %v) with the assignment %s: %v; want it refused", status, name, err)
			}
		}
	}
	// A status update that keeps the assignment, as the kubelet and
	// penny-scheduler's own condition writes do.
	if err := write(alice, true, func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: "example.com/Checked", Status: corev1.ConditionTrue})
	}); err != nil {
		t.Errorf("a status update that keeps the assignment: %v; want it accepted", err)
	}
	if err := update(alice, func(p *corev1.Pod) { p.Labels = map[string]string{"team": "llm"} }); err != nil {
		t.Errorf("a tenant's label update that keeps the assignment: %v; want it accepted", err)
	}
	if err := update(c.Client, func(p *corev1.Pod) { p.Annotations["note"] = "checked" }); err != nil {
		t.Errorf("a cluster admin's update: %v", err)
	}
}

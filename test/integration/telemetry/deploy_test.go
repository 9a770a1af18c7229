package telemetry

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/test/harness"
)

func readRepoFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(harness.RepoRoot(), path))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// The agent's manifests as a user applies them, on a real API server: the
// scheduler from deploy/scheduler, the agent, and the patch that opens the
// scheduler's telemetry port. The Service must then lead to that port.
func TestAgentManifests(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{})
	ctx := context.Background()
	harness.ApplyYAML(t, c, "deploy/scheduler/penny-scheduler.yaml", readRepoFile(t, "deploy/scheduler/penny-scheduler.yaml"), false)
	if n := harness.ApplyYAML(t, c, "deploy/agent/penny-agent.yaml", readRepoFile(t, "deploy/agent/penny-agent.yaml"), false); n != 3 {
		t.Fatalf("applied %d objects of deploy/agent/penny-agent.yaml, want 3 (ServiceAccount, Service, DaemonSet)", n)
	}

	patch, err := yaml.YAMLToJSON(readRepoFile(t, "deploy/agent/scheduler-telemetry-patch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	deployments := c.Client.AppsV1().Deployments(localcluster.SystemNamespace)
	d, err := deployments.Patch(ctx, "penny-scheduler", types.JSONPatchType, patch, metav1.PatchOptions{})
	if err != nil {
		t.Fatalf("the telemetry patch does not apply to deploy/scheduler's Deployment: %v", err)
	}
	ctr := d.Spec.Template.Spec.Containers[0]
	if !slices.Contains(ctr.Args, "--telemetry-bind-address=:7443") || !slices.ContainsFunc(ctr.Args, func(a string) bool { return strings.HasPrefix(a, "--config=") }) {
		t.Errorf("patched args %v", ctr.Args)
	}

	svc, err := c.Client.CoreV1().Services(localcluster.SystemNamespace).Get(ctx, "penny-telemetry", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("penny-telemetry is not headless (clusterIP %q): agents would reach one replica only", svc.Spec.ClusterIP)
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("Service selects %s=%s, the scheduler's pods are labelled %v", k, v, d.Spec.Template.Labels)
		}
	}
	target := svc.Spec.Ports[0].TargetPort.StrVal
	if !slices.ContainsFunc(ctr.Ports, func(p corev1.ContainerPort) bool { return p.Name == target && p.ContainerPort == 7443 }) {
		t.Errorf("Service targets port %q, the scheduler exposes %v", target, ctr.Ports)
	}

	ds, err := c.Client.AppsV1().DaemonSets(localcluster.SystemNamespace).Get(ctx, "penny-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	var audience string
	for _, v := range spec.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					audience = s.ServiceAccountToken.Audience
				}
			}
		}
	}
	if audience != "penny-scheduler" || spec.ServiceAccountName != "penny-agent" {
		t.Errorf("agent token audience %q, ServiceAccount %q", audience, spec.ServiceAccountName)
	}
	if !slices.Contains(spec.Containers[0].Args, "--scheduler-address="+svc.Name+"."+svc.Namespace+".svc:7443") {
		t.Errorf("agent args %v do not name the Service", spec.Containers[0].Args)
	}
}

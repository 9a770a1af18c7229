package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/validation"
	"sigs.k8s.io/yaml"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/test/harness"
)

// TestManifestsAreGenerated fails when someone edited a template or a
// configuration without regenerating what users apply.
func TestManifestsAreGenerated(t *testing.T) {
	for _, m := range deploy.Manifests() {
		want, err := m.Render()
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(harness.RepoRoot(), m.Output))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make manifests` and commit the result", m.Output)
		}
	}
}

// TestSchedulerConfigIsValid loads the configuration the way kube-scheduler
// does and runs its validation.
func TestSchedulerConfigIsValid(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(file, deploy.SchedulerConfig, 0o600)
	cfg, err := options.LoadConfigFromFile(klog.Background(), file)
	if err != nil {
		t.Fatal(err)
	}
	if err := validation.ValidateKubeSchedulerConfiguration(cfg); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range cfg.Profiles {
		found = found || p.SchedulerName == "penny-scheduler"
	}
	if !found || !cfg.LeaderElection.LeaderElect {
		t.Errorf("config must have a penny-scheduler profile and leader election on; profiles=%d leaderElect=%v", len(cfg.Profiles), cfg.LeaderElection.LeaderElect)
	}
}

// TestManifestsPassServerSideDryRun lets a real kube-apiserver validate and
// admit every object users apply, without persisting them.
func TestManifestsPassServerSideDryRun(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{})
	applied := 0
	for _, m := range deploy.Manifests() {
		data, err := os.ReadFile(filepath.Join(harness.RepoRoot(), m.Output))
		if err != nil {
			t.Fatal(err)
		}
		applied += harness.ApplyYAML(t, c, m.Output, data, true)
	}
	if applied < 10 {
		t.Errorf("only %d objects applied; the manifests lost objects", applied)
	}

	// The opt-in endpoints are JSON patches of the scheduler's Deployment
	// (and a Service): they must apply to it, and what they make must be
	// admitted.
	sched, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "deploy", "scheduler", "penny-scheduler.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var deployment []byte
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(sched), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			break
		}
		if obj.GetKind() == "Deployment" {
			if deployment, err = obj.MarshalJSON(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if deployment == nil {
		t.Fatal("deploy/scheduler/penny-scheduler.yaml has no Deployment")
	}
	for _, name := range []string{"deploy/agent/scheduler-telemetry-patch.yaml", "deploy/autoscaler/scheduler-expander-patch.yaml"} {
		data, err := os.ReadFile(filepath.Join(harness.RepoRoot(), name))
		if err != nil {
			t.Fatal(err)
		}
		ops, err := yaml.YAMLToJSON(data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		patch, err := jsonpatch.DecodePatch(ops)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		patched, err := patch.Apply(deployment)
		if err != nil {
			t.Fatalf("%s does not apply to the scheduler's Deployment: %v", name, err)
		}
		harness.ApplyYAML(t, c, name, patched, true)
	}
	svc, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "deploy", "autoscaler", "penny-expander.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if n := harness.ApplyYAML(t, c, "deploy/autoscaler/penny-expander.yaml", svc, true); n != 2 {
		t.Errorf("deploy/autoscaler/penny-expander.yaml: %d objects, want the Service and its NetworkPolicy", n)
	}
}

package deploy

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/validation"

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
	dyn, err := dynamic.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client.Discovery()))
	applied := 0
	for _, m := range deploy.Manifests() {
		data, err := os.ReadFile(filepath.Join(harness.RepoRoot(), m.Output))
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			var obj unstructured.Unstructured
			if err := dec.Decode(&obj.Object); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", m.Output, err)
			}
			if len(obj.Object) == 0 {
				continue
			}
			gvk := obj.GroupVersionKind()
			mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Fatalf("%s: %s %s: %v", m.Output, gvk, obj.GetName(), err)
			}
			body, _ := obj.MarshalJSON()
			ri := dyn.Resource(mapping.Resource)
			var target dynamic.ResourceInterface = ri
			if ns := obj.GetNamespace(); ns != "" {
				target = ri.Namespace(ns)
			}
			_, err = target.Patch(context.Background(), obj.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{
				DryRun: []string{metav1.DryRunAll}, FieldManager: "penny-manifest-test",
			})
			if err != nil {
				t.Errorf("%s: %s %s/%s rejected by the API server: %v", m.Output, gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
			}
			applied++
		}
	}
	if applied < 10 {
		t.Errorf("only %d objects applied; the manifests lost objects", applied)
	}
}

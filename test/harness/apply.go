package harness

import (
	"bytes"
	"context"
	"io"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/pennysched/penny/pkg/localcluster"
)

// ApplyYAML server-side applies every object of a multi-document YAML file
// as `kubectl apply --server-side` would (with dryRun, the API server
// validates and admits them without storing them) and returns how many it
// applied. name says where the YAML came from, for messages.
func ApplyYAML(t testing.TB, c *localcluster.Cluster, name string, data []byte, dryRun bool) int {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client.Discovery()))
	opts := metav1.PatchOptions{FieldManager: "penny-test"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	applied := 0
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %s %s: %v", name, gvk, obj.GetName(), err)
		}
		body, _ := obj.MarshalJSON()
		var target dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if ns := obj.GetNamespace(); ns != "" {
			target = dyn.Resource(mapping.Resource).Namespace(ns)
		}
		if _, err := target.Patch(context.Background(), obj.GetName(), types.ApplyPatchType, body, opts); err != nil {
			t.Errorf("%s: %s %s/%s rejected by the API server: %v", name, gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
			continue
		}
		applied++
	}
	return applied
}

package telemetrytest

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	metadatafake "k8s.io/client-go/metadata/fake"

	"github.com/pennysched/penny/pkg/telemetry"
)

// NodeMetadata is a metadata client whose cluster has the named Nodes, for
// telemetry.ForgetDeletedNodes.
func NodeMetadata(names ...string) *metadatafake.FakeMetadataClient {
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		panic(err)
	}
	objs := make([]runtime.Object, 0, len(names))
	for _, n := range names {
		objs = append(objs, &metav1.PartialObjectMetadata{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
			ObjectMeta: metav1.ObjectMeta{Name: n},
		})
	}
	return metadatafake.NewSimpleMetadataClient(scheme, objs...)
}

// StoreWith is a store holding a fresh report of one 8-GPU node per name.
func StoreWith(names ...string) *telemetry.Store {
	store := telemetry.NewStore(telemetry.StoreOptions{})
	for _, n := range names {
		store.Update(Report(n, 8, 1, time.Now()), time.Now())
	}
	return store
}

package telemetry_test

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDeletedNodeIsForgotten(t *testing.T) {
	nodes := telemetrytest.NodeMetadata("gpu-1", "gpu-2")
	store := telemetrytest.StoreWith("gpu-1", "gpu-2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	synced := telemetry.ForgetDeletedNodes(ctx, nodes, store, time.Hour, testr.New(t))
	if !cache.WaitForCacheSync(ctx.Done(), synced) {
		t.Fatal("node metadata did not sync")
	}
	if err := nodes.Resource(corev1.SchemeGroupVersion.WithResource("nodes")).Delete(ctx, "gpu-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "gpu-1 to leave the store", func() bool { st, _ := store.Lookup("gpu-1"); return st == nil })
	if _, fresh := store.Lookup("gpu-2"); !fresh {
		t.Fatal("gpu-2, still in the cluster, left the store")
	}
}

// A report that was on its way when its node was deleted puts the node back
// after the deletion was handled; once that report is stale the node goes.
// A stale node the cluster has stays (its agent went quiet: the stale count
// should say so), and so does a fresh one the watch has not seen yet (a node
// that just joined).
func TestStaleNodesTheClusterLacksAreForgotten(t *testing.T) {
	nodes := telemetrytest.NodeMetadata("quiet")
	clk := &clock{now: t0}
	store := telemetry.NewStore(telemetry.StoreOptions{Now: clk.Now})
	store.Update(telemetrytest.Report("quiet", 1, 1, clk.Now()), clk.Now())
	store.Update(telemetrytest.Report("deleted", 1, 1, clk.Now()), clk.Now())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	synced := telemetry.ForgetDeletedNodes(ctx, nodes, store, 5*time.Millisecond, testr.New(t))
	if !cache.WaitForCacheSync(ctx.Done(), synced) {
		t.Fatal("node metadata did not sync")
	}
	clk.Add(telemetry.DefaultMaxAge + time.Second)
	store.Update(telemetrytest.Report("joined", 1, 1, clk.Now()), clk.Now())
	waitFor(t, "the deleted node to leave the store", func() bool { st, _ := store.Lookup("deleted"); return st == nil })
	// Several sweeps more.
	time.Sleep(50 * time.Millisecond)
	if st, _ := store.Lookup("quiet"); st == nil {
		t.Error("a stale node the cluster has was dropped")
	}
	if _, fresh := store.Lookup("joined"); !fresh {
		t.Error("a fresh node the watch has not seen was dropped")
	}
}

package reclaim

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/configmaplines"
	"github.com/pennysched/penny/pkg/localcluster"
	pkgreclaim "github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/test/harness"
)

// noAgents is a command stream no agent is connected to: a coordinator
// finishing a move sends no command.
type noAgents struct{}

func (noAgents) SendCheckpoint(string, *telemetryv1.CheckpointCommand) (int, error) { return 0, nil }

// On a real API server: a move back to Spot that a scheduler stopped after
// evicting one member of a gang (its record left in the notices'
// ConfigMap, its other member still running) is finished by the next
// leader's coordinator through the Eviction API, with an event on the pod,
// and its record removed; a recorded move that evicted no pod is dropped,
// its pods left alone.
func TestNextLeaderFinishesAMoveARestartCutOff(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Log: io.Discard})
	ctx := context.Background()
	const ns = "default"
	uids := map[string]string{}
	for _, name := range []string{"torn-0", "torn-1", "whole-0", "whole-1"} {
		p, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "trainer"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		uids[name] = string(p.UID)
	}
	until := time.Now().Add(5 * time.Minute).UTC().Format(time.RFC3339Nano)
	record := func(workload string, pods ...string) string {
		refs := make([]string, len(pods))
		for i, p := range pods {
			refs[i] = ns + "/" + p + "/" + uids[p]
		}
		return workload + " " + until + " " + strings.Join(refs, ",")
	}
	key := configmaplines.Key{Client: c.Client, Namespace: localcluster.SystemNamespace, Name: "penny-reclaim-notices", Key: pkgreclaim.ReturnsKey}
	if err := key.Update(ctx, func(string) string {
		return record("gang:label:default%2Ftorn", "torn-0", "torn-1") + "\n" + record("gang:label:default%2Fwhole", "whole-0", "whole-1")
	}); err != nil {
		t.Fatal(err)
	}
	// The first member was evicted before the scheduler stopped.
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, "torn-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}

	coordinator := pkgreclaim.NewCoordinator()
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := coordinator.Run(runCtx, pkgreclaim.CoordinatorOptions{Client: c.Client, Commands: noAgents{}, Log: testr.New(t),
			Notices: &pkgreclaim.NoticeStore{Client: c.Client, Namespace: localcluster.SystemNamespace, Name: "penny-reclaim-notices"}}); err != nil {
			t.Errorf("coordinator: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	var finished int
	poll(t, "the coordinator finishing the move", 30*time.Second, func() (bool, string) {
		n, err := coordinator.FinishInterruptedMoves(ctx)
		finished += n
		return err == nil, fmt.Sprint(err)
	})
	if finished != 1 {
		t.Fatalf("finished %d moves, want the torn one", finished)
	}
	poll(t, "torn-1 evicted", 30*time.Second, func() (bool, string) {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, "torn-1", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, ""
		}
		return err == nil && p.DeletionTimestamp != nil, fmt.Sprintf("%v", err)
	})
	ev := harness.WaitForEvent(t, c, ns, "torn-1", "SpotReturn", 30*time.Second)
	if !strings.Contains(ev, "evicted to finish a move back to Spot that a scheduler restart interrupted after evicting 1 of its 2 pods (workload gang:label:default/torn)") {
		t.Errorf("SpotReturn event of torn-1: %q", ev)
	}
	for _, name := range []string{"whole-0", "whole-1"} {
		if p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil {
			t.Errorf("%s, of a move that evicted none of its pods, was evicted (err %v)", name, err)
		}
	}
	if text, err := key.Read(ctx); err != nil || text != "" {
		t.Errorf("records left: %q (err %v), want none", text, err)
	}
}

// Package configmaplines checks pkg/configmaplines against a real API
// server: the scheduler's replicas keep the reclaim notices in hand and the
// runs Spot reclaims cut short in one ConfigMap each, and write them at
// once when a reclaim hits many nodes.
package configmaplines

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/kubernetes"

	"github.com/pennysched/penny/pkg/configmaplines"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/test/harness"
)

// Replicas that write at once each get every write in: the one that came
// second reads again and retries, and no line is lost. (deploy/scheduler
// runs two replicas; with three tries and no pause between them, 4 to 7 of
// the 80 writes of two replicas adding 40 lines each at once failed.)
func TestReplicasWritingAtOnceLoseNoWrite(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{})
	for _, replicas := range []int{2, 4} {
		t.Run(fmt.Sprintf("%d replicas", replicas), func(t *testing.T) {
			const each = 40
			name := fmt.Sprintf("lines-%d", replicas)
			var wg sync.WaitGroup
			errs := make(chan error, replicas*each)
			for r := range replicas {
				// Each replica has its own connection, as separate processes do.
				k := configmaplines.Key{Client: kubernetes.NewForConfigOrDie(c.RESTConfig),
					Namespace: localcluster.SystemNamespace, Name: name, Key: "lines"}
				wg.Go(func() {
					for i := range each {
						line := fmt.Sprintf("replica-%d line-%d\n", r, i)
						if err := k.Update(context.Background(), func(text string) string { return text + line }); err != nil {
							errs <- err
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			failed := 0
			for err := range errs {
				if failed++; failed <= 3 {
					t.Error(err)
				}
			}
			text, err := configmaplines.Key{Client: c.Client, Namespace: localcluster.SystemNamespace, Name: name, Key: "lines"}.Read(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(text, "\n"); failed > 0 || got != replicas*each {
				t.Errorf("%d writes failed; %d lines saved, want %d", failed, got, replicas*each)
			}
		})
	}
}

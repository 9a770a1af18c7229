package deploy

import (
	"context"
	"slices"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pennysched/penny/pkg/configmaplines"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/test/harness"
)

// penny-scheduler's start-time check (--reclaim-interrupted-configmap,
// --reclaim-notices-configmap), asked of a real API server as the
// scheduler's ServiceAccount with the shipped RBAC: the defaults pass, and
// a name the shipped Role does not cover is refused with the verbs it lacks.
func TestSchedulerMayWriteItsDefaultReclaimConfigMaps(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{})
	harness.ApplyYAML(t, c, schedulerFile, readRepoFile(t, schedulerFile), false)
	cfg := rest.CopyConfig(c.RESTConfig)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: schedulerSA,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:penny-system", "system:authenticated"}}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{"penny-interrupted-runs", "penny-reclaim-notices"} {
		denied, err := configmaplines.Access(ctx, client.AuthorizationV1(), "penny-system", name)
		if err != nil || len(denied) > 0 {
			t.Errorf("penny-system/%s, a default: denied %v, %v", name, denied, err)
		}
	}
	denied, err := configmaplines.Access(ctx, client.AuthorizationV1(), "penny-system", "my-notices")
	if err != nil || !slices.Equal(denied, []string{"update"}) {
		t.Errorf("penny-system/my-notices, not in the shipped Role: denied %v, %v; want update (get and create are granted on every ConfigMap in penny-system)", denied, err)
	}
	denied, err = configmaplines.Access(ctx, client.AuthorizationV1(), "ml", "penny-reclaim-notices")
	if err != nil || !slices.Equal(denied, configmaplines.Verbs) {
		t.Errorf("ml/penny-reclaim-notices, a tenant's namespace: denied %v, %v; want %v", denied, err, configmaplines.Verbs)
	}
}

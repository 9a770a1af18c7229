package spot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/go-logr/logr/testr"

	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/test/harness"
)

// as is a client that acts as a ServiceAccount, so that the deployed RBAC
// decides what it may do.
func as(t *testing.T, c *localcluster.Cluster, namespace, name string) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(c.RESTConfig)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + namespace + ":" + name}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// deployedScheduler starts a cluster with deploy/scheduler applied, and
// says where penny-scheduler keeps its state there, acting as its
// ServiceAccount.
func deployedScheduler(t *testing.T) (*localcluster.Cluster, pricing.PersistOptions) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	manifest, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "deploy", "scheduler", "penny-scheduler.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	harness.ApplyYAML(t, c, "deploy/scheduler/penny-scheduler.yaml", manifest, false)
	return c, pricing.PersistOptions{
		Client: as(t, c, localcluster.SystemNamespace, "penny-scheduler"), Namespace: localcluster.SystemNamespace,
		Name: "penny-interrupted-runs", MinInterval: 50 * time.Millisecond, Log: testr.New(t),
	}
}

func bare(namespace, name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
}

// A restarted scheduler still keeps a workload that lost a run to a Spot
// reclaim off Spot: the runs are saved to a ConfigMap in penny-system, under
// the deployed RBAC, by replicas that do not erase each other's runs, and
// tenants cannot write them.
func TestInterruptedRunsOutliveARestart(t *testing.T) {
	catalog := shippedCatalog(t)
	c, opts := deployedScheduler(t)
	ctx := context.Background()
	saved := func() string {
		t.Helper()
		cm, err := c.Client.CoreV1().ConfigMaps(opts.Namespace).Get(ctx, opts.Name, metav1.GetOptions{})
		if err != nil {
			return ""
		}
		return cm.Data[pricing.InterruptedKey]
	}

	// Before the restart: a reclaim cut a 3-hour run of default/train-a short.
	before := pricing.NewInterrupted(0)
	before.Observe(bare("default", "train-a"), 3*time.Hour, time.Now())
	if err := before.Save(ctx, opts); err != nil {
		t.Fatalf("penny-scheduler's ServiceAccount cannot save the runs: %v", err)
	}

	t.Run("tenants cannot write the saved runs", func(t *testing.T) {
		cms := as(t, c, "default", "default").CoreV1().ConfigMaps(opts.Namespace)
		cm, err := c.Client.CoreV1().ConfigMaps(opts.Namespace).Get(ctx, opts.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cm.Data[pricing.InterruptedKey] = ""
		if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("a tenant's ServiceAccount cleared the saved runs: err=%v", err)
		}
	})

	t.Run("a restarted scheduler keeps the workload off Spot", func(t *testing.T) {
		after := pricing.NewInterrupted(0)
		if err := after.Load(ctx, opts); err != nil {
			t.Fatal(err)
		}
		if got := after.Longest(bare("default", "train-a")); got != 3*time.Hour {
			t.Fatalf("after the restart the workload's run is %v, want 3h", got)
		}
		harness.StartScheduler(t, c, plugins.Deps{Prices: catalog, Interrupted: after})
		// On-demand is full and no autoscaler adds any, so training without
		// checkpoints that does not wait for it may take Spot, unless a
		// reclaim already cut one of its runs short.
		harness.CreatePod(t, c, gpuPod("service", "8", map[string]string{"penny.dev/workload": "inference"}))
		harness.WaitForPod(t, c, "default", "service", 20*time.Second, "bound", harness.Bound)
		training := map[string]string{"penny.dev/workload": "training", "penny.dev/fallback-after": "0s"}
		harness.CreatePod(t, c, gpuPod("train-b", "1", training))
		if p := harness.WaitForPod(t, c, "default", "train-b", 20*time.Second, "bound", harness.Bound); !strings.Contains(p.Spec.NodeName, "spot") {
			t.Fatalf("a workload no reclaim interrupted went to %s, want the Spot node (on-demand is full)", p.Spec.NodeName)
		}
		harness.CreatePod(t, c, gpuPod("train-a", "1", training))
		msg := harness.WaitForEvent(t, c, "default", "train-a", "FailedScheduling", 20*time.Second)
		if want := "a reclaim already cut a run of this workload short after 3h0m0s"; !strings.Contains(msg, want) {
			t.Fatalf("FailedScheduling %q lacks %q", msg, want)
		}
		if p, _ := c.Client.CoreV1().Pods("default").Get(ctx, "train-a", metav1.GetOptions{}); p.Spec.NodeName != "" {
			t.Fatalf("the interrupted workload was bound to %s", p.Spec.NodeName)
		}
	})

	t.Run("replicas saving at once keep each other's runs", func(t *testing.T) {
		r1, r2 := pricing.NewInterrupted(0), pricing.NewInterrupted(0)
		r1.Observe(bare("ml", "one"), time.Hour, time.Now())
		r1.Observe(bare("ml", "both"), 2*time.Hour, time.Now())
		r2.Observe(bare("ml", "two"), 4*time.Hour, time.Now())
		r2.Observe(bare("ml", "both"), 5*time.Hour, time.Now())
		var wg sync.WaitGroup
		for _, r := range []*pricing.Interrupted{r1, r2} {
			wg.Go(func() {
				if err := r.Save(ctx, opts); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		fresh := pricing.NewInterrupted(0)
		if err := fresh.Load(ctx, opts); err != nil {
			t.Fatal(err)
		}
		for pod, want := range map[string]time.Duration{"one": time.Hour, "two": 4 * time.Hour, "both": 5 * time.Hour} {
			if got := fresh.Longest(bare("ml", pod)); got != want {
				t.Errorf("ml/%s: %v saved, want %v (saved copy:\n%s)", pod, got, want, saved())
			}
		}
		if got := fresh.Longest(bare("default", "train-a")); got != 3*time.Hour {
			t.Errorf("the earlier run is gone: %v", got)
		}
	})

	t.Run("runs are saved soon after they are recorded", func(t *testing.T) {
		live := pricing.NewInterrupted(0)
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go live.Persist(pctx, opts)
		live.Observe(bare("ml", "late"), 90*time.Minute, time.Now())
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			return strings.Contains(saved(), "pod:ml/late 1h30m0s "), nil
		})
		if err != nil {
			t.Fatalf("the run was not saved within 10s; saved copy:\n%s", saved())
		}
	})

	t.Run("a damaged copy is reported line by line and the rest kept", func(t *testing.T) {
		cm, err := c.Client.CoreV1().ConfigMaps(opts.Namespace).Get(ctx, opts.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cm.Data[pricing.InterruptedKey] = "pod:ml/ok 2h\nnonsense\npod:ml/neg -1h\n"
		if _, err := c.Client.CoreV1().ConfigMaps(opts.Namespace).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		m := pricing.NewInterrupted(0)
		err = m.Load(ctx, opts)
		if err == nil {
			t.Fatal("a damaged copy loaded without an error")
		}
		for _, want := range []string{"configmap penny-system/penny-interrupted-runs key runs line 2 \"nonsense\"", "line 3", "e.g. \"gang:label:ml/llm 14h50m0s 2026-11-30T08:00:00Z\""} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		if got := m.Longest(bare("ml", "ok")); got != 2*time.Hour {
			t.Errorf("the good line was not kept: %v", got)
		}
	})
}

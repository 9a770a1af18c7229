// Package harness starts the real parts integration tests run against — a
// local control plane with KWOK GPU nodes and an in-process penny-scheduler —
// and waits on them, so each test reads as what it checks.
package harness

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins"
)

// RepoRoot is the repository's top directory, found from this file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// StartCluster starts a local cluster for the test and stops it at cleanup.
func StartCluster(t testing.TB, opts localcluster.Options) *localcluster.Cluster {
	t.Helper()
	c, err := localcluster.Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("start local cluster: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

// ParseSpec parses an inline cluster spec or fails the test.
func ParseSpec(t testing.TB, yaml string) *localcluster.Spec {
	t.Helper()
	spec, err := localcluster.ParseSpec(t.Name()+".yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("cluster spec: %v", err)
	}
	return spec
}

// StartScheduler runs penny-scheduler with the deployed configuration (or
// config, when given) against c, and stops it at cleanup.
func StartScheduler(t testing.TB, c *localcluster.Cluster, deps plugins.Deps, config ...[]byte) *plugins.Scheduler {
	t.Helper()
	cfg := deploy.SchedulerConfig
	if len(config) > 0 {
		cfg = config[0]
	}
	s, err := plugins.StartScheduler(context.Background(), plugins.SchedulerOptions{
		Kubeconfig: c.KubeconfigPath, Config: cfg, Deps: deps,
	})
	if err != nil {
		t.Fatalf("start penny-scheduler: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// CreatePod creates a pod, retrying while the namespace's default
// ServiceAccount is still being created by its controller.
func CreatePod(t testing.TB, c *localcluster.Cluster, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	var created *corev1.Pod
	var lastErr error
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		created, lastErr = c.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if lastErr != nil && strings.Contains(lastErr.Error(), "serviceaccount") {
			return false, nil
		}
		return true, lastErr
	})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v (last error: %v)", pod.Namespace, pod.Name, err, lastErr)
	}
	return created
}

// WaitForPod polls a pod until cond holds, failing the test after timeout
// with the pod's last state.
func WaitForPod(t testing.TB, c *localcluster.Cluster, namespace, name string, timeout time.Duration, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		return cond(p), nil
	})
	if err != nil {
		state := "not found"
		if last != nil {
			state = fmt.Sprintf("phase=%s node=%q conditions=%v", last.Status.Phase, last.Spec.NodeName, last.Status.Conditions)
		}
		t.Fatalf("pod %s/%s: %s within %v: %s", namespace, name, what, timeout, state)
	}
	return last
}

// Bound reports whether a pod has a node.
func Bound(p *corev1.Pod) bool { return p.Spec.NodeName != "" }

// WaitForEvent waits for an event on an object whose reason matches and
// returns its message.
func WaitForEvent(t testing.TB, c *localcluster.Cluster, namespace, objectName, reason string, timeout time.Duration) string {
	t.Helper()
	var msg string
	selector := fields.Set{"involvedObject.name": objectName, "reason": reason}.AsSelector().String()
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		evs, err := c.Client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{FieldSelector: selector})
		if err != nil || len(evs.Items) == 0 {
			return false, nil
		}
		msg = evs.Items[len(evs.Items)-1].Message
		return true, nil
	})
	if err != nil {
		t.Fatalf("no %s event on %s/%s within %v", reason, namespace, objectName, timeout)
	}
	return msg
}

// SchedulerName is the profile name pods use to opt in to Penny.
const SchedulerName = "penny-scheduler"

// Pod is a pod in the default namespace for penny-scheduler whose one
// container has the given limits (and equal requests).
func Pod(name string, limits corev1.ResourceList) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault},
		Spec: corev1.PodSpec{
			SchedulerName: SchedulerName,
			Containers: []corev1.Container{{
				Name:      "main",
				Image:     "registry.example/" + name,
				Resources: corev1.ResourceRequirements{Limits: limits, Requests: limits},
			}},
		},
	}
}

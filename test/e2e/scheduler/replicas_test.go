// Package scheduler runs the penny-scheduler binary as deploy/scheduler
// runs it: replicas with leader election, Penny's flags, the deployed RBAC,
// and SIGTERM to stop.
package scheduler

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
	"github.com/pennysched/penny/test/harness"
)

var schedulerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "penny-scheduler-e2e-")
	if err != nil {
		panic(err)
	}
	schedulerBin = filepath.Join(dir, "penny-scheduler")
	build := exec.Command("go", "build", "-o", schedulerBin, "./cmd/penny-scheduler")
	build.Dir = harness.RepoRoot()
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build penny-scheduler: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// replica is one penny-scheduler process.
type replica struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// world is a local cluster with deploy/scheduler and deploy/pricing applied
// and what a replica needs: a kubeconfig that acts as the penny-scheduler
// ServiceAccount, the deployed configuration, and the telemetry endpoint's
// certificate.
type world struct {
	c                 *localcluster.Cluster
	dir, config       string
	certFile, keyFile string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{c: harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, `
region: us-east-1
pools:
- {name: ondemand, count: 1, cloud: aws, instanceType: p4d.24xlarge, gpuModel: A100-40GB, gpusPerNode: 8, capacityType: on-demand, zone: us-east-1a, cpu: "96", memory: 1152Gi}
`)}), dir: t.TempDir()}
	manifest, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "deploy", "scheduler", "penny-scheduler.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	harness.ApplyYAML(t, w.c, "deploy/scheduler/penny-scheduler.yaml", manifest, false)
	prices, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "deploy", "pricing", "penny-prices.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	harness.ApplyYAML(t, w.c, "deploy/pricing/penny-prices.yaml", prices, false)

	kc, err := clientcmd.LoadFromFile(w.c.KubeconfigPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range kc.AuthInfos {
		u.Impersonate = "system:serviceaccount:" + localcluster.SystemNamespace + ":penny-scheduler"
	}
	kubeconfig := filepath.Join(w.dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	// The deployed configuration (Penny's profile, its leader election),
	// with this cluster's kubeconfig and leases quick to pass on.
	var cfg map[string]any
	if err := yaml.Unmarshal(deploy.SchedulerConfig, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["clientConnection"] = map[string]any{"kubeconfig": kubeconfig}
	le := cfg["leaderElection"].(map[string]any)
	le["leaseDuration"], le["renewDeadline"], le["retryPeriod"] = "4s", "3s", "500ms"
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.config = filepath.Join(w.dir, "config.yaml")
	if err := os.WriteFile(w.config, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cert := telemetrytest.NewCert(t)
	w.certFile, w.keyFile = filepath.Join(w.dir, "tls.crt"), filepath.Join(w.dir, "tls.key")
	if err := os.WriteFile(w.certFile, cert.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.keyFile, cert.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return w
}

// start runs a replica with the telemetry endpoint and the reclaim
// coordinator on, as deploy/agent's patch turns them on.
func (w *world) start(t *testing.T, name string, extra ...string) *replica {
	t.Helper()
	args := append([]string{
		"--config=" + w.config, "--secure-port=0", "--v=2",
		"--telemetry-bind-address=" + telemetrytest.FreeAddr(t),
		"--telemetry-tls-cert-file=" + w.certFile, "--telemetry-tls-key-file=" + w.keyFile,
	}, extra...)
	r := &replica{name: name, out: &syncBuffer{}, done: make(chan error, 1)}
	r.cmd = exec.Command(schedulerBin, args...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		_ = r.cmd.Process.Kill()
		<-r.done
		if t.Failed() {
			t.Logf("%s's output:\n%s", name, r.out)
		}
	})
	return r
}

// stop sends SIGTERM, as the kubelet does, and waits for the process to
// end.
func (r *replica) stop(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Errorf("%s ended with %v after SIGTERM", r.name, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not end within 30s of SIGTERM (the kubelet's default grace period)", r.name)
	}
}

// waitForLeader waits until the scheduler Lease names a holder other than
// not, and returns it.
// says reports whether r's output has line, or has it within a minute: a
// replica writes the lease before it logs that it holds it.
func (r *replica) says(line string) bool {
	return wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		return strings.Contains(r.out.String(), line), nil
	}) == nil
}

func (w *world) waitForLeader(t *testing.T, not string) string {
	t.Helper()
	var holder string
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		l, err := w.c.Client.CoordinationV1().Leases(localcluster.SystemNamespace).Get(ctx, "penny-scheduler", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" || *l.Spec.HolderIdentity == not {
			return false, nil
		}
		holder = *l.Spec.HolderIdentity
		return true, nil
	})
	if err != nil {
		t.Fatalf("no replica leads: %v", err)
	}
	return holder
}

func (w *world) runs(t *testing.T) string {
	t.Helper()
	cm, err := w.c.Client.CoreV1().ConfigMaps(localcluster.SystemNamespace).Get(context.Background(), "penny-interrupted-runs", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cm.Data[pricing.InterruptedKey]
}

func (w *world) setRuns(t *testing.T, text string) {
	t.Helper()
	cms := w.c.Client.CoreV1().ConfigMaps(localcluster.SystemNamespace)
	cm, err := cms.Get(context.Background(), "penny-interrupted-runs", metav1.GetOptions{})
	if err != nil {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: localcluster.SystemNamespace, Name: "penny-interrupted-runs"}}
		cm.Data = map[string]string{pricing.InterruptedKey: text}
		if _, err := cms.Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		return
	}
	cm.Data = map[string]string{pricing.InterruptedKey: text}
	if _, err := cms.Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// placed creates a one-GPU pod for penny-scheduler and waits until the
// leading replica has placed it with Penny's profile.
func (w *world) placed(t *testing.T, name string) {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.PodSpec{SchedulerName: "penny-scheduler", Containers: []corev1.Container{{Name: "c", Image: "busybox",
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")}}}}}}
	harness.CreatePod(t, w.c, pod)
	p := harness.WaitForPod(t, w.c, "default", name, 30*time.Second, "placed", harness.Bound)
	if p.Annotations[gpu.AnnotationAssignment] == "" {
		t.Errorf("pod %s was placed without Penny's GPU assignment: the profile's plugins are not registered", name)
	}
}

// Every replica, the leader as well as one waiting for the lease, saves the
// runs Spot reclaims cut short once more on its way out (docs/spot.md): a
// run it knows and the saved copy lacks is in the copy after SIGTERM, and
// the process exits 0. (kube-scheduler's own command ends the process from
// its leader election as soon as the signal arrives, before anything else
// can save.) The lease then passes to a replica still running, which places
// pods as the first leader did.
func TestReplicasSaveWhatTheyKnowOnSIGTERM(t *testing.T) {
	w := newWorld(t)
	const run = "pod:ml/train-a 3h0m0s 2026-11-30T08:00:00Z\n"
	w.setRuns(t, run)

	a := w.start(t, "replica a")
	first := w.waitForLeader(t, "")
	if !a.says("Successfully acquired lease") {
		t.Fatalf("replica a does not lead (holder %s)", first)
	}
	w.placed(t, "first")
	b, c := w.start(t, "replica b"), w.start(t, "replica c")
	// A replica is up, with the runs loaded, once it waits for the lease.
	for _, r := range []*replica{b, c} {
		if !r.says("Attempting to acquire leader lease") {
			t.Fatalf("%s does not wait for the lease", r.name)
		}
	}

	// stop clears the copy (the run is then what only the processes know)
	// and stops r.
	stop := func(r *replica, role string) {
		t.Helper()
		w.setRuns(t, "")
		r.stop(t)
		if got := w.runs(t); got != run {
			t.Errorf("after the SIGTERM of %s (%s) the copy holds %q, want %q", r.name, role, got, run)
		}
	}
	stop(c, "waiting for the lease")
	stop(a, "the leader")
	if second := w.waitForLeader(t, first); !b.says("Successfully acquired lease") {
		t.Errorf("the lease went to %s, not to replica b", second)
	}
	w.placed(t, "second")
	stop(b, "the new leader")
}

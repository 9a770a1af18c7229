// Package localcluster runs a real Kubernetes control plane in-process on
// loopback — embedded etcd, kube-apiserver, the controllers GPU workloads
// need — with simulated GPU nodes kept alive by KWOK. `penny up` and the
// integration tests use it; nothing here is a fake of the API.
package localcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// getuid is os.Getuid; a test stands in another user for it, which needs
// no root to give a directory away.
var getuid = os.Getuid

// Options configure a local cluster. The zero value is a cluster without
// nodes in a fresh temporary directory on free ports.
type Options struct {
	// Dir holds the cluster's state (etcd data, certificates, kubeconfig).
	// Empty means a new temporary directory. It must be new, empty, or an
	// earlier cluster's; Stop removes it, or empties a directory that was
	// there empty. Only one cluster at a time may use a directory.
	Dir string
	// APIServerPort is the kube-apiserver's port on 127.0.0.1; 0 picks a free one.
	APIServerPort int
	// Spec lists the simulated nodes to create; nil creates none.
	Spec *Spec
	// FeatureGates are set process-wide before the control plane starts
	// (e.g. GenericWorkload for the native gang API); the scheduler started
	// in the same process sees the same gates.
	FeatureGates map[string]bool
	// RuntimeConfig enables API groups, e.g. {"scheduling.k8s.io/v1beta1": "true"}.
	RuntimeConfig map[string]string
	// AdmissionControlConfigFile is kube-apiserver's
	// --admission-control-config-file (e.g. the kubeconfig its webhooks'
	// calls present client certificates from); empty: none.
	AdmissionControlConfigFile string
	// Log receives the simulated kubelets' warnings; nil means stderr.
	Log io.Writer
	// DirFlag and PortFlag are what errors call Dir and APIServerPort: the
	// flags a command takes them from, e.g. "--dir" and "--port". Empty
	// means "state directory" and "kube-apiserver port".
	DirFlag, PortFlag string
}

// Cluster is a running local control plane.
type Cluster struct {
	// Dir is the state directory; KubeconfigPath is the admin kubeconfig in it.
	Dir            string
	KubeconfigPath string
	// RESTConfig and Client act as cluster admin.
	RESTConfig *rest.Config
	Client     kubernetes.Interface
	// StartupDuration is how long Start took, nodes Ready included.
	StartupDuration time.Duration

	cancel context.CancelFunc
	// stopClients stops the controllers and KWOK; controllersStopped
	// waits for the controllers to have stopped.
	stopClients        context.CancelFunc
	controllersStopped func()
	etcd               *embed.Etcd
	apiserver          *apiServer
	lock               *os.File
	// ownDir: the cluster made Dir (or an earlier cluster did), and Stop
	// removes it; else Stop empties it.
	ownDir bool
	// dirFlag is Options.DirFlag.
	dirFlag string
}

// SystemNamespace is where Penny's own components and leases live.
const SystemNamespace = "penny-system"

// Start brings a cluster up and returns once its nodes are Ready. On error
// everything started so far is stopped and the directory removed (or
// emptied, as Stop does).
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	began := time.Now()
	c := &Cluster{dirFlag: opts.DirFlag}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	port := "kube-apiserver port"
	if opts.PortFlag != "" {
		port = opts.PortFlag
	}
	if opts.APIServerPort < 0 || opts.APIServerPort > 65535 {
		return nil, fmt.Errorf("%s %d is not a TCP port: choose one of 1..65535 (0 picks a free one)", port, opts.APIServerPort)
	}
	if err := c.claimDir(opts.Dir); err != nil {
		return nil, err
	}
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", opts.APIServerPort))
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%s %d on 127.0.0.1 is in use (%v): stop whatever holds it, or choose another port", port, opts.APIServerPort, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %d on 127.0.0.1: %w", port, opts.APIServerPort, err)
	}
	if len(opts.FeatureGates) > 0 {
		if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(opts.FeatureGates); err != nil {
			listener.Close()
			return nil, fmt.Errorf("feature gates: %w", err)
		}
	}
	var runCtx context.Context
	runCtx, c.cancel = context.WithCancel(context.WithoutCancel(ctx))

	keys, err := newPKI(c.Dir)
	if err != nil {
		listener.Close()
		return nil, fmt.Errorf("certificates: %w", err)
	}
	// An interrupt (ctx done) stops the start between steps; etcd's own
	// start is quick.
	if err := ctx.Err(); err != nil {
		listener.Close()
		return nil, err
	}
	var etcdURL string
	if c.etcd, etcdURL, err = startEtcd(c.Dir, 0); err != nil {
		listener.Close()
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		listener.Close()
		return nil, err
	}
	if c.apiserver, err = startAPIServer(runCtx, c.Dir, listener, etcdURL, keys, opts); err != nil {
		return nil, err
	}
	c.RESTConfig = keys.adminConfig(c.apiserver.host, c.apiserver.serverCA)
	if c.Client, err = kubernetes.NewForConfig(c.RESTConfig); err != nil {
		return nil, err
	}
	c.KubeconfigPath = filepath.Join(c.Dir, "kubeconfig")
	if err := writeKubeconfig(c.KubeconfigPath, c.RESTConfig); err != nil {
		return nil, err
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: SystemNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	var clientsCtx context.Context
	clientsCtx, c.stopClients = context.WithCancel(runCtx)
	if c.controllersStopped, err = startControllers(clientsCtx, c.RESTConfig); err != nil {
		return nil, err
	}
	logTo := opts.Log
	if logTo == nil {
		logTo = os.Stderr
	}
	if err := startKWOK(clientsCtx, c.KubeconfigPath, c.RESTConfig, logTo); err != nil {
		return nil, err
	}
	if opts.Spec != nil {
		if err := c.AddNodes(ctx, opts.Spec.Nodes()...); err != nil {
			return nil, err
		}
	}
	c.StartupDuration = time.Since(began)
	return c, nil
}

// AddNodes creates simulated nodes and waits until KWOK reports them Ready.
func (c *Cluster) AddNodes(ctx context.Context, nodes ...*corev1.Node) error {
	for _, n := range nodes {
		if _, err := c.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create node %s: %w", n.Name, err)
		}
	}
	for _, n := range nodes {
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			got, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			for _, cond := range got.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("node %s did not become Ready: %w", n.Name, err)
		}
	}
	return nil
}

// Stop tears the cluster down and removes its directory. It is safe to call
// more than once and on a partly started cluster.
func (c *Cluster) Stop() {
	// In the order they depend on each other: the API's clients before
	// the kube-apiserver, so that they do not retry against a server
	// going away, and the kube-apiserver before etcd.
	if c.stopClients != nil {
		c.stopClients()
	}
	if c.controllersStopped != nil {
		stopped := make(chan struct{})
		go func() {
			c.controllersStopped()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(30 * time.Second):
		}
		c.controllersStopped = nil
	}
	if c.cancel != nil {
		c.cancel()
	}
	if c.apiserver != nil {
		select {
		case <-c.apiserver.done:
		case <-time.After(30 * time.Second):
		}
		c.apiserver = nil
	}
	if c.etcd != nil {
		c.etcd.Close()
		c.etcd = nil
	}
	if c.lock != nil {
		if c.ownDir {
			os.RemoveAll(c.Dir)
		} else {
			// The directory was empty when the cluster claimed it: what is
			// in it now is the cluster's.
			entries, _ := os.ReadDir(c.Dir)
			for _, e := range entries {
				os.RemoveAll(filepath.Join(c.Dir, e.Name()))
			}
		}
		c.lock.Close()
		c.lock = nil
	}
}

// claimDir creates the state directory and takes an exclusive lock in it,
// so that a second cluster on the same directory fails at once with the pid
// of the first instead of corrupting its etcd. Since the cluster empties the
// directory when it starts and stops, it claims only a new or empty one, or
// the state directory of an earlier cluster (its lock file holds a pid); and
// only one of its own user's, since the default is in the shared temporary
// directory, where anyone may have made it first.
func (c *Cluster) claimDir(dir string) error {
	name := "state directory"
	if c.dirFlag != "" {
		name = c.dirFlag
	}
	own := false
	if dir == "" {
		d, err := os.MkdirTemp("", "penny-local-")
		if err != nil {
			return err
		}
		dir, own = d, true
	} else if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("%s %s: %w", name, dir, err)
		}
		own = true
	}
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", name, dir, err)
	}
	if !info.IsDir() {
		return fmt.Errorf("%s %s is a file, not a directory: give a new or empty directory", name, dir)
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) != getuid() {
		return fmt.Errorf("%s %s belongs to user %d, not to you (user %d): give a directory of your own", name, dir, st.Uid, getuid())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", name, dir, err)
	}
	lockPath := filepath.Join(dir, "lock")
	lockInfo, statErr := os.Lstat(lockPath)
	earlier := statErr == nil
	if len(entries) > 0 && !earlier {
		return fmt.Errorf("%s %s is not empty and holds no local cluster's lock file: a cluster deletes what is in the directory it runs in, so give a new or empty one", name, dir)
	}
	if earlier && !lockInfo.Mode().IsRegular() {
		return fmt.Errorf("%s %s: its lock is not a file (a link, say), so it is no local cluster's: give a new or empty directory", name, dir)
	}
	// O_NOFOLLOW: a link made between the check above and here is refused
	// too, not written through.
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("%s %s: %w", name, dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(lockPath)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holderPid := ""
			if pid, _ := parseLock(holder); pid > 0 {
				// Empty while the other cluster is between locking and writing.
				holderPid = fmt.Sprintf(" (pid %d)", pid)
			}
			return fmt.Errorf("%s %s is in use by another local cluster%s: stop it first (Ctrl-C), or use another directory", name, dir, holderPid)
		}
		return fmt.Errorf("lock %s: %w", lockPath, err)
	}
	if earlier {
		// Read under the lock: a cluster writes its pid once it holds it.
		holder, _ := os.ReadFile(lockPath)
		// A cluster killed between creating its lock file and writing its
		// pid leaves an empty lock file alone: nothing to keep.
		killedEarly := len(entries) == 1 && len(holder) == 0
		pid, made := parseLock(holder)
		if pid <= 0 && !killedEarly {
			f.Close()
			return fmt.Errorf("%s %s is not empty and its lock file holds no local cluster's pid: a cluster deletes what is in the directory it runs in, so give a new or empty one", name, dir)
		}
		// A previous run that was killed leaves its data behind; start
		// clean. The directory goes too only if that cluster made it: one
		// the user gave empty stays theirs however many runs were killed
		// in it (and one whose lock does not say, killed early, is kept).
		entries, _ = os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() != "lock" {
				os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
		own = made
	}
	f.Truncate(0)
	content := strconv.Itoa(os.Getpid()) + "\n"
	if own {
		content += lockMadeDir + "\n"
	}
	f.WriteString(content)
	// Absolute, so that the kubeconfig path printed works from anywhere.
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	c.Dir, c.lock, c.ownDir = dir, f, own
	return nil
}

// lockMadeDir, on the line after the pid in a lock file, says the cluster
// made the directory, so that a later cluster clearing up after a killed one
// knows whether to remove the directory or only empty it.
const lockMadeDir = "made"

// parseLock reads a lock file's pid and whether the cluster that wrote it
// made the directory; pid is 0 if the file is not a cluster's lock.
func parseLock(content []byte) (pid int, made bool) {
	lines := strings.Split(strings.TrimSpace(string(content)), "\n")
	if len(lines) > 2 || len(lines) == 2 && lines[1] != lockMadeDir {
		return 0, false
	}
	pid, err := strconv.Atoi(lines[0])
	if err != nil || pid < 0 {
		return 0, false
	}
	return pid, len(lines) == 2
}

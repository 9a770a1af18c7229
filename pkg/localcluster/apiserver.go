package localcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// apiServer is a kube-apiserver running in this process.
type apiServer struct {
	host     string
	serverCA []byte
	// done is closed when the server has stopped, err then says why.
	done chan struct{}
	err  error
}

// startAPIServer runs kube-apiserver in-process on a listener it already
// holds, so a port clash is reported before anything else starts. It waits
// for the server to be ready even when the caller is interrupted: stopped
// before its post-start hooks are done, the server exits the process
// (klog.Fatal in k8s.io/apiserver's runPostStartHook). It owns the
// listener: one that fails before the server runs closes it, since no
// server is left to let go of the port.
func startAPIServer(ctx context.Context, dir string, listener net.Listener, etcdURL string, p *pki, opts Options) (_ *apiServer, err error) {
	running := false
	defer func() {
		if err != nil && !running {
			listener.Close()
		}
	}()
	routeEtcdClientLogs()
	certDir := filepath.Join(dir, "apiserver")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, err
	}
	s := options.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	// Each in-process server gets its own component registry (as upstream's
	// test server does) so that a second cluster in one process can start.
	effective := compatibility.DefaultBuildEffectiveVersion()
	registry := basecompatibility.NewComponentGlobalsRegistry()
	if err := registry.Register(basecompatibility.DefaultKubeComponent, effective, utilfeature.DefaultMutableFeatureGate); err != nil {
		return nil, err
	}
	s.GenericServerRunOptions.ComponentGlobalsRegistry = registry

	args := []string{
		"--bind-address=127.0.0.1",
		"--cert-dir=" + certDir,
		"--etcd-servers=" + etcdURL,
		"--etcd-prefix=/registry",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=none",
		"--authorization-mode=Node,RBAC",
		"--client-ca-file=" + p.clientCAFile,
		"--service-account-issuer=" + p.serviceIssuer,
		"--service-account-key-file=" + p.saKeyFile,
		"--service-account-signing-key-file=" + p.saKeyFile,
		"--api-audiences=" + p.serviceIssuer,
		"--allow-privileged=true",
		"--profiling=false",
		// Nodes get a not-ready taint at creation that the node lifecycle
		// controller lifts once the kubelet reports; KWOK nodes report Ready
		// from the start and no lifecycle controller runs here.
		"--disable-admission-plugins=TaintNodesByCondition",
	}
	if len(opts.RuntimeConfig) > 0 {
		keys := make([]string, 0, len(opts.RuntimeConfig))
		for k := range opts.RuntimeConfig {
			keys = append(keys, k+"="+opts.RuntimeConfig[k])
		}
		sort.Strings(keys)
		args = append(args, "--runtime-config="+strings.Join(keys, ","))
	}
	if opts.AdmissionControlConfigFile != "" {
		args = append(args, "--admission-control-config-file="+opts.AdmissionControlConfigFile)
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("kube-apiserver flags: %w", err)
	}
	if err := registry.Set(); err != nil {
		return nil, err
	}
	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = listener.Addr().(*net.TCPAddr).Port
	s.SecureServing.ExternalAddress = net.ParseIP("127.0.0.1")

	completed, err := s.Complete(ctx)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver options: %w", err)
	}
	if errs := completed.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("kube-apiserver options: %w", utilerrors.NewAggregate(errs))
	}
	cfg, err := app.NewConfig(completed)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver config: %w", err)
	}
	cc, err := cfg.Complete()
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver config: %w", err)
	}
	server, err := app.CreateServerChain(cc)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	prepared, err := server.PrepareRun()
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	a := &apiServer{
		host: fmt.Sprintf("https://127.0.0.1:%d", s.SecureServing.BindPort),
		done: make(chan struct{}),
	}
	running = true
	go func() {
		a.err = prepared.Run(ctx)
		close(a.done)
	}()

	// From here on a is returned with an error too, so that the caller's
	// Stop waits for the server to let go of its port.
	if a.serverCA, err = os.ReadFile(filepath.Join(certDir, "apiserver.crt")); err != nil {
		return a, fmt.Errorf("kube-apiserver serving certificate: %w", err)
	}
	if err := a.waitHealthy(ctx, p.adminConfig(a.host, a.serverCA)); err != nil {
		return a, err
	}
	return a, nil
}

func (a *apiServer) waitHealthy(ctx context.Context, cfg *rest.Config) error {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var lastErr error
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case <-a.done:
			return false, fmt.Errorf("kube-apiserver stopped: %w", a.err)
		default:
		}
		res := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx)
		if lastErr = res.Error(); lastErr != nil {
			return false, nil
		}
		_, lastErr = client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return lastErr == nil, nil
	})
	if err != nil {
		return fmt.Errorf("kube-apiserver did not become ready: %v (last error: %v)", err, lastErr)
	}
	return nil
}

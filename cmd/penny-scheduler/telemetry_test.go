package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/pennysched/penny/agent/agenttest"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func kubeconfig(server string) []byte {
	return []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "` + server + `"}}]
users: [{name: u, user: {}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`)
}

// The flags start an endpoint that authenticates agents with TokenReview
// against the API server the scheduler's --config names, and fills the
// store the plugins read.
func TestTelemetryFlagsStartTheEndpoint(t *testing.T) {
	dir := t.TempDir()
	api := telemetrytest.StartTokenReviewAPI(t)
	kc := writeFile(t, dir, "kubeconfig", kubeconfig(api.URL))
	config := writeFile(t, dir, "config.yaml", []byte(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: `+kc+`
`))
	cert := telemetrytest.NewCert(t)
	addr := telemetrytest.FreeAddr(t)

	var f telemetryFlags
	fs := f.flagSet()
	fs.String("config", "", "")
	fs.String("kubeconfig", "", "")
	if err := fs.Parse([]string{
		"--config", config,
		"--telemetry-bind-address", addr,
		"--telemetry-tls-cert-file", writeFile(t, dir, "tls.crt", cert.CertPEM),
		"--telemetry-tls-key-file", writeFile(t, dir, "tls.key", cert.KeyPEM),
		"--telemetry-max-age", "7s",
	}); err != nil {
		t.Fatal(err)
	}
	client, err := tokenReviewClient(fs)
	if err != nil {
		t.Fatal(err)
	}
	store := telemetry.NewStore(telemetry.StoreOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := startTelemetry(ctx, &f, store, client); err != nil {
		t.Fatal(err)
	}
	if store.MaxAge() != 7*time.Second {
		t.Errorf("max age %v", store.MaxAge())
	}

	// The agent's report loop and uplink connect and report. (GPUs from a
	// stand-in: this binary cannot link NVML, see agent/report.Source.)
	agenttest.Start(t, agenttest.Options{
		Node: "gpu-1", Address: addr, TLS: cert.ClientTLS(), GPUs: telemetrytest.GPUSource{GPUs: 8},
		TokenFile: writeFile(t, dir, "token", []byte("node:gpu-1")),
	})
	agenttest.WaitForNode(t, store, "gpu-1", 8, 10*time.Second)
	if auds, n := api.LastAudiences(); n == 0 || len(auds) != 1 || auds[0] != "penny-scheduler" {
		t.Errorf("TokenReview: %d reviews, audiences %v", n, auds)
	}
}

func TestTelemetryFlagErrors(t *testing.T) {
	store := telemetry.NewStore(telemetry.StoreOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cases := []struct {
		f    telemetryFlags
		want string
	}{
		{telemetryFlags{bindAddress: ":0"}, "--telemetry-tls-cert-file"},
		{telemetryFlags{bindAddress: ":0", certFile: "c", keyFile: "k", maxAge: -time.Second}, "--telemetry-max-age"},
		{telemetryFlags{bindAddress: ":0", certFile: "/nonexistent/c", keyFile: "/nonexistent/k", maxAge: time.Second}, "certificate"},
	}
	for _, c := range cases {
		err := startTelemetry(ctx, &c.f, store, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want an error mentioning %q", c.f, err, c.want)
		}
	}
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.String("config", "/nonexistent/config.yaml", "")
	if _, err := tokenReviewClient(fs); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("unreadable --config: %v", err)
	}
}

// The patch deploy/agent applies to the scheduler's Deployment uses flags
// this command knows.
func TestTelemetryPatchFlags(t *testing.T) {
	var f telemetryFlags
	if err := f.flagSet().Parse(patchArgs(t, "../../deploy/agent/scheduler-telemetry-patch.yaml")); err != nil {
		t.Fatal(err)
	}
	if f.bindAddress == "" || f.certFile == "" || f.keyFile == "" {
		t.Errorf("patch does not turn the endpoint on: %+v", f)
	}
}

// patchArgs are the arguments a JSON patch of deploy/ appends to the
// scheduler's container.
func patchArgs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ops []struct {
		Path  string `json:"path"`
		Value any    `json:"value"`
	}
	if err := yaml.Unmarshal(data, &ops); err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, op := range ops {
		if strings.HasSuffix(op.Path, "/args/-") {
			args = append(args, op.Value.(string))
		}
	}
	return args
}

func TestReclaimFlagErrors(t *testing.T) {
	ok := reclaimFlags{safetyMargin: time.Second, maintenanceLead: time.Second}
	for _, v := range []string{"", "penny-system/penny-interrupted-runs"} {
		f := ok
		f.interruptedConfigMap = v
		if err := f.validate(); err != nil {
			t.Errorf("--reclaim-interrupted-configmap %q: %v", v, err)
		}
	}
	for _, v := range []string{"penny-interrupted-runs", "/x", "ns/", "a/b/c"} {
		f := ok
		f.interruptedConfigMap = v
		if err := f.validate(); err == nil || !strings.Contains(err.Error(), "--reclaim-interrupted-configmap") || !strings.Contains(err.Error(), "namespace/name") {
			t.Errorf("--reclaim-interrupted-configmap %q: %v", v, err)
		}
	}
	for _, v := range []string{"penny-reclaim-notices", "/x", "ns/", "a/b/c"} {
		f := ok
		f.noticesConfigMap = v
		if err := f.validate(); err == nil || !strings.Contains(err.Error(), "--reclaim-notices-configmap") || !strings.Contains(err.Error(), "namespace/name") {
			t.Errorf("--reclaim-notices-configmap %q: %v", v, err)
		}
	}
	f := ok
	f.noticesConfigMap = "penny-system/penny-reclaim-notices"
	if err := f.validate(); err != nil {
		t.Errorf("--reclaim-notices-configmap %q: %v", f.noticesConfigMap, err)
	}
}

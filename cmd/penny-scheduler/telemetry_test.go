package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	fakeclient "k8s.io/client-go/kubernetes/fake"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
	volumeutil "k8s.io/kubernetes/pkg/volume/util"
	"sigs.k8s.io/yaml"

	"github.com/pennysched/penny/agent/agenttest"
	"github.com/pennysched/penny/pkg/agentadmission"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
	"github.com/pennysched/penny/plugins/spotrisk"
)

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// sharedAPIClients stands client in for every client but the Nodes'
// metadata, the webhook's pod reads included.
func sharedAPIClients(client kubernetes.Interface, nodes metadata.Interface) apiClients {
	return apiClients{client: client, nodes: nodes, webhookPods: client.CoreV1()}
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
	addr, webhookAddr := telemetrytest.FreeAddr(t), telemetrytest.FreeAddr(t)

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
		"--telemetry-eviction-webhook-bind-address", webhookAddr,
	}); err != nil {
		t.Fatal(err)
	}
	apis, err := newAPIClients(fs)
	if err != nil || apis.nodes == nil || apis.webhookPods == nil {
		t.Fatal(apis, err)
	}
	apis.nodes = telemetrytest.NodeMetadata("gpu-1")
	store := telemetry.NewStore(telemetry.StoreOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The stand-in API server answers TokenReviews only; the Nodes come
	// from a stand-in too.
	if _, err := startTelemetry(ctx, &f, store, apis); err != nil {
		t.Fatal(err)
	}
	if store.MaxAge() != 7*time.Second {
		t.Errorf("max age %v", store.MaxAge())
	}

	// The agent's report loop and uplink connect and report. (GPUs from a
	// stand-in: this binary cannot link NVML, see agent/report.Source.)
	agenttest.Start(t, agenttest.Options{
		Node: "gpu-1", Address: addr, TLS: cert.ClientTLS(), GPUs: telemetrytest.GPUSource{GPUs: 8},
		TokenFile: writeFile(t, dir, "token", []byte(telemetrytest.NodeJWT("gpu-1"))),
	})
	agenttest.WaitForNode(t, store, "gpu-1", 8, 10*time.Second)
	if auds, n := api.LastAudiences(); n == 0 || len(auds) != 1 || auds[0] != "penny-scheduler" {
		t.Errorf("TokenReview: %d reviews, audiences %v", n, auds)
	}

	// The agent evictions webhook answers the API server with the same
	// certificate; an agent's eviction without a UID precondition is refused
	// before any pod is read (the stand-in API server has none).
	review := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"r1",
		"resource":{"group":"","version":"v1","resource":"pods"},"subResource":"eviction","operation":"CREATE",
		"namespace":"team-a","name":"p","userInfo":{"username":"system:serviceaccount:penny-system:penny-agent",
		"extra":{"authentication.kubernetes.io/node-name":["gpu-1"]}},"object":{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p"}}}}`
	https := &http.Client{Transport: &http.Transport{TLSClientConfig: cert.ClientTLS()}, Timeout: 10 * time.Second}
	resp, err := https.Post("https://"+webhookAddr+agentadmission.Path, "application/json", strings.NewReader(review))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"allowed":false`) || !strings.Contains(string(body), "deleteOptions.preconditions.uid") {
		t.Errorf("agent evictions webhook: %s %s", resp.Status, body)
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
		{telemetryFlags{bindAddress: ":0", certFile: "c", keyFile: "k", maxAge: -time.Second, maxStreams: 4, audience: "a"}, "--telemetry-max-age"},
		{telemetryFlags{bindAddress: ":0", certFile: "c", keyFile: "k", maxAge: time.Second, audience: "a"}, "--telemetry-max-streams-per-node"},
		{telemetryFlags{bindAddress: ":0", certFile: "c", keyFile: "k", maxAge: time.Second, maxStreams: 4, audience: "a"}, "--telemetry-max-authentications-in-flight 0: must be positive (default 100)"},
		{telemetryFlags{bindAddress: ":0", certFile: "c", keyFile: "k", maxAge: time.Second, maxStreams: 4, maxAuthentications: 100, audience: "a"}, "--telemetry-max-connections 0: must be positive (default 20000)"},
		{telemetryFlags{bindAddress: ":0", certFile: "c", keyFile: "k", maxAge: time.Second, maxStreams: 4, maxAuthentications: 100, maxConnections: 1}, "--telemetry-token-audience"},
		{telemetryFlags{bindAddress: ":0", certFile: "c", keyFile: "k", maxAge: time.Second, maxStreams: 4, maxAuthentications: 100, maxConnections: 1, audience: "a",
			reclaim: &reclaimFlags{safetyMargin: -time.Second, maintenanceLead: time.Minute}}, "--reclaim-safety-margin"},
	}
	for _, c := range cases {
		err := c.f.validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want an error mentioning %q", c.f, err, c.want)
		}
	}
	// As given on the command line.
	var parsed telemetryFlags
	if err := parsed.flagSet().Parse([]string{"--telemetry-bind-address=:0", "--telemetry-tls-cert-file=c", "--telemetry-tls-key-file=k",
		"--telemetry-max-authentications-in-flight=-1"}); err != nil {
		t.Fatal(err)
	}
	if err := parsed.validate(); err == nil || !strings.Contains(err.Error(), "--telemetry-max-authentications-in-flight -1: must be positive") {
		t.Errorf("--telemetry-max-authentications-in-flight=-1: %v", err)
	}
	parsed = telemetryFlags{}
	if err := parsed.flagSet().Parse([]string{"--telemetry-bind-address=:0", "--telemetry-tls-cert-file=c", "--telemetry-tls-key-file=k",
		"--telemetry-max-connections=0"}); err != nil {
		t.Fatal(err)
	}
	if err := parsed.validate(); err == nil || !strings.Contains(err.Error(), "--telemetry-max-connections 0: must be positive") {
		t.Errorf("--telemetry-max-connections=0: %v", err)
	}
	// Files that cannot be read fail the start, naming the flags.
	f := telemetryFlags{bindAddress: ":0", certFile: "/nonexistent/c", keyFile: "/nonexistent/k", maxAge: time.Second, maxStreams: 4, maxAuthentications: 100, maxConnections: 1, audience: "a"}
	if err := f.validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := startTelemetry(ctx, &f, store, apiClients{}); err == nil || !strings.Contains(err.Error(), "--telemetry-tls-cert-file") || !strings.Contains(err.Error(), "/nonexistent/c") {
		t.Errorf("unreadable certificate: %v", err)
	}
	// A webhook address that cannot be listened on fails the start, naming
	// its flag.
	dir := t.TempDir()
	cert := telemetrytest.NewCert(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	f = telemetryFlags{bindAddress: "127.0.0.1:0", certFile: writeFile(t, dir, "tls.crt", cert.CertPEM), keyFile: writeFile(t, dir, "tls.key", cert.KeyPEM),
		maxAge: time.Second, maxStreams: 4, audience: "a", serviceAccounts: []string{"penny-system/penny-agent"}, evictionWebhookAddress: taken.Addr().String()}
	if _, err := startTelemetry(ctx, &f, store, sharedAPIClients(fakeclient.NewClientset(), nil)); err == nil || !strings.Contains(err.Error(), "--telemetry-eviction-webhook-bind-address") {
		t.Errorf("webhook address taken: %v", err)
	}
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.String("config", "/nonexistent/config.yaml", "")
	if _, err := newAPIClients(fs); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("unreadable --config: %v", err)
	}
}

// A node deleted from the cluster leaves the store the plugins read at once,
// rather than an hour later, and stops counting as a stale node.
func TestTelemetryForgetsDeletedNodes(t *testing.T) {
	dir := t.TempDir()
	cert := telemetrytest.NewCert(t)
	var f telemetryFlags
	if err := f.flagSet().Parse([]string{
		"--telemetry-bind-address", telemetrytest.FreeAddr(t),
		"--telemetry-tls-cert-file", writeFile(t, dir, "tls.crt", cert.CertPEM),
		"--telemetry-tls-key-file", writeFile(t, dir, "tls.key", cert.KeyPEM),
	}); err != nil {
		t.Fatal(err)
	}
	api := telemetrytest.StartTokenReviewAPI(t)
	client := kubernetes.NewForConfigOrDie(&rest.Config{Host: api.URL})
	nodes := telemetrytest.NodeMetadata("gpu-1", "gpu-2")
	store := telemetrytest.StoreWith("gpu-1", "gpu-2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := startTelemetry(ctx, &f, store, sharedAPIClients(client, nodes)); err != nil {
		t.Fatal(err)
	}
	nodesGVR := corev1.SchemeGroupVersion.WithResource("nodes")
	// A deletion before the watch has listed would go unseen by it (the
	// sweep drops such a node only once it is stale): wait for the watch.
	deadline := time.Now().Add(10 * time.Second)
	for !slices.ContainsFunc(nodes.Actions(), func(a clienttesting.Action) bool {
		return a.GetVerb() == "watch" && a.GetResource() == nodesGVR
	}) {
		if time.Now().After(deadline) {
			t.Fatal("nothing watches the Nodes")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := nodes.Resource(nodesGVR).Delete(ctx, "gpu-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for st, _ := store.Lookup("gpu-1"); st != nil; st, _ = store.Lookup("gpu-1") {
		if time.Now().After(deadline) {
			t.Fatal("the deleted node gpu-1 is still in the store")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, fresh := store.Lookup("gpu-2"); !fresh {
		t.Fatal("gpu-2, still in the cluster, left the store")
	}
}

// cert-manager renews the serving certificate in its Secret and the kubelet
// swaps the mounted files (a new timestamped directory behind the ..data
// link); every TLS endpoint of the scheduler serves the new pair to the next
// handshake, without a restart.
func TestEndpointsServeARotatedCertificate(t *testing.T) {
	dir := t.TempDir()
	mount, err := volumeutil.NewAtomicWriter(dir, "penny-telemetry-tls")
	if err != nil {
		t.Fatal(err)
	}
	project := func(c telemetrytest.Cert) {
		t.Helper()
		if err := mount.Write(map[string]volumeutil.FileProjection{
			"tls.crt": {Data: c.CertPEM, Mode: 0o600}, "tls.key": {Data: c.KeyPEM, Mode: 0o600},
		}, nil); err != nil {
			t.Fatal(err)
		}
	}
	old, renewed := telemetrytest.NewCert(t), telemetrytest.NewCert(t)
	project(old)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")

	f := telemetryFlags{bindAddress: telemetrytest.FreeAddr(t), certFile: certFile, keyFile: keyFile, maxAge: time.Second, maxStreams: 4,
		audience: "a", serviceAccounts: []string{"penny-system/penny-agent"}, evictionWebhookAddress: telemetrytest.FreeAddr(t)}
	exp := expanderFlags{bindAddress: telemetrytest.FreeAddr(t), certFile: certFile, keyFile: keyFile, maxConnections: defaultExpanderMaxConnections}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := startTelemetry(ctx, &f, telemetry.NewStore(telemetry.StoreOptions{}), sharedAPIClients(fakeclient.NewClientset(), telemetrytest.NodeMetadata())); err != nil {
		t.Fatal(err)
	}
	if _, err := startExpander(ctx, &exp, spotrisk.NewExpanderServer()); err != nil {
		t.Fatal(err)
	}
	endpoints := map[string]string{"telemetry": f.bindAddress, "agent evictions webhook": f.evictionWebhookAddress, "expander": exp.bindAddress}

	// Both certificates are trusted, so the handshake shows which one is
	// served rather than failing.
	client := old.ClientTLS()
	client.RootCAs.AppendCertsFromPEM(renewed.CertPEM)
	client.NextProtos = []string{"h2"}
	served := func(addr string) ([]byte, error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, client)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Raw, nil
	}
	leaf := func(c telemetrytest.Cert) []byte {
		b, _ := pem.Decode(c.CertPEM)
		return b.Bytes
	}
	for name, addr := range endpoints {
		if got, err := served(addr); err != nil || !bytes.Equal(got, leaf(old)) {
			t.Fatalf("%s before the rotation: %v, or not the mounted certificate", name, err)
		}
	}

	project(renewed)
	// The file watch sees the swap at once; the bound is for a slow machine.
	waiting := maps.Clone(endpoints)
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		for name, addr := range waiting {
			if got, err := served(addr); err == nil && bytes.Equal(got, leaf(renewed)) {
				delete(waiting, name)
			}
		}
		return len(waiting) == 0, nil
	})
	if err != nil {
		t.Errorf("%v still serve the old certificate a minute after the kubelet swapped the files: %v", slices.Sorted(maps.Keys(waiting)), err)
	}
}

// The patch deploy/agent applies to the scheduler's Deployment uses flags
// this command knows.
func TestTelemetryPatchFlags(t *testing.T) {
	var f telemetryFlags
	if err := f.flagSet().Parse(patchArgs(t, "../../deploy/agent/scheduler-telemetry-patch.yaml")); err != nil {
		t.Fatal(err)
	}
	if f.bindAddress == "" || f.certFile == "" || f.keyFile == "" || f.evictionWebhookAddress == "" {
		t.Errorf("patch does not turn the endpoint and the agent evictions webhook on: %+v", f)
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
	for _, v := range []string{"penny-reclaim-notices", "/x", "ns/", "a/b/c", "Penny-System/penny-reclaim-notices", "penny-system/penny_reclaim_notices", " penny-system/x"} {
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
	// One ConfigMap for both records could pass the API server's 1 MiB.
	f.interruptedConfigMap = f.noticesConfigMap
	if err := f.validate(); err == nil || !strings.Contains(err.Error(), "give each its own ConfigMap") {
		t.Errorf("both records in %q: %v", f.noticesConfigMap, err)
	}
}

// TokenReviews and the reclaim coordinator's writes go to the API server the
// scheduler uses, at its rate. With --config, kube-scheduler takes its kubeconfig from the
// file's clientConnection and ignores --kubeconfig (its help says so); without
// --config, --kubeconfig.
func TestAPIClientsConnectAsTheSchedulerDoes(t *testing.T) {
	dir := t.TempDir()
	fromConfig := writeFile(t, dir, "config-kubeconfig", kubeconfig("https://from-config.example:6443"))
	fromFlag := writeFile(t, dir, "flag-kubeconfig", kubeconfig("https://from-flag.example:6443"))
	config := writeFile(t, dir, "config.yaml", []byte(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: `+fromConfig+`
  qps: 80
`))
	// Without qps in --config, kube-scheduler's default (50), not
	// client-go's (5).
	for _, c := range []struct {
		args []string
		want string
		qps  float32
	}{
		{[]string{"--config", config, "--kubeconfig", fromFlag}, "from-config.example:6443", 80},
		{[]string{"--config", config}, "from-config.example:6443", 80},
		{[]string{"--kubeconfig", fromFlag}, "from-flag.example:6443", 50},
		{[]string{"--kubeconfig", fromFlag, "--master", "https://master.example:6443"}, "master.example:6443", 50},
		{[]string{"--kubeconfig", fromFlag, "--kube-api-qps", "30"}, "from-flag.example:6443", 30},
		{[]string{"--config", config, "--kube-api-qps", "30"}, "from-config.example:6443", 80},
	} {
		_, _, parts := testParts()
		cmd := newSchedulerCommand(parts)
		if usage := cmd.Flags().Lookup("kubeconfig").Usage; !strings.Contains(usage, "ignored if a config file is specified in --config") {
			t.Fatalf("kube-scheduler's --kubeconfig no longer says it is ignored with --config: %q", usage)
		}
		if err := cmd.ParseFlags(c.args); err != nil {
			t.Fatal(err)
		}
		apis, err := newAPIClients(cmd.Flags())
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		core := apis.client.(*kubernetes.Clientset).CoreV1().RESTClient()
		if got := core.Get().URL().Host; got != c.want {
			t.Errorf("%v: connects to %s, want %s, as the scheduler", c.args, got, c.want)
		}
		if got := core.GetRateLimiter().QPS(); got != c.qps {
			t.Errorf("%v: sends %v requests a second, want %v, as the scheduler", c.args, got, c.qps)
		}
		// Reviews anyone can send must not spend the TokenReviews' and the
		// reclaim coordinator's requests.
		webhook := apis.webhookPods.(*corev1client.CoreV1Client).RESTClient()
		if got := webhook.Get().URL().Host; got != c.want {
			t.Errorf("%v: the webhook connects to %s, want %s", c.args, got, c.want)
		}
		if webhook.GetRateLimiter() == core.GetRateLimiter() {
			t.Errorf("%v: the webhook's pod reads share the TokenReviews' rate limiter", c.args)
		}
		if got := webhook.GetRateLimiter().QPS(); got != c.qps {
			t.Errorf("%v: the webhook sends %v requests a second, want %v, as the scheduler", c.args, got, c.qps)
		}
	}
}

// A ServiceAccount name no ServiceAccount can have matches no agent's token:
// the start fails, naming the flag and the form, rather than the agents
// being refused (and their evictions judged as no agent's) later.
func TestTelemetryAgentServiceAccountsAreChecked(t *testing.T) {
	base := []string{"--telemetry-bind-address=:0", "--telemetry-tls-cert-file=c", "--telemetry-tls-key-file=k"}
	for _, c := range []struct {
		value string
		bad   string // "": accepted
	}{
		{"penny-system/penny-agent", ""},
		{"penny-system/penny-agent,team-b/gpu-agent", ""},
		// pflag keeps the space after the comma.
		{"penny-system/penny-agent, team-b/gpu-agent", `" team-b/gpu-agent"`},
		{"Penny-System/penny-agent", `"Penny-System/penny-agent"`},
		{"penny-system/penny_agent", `"penny-system/penny_agent"`},
		{"penny-agent", `"penny-agent"`},
	} {
		f := telemetryFlags{reclaim: &reclaimFlags{}}
		fs := f.flagSet()
		fs.AddFlagSet(f.reclaim.flagSet())
		if err := fs.Parse(append(base, "--telemetry-agent-service-accounts="+c.value)); err != nil {
			t.Fatal(err)
		}
		err := f.validate()
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("%q: %v", c.value, err)
		case c.bad != "" && (err == nil || !strings.Contains(err.Error(), "--telemetry-agent-service-accounts "+c.bad) || !strings.Contains(err.Error(), "e.g. penny-system/penny-agent")):
			t.Errorf("%q: got %v, want an error naming the flag, %s and the form", c.value, err, c.bad)
		}
	}
}

// --telemetry-max-connections reaches the endpoint, and
// --telemetry-eviction-webhook-max-connections the webhook: beyond them a
// connection is closed as soon as it is accepted.
func TestTelemetryMaxConnections(t *testing.T) {
	dir := t.TempDir()
	cert := telemetrytest.NewCert(t)
	webhookAddr := telemetrytest.FreeAddr(t)
	f := startFromFlags(t, dir, cert,
		"--telemetry-max-connections", "1",
		"--telemetry-eviction-webhook-bind-address", webhookAddr,
		"--telemetry-eviction-webhook-max-connections", "1",
	)
	// Accepted in the order they were made: the first is in before the
	// second, and is held for the handshake timeout (20s), longer than
	// the endpoint takes to refuse the second.
	held := telemetrytest.SilentConn(t, f.bindAddress)
	if !telemetrytest.ClosedWithin(t, telemetrytest.SilentConn(t, f.bindAddress), 10*time.Second) {
		t.Fatal("the second connection was still open 10s later, with --telemetry-max-connections=1")
	}
	if telemetrytest.ClosedWithin(t, held, 100*time.Millisecond) {
		t.Error("the connection under the limit was closed")
	}

	// An API server's connection, kept once its review is answered, is the
	// one the webhook's limit allows.
	apiserver := &http.Transport{TLSClientConfig: cert.ClientTLS()}
	t.Cleanup(apiserver.CloseIdleConnections)
	resp, err := (&http.Client{Transport: apiserver, Timeout: 10 * time.Second}).Post("https://"+webhookAddr+agentadmission.Path, "application/json",
		strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"r1","userInfo":{"username":"u"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("review: %s %s %v", resp.Status, body, err)
	}
	if c, err := tls.Dial("tcp", webhookAddr, cert.ClientTLS()); err == nil {
		c.Close()
		t.Fatal("a second TLS connection to the webhook was accepted, with --telemetry-eviction-webhook-max-connections=1")
	}
}

// startFromFlags starts the endpoint on a free port with cert (its files
// written to dir) and args, the API server stood in for, until the test
// ends.
func startFromFlags(t *testing.T, dir string, cert telemetrytest.Cert, args ...string) *telemetryFlags {
	t.Helper()
	var f telemetryFlags
	f.fs = f.flagSet()
	if err := f.fs.Parse(append([]string{
		"--telemetry-bind-address", telemetrytest.FreeAddr(t),
		"--telemetry-tls-cert-file", writeFile(t, dir, "tls.crt", cert.CertPEM),
		"--telemetry-tls-key-file", writeFile(t, dir, "tls.key", cert.KeyPEM),
	}, args...)); err != nil {
		t.Fatal(err)
	}
	if err := f.validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped, err := startTelemetry(ctx, &f, telemetry.NewStore(telemetry.StoreOptions{}), sharedAPIClients(fakeclient.NewClientset(), telemetrytest.NodeMetadata()))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); stopped() })
	return &f
}

// --telemetry-eviction-webhook-max-connections is checked like its
// siblings; it, --telemetry-eviction-webhook-client-ca-file and
// --telemetry-eviction-webhook-allowed-names are refused without the
// webhook, and the names without the CA that signs their certificates.
func TestTelemetryEvictionWebhookFlagErrors(t *testing.T) {
	base := []string{"--telemetry-bind-address=:0", "--telemetry-tls-cert-file=c", "--telemetry-tls-key-file=k"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--telemetry-eviction-webhook-max-connections=8"},
			"--telemetry-eviction-webhook-max-connections takes effect only with --telemetry-eviction-webhook-bind-address"},
		{[]string{"--telemetry-eviction-webhook-bind-address=:0", "--telemetry-eviction-webhook-max-connections=0"},
			"--telemetry-eviction-webhook-max-connections 0: must be positive (default 256)"},
		{[]string{"--telemetry-eviction-webhook-client-ca-file=ca.crt"},
			"--telemetry-eviction-webhook-client-ca-file takes effect only with --telemetry-eviction-webhook-bind-address, which is not set"},
		{[]string{"--telemetry-eviction-webhook-client-ca-file=ca.crt", "--telemetry-eviction-webhook-max-connections=8"},
			"--telemetry-eviction-webhook-client-ca-file, --telemetry-eviction-webhook-max-connections take effect only with --telemetry-eviction-webhook-bind-address"},
		{[]string{"--telemetry-eviction-webhook-allowed-names=kube-apiserver"},
			"--telemetry-eviction-webhook-allowed-names takes effect only with --telemetry-eviction-webhook-bind-address, which is not set"},
		{[]string{"--telemetry-eviction-webhook-bind-address=:0", "--telemetry-eviction-webhook-allowed-names=kube-apiserver"},
			"--telemetry-eviction-webhook-allowed-names takes effect only with --telemetry-eviction-webhook-client-ca-file, which is not set"},
		{[]string{"--telemetry-eviction-webhook-bind-address=:0", "--telemetry-eviction-webhook-client-ca-file=ca.crt", "--telemetry-eviction-webhook-allowed-names=kube-apiserver,,b"},
			`--telemetry-eviction-webhook-allowed-names "kube-apiserver,,b": name 2 is empty`},
		{[]string{"--telemetry-eviction-webhook-bind-address=:0", "--telemetry-eviction-webhook-client-ca-file=ca.crt", "--telemetry-eviction-webhook-allowed-names=kube-apiserver, penny-webhook-client"},
			`--telemetry-eviction-webhook-allowed-names "kube-apiserver, penny-webhook-client": name 2 has spaces around it`},
	} {
		var f telemetryFlags
		f.fs = f.flagSet()
		if err := f.fs.Parse(append(base, c.args...)); err != nil {
			t.Fatal(err)
		}
		if err := f.validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error mentioning %q", c.args, err, c.want)
		}
	}
}

// --telemetry-eviction-webhook-client-ca-file and
// --telemetry-eviction-webhook-allowed-names reach the webhook: a client
// without a certificate that CA signed for an allowed name is refused,
// kube-apiserver with one is answered; the telemetry endpoint beside it
// still takes agents without one.
func TestTelemetryEvictionWebhookClientCA(t *testing.T) {
	dir := t.TempDir()
	cert, ca := telemetrytest.NewCert(t), telemetrytest.NewClientCA(t)
	apiserver, kubelet := ca.Issue(t, "kube-apiserver"), ca.Issue(t, "system:node:gpu-1")
	webhookAddr := telemetrytest.FreeAddr(t)
	f := startFromFlags(t, dir, cert,
		"--telemetry-eviction-webhook-bind-address", webhookAddr,
		"--telemetry-eviction-webhook-client-ca-file", writeFile(t, dir, "client-ca.crt", ca.CAPEM),
		"--telemetry-eviction-webhook-allowed-names", "kube-apiserver",
	)

	review := func(tlsClient *tls.Config) error {
		tr := &http.Transport{TLSClientConfig: tlsClient}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post("https://"+webhookAddr+agentadmission.Path, "application/json",
			strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"r1","userInfo":{"username":"u"}}}`))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if body, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("review: %s %s %v", resp.Status, body, err)
		}
		return nil
	}
	if err := review(cert.ClientTLS()); err == nil {
		t.Error("the webhook answered a client without a certificate, with --telemetry-eviction-webhook-client-ca-file set")
	}
	otherName := cert.ClientTLS()
	otherName.Certificates = []tls.Certificate{kubelet.TLS}
	if err := review(otherName); err == nil {
		t.Error("the webhook answered a certificate its CA signed for a name --telemetry-eviction-webhook-allowed-names does not list")
	}
	withCert := cert.ClientTLS()
	withCert.Certificates = []tls.Certificate{apiserver.TLS}
	if err := review(withCert); err != nil {
		t.Errorf("the webhook refused a client certificate its CA signed: %v", err)
	}
	agent := cert.ClientTLS()
	agent.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", f.bindAddress, agent)
	if err != nil {
		t.Fatalf("the telemetry endpoint refused an agent without a client certificate: %v", err)
	}
	c.Close()
}

// A client CA file that cannot be used fails the start, naming the flag, the
// file and what it must hold.
func TestTelemetryEvictionWebhookClientCAFileErrors(t *testing.T) {
	dir := t.TempDir()
	cert := telemetrytest.NewCert(t)
	base := []string{"--telemetry-bind-address=127.0.0.1:0", "--telemetry-tls-cert-file=" + writeFile(t, dir, "tls.crt", cert.CertPEM),
		"--telemetry-tls-key-file=" + writeFile(t, dir, "tls.key", cert.KeyPEM)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for name, file := range map[string]string{
		"missing": filepath.Join(dir, "nonexistent.crt"),
		"empty":   writeFile(t, dir, "empty.crt", nil),
		// A key where the certificates should be.
		"no certificate": writeFile(t, dir, "key.pem", cert.KeyPEM),
	} {
		var f telemetryFlags
		f.fs = f.flagSet()
		if err := f.fs.Parse(append(base, "--telemetry-eviction-webhook-bind-address=127.0.0.1:0", "--telemetry-eviction-webhook-client-ca-file="+file)); err != nil {
			t.Fatal(err)
		}
		if err := f.validate(); err != nil {
			t.Fatal(err)
		}
		_, err := startTelemetry(ctx, &f, telemetry.NewStore(telemetry.StoreOptions{}), sharedAPIClients(fakeclient.NewClientset(), telemetrytest.NodeMetadata()))
		if err == nil || !strings.Contains(err.Error(), "--telemetry-eviction-webhook-client-ca-file "+file) || !strings.Contains(err.Error(), "give a PEM bundle of the CAs") {
			t.Errorf("%s client CA file: got %v, want an error naming the flag, the file and what it must hold", name, err)
		}
	}
}

package deploy

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
	"github.com/pennysched/penny/test/harness"
)

// docs/reclaim.md#security's AdmissionConfiguration and kubeconfig, given
// to a real kube-apiserver, have it present its client certificate to the
// agent evictions webhook, which then requires one
// (--telemetry-eviction-webhook-client-ca-file and -allowed-names): the
// webhook answers the API server, and refuses it when the certificate's
// name is not one it allows, so the agents' evictions are refused too.
func TestEvictionWebhookAuthenticatesTheAPIServer(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ca := telemetrytest.NewClientCA(t)
	client := ca.Issue(t, "penny-webhook-client")
	caFile := writeTestFile(t, dir, "client-ca.crt", ca.CAPEM)
	certFile := writeTestFile(t, dir, "penny-webhook-client.crt", client.CertPEM)
	keyFile := writeTestFile(t, dir, "penny-webhook-client.key", client.KeyPEM)
	listen := func() net.Listener {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return lis
	}
	allowed, otherName := listen(), listen()

	// The docs' kubeconfig names its user by the webhook Service's host; a
	// webhook called by URL is named by its host and port, as here.
	kubeconfig, err := clientcmd.Load(docYAML(t, "docs/reclaim.md", "kind: Config"))
	if err != nil {
		t.Fatalf("docs/reclaim.md's webhook kubeconfig: %v", err)
	}
	user, ok := kubeconfig.AuthInfos["penny-agent-evictions.penny-system.svc"]
	if !ok || len(kubeconfig.AuthInfos) != 1 || user.ClientCertificate == "" || user.ClientKey == "" {
		t.Fatalf("docs/reclaim.md's webhook kubeconfig: want one user, penny-agent-evictions.penny-system.svc, with a client certificate and key; got %+v", kubeconfig.AuthInfos)
	}
	delete(kubeconfig.AuthInfos, "penny-agent-evictions.penny-system.svc")
	user.ClientCertificate, user.ClientKey = certFile, keyFile
	for _, lis := range []net.Listener{allowed, otherName} {
		kubeconfig.AuthInfos[lis.Addr().String()] = user
	}
	kubeconfigFile := filepath.Join(dir, "penny-webhooks.kubeconfig")
	if err := clientcmd.WriteToFile(*kubeconfig, kubeconfigFile); err != nil {
		t.Fatal(err)
	}
	admission := string(docYAML(t, "docs/reclaim.md", "kind: AdmissionConfiguration"))
	const docsPath = "kubeConfigFile: /etc/kubernetes/penny-webhooks.kubeconfig"
	if !strings.Contains(admission, docsPath) {
		t.Fatalf("docs/reclaim.md's AdmissionConfiguration has no %q:\n%s", docsPath, admission)
	}
	admissionFile := writeTestFile(t, dir, "admission.yaml", []byte(strings.Replace(admission, docsPath, "kubeConfigFile: "+kubeconfigFile, 1)))

	c := startWithAgentManifests(t, func(o *localcluster.Options) { o.AdmissionControlConfigFile = admissionFile })
	own, other := "spot-0", "spot-1"
	agent := agentClient(t, c, own)
	mine, theirs := podOnNode(t, c, "mine", own), podOnNode(t, c, "theirs", other)
	evict := func(p *corev1.Pod) error {
		return agent.PolicyV1().Evictions(p.Namespace).Evict(ctx, &policyv1.Eviction{
			ObjectMeta:    metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
			DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}, DryRun: []string{metav1.DryRunAll}},
		})
	}
	// The API server loads a changed webhook configuration within a few
	// seconds; until then the one before decides.
	refusedWith := func(what string, p *corev1.Pod, want string) {
		t.Helper()
		var last error
		if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			last = evict(p)
			return last != nil && strings.Contains(last.Error(), want), nil
		}); err != nil {
			t.Fatalf("%s: %v, want an error containing %q", what, last, want)
		}
	}
	// serve returns why the webhook refused the handshakes it refused.
	serve := func(lis net.Listener, names ...string) (refusals func() []string) {
		cert := telemetrytest.NewCert(t)
		ctx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel)
		tlsConfig, err := telemetry.RequireClientCertificates(ctx, cert.ServingTLS(t), caFile, names)
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var reasons []string
		verify := tlsConfig.VerifyConnection
		tlsConfig.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			if err != nil {
				mu.Lock()
				reasons = append(reasons, err.Error())
				mu.Unlock()
			}
			return err
		}
		harness.ServeAgentEvictionsOn(t, c, lis, tlsConfig, cert.CertPEM)
		return func() []string {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(reasons)
		}
	}

	// The CA signed the API server's certificate, but for a name this
	// webhook does not allow: the handshake fails, and the webhook fails
	// closed.
	refusals := serve(otherName, "kube-apiserver")
	refusedWith("own pod, API server's certificate not allowed", mine, `failed calling webhook "agent-evictions.penny.dev": failed to call webhook: Post "https://`+otherName.Addr().String())
	const notAllowed = `client certificate common name "penny-webhook-client" is not one of the allowed names [kube-apiserver]`
	if got := refusals(); !slices.ContainsFunc(got, func(r string) bool { return r == notAllowed }) {
		t.Errorf("the webhook refused the API server's handshakes for %q, want %q: the API server presents its certificate", got, notAllowed)
	}

	serve(allowed, "kube-apiserver", "penny-webhook-client")
	refusedWith("another node's pod", theirs, "penny-agent on node spot-0 may evict only pods bound to node spot-0; pod default/theirs is bound to node spot-1")
	if err := evict(mine); err != nil {
		t.Errorf("the agent's eviction of its own node's pod, the API server's certificate allowed: %v", err)
	}
}

// docYAML returns the YAML block of the Markdown file name (relative to the
// repository) that contains marker, without the indentation of the list
// item it may be in.
func docYAML(t *testing.T, name, marker string) []byte {
	t.Helper()
	lines := strings.Split(string(readRepoFile(t, name)), "\n")
	for i := 0; i < len(lines); i++ {
		fence := strings.TrimSpace(lines[i])
		if fence != "```yaml" {
			continue
		}
		indent := lines[i][:strings.Index(lines[i], "```")]
		var block []string
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			block = append(block, strings.TrimPrefix(lines[i], indent))
		}
		if text := strings.Join(block, "\n"); strings.Contains(text, marker) {
			return []byte(text)
		}
	}
	t.Fatalf("%s has no yaml block with %q", name, marker)
	return nil
}

func writeTestFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

package harness

import (
	"context"
	"crypto/tls"
	"net"
	"testing"

	"github.com/go-logr/logr/testr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/agentadmission"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// AgentEvictionsWebhook is the name of deploy/agent/reclaim.yaml's
// ValidatingWebhookConfiguration.
const AgentEvictionsWebhook = "penny-agent-evictions"

// ServeAgentEvictions serves penny-scheduler's agent evictions webhook on
// loopback, with a TLS certificate loaded as --telemetry-tls-cert-file loads
// it, until the test ends, and points deploy/agent/reclaim.yaml's
// ValidatingWebhookConfiguration (applied already) at it: the in-process API
// server cannot reach a Service's cluster IP, so its clientConfig becomes
// the loopback URL and the certificate's CA. Everything else in it (rules,
// match condition, failure policy) is as shipped.
func ServeAgentEvictions(t testing.TB, c *localcluster.Cluster) {
	t.Helper()
	cert := telemetrytest.NewCert(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ServeAgentEvictionsOn(t, c, lis, cert.ServingTLS(t), cert.CertPEM)
}

// ServeAgentEvictionsOn is ServeAgentEvictions on a listener the test holds
// and with its TLS configuration (e.g. one that requires kube-apiserver's
// client certificate, whose kubeconfig names the listener's address);
// caBundle is the CA of the serving certificate.
func ServeAgentEvictionsOn(t testing.TB, c *localcluster.Cluster, lis net.Listener, tlsConfig *tls.Config, caBundle []byte) {
	t.Helper()
	h, err := agentadmission.NewEvictions(agentadmission.Options{
		Pods: c.Client.CoreV1(), AgentServiceAccounts: []string{telemetrytest.AgentServiceAccount},
		Log: testr.NewWithInterface(t, testr.Options{}).WithName("agent-evictions"),
	})
	if err != nil {
		t.Fatal(err)
	}
	telemetrytest.ServeInBackground(t, "agent evictions webhook", func(ctx context.Context) error {
		return agentadmission.Serve(ctx, lis, tlsConfig, h, testr.NewWithInterface(t, testr.Options{}))
	})

	webhooks := c.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	vwc, err := webhooks.Get(context.Background(), AgentEvictionsWebhook, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("deploy/agent/reclaim.yaml's webhook: %v", err)
	}
	for i := range vwc.Webhooks {
		vwc.Webhooks[i].ClientConfig.Service = nil
		vwc.Webhooks[i].ClientConfig.URL = ptr.To("https://" + lis.Addr().String() + agentadmission.Path)
		vwc.Webhooks[i].ClientConfig.CABundle = caBundle
	}
	if _, err := webhooks.Update(context.Background(), vwc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

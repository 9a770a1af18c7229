package agentadmission

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/component-base/metrics/testutil"

	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// Beyond MaxConnections a connection is closed as soon as it is accepted,
// before its TLS handshake, and counted; the API servers' connections under
// the limit stay open and keep being answered.
func TestServeCapsConnections(t *testing.T) {
	cert := telemetrytest.NewCert(t)
	addr := serveInBackground(t, cert.ServingTLS(t), Options{Pods: fake.NewClientset().CoreV1(), MaxConnections: 2})
	url := "https://" + addr + Path
	// The scheduler's evictions are RBAC's to judge: allowed without a pod
	// read.
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  eviction(t, "system:serviceaccount:kube-system:penny-scheduler", "", "p", ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	// review sends the review as an API server does, keeping its connection
	// for the next, and says whether it went over a connection kept from
	// before.
	review := func(apiserver *http.Client) (reused bool) {
		t.Helper()
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
		})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := apiserver.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		// Read to the end, so that the connection is kept.
		out, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("review: %s %s %v", resp.Status, out, err)
		}
		return reused
	}
	newAPIServer := func() *http.Client {
		tr := &http.Transport{TLSClientConfig: cert.ClientTLS()}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	a, b := newAPIServer(), newAPIServer()
	review(a)
	review(b)

	before, _ := testutil.GetCounterMetricValue(connectionsOverLimit)
	if c, err := tls.Dial("tcp", addr, cert.ClientTLS()); err == nil {
		c.Close()
		t.Fatal("a third TLS connection was accepted, with MaxConnections 2")
	}
	// The refusal is counted once the connection is closed.
	var n float64
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		n, _ = testutil.GetCounterMetricValue(connectionsOverLimit)
		return n == before+1, nil
	}); err != nil {
		t.Errorf("penny_admission_connections_over_limit_total went from %v to %v, want one more", before, n)
	}
	if !review(a) || !review(b) {
		t.Error("an API server's connection under the limit was closed")
	}
}

// serveInBackground serves the webhook with opts, for the agents'
// ServiceAccount, on loopback until the test ends, and returns its address.
func serveInBackground(t *testing.T, tlsConfig *tls.Config, opts Options) string {
	t.Helper()
	opts.AgentServiceAccounts, opts.Log = []string{"penny-system/penny-agent"}, testr.New(t)
	h, err := NewEvictions(opts)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	telemetrytest.ServeInBackground(t, "agent evictions webhook", func(ctx context.Context) error {
		return Serve(ctx, lis, tlsConfig, h, testr.New(t))
	})
	return lis.Addr().String()
}

func TestMaxConnectionsMustNotBeNegative(t *testing.T) {
	_, err := NewEvictions(Options{Pods: fake.NewClientset().CoreV1(), AgentServiceAccounts: []string{"penny-system/penny-agent"}, MaxConnections: -1})
	if err == nil || err.Error() != "agent evictions webhook: MaxConnections -1: must be positive, or 0 for the default (256)" {
		t.Errorf("MaxConnections -1: %v", err)
	}
}

// With a client CA, the webhook answers only callers with a certificate
// that CA signed (kube-apiserver, given one by its AdmissionConfiguration):
// anyone else that reaches the port can no longer make it read a pod and
// learn the pod's node and UID. A CA put in the file later is followed.
func TestServeRequiresClientCertificates(t *testing.T) {
	cert := telemetrytest.NewCert(t)
	apiserver, other := telemetrytest.NewClientCert(t), telemetrytest.NewClientCert(t)
	caFile := filepath.Join(t.TempDir(), "client-ca.crt")
	trust := func(ca []byte) {
		t.Helper()
		// Renamed into place, as a mounted ConfigMap is swapped, so that the
		// watch never reads half a file.
		if err := os.WriteFile(caFile+".new", ca, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(caFile+".new", caFile); err != nil {
			t.Fatal(err)
		}
	}
	trust(apiserver.CAPEM)
	ctx := t.Context()
	pods, addr, body := serveRequiringCertificates(t, cert, caFile, nil)
	review := func(client *telemetrytest.ClientCert) error { return postReview(cert, addr, body, client) }
	podReads := func() int {
		n := 0
		for _, a := range pods.Actions() {
			if a.GetVerb() == "get" && a.GetResource().Resource == "pods" {
				n++
			}
		}
		return n
	}

	refusedBefore, _ := testutil.GetCounterMetricValue(handshakeErrors)
	if err := review(nil); err == nil {
		t.Error("answered a client without a certificate")
	}
	if err := review(&other); err == nil {
		t.Error("answered a client whose certificate another CA signed")
	}
	if n := podReads(); n != 0 {
		t.Errorf("read %d pods for clients it refused", n)
	}
	// Each refusal is counted (and logged at verbosity 4 only); the server
	// logs it as the client gives up, not before.
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		n, _ := testutil.GetCounterMetricValue(handshakeErrors)
		return n == refusedBefore+2, nil
	}); err != nil {
		n, _ := testutil.GetCounterMetricValue(handshakeErrors)
		t.Errorf("penny_admission_tls_handshake_errors_total went from %v to %v, want two more", refusedBefore, n)
	}
	if err := review(&apiserver); err != nil {
		t.Fatalf("refused a client the CA signed: %v", err)
	}
	if n := podReads(); n != 1 {
		t.Errorf("read %d pods for the client the CA signed, want 1", n)
	}

	trust(other.CAPEM)
	// The file watch sees the rename at once; the bound is for a slow
	// machine.
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return review(&other) == nil, nil
	}); err != nil {
		t.Fatalf("a client the new CA signed is still refused a minute after the file changed: %v", err)
	}
	if err := review(&apiserver); err == nil {
		t.Error("answered a client signed by the CA the file no longer holds")
	}
}

// serveRequiringCertificates serves the webhook with cert, requiring client
// certificates signed by the CAs in caFile for names (any, when empty),
// until the test ends. It returns the pods the webhook reads, its address,
// and a review of an eviction whose answer names the pod's node and UID,
// once the pod is read.
func serveRequiringCertificates(t *testing.T, cert telemetrytest.Cert, caFile string, names []string) (*fake.Clientset, string, []byte) {
	t.Helper()
	tlsConfig, err := telemetry.RequireClientCertificates(t.Context(), cert.ServingTLS(t), caFile, names)
	if err != nil {
		t.Fatal(err)
	}
	pods := fake.NewClientset(pod("p", "uid-1", "gpu-2"))
	addr := serveInBackground(t, tlsConfig, Options{Pods: pods.CoreV1()})
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  eviction(t, agentUser, "gpu-1", "p", "uid-0"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return pods, addr, body
}

// postReview posts body to the webhook at addr, served with cert, over a
// new connection with client's certificate (none when nil), and returns an
// error unless it is answered 200.
func postReview(cert telemetrytest.Cert, addr string, body []byte, client *telemetrytest.ClientCert) error {
	tlsClient := cert.ClientTLS()
	if client != nil {
		tlsClient.Certificates = []tls.Certificate{client.TLS}
	}
	tr := &http.Transport{TLSClientConfig: tlsClient}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post("https://"+addr+Path, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s %v", resp.Status, out, err)
	}
	return nil
}

// With allowed names, a certificate the CA signs for any other name is
// refused too: a cluster's client CA signs every user's and kubelet's
// certificates, and none of them may make the webhook read a pod.
func TestServeRequiresAnAllowedName(t *testing.T) {
	cert, ca := telemetrytest.NewCert(t), telemetrytest.NewClientCA(t)
	apiserver, kubelet := ca.Issue(t, "penny-webhook-client"), ca.Issue(t, "system:node:gpu-1")
	caFile := filepath.Join(t.TempDir(), "client-ca.crt")
	if err := os.WriteFile(caFile, ca.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := telemetry.RequireClientCertificates(t.Context(), cert.ServingTLS(t), caFile, []string{"a", ""}); err == nil || !strings.Contains(err.Error(), "allowed name 2 is empty") {
		t.Errorf("an empty allowed name: %v", err)
	}
	pods, addr, body := serveRequiringCertificates(t, cert, caFile, []string{"kube-apiserver", "penny-webhook-client"})
	if err := postReview(cert, addr, body, &kubelet); err == nil {
		t.Error("answered a kubelet's certificate the CA signed, with only kube-apiserver and penny-webhook-client allowed")
	}
	if n := len(pods.Actions()); n != 0 {
		t.Errorf("made %d API calls for a client it refused", n)
	}
	if err := postReview(cert, addr, body, &apiserver); err != nil {
		t.Errorf("refused an allowed name: %v", err)
	}
}

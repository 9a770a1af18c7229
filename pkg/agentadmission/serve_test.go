package agentadmission

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/component-base/metrics/testutil"

	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// Beyond MaxConnections a connection is closed as soon as it is accepted,
// before its TLS handshake, and counted; the API servers' connections under
// the limit stay open and keep being answered.
func TestServeCapsConnections(t *testing.T) {
	cert := telemetrytest.NewCert(t)
	tlsConfig := cert.ServingTLS(t)
	h, err := NewEvictions(Options{
		Pods: fake.NewClientset().CoreV1(), AgentServiceAccounts: []string{"penny-system/penny-agent"},
		MaxConnections: 2, Log: testr.New(t),
	})
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
	url := "https://" + lis.Addr().String() + Path
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
	if c, err := tls.Dial("tcp", lis.Addr().String(), cert.ClientTLS()); err == nil {
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

func TestMaxConnectionsMustNotBeNegative(t *testing.T) {
	_, err := NewEvictions(Options{Pods: fake.NewClientset().CoreV1(), AgentServiceAccounts: []string{"penny-system/penny-agent"}, MaxConnections: -1})
	if err == nil || err.Error() != "agent evictions webhook: MaxConnections -1: must be positive, or 0 for the default (256)" {
		t.Errorf("MaxConnections -1: %v", err)
	}
}

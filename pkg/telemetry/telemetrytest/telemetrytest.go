// Package telemetrytest runs a real telemetry gRPC server (TLS on loopback)
// for tests of the agent and of code that reads the store. Only the token
// check is stood in for: tokens are "node:<name>" strings that an
// authenticator accepts as the agent ServiceAccount bound to that node. The
// real check, TokenReview on a real API server, has its own integration
// test (test/integration/telemetry).
package telemetrytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
	certutil "k8s.io/client-go/util/cert"

	"github.com/pennysched/penny/pkg/telemetry"
)

// ServerName is the DNS name in the test servers' certificates.
const ServerName = "penny-telemetry.penny-system.svc"

// AgentServiceAccount is the ServiceAccount the stand-in tokens belong to.
const AgentServiceAccount = "penny-system/penny-agent"

// Env is a running telemetry server.
type Env struct {
	// Addr is the server's host:port on loopback.
	Addr string
	// ClientTLS trusts the server's certificate.
	ClientTLS *tls.Config
	// Cert is the server's certificate.
	Cert   Cert
	stop   func()
	Store  *telemetry.Store
	Server *telemetry.Server
	dir    string
}

// Options tune Start.
type Options struct {
	Store   telemetry.StoreOptions
	Server  telemetry.ServerOptions // Store, Authenticator, AgentServiceAccounts and Log (unless set) are filled in
	Address string                  // "127.0.0.1:0" when empty
	// Cert to serve; a new one when zero. Servers sharing a Cert are
	// trusted by one client configuration (Cert.ClientTLS).
	Cert Cert
}

// Cert is a serving certificate for ServerName and 127.0.0.1.
type Cert struct {
	CertPEM, KeyPEM []byte
}

// NewCert generates a self-signed serving certificate.
func NewCert(t testing.TB) Cert {
	t.Helper()
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey(ServerName, []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return Cert{CertPEM: certPEM, KeyPEM: keyPEM}
}

// ServingTLS serves c as penny-scheduler serves its certificate files
// (telemetry.ServingTLSConfig), until the test ends.
func (c Cert) ServingTLS(t testing.TB) *tls.Config {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, c.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, c.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	tlsConfig, err := telemetry.ServingTLSConfig(ctx, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return tlsConfig
}

// ClientTLS returns a client configuration that trusts c.
func (c Cert) ClientTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CertPEM)
	return &tls.Config{RootCAs: pool, ServerName: ServerName, MinVersion: tls.VersionTLS12}
}

// ClientCert is a client certificate and the CA that signed it, as
// kube-apiserver holds to call a webhook that verifies its callers.
type ClientCert struct {
	// CAPEM is the CA's certificate: the bundle the server trusts.
	CAPEM []byte
	TLS   tls.Certificate
	// CertPEM and KeyPEM are the certificate and its key, for a client that
	// reads them from files (kube-apiserver's webhook kubeconfig).
	CertPEM, KeyPEM []byte
}

// ClientCA signs client certificates.
type ClientCA struct {
	// CAPEM is the CA's certificate: the bundle the server trusts.
	CAPEM []byte
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	// serial numbers the certificates; parallel tests may share a CA.
	serial atomic.Int64
}

// NewClientCA generates a CA for client certificates.
func NewClientCA(t testing.TB) *ClientCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: "penny-test-client-ca"}, key)
	if err != nil {
		t.Fatal(err)
	}
	return &ClientCA{CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), cert: cert, key: key}
}

// Issue signs a client certificate for commonName.
func (ca *ClientCA) Issue(t testing.TB, commonName string) ClientCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial.Add(1) + 1),
		Subject:      pkix.Name{CommonName: commonName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return ClientCert{
		CAPEM:   ca.CAPEM,
		TLS:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
}

// NewClientCert generates a CA and a client certificate it signs for
// kube-apiserver.
func NewClientCert(t testing.TB) ClientCert {
	t.Helper()
	return NewClientCA(t).Issue(t, "kube-apiserver")
}

// Start runs a server with the stand-in authenticator until the test ends.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	so := o.Server
	so.Store = telemetry.NewStore(o.Store)
	so.Authenticator = NodeTokens()
	if len(so.AgentServiceAccounts) == 0 {
		so.AgentServiceAccounts = []string{AgentServiceAccount}
	}
	if so.Log.GetSink() == nil {
		so.Log = testr.NewWithInterface(t, testr.Options{})
	}
	srv, err := telemetry.NewServer(so)
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, srv, o.Address, o.Cert)
}

// StartWith serves srv (with whatever authenticator it has) until the test
// ends.
func StartWith(t testing.TB, srv *telemetry.Server) *Env {
	t.Helper()
	return startServer(t, srv, "", Cert{})
}

func startServer(t testing.TB, srv *telemetry.Server, addr string, cert Cert) *Env {
	t.Helper()
	if cert.CertPEM == nil {
		cert = NewCert(t)
	}
	serverTLS := cert.ServingTLS(t)
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	stop := ServeInBackground(t, "telemetry server", func(ctx context.Context) error {
		return telemetry.Serve(ctx, lis, serverTLS, srv, testr.NewWithInterface(t, testr.Options{}))
	})
	return &Env{
		Addr:      lis.Addr().String(),
		ClientTLS: cert.ClientTLS(),
		Cert:      cert,
		Store:     srv.Store(),
		Server:    srv,
		dir:       t.TempDir(),
		stop:      stop,
	}
}

// ServeInBackground runs serve until the returned stop is called or the test
// ends, whichever comes first: serve must return once its context ends, and
// the test fails if it returns an error or takes over 10 s to stop.
func ServeInBackground(t testing.TB, what string, serve func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := serve(ctx); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("%s did not stop", what)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// Stop stops the server before the test ends (it stops by itself at the end).
func (e *Env) Stop() { e.stop() }

// TokenFile writes a stand-in token for an agent on node and returns its path.
func (e *Env) TokenFile(t testing.TB, node string) string {
	t.Helper()
	p := filepath.Join(e.dir, "token-"+node)
	if err := os.WriteFile(p, []byte("node:"+node+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// NodeTokens accepts "node:<name>" as the agent ServiceAccount's token bound
// to a pod on that node, "sa:<namespace>/<name>" as another ServiceAccount
// bound to node "n1", "unbound" as the agent ServiceAccount without pod or
// node, and refuses everything else.
func NodeTokens() authenticator.Token {
	ns, name, _ := strings.Cut(AgentServiceAccount, "/")
	return authenticator.TokenFunc(func(ctx context.Context, token string) (*authenticator.Response, bool, error) {
		bound := func(ns, name, node string) *authenticator.Response {
			return &authenticator.Response{User: &user.DefaultInfo{
				Name: serviceaccount.MakeUsername(ns, name),
				Extra: map[string][]string{
					serviceaccount.PodNameKey:  {"penny-agent-" + node},
					serviceaccount.NodeNameKey: {node},
				},
			}}
		}
		switch {
		case strings.HasPrefix(token, "node:"):
			return bound(ns, name, strings.TrimPrefix(token, "node:")), true, nil
		case strings.HasPrefix(token, "sa:"):
			ns2, n2, _ := strings.Cut(strings.TrimPrefix(token, "sa:"), "/")
			return bound(ns2, n2, "n1"), true, nil
		case token == "unbound":
			return &authenticator.Response{User: &user.DefaultInfo{Name: serviceaccount.MakeUsername(ns, name)}}, true, nil
		}
		return nil, false, nil
	})
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago, for a server a test starts later.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

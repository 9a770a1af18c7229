package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"k8s.io/apimachinery/pkg/util/wait"
	volumeutil "k8s.io/kubernetes/pkg/volume/util"
)

const schedulerName = "penny-telemetry.penny-system.svc"

// testCA signs serving certificates; an intermediate one's certificate is
// sent along with the ones it signs.
type testCA struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	pem   []byte
	chain [][]byte
}

var serial atomic.Int64

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// newCA makes a root CA, or an intermediate one signed by parent.
func newCA(t *testing.T, name string, parent *testCA) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	if parent != nil {
		ca.chain = append([][]byte{der}, parent.chain...)
	}
	return ca
}

// issue signs a serving certificate for the scheduler's name and
// 127.0.0.1, valid now; edit changes the template first.
func (ca *testCA) issue(t *testing.T, edit func(*x509.Certificate)) *tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: schedulerName},
		DNSNames: []string{schedulerName}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: append([][]byte{der}, ca.chain...), PrivateKey: key}
}

// tlsServer completes TLS handshakes with whatever certificate it is told
// to serve at the time.
type tlsServer struct {
	addr    string
	serving atomic.Pointer[tls.Certificate]
}

func startTLSServer(t *testing.T, c *tls.Certificate) *tlsServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	s := &tlsServer{addr: lis.Addr().String()}
	s.serving.Store(c)
	cfg := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.serving.Load(), nil }}
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(conn, cfg)
				_ = tc.Handshake()
				tc.Close()
			}()
		}
	}()
	return s
}

func handshake(cfg *tls.Config, addr string) error {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	return conn.Close()
}

// caMount is the ConfigMap penny-telemetry-ca as the kubelet mounts it:
// updates swap the ..data symlink.
type caMount struct {
	t      *testing.T
	writer *volumeutil.AtomicWriter
	file   string
}

func newCAMount(t *testing.T) *caMount {
	dir := t.TempDir()
	w, err := volumeutil.NewAtomicWriter(dir, "penny-telemetry-ca")
	if err != nil {
		t.Fatal(err)
	}
	return &caMount{t: t, writer: w, file: filepath.Join(dir, "ca.crt")}
}

func (m *caMount) write(bundle ...[]byte) {
	m.t.Helper()
	data := []byte{}
	for _, b := range bundle {
		data = append(data, b...)
	}
	if err := m.writer.Write(map[string]volumeutil.FileProjection{"ca.crt": {Data: data, Mode: 0o644}}, nil); err != nil {
		m.t.Fatal(err)
	}
}

// eventually polls until handshakes to addr succeed; the file watch sees a
// swap at once, the bound is for a slow machine.
func eventually(t *testing.T, cfg *tls.Config, addr, what string) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		last = handshake(cfg, addr)
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: handshakes still fail a minute after the CA bundle was swapped: %v", what, last)
	}
}

// The rotation docs/agent.md describes: the new CA joins the bundle, then
// the scheduler serves a certificate from it (here through an intermediate
// CA). The agent takes it without a restart.
func TestAgentFollowsARotatedCABundle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca1, ca2 := newCA(t, "penny-telemetry-ca-1", nil), newCA(t, "penny-telemetry-ca-2", nil)
	mount := newCAMount(t)
	mount.write(ca1.pem)
	cfg, err := clientTLS(ctx, mount.file, schedulerName, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	srv := startTLSServer(t, ca1.issue(t, nil))
	if err := handshake(cfg, srv.addr); err != nil {
		t.Fatalf("certificate from the CA in --ca-file refused: %v", err)
	}

	mount.write(ca1.pem, ca2.pem)
	srv.serving.Store(newCA(t, "penny-telemetry-intermediate-2", ca2).issue(t, nil))
	eventually(t, cfg, srv.addr, "certificate from the CA added to the bundle")
	srv.serving.Store(ca1.issue(t, nil))
	if err := handshake(cfg, srv.addr); err != nil {
		t.Errorf("certificate from the CA still in the bundle refused: %v", err)
	}
}

// After a rotation the agent verifies as crypto/tls would against the new
// bundle alone: the chain, the name, the validity and the usage.
func TestAgentVerifiesTheSchedulerAgainstTheCurrentBundle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	oldCA, newCA2, unknown := newCA(t, "old", nil), newCA(t, "new", nil), newCA(t, "unknown", nil)
	mount := newCAMount(t)
	mount.write(oldCA.pem)
	byName, err := clientTLS(ctx, mount.file, schedulerName, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	byIP, err := clientTLS(ctx, mount.file, "127.0.0.1", logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	// A caller that dials an IP address with the configuration for a name.
	ipForName := byName.Clone()
	ipForName.ServerName = "127.0.0.1"
	srv := startTLSServer(t, newCA2.issue(t, nil))
	mount.write(newCA2.pem)
	// Each configuration follows the file on its own watch.
	eventually(t, byName, srv.addr, "certificate from the new CA")
	eventually(t, byIP, srv.addr, "certificate from the new CA, by IP")

	hostname := func(err error) bool { return errors.As(err, &x509.HostnameError{}) }
	authority := func(err error) bool { return errors.As(err, &x509.UnknownAuthorityError{}) }
	invalid := func(reason x509.InvalidReason) func(error) bool {
		return func(err error) bool {
			var e x509.CertificateInvalidError
			return errors.As(err, &e) && e.Reason == reason
		}
	}
	for _, c := range []struct {
		name    string
		cert    *tls.Certificate
		cfg     *tls.Config      // byName when nil
		refused func(error) bool // nil: accepted
	}{
		{name: "new CA, by IP (no SNI)", cert: newCA2.issue(t, nil), cfg: byIP},
		{name: "new CA through an intermediate", cert: newCA(t, "intermediate", newCA2).issue(t, nil)},
		{name: "name of another service", cert: newCA2.issue(t, func(c *x509.Certificate) { c.DNSNames = []string{"penny-expander.penny-system.svc"} }),
			refused: hostname},
		{name: "another IP address", cert: newCA2.issue(t, func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.ParseIP("127.0.0.2")} }),
			cfg: byIP, refused: hostname},
		{name: "IP address dialed with the configuration for a name", cert: newCA2.issue(t, nil), cfg: ipForName,
			refused: func(err error) bool { return strings.Contains(err.Error(), "no server name") }},
		{name: "CA dropped from the bundle", cert: oldCA.issue(t, nil), refused: authority},
		{name: "CA never in the bundle", cert: unknown.issue(t, nil), refused: authority},
		{name: "intermediate of an unknown CA", cert: newCA(t, "intermediate", unknown).issue(t, nil), refused: authority},
		{name: "expired", cert: newCA2.issue(t, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		}),
			refused: invalid(x509.Expired)},
		{name: "not yet valid", cert: newCA2.issue(t, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)
		}),
			refused: invalid(x509.Expired)},
		{name: "client certificate", cert: newCA2.issue(t, func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }),
			refused: invalid(x509.IncompatibleUsage)},
	} {
		cfg := c.cfg
		if cfg == nil {
			cfg = byName
		}
		srv.serving.Store(c.cert)
		err := handshake(cfg, srv.addr)
		switch {
		case c.refused == nil && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refused == nil:
		case err == nil:
			t.Errorf("%s: accepted", c.name)
		case !c.refused(err):
			t.Errorf("%s: refused for another reason: %v", c.name, err)
		}
	}
}

// A bundle that stops parsing (a bad edit of the ConfigMap) does not leave
// the agent trusting nothing, or the system roots: it keeps the last good
// bundle, says so in its log, and takes the file again once it is fixed.
func TestAgentKeepsTheLastGoodCABundle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca1, ca2 := newCA(t, "penny-telemetry-ca-1", nil), newCA(t, "penny-telemetry-ca-2", nil)
	mount := newCAMount(t)
	mount.write(ca1.pem)
	var (
		mu  sync.Mutex
		log []string
	)
	logger := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		log = append(log, args)
	}, funcr.Options{})
	logged := func(msg string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range log {
			if strings.Contains(l, msg) {
				return true
			}
		}
		return false
	}
	roots, err := newServerRoots(mount.file, logger)
	if err != nil {
		t.Fatal(err)
	}
	go roots.run(ctx, 20*time.Millisecond)
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: schedulerName, InsecureSkipVerify: true, VerifyConnection: roots.verifyConnection(schedulerName)}
	srv := startTLSServer(t, ca2.issue(t, nil))
	mount.write(ca2.pem)
	eventually(t, cfg, srv.addr, "certificate from the new CA")
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return logged("loaded a new CA bundle from --ca-file"), nil
	}); err != nil {
		t.Error("no log line says the new bundle was loaded")
	}

	for _, bad := range [][]byte{[]byte("not a certificate\n"), {}} {
		mount.write(bad)
		err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			return logged("cannot load --ca-file"), nil
		})
		if err != nil {
			t.Fatalf("bundle %q: no log line says --ca-file cannot be loaded", bad)
		}
		if err := handshake(cfg, srv.addr); err != nil {
			t.Errorf("bundle %q: certificate from the last good bundle refused: %v", bad, err)
		}
		srv.serving.Store(ca1.issue(t, nil))
		if err := handshake(cfg, srv.addr); err == nil {
			t.Errorf("bundle %q: certificate from the CA that left the bundle accepted", bad)
		}
		srv.serving.Store(ca2.issue(t, nil))
		mu.Lock()
		log = nil
		mu.Unlock()
		mount.write(ca2.pem)
		if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			return logged("--ca-file is usable again"), nil
		}); err != nil {
			t.Fatalf("bundle %q fixed: no log line says so", bad)
		}
	}
}

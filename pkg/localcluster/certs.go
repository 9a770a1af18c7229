package localcluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/keyutil"
)

// pki is what the local control plane needs to authenticate its clients: a
// client CA that signs the admin certificate, and the key that signs and
// verifies ServiceAccount tokens (so TokenRequest and TokenReview work, as
// the agent's authentication relies on them).
type pki struct {
	clientCAFile  string
	adminCertPEM  []byte
	adminKeyPEM   []byte
	saKeyFile     string
	serviceIssuer string
}

func newPKI(dir string) (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "penny-local-client-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)

	adminKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	adminTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "penny-admin", Organization: []string{"system:masters"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	adminDER, err := x509.CreateCertificate(rand.Reader, adminTmpl, caCert, adminKey.Public(), crypto.Signer(caKey))
	if err != nil {
		return nil, err
	}

	p := &pki{
		clientCAFile:  filepath.Join(dir, "client-ca.crt"),
		saKeyFile:     filepath.Join(dir, "service-account.key"),
		serviceIssuer: "https://kubernetes.default.svc.cluster.local",
		adminCertPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: adminDER}),
	}
	if p.adminKeyPEM, err = keyutil.MarshalPrivateKeyToPEM(adminKey); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.clientCAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saPEM, err := keyutil.MarshalPrivateKeyToPEM(saKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.saKeyFile, saPEM, 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// adminConfig is a client config for the admin user against the server at
// host, trusting the server's self-signed serving certificate.
func (p *pki) adminConfig(host string, serverCA []byte) *rest.Config {
	return &rest.Config{
		Host: host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   serverCA,
			CertData: p.adminCertPEM,
			KeyData:  p.adminKeyPEM,
		},
		QPS:   1000,
		Burst: 2000,
	}
}

// writeKubeconfig writes cfg as a kubeconfig with one context, "penny".
func writeKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["penny"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["penny-admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["penny"] = &clientcmdapi.Context{Cluster: "penny", AuthInfo: "penny-admin", Namespace: "default"}
	kc.CurrentContext = "penny"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

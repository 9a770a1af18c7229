package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
)

// clientTLS verifies the scheduler against caFile as it is on disk at each
// handshake, so an agent follows a CA rotation (the ConfigMap
// penny-telemetry-ca updated in place) without a restart. serverName is the
// host of --scheduler-address: the name the certificate must hold. The file
// is followed until ctx ends.
func clientTLS(ctx context.Context, caFile, serverName string, log logr.Logger) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile == "" {
		return cfg, nil
	}
	roots, err := newServerRoots(caFile, log)
	if err != nil {
		return nil, err
	}
	go roots.run(ctx, dynamiccertificates.FileRefreshDuration)
	// crypto/tls takes its roots from the config only, which would pin the
	// bundle read at start; VerifyConnection does the whole verification
	// against the current bundle instead.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = roots.verifyConnection(serverName)
	return cfg, nil
}

// serverRoots is the CA bundle in --ca-file, reloaded when the file changes
// (the kubelet's ..data symlink swap included). A file with no certificate
// is not taken: the last good bundle stays in use.
type serverRoots struct {
	content *dynamiccertificates.DynamicFileCAContent
	log     logr.Logger
}

func newServerRoots(caFile string, log logr.Logger) (*serverRoots, error) {
	content, err := dynamiccertificates.NewDynamicCAContentFromFile("penny-telemetry-ca", caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file %s: %w; want a PEM bundle of the CAs that sign the scheduler's telemetry certificate", caFile, err)
	}
	r := &serverRoots{content: content, log: log.WithValues("caFile", caFile)}
	content.AddListener(listenerFunc(func() { r.log.Info("loaded a new CA bundle from --ca-file") }))
	return r, nil
}

// run follows the file until ctx ends. The watch reloads the bundle when
// the file changes but reports a bad file only through klog; every check
// interval the file is read again here so that the agent's own log says
// when the bundle on disk became unusable and when it is usable again.
func (r *serverRoots) run(ctx context.Context, check time.Duration) {
	go r.content.Run(ctx, 1)
	t := time.NewTicker(check)
	defer t.Stop()
	bad := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := r.content.RunOnce(ctx)
		switch {
		case err != nil && !bad:
			r.log.Error(err, "cannot load --ca-file; verifying the scheduler against the last good CA bundle until it is fixed")
		case err == nil && bad:
			r.log.Info("--ca-file is usable again")
		}
		bad = err != nil
	}
}

// verifyConnection does what crypto/tls does without InsecureSkipVerify:
// the chain, with the intermediates the server sent, must lead to a root in
// the current bundle, be valid now, be for server authentication and hold
// the name the agent dialed. That name is the SNI; crypto/tls sends none for
// an IP address, and then only serverName, when it is one, can be checked.
func (r *serverRoots) verifyConnection(serverName string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the scheduler sent no certificate")
		}
		name := cs.ServerName
		if name == "" {
			if net.ParseIP(serverName) == nil {
				// x509 skips the name check for an empty name.
				return fmt.Errorf("no server name to check the scheduler's certificate against: dialed without SNI, and %q is not an IP address", serverName)
			}
			name = serverName
		}
		current, ok := r.content.VerifyOptions()
		if !ok || current.Roots == nil {
			// A nil pool would mean the system roots.
			return errors.New("no CA bundle loaded from --ca-file")
		}
		opts := x509.VerifyOptions{
			Roots:         current.Roots,
			DNSName:       name,
			Intermediates: x509.NewCertPool(),
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
		}
		return nil
	}
}

type listenerFunc func()

func (f listenerFunc) Enqueue() { f() }

package telemetry

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
)

// ServingTLSConfig serves the certificate and key in certFile and keyFile,
// reloading them when the files change (cert-manager or a Secret update
// rotates them without a scheduler restart). The watch stops with ctx.
// penny-scheduler's other gRPC endpoint, the Cluster Autoscaler expander,
// serves its certificate the same way.
func ServingTLSConfig(ctx context.Context, certFile, keyFile string) (*tls.Config, error) {
	content, err := dynamiccertificates.NewDynamicServingContentFromFiles("penny-serving", certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	go content.Run(ctx, 1)
	var (
		mu                sync.Mutex
		lastCert, lastKey []byte
		parsed            *tls.Certificate
	)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			certPEM, keyPEM := content.CurrentCertKeyContent()
			mu.Lock()
			defer mu.Unlock()
			if parsed == nil || !bytes.Equal(certPEM, lastCert) || !bytes.Equal(keyPEM, lastKey) {
				c, err := tls.X509KeyPair(certPEM, keyPEM)
				if err != nil {
					return nil, err
				}
				parsed, lastCert, lastKey = &c, certPEM, keyPEM
			}
			return parsed, nil
		},
	}, nil
}

// Serve runs srv on lis with TLS until ctx ends, then stops: in-flight
// messages get a moment to finish, then streams are cut (agents reconnect to
// the other replicas, or to this one when it is back).
func Serve(ctx context.Context, lis net.Listener, tlsConfig *tls.Config, srv *Server, log logr.Logger) error {
	g := srv.NewGRPCServer(credentials.NewTLS(tlsConfig))
	log.Info("telemetry gRPC server listening", "address", lis.Addr().String())
	return ServeUntil(ctx, g, lis, time.Second)
}

// ServeUntil runs g on lis until ctx ends, then stops it: calls in flight
// get grace to finish, then are cut. GracefulStop alone waits for every
// call and stream, which agents never end.
func ServeUntil(ctx context.Context, g *grpc.Server, lis net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(grace):
		g.Stop()
	}
	return nil
}

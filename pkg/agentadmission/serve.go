package agentadmission

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"
)

// Serve serves h at Path on lis with TLS until ctx ends. The API server
// calls the webhook with a 5 s timeout (deploy/agent/reclaim.yaml), so a
// slow client is cut off well before it could hold a connection open.
func Serve(ctx context.Context, lis net.Listener, tlsConfig *tls.Config, h *Evictions, log logr.Logger) error {
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         tlsConfig.Clone(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(lis, "", "") }()
	log.Info("agent evictions webhook listening", "address", lis.Addr().String(), "path", Path)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

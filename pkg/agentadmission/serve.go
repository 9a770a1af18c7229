package agentadmission

import (
	"context"
	"crypto/tls"
	"errors"
	stdlog "log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"github.com/pennysched/penny/pkg/telemetry"
)

// DefaultMaxConnections leaves room for many times the webhook's clients:
// the kube-apiservers, a handful, each with a small pool of connections to
// it. The cap only keeps other clients from holding connections without
// bound.
const DefaultMaxConnections = 256

// Serve serves h at Path on lis with TLS until ctx ends. The API server
// calls the webhook with a 5 s timeout (deploy/agent/reclaim.yaml), so a
// slow client is cut off well before it could hold a connection open; and
// beyond h's MaxConnections a connection is closed as soon as it is
// accepted, so many clients cannot hold them open together either.
func Serve(ctx context.Context, lis net.Listener, tlsConfig *tls.Config, h *Evictions, log logr.Logger) error {
	lis = telemetry.LimitConnections(lis, telemetry.ConnectionLimit{
		Max: h.opts.MaxConnections, Flag: "telemetry-eviction-webhook-max-connections", OverLimit: connectionsOverLimit.Inc, Log: log,
	})
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         tlsConfig.Clone(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          stdlog.New(serverErrors{log}, "", 0),
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

// serverErrors takes what net/http logs. A failed TLS handshake is counted
// and logged only at verbosity 4, as kube-apiserver does: a client refused
// for lacking the API server's certificate would otherwise print a line per
// connection to stderr, outside the scheduler's log format.
type serverErrors struct{ log logr.Logger }

func (w serverErrors) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.Contains(msg, "TLS handshake error") {
		handshakeErrors.Inc()
		w.log.V(4).Info(msg)
	} else {
		w.log.Info(msg)
	}
	return len(p), nil
}

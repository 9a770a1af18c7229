package telemetry

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/apimachinery/pkg/util/sets"
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

// RequireClientCertificates returns serving with a client certificate
// required at every handshake, signed by a CA of the bundle in caFile as
// the file is then: the bundle is reloaded when the file changes, as
// ServingTLSConfig reloads the certificate, so that rotating the CA needs
// no restart. A file that cannot be read or holds no certificate is an
// error now; one that goes bad later leaves the last good bundle in use.
// The watch stops with ctx. With names, the certificate's common name must
// also be one of them, as kube-apiserver's --requestheader-allowed-names
// narrows its front proxy's CA: a CA that signs other clients' certificates
// too (a cluster's client CA signs every user's and kubelet's) then lets in
// only the certificates issued to the names given.
func RequireClientCertificates(ctx context.Context, serving *tls.Config, caFile string, names []string) (*tls.Config, error) {
	allowed := sets.New[string]()
	for i, n := range names {
		if n == "" {
			return nil, fmt.Errorf("allowed name %d is empty; list common names of client certificates, or none to accept every certificate the CA signs", i+1)
		}
		allowed.Insert(n)
	}
	content, err := dynamiccertificates.NewDynamicCAContentFromFile("penny-client-ca", caFile)
	if err != nil {
		return nil, err
	}
	go content.Run(ctx, 1)
	cfg := serving.Clone()
	// RequireAndVerifyClientCert verifies against ClientCAs, which would pin
	// the bundle read at start. VerifyConnection makes the same checks
	// against the current bundle instead, and runs on resumed sessions too,
	// so a ticket issued under a CA since removed is refused as well.
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the client sent no certificate")
		}
		// dynamiccertificates' options ask for client authentication
		// (ExtKeyUsageClientAuth), as crypto/tls does.
		opts, ok := content.VerifyOptions()
		if !ok || opts.Roots == nil {
			// A nil pool would mean the system roots.
			return fmt.Errorf("no client CA bundle loaded from %s", caFile)
		}
		opts.Intermediates = x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
		}
		if cn := cs.PeerCertificates[0].Subject.CommonName; allowed.Len() > 0 && !allowed.Has(cn) {
			return fmt.Errorf("client certificate common name %q is not one of the allowed names %v", cn, sets.List(allowed))
		}
		return nil
	}
	return cfg, nil
}

// Serve runs srv on lis with TLS until ctx ends, then stops: in-flight
// messages get a moment to finish, then streams are cut (agents reconnect to
// the other replicas, or to this one when it is back). At most
// ServerOptions.MaxConnections connections are open at once.
func Serve(ctx context.Context, lis net.Listener, tlsConfig *tls.Config, srv *Server, log logr.Logger) error {
	g := srv.NewGRPCServer(credentials.NewTLS(tlsConfig))
	log.Info("telemetry gRPC server listening", "address", lis.Addr().String())
	lis = LimitConnections(lis, ConnectionLimit{
		Max: srv.opts.MaxConnections, Flag: "telemetry-max-connections", OverLimit: connectionsOverLimit.Inc, Log: log,
	})
	return ServeUntil(ctx, g, lis, time.Second)
}

// DefaultHandshakeTimeout is how long a client of Penny's gRPC endpoints
// has from the moment its connection is accepted to finish the TLS and
// HTTP/2 handshakes; gRPC's default is 120s, which lets a client that
// connects and sends nothing hold a connection, a goroutine and a file
// descriptor for two minutes. gRPC clients (penny-agent, Cluster
// Autoscaler) give up a connection attempt after 20s (MinConnectTimeout),
// so the server never drops a handshake its client still waits for: after
// a scheduler restart every agent's handshake competes for the CPU at
// once.
const DefaultHandshakeTimeout = 20 * time.Second

// ConnectionLimit bounds the connections open to an endpoint.
type ConnectionLimit struct {
	// Max connections open at once, whether their handshake is done or
	// not; positive.
	Max int
	// Flag sets Max; the log names it.
	Flag string
	// OverLimit is called for each connection closed for being over Max;
	// nil: none.
	OverLimit func()
	Log       logr.Logger
}

// LimitConnections returns lis with at most limit.Max connections open at
// once. A connection beyond them is closed as soon as it is accepted,
// rather than left in the kernel's accept queue until one closes (as
// golang.org/x/net/netutil.LimitListener does): the connections held are
// mostly agents' streams, which last, so a queued client would wait,
// unseen by metrics and log, until its own connect timeout gave up, and the
// queue would hold the connections of clients long gone by the time a slot
// freed. A closed client knows at once and retries with its backoff. The
// log says so at the default level at most once a minute, as refusals can
// come as fast as a client connects, and at -v=2 otherwise.
func LimitConnections(lis net.Listener, limit ConnectionLimit) net.Listener {
	return &connLimiter{Listener: lis, limit: limit, conns: map[*limitedConn]struct{}{}}
}

type connLimiter struct {
	net.Listener
	limit ConnectionLimit
	// lastLogged is when a refusal was last logged at the default level,
	// in Unix nanoseconds.
	lastLogged atomic.Int64

	mu    sync.Mutex
	conns map[*limitedConn]struct{}
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		open := len(l.conns)
		if open < l.limit.Max {
			lc := &limitedConn{Conn: c, l: l}
			l.conns[lc] = struct{}{}
			l.mu.Unlock()
			return lc, nil
		}
		l.mu.Unlock()
		c.Close()
		l.refused(c.RemoteAddr(), open)
	}
}

func (l *connLimiter) refused(from net.Addr, open int) {
	if l.limit.OverLimit != nil {
		l.limit.OverLimit()
	}
	log := l.limit.Log.V(2)
	now := time.Now().UnixNano()
	if last := l.lastLogged.Load(); now-last >= int64(time.Minute) && l.lastLogged.CompareAndSwap(last, now) {
		log = l.limit.Log
	}
	log.Info("refused a connection: as many as the limit allows are open (further refusals within a minute are logged at -v=2)",
		"client", from.String(), "open", open, "limit", l.limit.Max,
		"fix", fmt.Sprintf("if the clients are legitimate, raise --%s (each connection is a file descriptor: the process's open-file limit must allow it)", l.limit.Flag))
}

// closeConns closes the connections open now.
func (l *connLimiter) closeConns() {
	l.mu.Lock()
	conns := make([]*limitedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// limitedConn frees its slot when closed; gRPC closes a connection whatever
// ends it (a failed handshake, the client, keepalive, Stop).
type limitedConn struct {
	net.Conn
	l *connLimiter
}

// Close may be called more than once (by gRPC and by closeConns).
func (c *limitedConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// ServeUntil runs g on lis until ctx ends, then stops it: calls in flight
// get grace to finish, then are cut. GracefulStop alone waits for every
// call and stream, which agents never end. Both it and Stop also wait for
// connections still in their handshake, which gRPC does not track, for up
// to the handshake timeout; on a listener from LimitConnections those are
// closed when calls are cut, so a client that connects and sends nothing
// does not hold the process's shutdown.
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
		if l, ok := lis.(*connLimiter); ok {
			// Closed first (GracefulStop has closed it too, unless it has
			// not begun yet), so that no connection opens after these.
			l.Close()
			l.closeConns()
		}
		g.Stop()
	}
	return nil
}

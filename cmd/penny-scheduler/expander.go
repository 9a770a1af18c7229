package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/pkg/api/expander"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// expanderFlags configure the endpoint that answers Cluster Autoscaler's
// gRPC expander (docs/spot.md).
type expanderFlags struct {
	bindAddress    string
	certFile       string
	keyFile        string
	maxConnections int
	// handshakeTimeout is telemetry.DefaultHandshakeTimeout when 0; tests
	// shorten it.
	handshakeTimeout time.Duration

	// srv answers the requests.
	srv *spotrisk.ExpanderServer
	fs  *pflag.FlagSet
}

func (f *expanderFlags) flagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("penny expander", pflag.ContinueOnError)
	fs.StringVar(&f.bindAddress, "expander-bind-address", "", "address for Cluster Autoscaler's gRPC expander (--expander=grpc --grpc-expander-url), e.g. :7444; empty: no endpoint")
	fs.StringVar(&f.certFile, "expander-tls-cert-file", "", "TLS certificate of the expander endpoint (reloaded when it changes); required with --expander-bind-address, since Cluster Autoscaler only connects over TLS (its --grpc-expander-cert names the CA that signed it)")
	fs.StringVar(&f.keyFile, "expander-tls-key-file", "", "TLS key of the expander endpoint")
	fs.IntVar(&f.maxConnections, "expander-max-connections", defaultExpanderMaxConnections, "how many connections the expander endpoint holds open at once; one more is closed as soon as it is accepted (each Cluster Autoscaler replica keeps one)")
	return fs
}

func (f *expanderFlags) addFlags(nfs *cliflag.NamedFlagSets) {
	f.fs = f.flagSet()
	nfs.FlagSet("Penny Cluster Autoscaler expander").AddFlagSet(f.fs)
}

// start starts the endpoint, when configured; its other flags are refused
// without --expander-bind-address.
func (f *expanderFlags) start(ctx context.Context, _ *cobra.Command) (func(), error) {
	if f.bindAddress == "" {
		return nil, needs("expander-bind-address", "without it there is no expander endpoint; docs/spot.md, \"Growing the fleet\"", f.fs)
	}
	return startExpander(ctx, f, f.srv)
}

// checkSetUp refuses an endpoint no profile's SpotRisk ranks for: it would
// answer Unavailable to every request for as long as the scheduler ran,
// and Cluster Autoscaler would keep all its options without a word why.
func (f *expanderFlags) checkSetUp() error {
	if f.bindAddress == "" || f.srv.InUse() {
		return nil
	}
	return errors.New("--expander-bind-address: no profile of the scheduler's configuration enables the SpotRisk plugin, which ranks Cluster Autoscaler's options; enable it in a profile (deploy/scheduler's configuration does) or leave the flag out")
}

// defaultExpanderMaxConnections leaves room for many times the handful of
// Cluster Autoscaler replicas (one connection each) that use the endpoint,
// reconnects included; the cap only keeps other clients from holding
// connections without bound.
const defaultExpanderMaxConnections = 64

// expanderMaxStreams is how many calls one connection may have in flight:
// Cluster Autoscaler's one, and one more it may start when its own deadline
// has cut the first short. A call beyond it waits in the client for a
// stream, so the requests held in memory are at most
// --expander-max-connections x this x spotrisk.MaxExpanderRequestBytes.
const expanderMaxStreams = 2

// expanderGrace is how long a stopping endpoint waits for Cluster
// Autoscaler's calls in flight; a call is one computation over the options
// it was sent, well under it.
const expanderGrace = 5 * time.Second

// startExpander checks the configuration, listens and serves in the
// background until ctx ends. The function it returns waits until the
// endpoint has stopped.
func startExpander(ctx context.Context, f *expanderFlags, srv *spotrisk.ExpanderServer) (func(), error) {
	if f.certFile == "" || f.keyFile == "" {
		return nil, errors.New("--expander-bind-address needs --expander-tls-cert-file and --expander-tls-key-file: Cluster Autoscaler's gRPC expander only connects over TLS")
	}
	if f.maxConnections <= 0 {
		return nil, fmt.Errorf("--expander-max-connections %d: must be positive (default %d)", f.maxConnections, defaultExpanderMaxConnections)
	}
	handshake := f.handshakeTimeout
	if handshake == 0 {
		handshake = telemetry.DefaultHandshakeTimeout
	}
	tlsConfig, err := telemetry.ServingTLSConfig(ctx, f.certFile, f.keyFile)
	if err != nil {
		return nil, fmt.Errorf("--expander-tls-cert-file, --expander-tls-key-file: %w", err)
	}
	lis, err := net.Listen("tcp", f.bindAddress)
	if err != nil {
		return nil, fmt.Errorf("--expander-bind-address: %w", err)
	}
	logger := klog.Background().WithName("expander")
	g := grpc.NewServer(append(telemetry.Recovery(logger),
		grpc.Creds(credentials.NewTLS(tlsConfig)),
		grpc.ConnectionTimeout(handshake),
		// Cluster Autoscaler sends every option's pending pods and each node
		// group's template node in one request; gRPC's default 4 MiB would
		// refuse a large scale-up before Penny sees it.
		grpc.MaxRecvMsgSize(spotrisk.MaxExpanderRequestBytes),
		// Cluster Autoscaler calls once per scale-up and waits for the
		// answer; a client may not have more requests of that size read
		// at once on one connection (gRPC's default is unbounded), nor
		// headers beyond the telemetry endpoint's bound.
		grpc.MaxConcurrentStreams(expanderMaxStreams),
		grpc.MaxHeaderListSize(telemetry.MaxHeaderBytes),
		// Cluster Autoscaler keeps its connection between scale-ups and
		// dials again when sent away; a client that holds one and calls
		// nothing would otherwise keep a slot of the cap.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: telemetry.DefaultMaxConnectionIdle}))...)
	expander.RegisterExpanderServer(g, srv)
	lis = telemetry.LimitConnections(lis, telemetry.ConnectionLimit{
		Max: f.maxConnections, Flag: "expander-max-connections", OverLimit: spotrisk.ExpanderConnectionsOverLimit().Inc, Log: logger,
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		logger.Info("Cluster Autoscaler expander listening", "address", lis.Addr().String())
		if err := telemetry.ServeUntil(ctx, g, lis, expanderGrace); err != nil {
			logger.Error(err, "expander endpoint stopped")
		}
	}()
	return func() { <-done }, nil
}

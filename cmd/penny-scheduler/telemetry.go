package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"

	"github.com/pennysched/penny/pkg/telemetry"
)

// telemetryFlags are Penny's own flags, added to kube-scheduler's.
type telemetryFlags struct {
	bindAddress     string
	certFile        string
	keyFile         string
	maxAge          time.Duration
	audience        string
	serviceAccounts []string
	maxStreams      int
	// reclaim is the reclaim coordinator to run next to the endpoint
	// (reclaim.go); nil: none.
	reclaim *reclaimFlags
}

func (f *telemetryFlags) flagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("penny telemetry", pflag.ContinueOnError)
	fs.StringVar(&f.bindAddress, "telemetry-bind-address", "", "address for the agents' telemetry gRPC endpoint, e.g. :7443; empty: no endpoint (plugins see every node as unknown and use capacity counts)")
	fs.StringVar(&f.certFile, "telemetry-tls-cert-file", "", "TLS certificate of the telemetry endpoint (reloaded when it changes); required with --telemetry-bind-address")
	fs.StringVar(&f.keyFile, "telemetry-tls-key-file", "", "TLS key of the telemetry endpoint")
	fs.DurationVar(&f.maxAge, "telemetry-max-age", telemetry.DefaultMaxAge, "how long a node's report counts as fresh; older data counts as unknown")
	fs.StringVar(&f.audience, "telemetry-token-audience", telemetry.DefaultAudience, "audience agents' projected ServiceAccount tokens must carry")
	fs.StringSliceVar(&f.serviceAccounts, "telemetry-agent-service-accounts", []string{"penny-system/penny-agent"}, "namespace/name of the ServiceAccounts agents run as")
	fs.IntVar(&f.maxStreams, "telemetry-max-streams-per-node", telemetry.DefaultMaxStreamsPerNode, "how many streams the agents of one node may hold open to this replica at once; more are refused (an agent keeps one per scheduler address)")
	return fs
}

// addTelemetry adds the telemetry flags to the scheduler command and starts
// the endpoint, when configured, before the scheduler runs. The store is the
// one the plugins read.
func addTelemetry(cmd *cobra.Command, store *telemetry.Store, rf *reclaimFlags) {
	f := &telemetryFlags{reclaim: rf}
	fs := f.flagSet()
	if rf != nil {
		fs.AddFlagSet(rf.flagSet())
	}
	addFlags(cmd, "Penny telemetry flags", fs)
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if f.bindAddress == "" {
			return run(c, args)
		}
		// kube-scheduler installs the process's signal handler itself; the
		// endpoint stops when the scheduler returns.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		client, nodes, err := apiClients(c.Flags())
		if err != nil {
			return err
		}
		if err := startTelemetry(ctx, f, store, client, nodes); err != nil {
			return err
		}
		err = run(c, args)
		if f.reclaim != nil {
			f.reclaim.saveInterrupted()
		}
		return err
	}
}

// addFlags adds Penny's flags to the scheduler command and lists them,
// under title, after kube-scheduler's in --help.
func addFlags(cmd *cobra.Command, title string, fs *pflag.FlagSet) {
	cmd.Flags().AddFlagSet(fs)
	help := cmd.HelpFunc()
	cmd.SetHelpFunc(func(c *cobra.Command, args []string) {
		help(c, args)
		fmt.Fprintf(c.OutOrStdout(), "\n%s:\n\n%s", title, fs.FlagUsagesWrapped(100))
	})
}

// startTelemetry checks the configuration, listens and serves in the
// background; errors that would only show up later (a bad certificate, a
// taken port) are returned now. client sends TokenReviews (and serves the
// reclaim coordinator); nodes is the metadata client that tells the store
// which nodes were deleted.
func startTelemetry(ctx context.Context, f *telemetryFlags, store *telemetry.Store, client kubernetes.Interface, nodes metadata.Interface) error {
	if f.certFile == "" || f.keyFile == "" {
		return errors.New("--telemetry-bind-address needs --telemetry-tls-cert-file and --telemetry-tls-key-file: agents send ServiceAccount tokens, which must not travel in clear (docs/agent.md shows how to make a certificate)")
	}
	if f.maxAge <= 0 {
		return fmt.Errorf("--telemetry-max-age %v: must be positive", f.maxAge)
	}
	if f.maxStreams <= 0 {
		return fmt.Errorf("--telemetry-max-streams-per-node %d: must be positive (default %d)", f.maxStreams, telemetry.DefaultMaxStreamsPerNode)
	}
	store.SetMaxAge(f.maxAge)
	logger := klog.Background().WithName("telemetry")
	tlsConfig, err := telemetry.ServingTLSConfig(ctx, f.certFile, f.keyFile)
	if err != nil {
		return err
	}
	auth, err := telemetry.NewTokenReviewAuthenticator(client.AuthenticationV1(), []string{f.audience})
	if err != nil {
		return err
	}
	so := telemetry.ServerOptions{
		Store: store, Authenticator: auth, Audiences: []string{f.audience},
		AgentServiceAccounts: f.serviceAccounts, MaxStreamsPerNode: f.maxStreams, Log: logger,
	}
	if f.reclaim != nil {
		if err := f.reclaim.validate(); err != nil {
			return err
		}
		so.OnCheckpointStatus = f.reclaim.coordinator.OnCheckpointStatus
	}
	srv, err := telemetry.NewServer(so)
	if err != nil {
		return fmt.Errorf("--telemetry-agent-service-accounts: %w", err)
	}
	lis, err := net.Listen("tcp", f.bindAddress)
	if err != nil {
		return fmt.Errorf("--telemetry-bind-address: %w", err)
	}
	go func() {
		if err := telemetry.Serve(ctx, lis, tlsConfig, srv, logger); err != nil {
			logger.Error(err, "telemetry endpoint stopped")
		}
	}()
	go telemetry.MaintainStore(ctx, store, 10*time.Second, time.Hour)
	telemetry.ForgetDeletedNodes(ctx, nodes, store, time.Minute, logger)
	if f.reclaim != nil {
		f.reclaim.loadInterrupted(ctx, client)
		go f.reclaim.run(ctx, srv, client)
	}
	return nil
}

// apiClients connect to the API server the way the scheduler does:
// --kubeconfig, else the kubeconfig named in --config's clientConnection,
// else the in-cluster configuration. The metadata client watches Nodes
// without a second full copy of each next to the scheduler's.
func apiClients(fs *pflag.FlagSet) (kubernetes.Interface, metadata.Interface, error) {
	var kubeconfig, master string
	if fl := fs.Lookup("kubeconfig"); fl != nil {
		kubeconfig = fl.Value.String()
	}
	if fl := fs.Lookup("master"); fl != nil {
		master = fl.Value.String()
	}
	if fl := fs.Lookup("config"); kubeconfig == "" && fl != nil && fl.Value.String() != "" {
		cfg, err := options.LoadConfigFromFile(klog.Background(), fl.Value.String())
		if err != nil {
			return nil, nil, fmt.Errorf("--config: %w", err)
		}
		kubeconfig = cfg.ClientConnection.Kubeconfig
	}
	rc, err := clientcmd.BuildConfigFromFlags(master, kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: API server connection for TokenReview: %w", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	nodes, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	return client, nodes, nil
}

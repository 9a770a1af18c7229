package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/clientcmd"
	cliflag "k8s.io/component-base/cli/flag"
	componentbaseconfig "k8s.io/component-base/config"
	"k8s.io/klog/v2"
	configv1 "k8s.io/kube-scheduler/config/v1"
	appconfig "k8s.io/kubernetes/cmd/kube-scheduler/app/config"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	schedulerconfig "k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/scheme"

	"github.com/pennysched/penny/pkg/agentadmission"
	"github.com/pennysched/penny/pkg/telemetry"
)

// telemetryFlags are Penny's own flags, added to kube-scheduler's.
type telemetryFlags struct {
	bindAddress        string
	certFile           string
	keyFile            string
	maxAge             time.Duration
	audience           string
	serviceAccounts    []string
	maxStreams         int
	maxAuthentications int
	maxConnections     int
	// evictionWebhookAddress serves the webhook that holds agents'
	// evictions to their own node; "": not served.
	evictionWebhookAddress string
	// evictionWebhookMaxConnections caps the webhook's open connections.
	evictionWebhookMaxConnections int
	// evictionWebhookClientCAFile holds the CAs whose client certificates
	// the webhook requires; "": it answers any client.
	evictionWebhookClientCAFile string
	// evictionWebhookAllowedNames narrows the certificates the CAs sign to
	// these common names; empty: any.
	evictionWebhookAllowedNames []string
	// reclaim is the reclaim coordinator to run next to the endpoint
	// (reclaim.go); nil: none.
	reclaim *reclaimFlags
	// store is the one the plugins read.
	store *telemetry.Store
	fs    *pflag.FlagSet
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
	fs.IntVar(&f.maxAuthentications, "telemetry-max-authentications-in-flight", telemetry.DefaultMaxAuthenticationsInFlight, "how many agents' tokens this replica checks at once (a TokenReview each); a stream that arrives while that many are checked is refused with UNAVAILABLE and the agent retries")
	fs.IntVar(&f.maxConnections, "telemetry-max-connections", telemetry.DefaultMaxConnections, "how many connections this replica holds open at once, agents' and anyone else's; one more is closed as soon as it is accepted (an agent keeps one per scheduler address, two on a dual-stack cluster). Each is a file descriptor: the process's open-file limit must allow them")
	fs.StringVar(&f.evictionWebhookAddress, "telemetry-eviction-webhook-bind-address", "", "address for the admission webhook that lets agents evict only the pods of their own node, e.g. :9443, served with the telemetry endpoint's certificate; deploy/agent/reclaim.yaml registers it (docs/reclaim.md#security). Empty: not served, and with reclaim.yaml applied the agents' evictions are refused")
	fs.IntVar(&f.evictionWebhookMaxConnections, evictionWebhookMaxConnectionsFlag, agentadmission.DefaultMaxConnections, "how many connections the agent evictions webhook holds open at once; one more is closed as soon as it is accepted (its clients are the kube-apiservers, each with a few)")
	fs.StringVar(&f.evictionWebhookClientCAFile, evictionWebhookClientCAFileFlag, "", "PEM bundle of the CAs that sign the client certificate kube-apiserver presents to the agent evictions webhook (its --admission-control-config-file, docs/reclaim.md#security); reloaded when it changes. Set, the webhook refuses every connection without a certificate they sign. Empty: it answers any client that reaches its port")
	fs.StringSliceVar(&f.evictionWebhookAllowedNames, evictionWebhookAllowedNamesFlag, nil, "common names (CN) of the client certificates the agent evictions webhook accepts, comma-separated, as kube-apiserver's --requestheader-allowed-names; a certificate the CAs of --"+evictionWebhookClientCAFileFlag+" sign for another name is refused. Empty: any certificate they sign")
	return fs
}

func (f *telemetryFlags) addFlags(nfs *cliflag.NamedFlagSets) {
	f.fs = f.flagSet()
	nfs.FlagSet("Penny telemetry").AddFlagSet(f.fs)
	if f.reclaim != nil {
		f.reclaim.fs = f.reclaim.flagSet()
		nfs.FlagSet("Penny reclaim").AddFlagSet(f.reclaim.fs)
	}
}

// The flags validate looks up, to refuse them without the webhook.
const (
	evictionWebhookMaxConnectionsFlag = "telemetry-eviction-webhook-max-connections"
	evictionWebhookClientCAFileFlag   = "telemetry-eviction-webhook-client-ca-file"
	evictionWebhookAllowedNamesFlag   = "telemetry-eviction-webhook-allowed-names"
)

// start starts the endpoint, when configured, and the reclaim coordinator
// beside it. The flags that only take effect with --telemetry-bind-address
// are refused without it.
func (f *telemetryFlags) start(ctx context.Context, cmd *cobra.Command) (func(), error) {
	if f.bindAddress == "" {
		sets := []*pflag.FlagSet{f.fs}
		if f.reclaim != nil {
			sets = append(sets, f.reclaim.fs)
		}
		return nil, needs("telemetry-bind-address", "without it the agents' telemetry endpoint and the reclaim coordinator are off; docs/agent.md turns them on", sets...)
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	apis, err := newAPIClients(cmd.Flags())
	if err != nil {
		return nil, err
	}
	return startTelemetry(ctx, f, f.store, apis)
}

// setUp hands the scheduler's configuration to the reclaim coordinator's
// mover (reclaimFlags.setUp).
func (f *telemetryFlags) setUp(cc *appconfig.CompletedConfig) {
	if f.reclaim != nil {
		f.reclaim.setUp(cc)
	}
}

// validate checks the flags, with --telemetry-bind-address set.
func (f *telemetryFlags) validate() error {
	if f.certFile == "" || f.keyFile == "" {
		return errors.New("--telemetry-bind-address needs --telemetry-tls-cert-file and --telemetry-tls-key-file: agents send ServiceAccount tokens, which must not travel in clear (docs/agent.md shows how to make a certificate)")
	}
	if f.maxAge <= 0 {
		return fmt.Errorf("--telemetry-max-age %v: must be positive (default %v)", f.maxAge, telemetry.DefaultMaxAge)
	}
	if f.maxStreams <= 0 {
		return fmt.Errorf("--telemetry-max-streams-per-node %d: must be positive (default %d)", f.maxStreams, telemetry.DefaultMaxStreamsPerNode)
	}
	if f.maxAuthentications <= 0 {
		return fmt.Errorf("--telemetry-max-authentications-in-flight %d: must be positive (default %d)", f.maxAuthentications, telemetry.DefaultMaxAuthenticationsInFlight)
	}
	if f.maxConnections <= 0 {
		return fmt.Errorf("--telemetry-max-connections %d: must be positive (default %d)", f.maxConnections, telemetry.DefaultMaxConnections)
	}
	if f.evictionWebhookAddress == "" && f.fs != nil {
		only := pflag.NewFlagSet("", pflag.ContinueOnError)
		only.AddFlag(f.fs.Lookup(evictionWebhookMaxConnectionsFlag))
		only.AddFlag(f.fs.Lookup(evictionWebhookClientCAFileFlag))
		only.AddFlag(f.fs.Lookup(evictionWebhookAllowedNamesFlag))
		if err := needs("telemetry-eviction-webhook-bind-address", "without it the agent evictions webhook is not served", only); err != nil {
			return err
		}
	}
	if f.evictionWebhookAddress != "" && f.evictionWebhookClientCAFile == "" && len(f.evictionWebhookAllowedNames) > 0 {
		return fmt.Errorf("--%s takes effect only with --%s, which is not set (the webhook checks no client certificate without it): set --%s or leave out --%s", evictionWebhookAllowedNamesFlag, evictionWebhookClientCAFileFlag, evictionWebhookClientCAFileFlag, evictionWebhookAllowedNamesFlag)
	}
	for i, n := range f.evictionWebhookAllowedNames {
		if n == "" {
			return fmt.Errorf("--%s %q: name %d is empty; list the common names of kube-apiserver's client certificates, separated by single commas", evictionWebhookAllowedNamesFlag, strings.Join(f.evictionWebhookAllowedNames, ","), i+1)
		}
		if strings.TrimSpace(n) != n {
			// A name with a space around it matches no certificate: the
			// webhook would refuse the API server, and the agents'
			// evictions with it.
			return fmt.Errorf("--%s %q: name %d has spaces around it, which no certificate's name has (entries are separated by commas, without spaces)", evictionWebhookAllowedNamesFlag, strings.Join(f.evictionWebhookAllowedNames, ","), i+1)
		}
	}
	if f.evictionWebhookAddress != "" && f.evictionWebhookMaxConnections <= 0 {
		return fmt.Errorf("--%s %d: must be positive (default %d)", evictionWebhookMaxConnectionsFlag, f.evictionWebhookMaxConnections, agentadmission.DefaultMaxConnections)
	}
	if f.audience == "" {
		return fmt.Errorf("--telemetry-token-audience is empty: give the audience of the agents' projected ServiceAccount tokens (deploy/agent/penny-agent.yaml; default %s)", telemetry.DefaultAudience)
	}
	for _, sa := range f.serviceAccounts {
		if err := telemetry.CheckAgentServiceAccount(sa); err != nil {
			return fmt.Errorf("--telemetry-agent-service-accounts %q: %v (entries are separated by commas, without spaces)", sa, err)
		}
	}
	if f.reclaim != nil {
		return f.reclaim.validate()
	}
	return nil
}

// needs refuses the flags of sets (nil ones have none) that were given
// although the flag they take effect with was not.
func needs(flag, without string, sets ...*pflag.FlagSet) error {
	var given []string
	for _, fs := range sets {
		if fs == nil {
			continue
		}
		fs.VisitAll(func(fl *pflag.Flag) {
			if fl.Changed && fl.Name != flag {
				given = append(given, "--"+fl.Name)
			}
		})
	}
	if len(given) == 0 {
		return nil
	}
	verb := "takes"
	if len(given) > 1 {
		verb = "take"
	}
	list := strings.Join(given, ", ")
	return fmt.Errorf("%s %s effect only with --%s, which is not set (%s): set --%s or leave out %s", list, verb, flag, without, flag, list)
}

// startTelemetry listens and serves in the background until ctx ends, with
// flags that validate; errors that would only show up later (a bad
// certificate, a taken port) are returned now. stopped returns once the
// endpoint and the reclaim coordinator have stopped and the interrupted runs
// are saved.
func startTelemetry(ctx context.Context, f *telemetryFlags, store *telemetry.Store, apis apiClients) (stopped func(), err error) {
	client := apis.client
	store.SetMaxAge(f.maxAge)
	logger := klog.Background().WithName("telemetry")
	tlsConfig, err := telemetry.ServingTLSConfig(ctx, f.certFile, f.keyFile)
	if err != nil {
		return nil, fmt.Errorf("--telemetry-tls-cert-file, --telemetry-tls-key-file: %w", err)
	}
	auth, err := telemetry.NewTokenReviewAuthenticator(client.AuthenticationV1(), []string{f.audience})
	if err != nil {
		return nil, err
	}
	so := telemetry.ServerOptions{
		Store: store, Authenticator: auth, Audiences: []string{f.audience},
		AgentServiceAccounts: f.serviceAccounts, MaxStreamsPerNode: f.maxStreams,
		MaxAuthenticationsInFlight: f.maxAuthentications, MaxConnections: f.maxConnections, Log: logger,
	}
	if f.reclaim != nil {
		so.OnCheckpointStatus = f.reclaim.coordinator.OnCheckpointStatus
	}
	srv, err := telemetry.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("--telemetry-agent-service-accounts: %w", err)
	}
	var webhook *agentadmission.Evictions
	webhookTLS := tlsConfig
	webhookLog := klog.Background().WithName("agent-evictions")
	if f.evictionWebhookAddress != "" {
		webhook, err = agentadmission.NewEvictions(agentadmission.Options{
			Pods: apis.webhookPods, AgentServiceAccounts: f.serviceAccounts, MaxConnections: f.evictionWebhookMaxConnections,
			Log: webhookLog,
		})
		if err != nil {
			return nil, fmt.Errorf("--telemetry-agent-service-accounts: %w", err)
		}
		if f.evictionWebhookClientCAFile == "" {
			webhookLog.Info("Warning: the agent evictions webhook answers any client that reaches its port: a made-up review makes it read the pod it names and answer with the pod's node and UID. "+
				"Give kube-apiserver a client certificate for the webhook and its CA to --"+evictionWebhookClientCAFileFlag+" (docs/reclaim.md#security)", "address", f.evictionWebhookAddress)
		} else if webhookTLS, err = telemetry.RequireClientCertificates(ctx, tlsConfig, f.evictionWebhookClientCAFile, f.evictionWebhookAllowedNames); err != nil {
			return nil, fmt.Errorf("--%s %s: %w; give a PEM bundle of the CAs that sign the client certificate kube-apiserver presents to the webhook (docs/reclaim.md#security)", evictionWebhookClientCAFileFlag, f.evictionWebhookClientCAFile, err)
		} else {
			names := "any the CA signs"
			if len(f.evictionWebhookAllowedNames) > 0 {
				names = strings.Join(f.evictionWebhookAllowedNames, ",")
			}
			webhookLog.Info("The agent evictions webhook requires a client certificate", "clientCAFile", f.evictionWebhookClientCAFile, "allowedNames", names)
		}
	}
	if f.reclaim != nil {
		if err := f.reclaim.checkAccess(ctx, client.AuthorizationV1()); err != nil {
			return nil, err
		}
	}
	lis, err := net.Listen("tcp", f.bindAddress)
	if err != nil {
		return nil, fmt.Errorf("--telemetry-bind-address: %w", err)
	}
	var webhookLis net.Listener
	if webhook != nil {
		if webhookLis, err = net.Listen("tcp", f.evictionWebhookAddress); err != nil {
			lis.Close()
			return nil, fmt.Errorf("--telemetry-eviction-webhook-bind-address: %w", err)
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := telemetry.Serve(ctx, lis, tlsConfig, srv, logger); err != nil {
			logger.Error(err, "telemetry endpoint stopped")
		}
	})
	if webhook != nil {
		wg.Go(func() {
			if err := agentadmission.Serve(ctx, webhookLis, webhookTLS, webhook, webhookLog); err != nil {
				webhookLog.Error(err, "agent evictions webhook stopped")
			}
		})
	}
	go telemetry.MaintainStore(ctx, store, 10*time.Second, time.Hour)
	telemetry.ForgetDeletedNodes(ctx, apis.nodes, store, time.Minute, logger)
	if f.reclaim == nil {
		return wg.Wait, nil
	}
	f.reclaim.loadInterrupted(ctx, client)
	wg.Go(func() { f.reclaim.run(ctx, srv, client) })
	return func() {
		wg.Wait()
		// Once the coordinator has stopped, nothing records runs any more.
		f.reclaim.saveInterrupted()
	}, nil
}

// apiClients are Penny's own connections to the API server, beside the
// scheduler's; each has a rate limiter of its own.
type apiClients struct {
	// client sends the TokenReviews and the reclaim coordinator's requests.
	client kubernetes.Interface
	// nodes watches the Nodes' metadata, without a second full copy of
	// each next to the scheduler's.
	nodes metadata.Interface
	// webhookPods reads the pods the agent evictions webhook judges. Without
	// a client CA anyone who reaches the webhook makes it read a pod per
	// review; with a limiter of its own, a flood of them delays only the
	// webhook's answers, not the agents' TokenReviews or a reclaim's
	// evictions.
	webhookPods corev1client.PodsGetter
}

// newAPIClients connect to the API server the way the scheduler does: with
// --config, the kubeconfig named in its clientConnection (kube-scheduler
// ignores --kubeconfig then, and so does this); without it, --kubeconfig;
// else the in-cluster configuration; --master overrides the server. They
// send at the scheduler's rate too (clientConnection's qps and burst, or
// --kube-api-qps and --kube-api-burst without --config; kube-scheduler's 50
// and 100 by default), not client-go's 5 a second: agents that reconnect
// after a restart each cost a TokenReview, and a reclaim's evictions of a
// large gang must be done by its deadline.
func newAPIClients(fs *pflag.FlagSet) (apiClients, error) {
	var master string
	if fl := fs.Lookup("master"); fl != nil {
		master = fl.Value.String()
	}
	var conn componentbaseconfig.ClientConnectionConfiguration
	if fl := fs.Lookup("config"); fl != nil && fl.Value.String() != "" {
		cfg, err := options.LoadConfigFromFile(klog.Background(), fl.Value.String())
		if err != nil {
			return apiClients{}, fmt.Errorf("--config: %w", err)
		}
		conn = cfg.ClientConnection
	} else {
		var versioned configv1.KubeSchedulerConfiguration
		var defaults schedulerconfig.KubeSchedulerConfiguration
		scheme.Scheme.Default(&versioned)
		if err := scheme.Scheme.Convert(&versioned, &defaults, nil); err != nil {
			return apiClients{}, fmt.Errorf("kube-scheduler's default configuration: %w", err)
		}
		conn = defaults.ClientConnection
		if fl := fs.Lookup("kubeconfig"); fl != nil {
			conn.Kubeconfig = fl.Value.String()
		}
		// kube-scheduler's deprecated --kube-api-qps and --kube-api-burst
		// set its rate without --config.
		if fl := fs.Lookup("kube-api-qps"); fl != nil {
			if qps, err := strconv.ParseFloat(fl.Value.String(), 32); err == nil {
				conn.QPS = float32(qps)
			}
		}
		if fl := fs.Lookup("kube-api-burst"); fl != nil {
			if burst, err := strconv.ParseInt(fl.Value.String(), 10, 32); err == nil {
				conn.Burst = int32(burst)
			}
		}
	}
	rc, err := clientcmd.BuildConfigFromFlags(master, conn.Kubeconfig)
	if err != nil {
		return apiClients{}, fmt.Errorf("telemetry: API server connection for TokenReview: %w", err)
	}
	// Left without a RateLimiter, each client below makes its own from
	// these.
	rc.QPS, rc.Burst = conn.QPS, int(conn.Burst)
	var apis apiClients
	if apis.client, err = kubernetes.NewForConfig(rc); err != nil {
		return apiClients{}, err
	}
	if apis.nodes, err = metadata.NewForConfig(rc); err != nil {
		return apiClients{}, err
	}
	if apis.webhookPods, err = corev1client.NewForConfig(rc); err != nil {
		return apiClients{}, err
	}
	return apis, nil
}

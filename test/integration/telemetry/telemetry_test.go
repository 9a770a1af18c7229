// Package telemetry checks the agent's authentication end to end on a real
// kube-apiserver: agents' tokens are real projected ServiceAccount tokens
// (TokenRequest bound to the agent's pod, so they carry the pod's node), and
// penny-scheduler's telemetry server checks them with real TokenReviews.
package telemetry

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/keyutil"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/agent/agenttest"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
	"github.com/pennysched/penny/test/harness"
)

const fleet = `
pools:
- {name: a100, count: 2, instanceType: p4d.24xlarge, gpuModel: A100-40GB, gpusPerNode: 8, capacityType: spot, zone: z1, cpu: "96", memory: 1152Gi}
`

const (
	namespace = localcluster.SystemNamespace
	agentSA   = "penny-agent"
)

// agentPod creates the agent's pod on node, as the DaemonSet would, and
// returns it once the API server has it.
func agentPod(t *testing.T, c *localcluster.Cluster, node string) *corev1.Pod {
	t.Helper()
	return harness.CreatePod(t, c, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "penny-agent-" + node, Namespace: namespace},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: agentSA,
			Containers:         []corev1.Container{{Name: "agent", Image: "registry.example/penny-agent"}},
		},
	})
}

// projectedToken asks the API server for the token a projected volume in pod
// would hold.
func projectedToken(t *testing.T, c *localcluster.Cluster, pod *corev1.Pod, audience string) string {
	t.Helper()
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(context.Background(), agentSA, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: ptr.To[int64](3600),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s: %v", pod.Name, err)
	}
	return tr.Status.Token
}

// resigned returns token with its expiry moved, signed with the cluster's
// own ServiceAccount key: a token the API server issued, only older.
func resigned(t *testing.T, c *localcluster.Cluster, token string, exp time.Time) string {
	t.Helper()
	keyPEM, err := os.ReadFile(filepath.Join(c.Dir, "service-account.key"))
	if err != nil {
		t.Fatalf("the local cluster's ServiceAccount signing key: %v", err)
	}
	key, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{}
	orig, _, err := jwt.NewParser().ParseUnverified(token, claims)
	if err != nil {
		t.Fatal(err)
	}
	claims["exp"] = exp.Unix()
	claims["iat"] = exp.Add(-time.Hour).Unix()
	claims["nbf"] = exp.Add(-time.Hour).Unix()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	tok.Header["kid"] = orig.Header["kid"]
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sendReport opens an agent stream with token and sends one report.
func sendReport(t *testing.T, env *telemetrytest.Env, token string, r *telemetryv1.NodeReport) (*telemetryv1.ReportAck, error) {
	t.Helper()
	return telemetrytest.Dial(t, env, token).Report(t, r)
}

func wrongNodeCount(t *testing.T) float64 {
	t.Helper()
	vals, err := testutil.GetCounterValuesFromGatherer(legacyregistry.DefaultGatherer, "penny_telemetry_reports_total", map[string]string{}, "result")
	if err != nil {
		return 0
	}
	return vals["wrong_node"]
}

func TestAgentTokensOnRealAPIServer(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	ctx := context.Background()
	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 2 {
		t.Fatalf("nodes: %v (%v)", nodes, err)
	}
	nodeA, nodeB := nodes.Items[0].Name, nodes.Items[1].Name
	if _, err := c.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: agentSA}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	podA, podB := agentPod(t, c, nodeA), agentPod(t, c, nodeB)

	auth, err := telemetry.NewTokenReviewAuthenticator(c.Client.AuthenticationV1(), []string{telemetry.DefaultAudience})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := telemetry.NewServer(telemetry.ServerOptions{
		Store: telemetry.NewStore(telemetry.StoreOptions{}), Authenticator: auth,
		AgentServiceAccounts: []string{namespace + "/" + agentSA}, Log: testr.New(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	env := telemetrytest.StartWith(t, srv)
	tokenA := projectedToken(t, c, podA, telemetry.DefaultAudience)

	t.Run("right node accepted", func(t *testing.T) {
		// The agent's report loop and uplink with a projected token from a
		// file. GPUs come from a stand-in source: this binary links Go's
		// plugin package (through the API server), which go-nvml cannot
		// share a process with (agent/report explains).
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(tokenA), 0o600); err != nil {
			t.Fatal(err)
		}
		agenttest.Start(t, agenttest.Options{Node: nodeA, Address: env.Addr, TLS: env.ClientTLS, TokenFile: tokenFile, GPUs: telemetrytest.GPUSource{GPUs: 8}})
		agenttest.WaitForNode(t, env.Store, nodeA, 8, 20*time.Second)
	})

	t.Run("wrong node refused and counted", func(t *testing.T) {
		before := wrongNodeCount(t)
		_, err := sendReport(t, env, tokenA, telemetrytest.Report(nodeB, 8, 1, time.Now()))
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), nodeA) {
			t.Fatalf("agent of %s reporting about %s: got %v, want PermissionDenied", nodeA, nodeB, err)
		}
		if st, _ := env.Store.Lookup(nodeB); st != nil {
			t.Fatalf("%s's state was written by the agent of %s", nodeB, nodeA)
		}
		if got := wrongNodeCount(t); got != before+1 {
			t.Fatalf("wrong_node count %v, want %v", got, before+1)
		}
	})

	t.Run("expired token refused", func(t *testing.T) {
		tokenB := projectedToken(t, c, podB, telemetry.DefaultAudience)
		// Control: the same token re-signed with a future expiry is good, so
		// a refusal below is about the expiry and nothing else.
		fresh := resigned(t, c, tokenB, time.Now().Add(30*time.Minute))
		if ack, err := sendReport(t, env, fresh, telemetrytest.Report(nodeB, 8, 1, time.Now())); err != nil || !ack.GetAccepted() {
			t.Fatalf("re-signed unexpired token: %v %v", ack, err)
		}
		// Expired well beyond the API server's one-minute leeway.
		expired := resigned(t, c, tokenB, time.Now().Add(-5*time.Minute))
		_, err := sendReport(t, env, expired, telemetrytest.Report(nodeB, 8, 2, time.Now()))
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("expired token: got %v, want Unauthenticated", err)
		}
	})

	t.Run("token of a deleted agent pod refused", func(t *testing.T) {
		pod := func(name string) *corev1.Pod {
			return harness.CreatePod(t, c, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
				Spec:       corev1.PodSpec{NodeName: nodeB, ServiceAccountName: agentSA, Containers: []corev1.Container{{Name: "agent", Image: "x"}}},
			})
		}
		// Two agent pods made the same way; only one is deleted. (Asking the
		// API server about the deleted one's token beforehand would not do as
		// a control: it caches a good answer for 10s.)
		kept, gone := pod("penny-agent-kept"), pod("penny-agent-gone")
		keptToken := projectedToken(t, c, kept, telemetry.DefaultAudience)
		goneToken := projectedToken(t, c, gone, telemetry.DefaultAudience)
		if err := c.Client.CoreV1().Pods(namespace).Delete(ctx, gone.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			if _, err := c.Client.CoreV1().Pods(namespace).Get(ctx, gone.Name, metav1.GetOptions{}); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("pod not deleted")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if ack, err := sendReport(t, env, keptToken, telemetrytest.Report(nodeB, 8, 10, time.Now())); err != nil || !ack.GetAccepted() {
			t.Fatalf("token of the pod that still exists: %v %v", ack, err)
		}
		_, err := sendReport(t, env, goneToken, telemetrytest.Report(nodeB, 8, 11, time.Now()))
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("token bound to a deleted pod: got %v, want Unauthenticated", err)
		}
	})

	t.Run("token for another audience refused", func(t *testing.T) {
		token := projectedToken(t, c, podA, "https://kubernetes.default.svc.cluster.local")
		_, err := sendReport(t, env, token, telemetrytest.Report(nodeA, 8, 100, time.Now()))
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("API-server token: got %v, want Unauthenticated", err)
		}
	})
}

// A Node deleted from a real API server leaves the telemetry store at once,
// seen through the Nodes' metadata (what penny-scheduler watches, with the
// permissions kube-scheduler's role gives it); the other node stays.
func TestDeletedNodeLeavesTheStore(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 2 {
		t.Fatalf("nodes: %v (%v)", nodes, err)
	}
	gone, kept := nodes.Items[0].Name, nodes.Items[1].Name
	store := telemetrytest.StoreWith(gone, kept)
	synced := telemetry.ForgetDeletedNodes(ctx, metadata.NewForConfigOrDie(c.RESTConfig), store, time.Hour, testr.New(t))
	if !cache.WaitForCacheSync(ctx.Done(), synced) {
		t.Fatal("the Nodes' metadata did not sync")
	}
	if err := c.Client.CoreV1().Nodes().Delete(ctx, gone, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for st, _ := store.Lookup(gone); st != nil; st, _ = store.Lookup(gone) {
		if time.Now().After(deadline) {
			t.Fatalf("node %s was deleted and is still in the store", gone)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, fresh := store.Lookup(kept); !fresh {
		t.Fatalf("node %s, still in the cluster, left the store", kept)
	}
}

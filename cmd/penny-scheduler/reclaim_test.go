package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	fakeclient "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"

	"github.com/go-logr/logr/testr"

	"github.com/pennysched/penny/pkg/configmaplines"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// reviews answers client's SelfSubjectAccessReviews with answer and returns
// what they asked, as "verb namespace/name".
func reviews(client *fakeclient.Clientset, answer func(*authorizationv1.ResourceAttributes) (authorizationv1.SubjectAccessReviewStatus, error)) func() []string {
	var mu sync.Mutex
	var asked []string
	client.PrependReactor("create", "selfsubjectaccessreviews", func(action clienttesting.Action) (bool, runtime.Object, error) {
		r := action.(clienttesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		a := r.Spec.ResourceAttributes
		mu.Lock()
		asked = append(asked, fmt.Sprintf("%s %s/%s", a.Verb, a.Namespace, a.Name))
		mu.Unlock()
		st, err := answer(a)
		if err != nil {
			return true, nil, err
		}
		r.Status = st
		return true, r, nil
	})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(asked)
	}
}

// As the shipped Roles in penny-system: penny-scheduler-interrupted-runs
// grants update on the two default names and create, penny-scheduler-configmaps
// get on every ConfigMap.
func shippedRole(a *authorizationv1.ResourceAttributes) (authorizationv1.SubjectAccessReviewStatus, error) {
	ok := a.Namespace == "penny-system" && a.Resource == "configmaps" && a.Group == "" &&
		(a.Verb == "create" && a.Name == "" || a.Verb == "get" || a.Verb == "update" && (a.Name == "penny-interrupted-runs" || a.Name == "penny-reclaim-notices"))
	return authorizationv1.SubjectAccessReviewStatus{Allowed: ok}, nil
}

func defaultReclaimFlags() *reclaimFlags {
	return &reclaimFlags{interruptedConfigMap: "penny-system/penny-interrupted-runs", noticesConfigMap: "penny-system/penny-reclaim-notices"}
}

// A ConfigMap the scheduler may not write fails the start, naming the flag,
// the ConfigMap, the verbs and the fix, rather than every write failing
// later; the defaults, as the shipped Role grants, start.
func TestReclaimConfigMapAccessIsCheckedAtStart(t *testing.T) {
	ctx := context.Background()
	client := fakeclient.NewClientset()
	asked := reviews(client, shippedRole)
	if err := defaultReclaimFlags().checkAccess(ctx, client.AuthorizationV1()); err != nil {
		t.Fatalf("the defaults, which the shipped Role grants: %v", err)
	}
	want := []string{
		"get penny-system/penny-interrupted-runs", "update penny-system/penny-interrupted-runs", "create penny-system/",
		"get penny-system/penny-reclaim-notices", "update penny-system/penny-reclaim-notices", "create penny-system/",
	}
	if got := asked(); !slices.Equal(got, want) {
		t.Errorf("reviewed %q, want %q (create without a name, as it is made)", got, want)
	}

	cases := []struct {
		flag, value string
		want        []string
	}{
		{"reclaim-notices-configmap", "penny-system/my-notices", []string{"--reclaim-notices-configmap penny-system/my-notices", "may not update ConfigMap my-notices in namespace penny-system",
			"penny-scheduler-interrupted-runs", "deploy/scheduler/penny-scheduler.yaml", "or use the default penny-system/penny-reclaim-notices"}},
		{"reclaim-interrupted-configmap", "ops/runs", []string{"--reclaim-interrupted-configmap ops/runs", "may not get, update, create ConfigMap runs in namespace ops",
			"penny-scheduler-interrupted-runs", "or use the default penny-system/penny-interrupted-runs"}},
	}
	for _, c := range cases {
		f := defaultReclaimFlags()
		if c.flag == "reclaim-notices-configmap" {
			f.noticesConfigMap = c.value
		} else {
			f.interruptedConfigMap = c.value
		}
		client := fakeclient.NewClientset()
		reviews(client, shippedRole)
		err := f.checkAccess(ctx, client.AuthorizationV1())
		if err == nil {
			t.Errorf("--%s %s, which the shipped Role does not grant: the start goes on", c.flag, c.value)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("--%s %s: error %q does not say %q", c.flag, c.value, err, w)
			}
		}
	}

	// Empty flags keep the state in memory: nothing to review.
	client = fakeclient.NewClientset()
	asked = reviews(client, shippedRole)
	if err := (&reclaimFlags{}).checkAccess(ctx, client.AuthorizationV1()); err != nil || len(asked()) != 0 {
		t.Errorf("memory only: %v, reviewed %q", err, asked())
	}
}

// A review that cannot be made, or that the authorizer cannot decide, does
// not stop the start: the writes may still go through.
func TestReclaimConfigMapAccessUnknownStarts(t *testing.T) {
	answers := map[string]func(*authorizationv1.ResourceAttributes) (authorizationv1.SubjectAccessReviewStatus, error){
		"reviews forbidden": func(*authorizationv1.ResourceAttributes) (authorizationv1.SubjectAccessReviewStatus, error) {
			return authorizationv1.SubjectAccessReviewStatus{}, apierrors.NewForbidden(schema.GroupResource{Group: "authorization.k8s.io", Resource: "selfsubjectaccessreviews"}, "", fmt.Errorf("no"))
		},
		"API server unavailable": func(*authorizationv1.ResourceAttributes) (authorizationv1.SubjectAccessReviewStatus, error) {
			return authorizationv1.SubjectAccessReviewStatus{}, apierrors.NewServiceUnavailable("etcd is down")
		},
		"undecided": func(*authorizationv1.ResourceAttributes) (authorizationv1.SubjectAccessReviewStatus, error) {
			return authorizationv1.SubjectAccessReviewStatus{EvaluationError: "webhook authorizer timed out"}, nil
		},
	}
	for name, answer := range answers {
		f := defaultReclaimFlags()
		f.noticesConfigMap = "penny-system/my-notices"
		client := fakeclient.NewClientset()
		asked := reviews(client, answer)
		if err := f.checkAccess(context.Background(), client.AuthorizationV1()); err != nil {
			t.Errorf("%s: %v, want a warning and the start to go on", name, err)
		}
		if len(asked()) != 2*len(configmaplines.Verbs) {
			t.Errorf("%s: reviewed %q, want both ConfigMaps", name, asked())
		}
	}
}

// The check runs where the telemetry endpoint starts, before it listens.
func TestStartTelemetryFailsOnAConfigMapItMayNotWrite(t *testing.T) {
	dir := t.TempDir()
	cert := telemetrytest.NewCert(t)
	rf := defaultReclaimFlags()
	rf.noticesConfigMap = "penny-system/my-notices"
	rf.coordinator, rf.interrupted = reclaim.NewCoordinator(), pricing.NewInterrupted(0)
	f := telemetryFlags{bindAddress: telemetrytest.FreeAddr(t), certFile: writeFile(t, dir, "tls.crt", cert.CertPEM), keyFile: writeFile(t, dir, "tls.key", cert.KeyPEM),
		maxAge: time.Second, maxStreams: 4, audience: "a", serviceAccounts: []string{"penny-system/penny-agent"}, reclaim: rf}
	client := fakeclient.NewClientset()
	reviews(client, shippedRole)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := startTelemetry(ctx, &f, telemetry.NewStore(telemetry.StoreOptions{}), sharedAPIClients(client, telemetrytest.NodeMetadata()))
	if err == nil || !strings.Contains(err.Error(), "--reclaim-notices-configmap penny-system/my-notices") {
		t.Fatalf("start with a notices ConfigMap the scheduler may not write: %v", err)
	}
}

// The risk model's evidence is kept where the interrupted runs are: a
// scheduler that starts after another saved on its way out picks up the
// reclaims and node-hours the other had seen.
func TestReclaimFlagsKeepTheRiskEvidenceAcrossARestart(t *testing.T) {
	ctx := context.Background()
	client := fakeclient.NewClientset()
	pool := pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1a", Capacity: pricing.Spot}
	now := time.Now()
	before := pricing.NewRiskModel(pricing.RiskConfig{})
	before.ObserveExposure(pool, 100, now)
	before.ObserveReclaim(pool, "node-1", now)
	f := &reclaimFlags{interrupted: pricing.NewInterrupted(0), risk: before, interruptedConfigMap: "penny-system/penny-interrupted-runs"}
	f.loadInterrupted(ctx, client)
	f.saveInterrupted()

	after := pricing.NewRiskModel(pricing.RiskConfig{})
	(&reclaimFlags{interrupted: pricing.NewInterrupted(0), risk: after, interruptedConfigMap: "penny-system/penny-interrupted-runs"}).loadInterrupted(ctx, client)
	wantR, wantH := before.Evidence(pool, now)
	if r, h := after.Evidence(pool, now); r != wantR || h != wantH || r != 1 {
		t.Fatalf("after the restart the pool's evidence is %g reclaims in %g node-hours, want %g in %g", r, h, wantR, wantH)
	}
}

// On the way out each record gets its own time: an API server that hangs on
// the interrupted runs' write must not leave the Spot pools' evidence, saved
// beside them, with no time left to be written.
func TestExitSavesDoNotShareOneTimeout(t *testing.T) {
	defer func(d time.Duration) { exitSaveTimeout = d }(exitSaveTimeout)
	exitSaveTimeout = 300 * time.Millisecond
	var mu sync.Mutex
	var saved *corev1.ConfigMap
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		if r.Method != http.MethodGet && strings.Contains(string(body), `"`+pricing.InterruptedKey+`":`) {
			<-r.Context().Done() // hangs on the interrupted runs' write
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch r.Method {
		case http.MethodGet:
			if saved == nil {
				w.WriteHeader(http.StatusNotFound)
				_ = json.NewEncoder(w).Encode(apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, "penny-interrupted-runs").ErrStatus)
				return
			}
			_ = json.NewEncoder(w).Encode(saved)
		case http.MethodPost, http.MethodPut:
			cm := &corev1.ConfigMap{}
			if err := json.Unmarshal(body, cm); err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			cm.ResourceVersion = "1"
			saved = cm
			w.WriteHeader(http.StatusCreated)
			_ = json.NewEncoder(w).Encode(cm)
		}
	}))
	defer srv.Close()
	client := kubernetes.NewForConfigOrDie(&rest.Config{Host: srv.URL, ContentConfig: rest.ContentConfig{ContentType: "application/json"}})

	pool := pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1a", Capacity: pricing.Spot}
	risk := pricing.NewRiskModel(pricing.RiskConfig{})
	risk.ObserveReclaim(pool, "node-1", time.Now())
	interrupted := pricing.NewInterrupted(0)
	interrupted.Observe(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "train-0"}}, time.Hour, time.Now())
	f := &reclaimFlags{interrupted: interrupted, risk: risk,
		persist: &pricing.PersistOptions{Client: client, Namespace: "penny-system", Name: "penny-interrupted-runs", Log: testr.New(t)}}
	start := time.Now()
	f.saveInterrupted()
	if took := time.Since(start); took > 3*exitSaveTimeout {
		t.Errorf("the saves took %v, want each bounded by %v and both at once", took, exitSaveTimeout)
	}
	mu.Lock()
	defer mu.Unlock()
	if saved == nil || !strings.Contains(saved.Data[pricing.RiskKey], "p4d.24xlarge") {
		t.Fatalf("the Spot pools' evidence was not saved while the interrupted runs' write hung: %v", saved)
	}
}

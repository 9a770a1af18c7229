package agentadmission

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-logr/logr/testr"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/metricstest"
)

const agentUser = "system:serviceaccount:penny-system:penny-agent"

func newHandler(t *testing.T, pods ...*corev1.Pod) *Evictions {
	t.Helper()
	objs := make([]runtime.Object, len(pods))
	for i, p := range pods {
		objs[i] = p
	}
	h, err := NewEvictions(Options{
		Pods: fake.NewClientset(objs...).CoreV1(), AgentServiceAccounts: []string{"penny-system/penny-agent"},
		Log: testr.New(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func pod(name, uid, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team-a", UID: types.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: node},
	}
}

// eviction is the request the API server sends for user evicting
// team-a/name, the agent's token bound to node ("" for none), with the UID
// precondition uid ("" for none).
func eviction(t *testing.T, user, node, name, uid string) *admissionv1.AdmissionRequest {
	t.Helper()
	ev := policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team-a"}}
	if uid != "" {
		ev.DeleteOptions = &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: ptr.To(types.UID(uid))}}
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	extra := map[string]authenticationv1.ExtraValue{}
	if node != "" {
		extra[serviceaccount.NodeNameKey] = authenticationv1.ExtraValue{node}
	}
	return &admissionv1.AdmissionRequest{
		UID:         "review-1",
		Resource:    metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		SubResource: "eviction",
		Operation:   admissionv1.Create,
		Name:        name, Namespace: "team-a",
		UserInfo: authenticationv1.UserInfo{Username: user, Extra: extra},
		Object:   runtime.RawExtension{Raw: raw},
	}
}

// send posts req to h as the API server would and returns the response.
func send(t *testing.T, h http.Handler, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	t.Helper()
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: req,
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body)))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil {
		t.Fatalf("answer is not an admission.k8s.io/v1 AdmissionReview with a response: %s", rec.Body)
	}
	if out.Response.UID != req.UID {
		t.Errorf("response UID %q, want the request's %q", out.Response.UID, req.UID)
	}
	return out.Response
}

func TestEvictionsHoldAgentsToTheirNode(t *testing.T) {
	h := newHandler(t,
		pod("mine", "uid-mine", "node-a"),
		pod("theirs", "uid-theirs", "node-b"),
		pod("pending", "uid-pending", ""),
		pod("renamed", "uid-new", "node-b"),
		pod("renamed-here", "uid-new", "node-a"),
	)
	cases := []struct {
		name    string
		req     *admissionv1.AdmissionRequest
		allowed bool
		code    int32
		message string
		result  string
	}{
		{name: "own node", req: eviction(t, agentUser, "node-a", "mine", "uid-mine"), allowed: true, result: "allowed"},
		{name: "other node", req: eviction(t, agentUser, "node-a", "theirs", "uid-theirs"), code: 403, result: "other_node",
			message: `penny-agent on node node-a may evict only pods bound to node node-a; pod team-a/theirs is bound to node node-b`},
		{name: "not bound yet", req: eviction(t, agentUser, "node-a", "pending", "uid-pending"), code: 403, result: "other_node",
			message: `pod team-a/pending is not bound to a node`},
		{name: "token bound to no node", req: eviction(t, agentUser, "", "mine", "uid-mine"), code: 403, result: "unbound_token",
			message: `this request's token names no node`},
		{name: "no UID precondition", req: eviction(t, agentUser, "node-a", "mine", ""), code: 403, result: "no_uid",
			message: `must set deleteOptions.preconditions.uid`},
		// The eviction itself then fails (NotFound, Conflict) and evicts
		// nothing, after charging the budget of the pod under the name,
		// which may be its node's agent's to spend only.
		{name: "pod gone", req: eviction(t, agentUser, "node-a", "gone", "uid-gone"), allowed: true, result: "allowed"},
		{name: "name now another pod's on its node", req: eviction(t, agentUser, "node-a", "renamed-here", "uid-old"), allowed: true, result: "allowed"},
		// Refused as the eviction would answer, Conflict (the agent reads
		// "gone"), before it spends another node's pod's disruption budget.
		{name: "name now another node's pod's", req: eviction(t, agentUser, "node-a", "renamed", "uid-old"), code: 409, result: "replaced",
			message: `pod team-a/renamed is not the pod penny-agent on node node-a asked to evict (UID uid-new, not uid-old) and is not on node node-a`},
		// RBAC decides for everyone else.
		{name: "scheduler", req: eviction(t, "system:serviceaccount:kube-system:penny-scheduler", "", "theirs", ""), allowed: true, result: "not_agent"},
		{name: "user", req: eviction(t, "alice", "", "theirs", ""), allowed: true, result: "not_agent"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := metricstest.Counter(t, "penny_admission_agent_evictions_total", "result", tc.result)
			resp := send(t, h, tc.req)
			if resp.Allowed != tc.allowed {
				t.Fatalf("allowed = %v, want %v (%+v)", resp.Allowed, tc.allowed, resp.Result)
			}
			if !tc.allowed {
				if resp.Result == nil || resp.Result.Code != tc.code || !strings.Contains(resp.Result.Message, tc.message) {
					t.Errorf("result %+v, want code %d and a message containing %q", resp.Result, tc.code, tc.message)
				}
			}
			after := metricstest.Counter(t, "penny_admission_agent_evictions_total", "result", tc.result)
			if after-before != 1 {
				t.Errorf("penny_admission_agent_evictions_total{result=%q} went up by %v, want 1", tc.result, after-before)
			}
		})
	}
}

func TestEvictionsLeaveOtherRequestsAlone(t *testing.T) {
	h := newHandler(t, pod("theirs", "uid-theirs", "node-b"))
	req := eviction(t, agentUser, "node-a", "theirs", "uid-theirs")
	req.SubResource = "status"
	if resp := send(t, h, req); !resp.Allowed {
		t.Errorf("a pods/status request was judged as an eviction: %+v", resp.Result)
	}
}

func TestEvictionsRefuseWhatTheyCannotCheck(t *testing.T) {
	h := newHandler(t, pod("theirs", "uid-theirs", "node-b"))
	req := eviction(t, agentUser, "node-a", "theirs", "uid-theirs")
	req.Object.Raw = []byte(`{"deleteOptions": 7}`)
	if resp := send(t, h, req); resp.Allowed || !strings.Contains(resp.Result.Message, "decoding the Eviction") {
		t.Errorf("an undecodable Eviction: %+v", resp)
	}

	// The API server does not answer: refused, and the agent asks again.
	client := fake.NewClientset(pod("theirs", "uid-theirs", "node-a"))
	client.PrependReactor("get", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewServiceUnavailable("etcd is down")
	})
	down, err := NewEvictions(Options{Pods: client.CoreV1(), AgentServiceAccounts: []string{"penny-system/penny-agent"}, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	resp := send(t, down, eviction(t, agentUser, "node-a", "theirs", "uid-theirs"))
	if resp.Allowed || resp.Result.Code != http.StatusServiceUnavailable || !strings.Contains(resp.Result.Message, "reading pod team-a/theirs to check it is on node node-a: etcd is down") {
		t.Errorf("pod unreadable: %+v", resp)
	}

	for _, tc := range []struct {
		method, body string
		code         int
		message      string
	}{
		{http.MethodGet, "", http.StatusMethodNotAllowed, "POST an admission.k8s.io/v1 AdmissionReview"},
		{http.MethodPost, "{", http.StatusBadRequest, "decoding the AdmissionReview"},
		{http.MethodPost, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, http.StatusBadRequest, "AdmissionReview has no request"},
		{http.MethodPost, strings.Repeat(" ", maxBody+1), http.StatusRequestEntityTooLarge, "larger than"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, Path, strings.NewReader(tc.body)))
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.message) {
			t.Errorf("%s %.20q: %d %q, want %d and %q", tc.method, tc.body, rec.Code, rec.Body, tc.code, tc.message)
		}
	}
}

func TestNewEvictionsChecksItsOptions(t *testing.T) {
	pods := fake.NewClientset().CoreV1()
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{AgentServiceAccounts: []string{"penny-system/penny-agent"}}, "needs a pods client"},
		{Options{Pods: pods}, "no agent ServiceAccounts"},
		{Options{Pods: pods, AgentServiceAccounts: []string{"penny-agent"}}, `"penny-agent": want namespace/name`},
	} {
		if _, err := NewEvictions(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.opts, err, tc.want)
		}
	}
}

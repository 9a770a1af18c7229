// Package agentadmission is the validating admission webhook that holds
// penny-agent's evictions to the pods of its own node.
//
// The agent needs RBAC to create pods/eviction, and RBAC cannot say "only
// pods on my node". Neither can a ValidatingAdmissionPolicy: the object it
// sees for an eviction is the Eviction, which names the pod but not its node.
// kube-apiserver's NodeRestriction plugin closes the same gap for kubelets by
// reading the pod; this webhook does that for the agents' ServiceAccounts,
// with the node their projected token is bound to.
package agentadmission

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/pennysched/penny/pkg/telemetry"
)

// Path is where the webhook is served; deploy/agent/reclaim.yaml's
// ValidatingWebhookConfiguration names it.
const Path = "/validate-agent-evictions"

// maxBody bounds a review's body. An Eviction's review is a few KiB; the
// API server never sends one near this.
const maxBody = 1 << 20

// Options configure the webhook.
type Options struct {
	// Pods reads the pod an eviction names, from the API server rather
	// than an informer: a pod bound a moment ago must not be judged by a
	// stale copy, and evictions are rare.
	Pods corev1client.PodsGetter
	// AgentServiceAccounts lists "namespace/name" of the agents'
	// ServiceAccounts (penny-scheduler's --telemetry-agent-service-accounts).
	// Evictions by anyone else are allowed: RBAC decides for them.
	AgentServiceAccounts []string
	// Timeout bounds reading the pod; 0: 3 s, under the webhook's 5 s.
	Timeout time.Duration
	// MaxConnections bounds the connections Serve holds open at once
	// (penny-scheduler's --telemetry-eviction-webhook-max-connections); 0:
	// DefaultMaxConnections.
	MaxConnections int
	Log            logr.Logger
}

// Evictions is the webhook's handler.
type Evictions struct {
	opts   Options
	agents map[string]bool
}

var _ http.Handler = &Evictions{}

// NewEvictions checks opts and returns the handler.
func NewEvictions(opts Options) (*Evictions, error) {
	if opts.Pods == nil {
		return nil, errors.New("agent evictions webhook needs a pods client")
	}
	agents, err := telemetry.AgentServiceAccounts(opts.AgentServiceAccounts)
	if err != nil {
		return nil, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 3 * time.Second
	}
	switch {
	case opts.MaxConnections == 0:
		opts.MaxConnections = DefaultMaxConnections
	case opts.MaxConnections < 0:
		return nil, fmt.Errorf("agent evictions webhook: MaxConnections %d: must be positive, or 0 for the default (%d)", opts.MaxConnections, DefaultMaxConnections)
	}
	registerMetrics()
	return &Evictions{opts: opts, agents: agents}, nil
}

// ServeHTTP answers one AdmissionReview (admission.k8s.io/v1).
func (e *Evictions) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST an admission.k8s.io/v1 AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		http.Error(w, "reading the AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) > maxBody {
		http.Error(w, fmt.Sprintf("AdmissionReview larger than %d bytes", maxBody), http.StatusRequestEntityTooLarge)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		http.Error(w, "decoding the AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	if review.Request == nil {
		http.Error(w, "AdmissionReview has no request: the API server sends admission.k8s.io/v1 reviews with .request set", http.StatusBadRequest)
		return
	}
	resp := e.review(r.Context(), review.Request)
	resp.UID = review.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: resp,
	})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

// review decides one request. Every refusal names the rule and what the
// agent (or whoever set it up) can do about it.
func (e *Evictions) review(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	if req.Resource.Group != "" || req.Resource.Resource != "pods" || req.SubResource != "eviction" || req.Operation != admissionv1.Create {
		// The ValidatingWebhookConfiguration sends only evictions; anything
		// else is not this webhook's to judge.
		reviews.WithLabelValues(string(reviewNotEviction)).Inc()
		return allow()
	}
	ns, sa, err := serviceaccount.SplitUsername(req.UserInfo.Username)
	if err != nil || !e.agents[ns+"/"+sa] {
		reviews.WithLabelValues(string(reviewNotAgent)).Inc()
		return allow()
	}
	pod := req.Namespace + "/" + req.Name
	nodes := req.UserInfo.Extra[serviceaccount.NodeNameKey]
	if len(nodes) != 1 || nodes[0] == "" {
		return e.deny(reviewUnboundToken, pod, "", fmt.Sprintf("%s may evict only with a ServiceAccount token bound to a pod on a node (the projected token deploy/agent/penny-agent.yaml mounts), so that it evicts only that node's pods; this request's token names no node", req.UserInfo.Username))
	}
	node := nodes[0]
	var ev policyv1.Eviction
	if err := json.Unmarshal(req.Object.Raw, &ev); err != nil {
		return e.deny(reviewInvalid, pod, node, "decoding the Eviction: "+err.Error())
	}
	// The pod checked must be the pod evicted: a pod of the same name
	// created on another node between this check and the eviction (a
	// StatefulSet's replacement) would otherwise go in its place.
	var uid types.UID
	if ev.DeleteOptions != nil && ev.DeleteOptions.Preconditions != nil && ev.DeleteOptions.Preconditions.UID != nil {
		uid = *ev.DeleteOptions.Preconditions.UID
	}
	if uid == "" {
		return e.deny(reviewNoUID, pod, node, fmt.Sprintf("penny-agent evictions must set deleteOptions.preconditions.uid to the pod's UID, so that the pod checked to be on node %s is the pod evicted", node))
	}
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
	defer cancel()
	p, err := e.opts.Pods.Pods(req.Namespace).Get(ctx, req.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		// The eviction finds no pod either and answers NotFound, which the
		// agent reads as "gone".
		reviews.WithLabelValues(string(reviewAllowed)).Inc()
		return allow()
	case err != nil:
		return e.deny(reviewError, pod, node, fmt.Sprintf("reading pod %s to check it is on node %s: %v; the agent asks again", pod, node, err))
	case p.UID != uid && p.Spec.NodeName != node:
		// The pod asked for is gone; the eviction would fail its UID
		// precondition, but only after charging the PodDisruptionBudget
		// of the pod now under that name: allowed, an agent could keep
		// any other node's budget spent. Conflict is what the eviction
		// would have answered, which the agent reads as "gone".
		return e.deny(reviewReplaced, pod, node, fmt.Sprintf("pod %s is not the pod penny-agent on node %s asked to evict (UID %s, not %s) and is not on node %s: the pod asked for is gone", pod, node, p.UID, uid, node))
	case p.Spec.NodeName == "":
		return e.deny(reviewOtherNode, pod, node, fmt.Sprintf("penny-agent on node %s may evict only pods bound to node %s; pod %s is not bound to a node", node, node, pod))
	case p.Spec.NodeName != node:
		return e.deny(reviewOtherNode, pod, node, fmt.Sprintf("penny-agent on node %s may evict only pods bound to node %s; pod %s is bound to node %s", node, node, pod, p.Spec.NodeName))
	}
	reviews.WithLabelValues(string(reviewAllowed)).Inc()
	return allow()
}

func allow() *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: true}
}

// deny counts and logs a refusal: an agent asking for another node's pod is
// either misconfigured or compromised, and either way someone should look.
func (e *Evictions) deny(result reviewResult, pod, node, msg string) *admissionv1.AdmissionResponse {
	reviews.WithLabelValues(string(result)).Inc()
	e.opts.Log.Info("Refused an agent's eviction", "pod", pod, "agentNode", node, "reason", string(result), "message", msg)
	code := int32(http.StatusForbidden)
	reason := metav1.StatusReasonForbidden
	switch result {
	case reviewError:
		code, reason = http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable
	case reviewReplaced:
		code, reason = http.StatusConflict, metav1.StatusReasonConflict
	}
	return &admissionv1.AdmissionResponse{
		Allowed: false,
		Result:  &metav1.Status{Status: metav1.StatusFailure, Code: code, Reason: reason, Message: msg},
	}
}

package telemetry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/token/cache"
	"k8s.io/apiserver/plugin/pkg/authenticator/token/webhook"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
)

// DefaultAudience is the audience agents request for their projected token,
// so that the token is good for penny-scheduler and nothing else.
const DefaultAudience = "penny-scheduler"

// NewTokenReviewAuthenticator checks tokens with the API server's TokenReview
// (the same authenticator kube-apiserver uses for webhook token auth),
// caching answers briefly so a reconnect storm does not become a review
// storm. A token that cannot be an agent's (checkTokenShape) is refused
// without a review.
func NewTokenReviewAuthenticator(client authenticationv1client.AuthenticationV1Interface, audiences []string) (authenticator.Token, error) {
	backoff := wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 3}
	wh, err := webhook.NewFromInterface(client, authenticator.Audiences(audiences), backoff, 10*time.Second, webhook.AuthenticatorMetrics{
		RecordRequestTotal:   func(context.Context, string) {},
		RecordRequestLatency: func(context.Context, string, float64) {},
	})
	if err != nil {
		return nil, err
	}
	cached := cache.New(wh, false, 10*time.Second, 2*time.Second)
	return authenticator.TokenFunc(func(ctx context.Context, token string) (*authenticator.Response, bool, error) {
		if err := checkTokenShape(token, audiences); err != nil {
			return nil, false, err
		}
		return cached.AuthenticateToken(ctx, token)
	}), nil
}

// checkTokenShape says why token cannot be an agent's, or nil, without
// asking the API server. authenticate accepts only a ServiceAccount bound to
// a pod, and the API server answers so only for a ServiceAccount token: a
// JWT whose aud claim holds one of the audiences the review asks for. The
// review of any other token would fail, so it is spared, and made-up tokens
// that are not even well-formed cost the API server nothing.
func checkTokenShape(token string, audiences []string) error {
	claims := jwt.RegisteredClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(token, &claims); err != nil {
		return fmt.Errorf("not a ServiceAccount token (%v): send the agent's projected ServiceAccount token", err)
	}
	if len(audiences) > 0 && !slices.ContainsFunc(claims.Audience, func(a string) bool { return slices.Contains(audiences, a) }) {
		return fmt.Errorf("the token's audiences (aud claim) do not include %s: project the agent's token with that audience (deploy/agent/penny-agent.yaml, --telemetry-token-audience)", strings.Join(audiences, " or "))
	}
	return nil
}

// AgentServiceAccounts checks a list of "namespace/name" ServiceAccounts
// agents run as (--telemetry-agent-service-accounts) and returns it as a
// set.
func AgentServiceAccounts(list []string) (map[string]bool, error) {
	if len(list) == 0 {
		return nil, errors.New("no agent ServiceAccounts: give the agents' as namespace/name, e.g. penny-system/penny-agent")
	}
	set := map[string]bool{}
	for _, sa := range list {
		if err := CheckAgentServiceAccount(sa); err != nil {
			return nil, fmt.Errorf("agent ServiceAccount %q: %v", sa, err)
		}
		set[sa] = true
	}
	return set, nil
}

// CheckAgentServiceAccount says what is wrong with one "namespace/name" of
// such a list, or nil. Names are checked as the API server names
// ServiceAccounts: one no ServiceAccount can have (" team-b/gpu-agent"
// after a comma and a space, an upper-case letter) would match no agent's
// token, so that agent would be refused, and the evictions webhook would
// judge its evictions as no agent's.
func CheckAgentServiceAccount(sa string) error {
	const want = "want namespace/name of a ServiceAccount the agents run as, e.g. penny-system/penny-agent"
	ns, name, ok := strings.Cut(sa, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return errors.New(want)
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return fmt.Errorf("namespace %q: %s; %s", ns, strings.Join(errs, "; "), want)
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fmt.Errorf("ServiceAccount name %q: %s; %s", name, strings.Join(errs, "; "), want)
	}
	return nil
}

// agentIdentity is who an authenticated stream belongs to.
type agentIdentity struct {
	ServiceAccount string // namespace/name
	Pod            string
	Node           string
	Expires        time.Time // zero when the token does not say
}

// expiredAt reports whether the token has expired at now.
func (id *agentIdentity) expiredAt(now time.Time) bool {
	return !id.Expires.IsZero() && !now.Before(id.Expires)
}

// tokenExpired is what a stream whose token has expired is told.
const tokenExpired = "token expired: reconnect with the current projected token"

// authError carries a reason label for the metric along with the message
// for the agent.
type authError struct {
	reason authFailureReason
	msg    string
}

func (e *authError) Error() string { return e.msg }

// authenticate turns the token of a stream into an agent identity. The token
// must be valid for one of the audiences, belong to one of the allowed
// ServiceAccounts, and be bound to a pod on a node (a projected token, whose
// claims the API server fills from the pod it mounts into).
func authenticate(ctx context.Context, auth authenticator.Token, audiences []string, allowed map[string]bool, token string) (*agentIdentity, error) {
	if token == "" {
		return nil, &authError{authMissingToken, "no token: send the agent's projected ServiceAccount token as \"authorization: Bearer <token>\""}
	}
	if len(audiences) > 0 {
		ctx = authenticator.WithAudiences(ctx, audiences)
	}
	resp, ok, err := auth.AuthenticateToken(ctx, token)
	if err != nil && !ok {
		// Both an unreachable API server and a refused token land here; the
		// webhook authenticator does not tell them apart by type.
		return nil, &authError{authInvalidToken, "token refused: " + err.Error()}
	}
	if !ok {
		return nil, &authError{authInvalidToken, "token refused"}
	}
	name := resp.User.GetName()
	ns, sa, err := serviceaccount.SplitUsername(name)
	if err != nil {
		return nil, &authError{authNotAgent, fmt.Sprintf("%q is not a ServiceAccount; agents authenticate as their ServiceAccount", name)}
	}
	if !allowed[ns+"/"+sa] {
		return nil, &authError{authNotAgent, fmt.Sprintf("ServiceAccount %s/%s is not an agent ServiceAccount (allowed: %s)", ns, sa, strings.Join(slices.Sorted(maps.Keys(allowed)), ", "))}
	}
	extra := resp.User.GetExtra()
	nodes, pods := extra[serviceaccount.NodeNameKey], extra[serviceaccount.PodNameKey]
	if len(nodes) != 1 || nodes[0] == "" || len(pods) != 1 {
		return nil, &authError{authNotBound, "token is not bound to a pod on a node: mount a projected serviceAccountToken volume into the agent pod"}
	}
	id := &agentIdentity{ServiceAccount: ns + "/" + sa, Pod: ns + "/" + pods[0], Node: nodes[0]}
	id.Expires = tokenExpiry(token)
	return id, nil
}

// tokenExpiry reads the exp claim of a token the API server has just
// verified, so the stream can end when the token does.
func tokenExpiry(token string) time.Time {
	claims := jwt.RegisteredClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(token, &claims); err != nil || claims.ExpiresAt == nil {
		return time.Time{}
	}
	return claims.ExpiresAt.Time
}

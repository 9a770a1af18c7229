package telemetrytest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"

	"github.com/pennysched/penny/pkg/telemetry"
)

// TokenReviewAPI answers TokenReview requests over HTTP as kube-apiserver
// does, for the stand-in tokens NodeJWT makes. It lets the production
// authenticator (client-go, TokenReview, caching) run without an API
// server; the real API server has its own integration test.
type TokenReviewAPI struct {
	URL string
	mu  sync.Mutex
	// audiences the last review asked for.
	audiences []string
	reviews   int
}

// StartTokenReviewAPI serves until the test ends.
func StartTokenReviewAPI(t testing.TB) *TokenReviewAPI {
	t.Helper()
	api := &TokenReviewAPI{}
	ns, name, _ := strings.Cut(AgentServiceAccount, "/")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		var tr authenticationv1.TokenReview
		if err := json.NewDecoder(r.Body).Decode(&tr); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		api.mu.Lock()
		api.audiences = tr.Spec.Audiences
		api.reviews++
		api.mu.Unlock()
		tr.Status = authenticationv1.TokenReviewStatus{Error: "invalid bearer token"}
		claims := jwt.RegisteredClaims{}
		jwt.NewParser().ParseUnverified(tr.Spec.Token, &claims)
		forUs := len(tr.Spec.Audiences) == 0 || slices.ContainsFunc(claims.Audience, func(a string) bool { return slices.Contains(tr.Spec.Audiences, a) })
		if node, ok := strings.CutPrefix(claims.Subject, "node:"); ok && forUs {
			tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: tr.Spec.Audiences, User: authenticationv1.UserInfo{
				Username: serviceaccount.MakeUsername(ns, name),
				Extra: map[string]authenticationv1.ExtraValue{
					serviceaccount.PodNameKey:  {"penny-agent-" + node},
					serviceaccount.NodeNameKey: {node},
				},
			}}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&tr)
	}))
	t.Cleanup(srv.Close)
	api.URL = srv.URL
	return api
}

// NodeJWT returns a stand-in projected token of the agent on node, for
// TokenReviewAPI: the production authenticator refuses without a review a
// token that is not a JWT for the penny-scheduler audience. Its subject is
// "node:<name>"; nothing checks its signature. It expires in an hour.
func NodeJWT(node string) string {
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject:   "node:" + node,
		Audience:  jwt.ClaimStrings{telemetry.DefaultAudience},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	}).SignedString([]byte("stand-in"))
	if err != nil {
		panic(err)
	}
	return tok
}

// LastAudiences returns the audiences the last review asked for, and how
// many reviews there were.
func (a *TokenReviewAPI) LastAudiences() ([]string, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.audiences, a.reviews
}

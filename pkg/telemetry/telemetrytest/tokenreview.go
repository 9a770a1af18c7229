package telemetrytest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
)

// TokenReviewAPI answers TokenReview requests over HTTP as kube-apiserver
// does, for the same stand-in tokens as NodeTokens ("node:<name>"). It lets
// the production authenticator (client-go, TokenReview, caching) run
// without an API server; the real API server has its own integration test.
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
		if node, ok := strings.CutPrefix(tr.Spec.Token, "node:"); ok {
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

// LastAudiences returns the audiences the last review asked for, and how
// many reviews there were.
func (a *TokenReviewAPI) LastAudiences() ([]string, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.audiences, a.reviews
}

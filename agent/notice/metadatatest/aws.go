package metadatatest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// AWS is a fake EC2 instance metadata service, IMDSv2 only: every metadata
// request needs a token from PUT /latest/api/token, and an expired or
// revoked token gets 401.
type AWS struct {
	*server
	tokens    map[string]time.Time
	documents map[string]string // path -> body; absent: 404
}

// NewAWS starts a fake IMDS; Close stops it.
func NewAWS() *AWS {
	a := &AWS{tokens: map[string]time.Time{}, documents: map[string]string{}}
	a.server = newServer(a.serve)
	return a
}

// Paths of the documents the fake serves.
const (
	AWSInstanceAction = "/latest/meta-data/spot/instance-action"
	AWSRebalance      = "/latest/meta-data/events/recommendations/rebalance"
	AWSScheduled      = "/latest/meta-data/events/maintenance/scheduled"
	AWSToken          = "/latest/api/token"
)

func (a *AWS) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == AWSToken {
		if r.Method != http.MethodPut {
			http.Error(w, "token requests are PUT", http.StatusMethodNotAllowed)
			return
		}
		ttl, err := strconv.Atoi(r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
		if err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "X-aws-ec2-metadata-token-ttl-seconds must be 1..21600", http.StatusBadRequest)
			return
		}
		b := make([]byte, 24)
		rand.Read(b)
		tok := hex.EncodeToString(b)
		a.mu.Lock()
		a.tokens[tok] = time.Now().Add(time.Duration(ttl) * time.Second)
		a.mu.Unlock()
		w.Write([]byte(tok))
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "", http.StatusMethodNotAllowed)
		return
	}
	a.mu.Lock()
	exp, ok := a.tokens[r.Header.Get("X-aws-ec2-metadata-token")]
	body, found := a.documents[r.URL.Path]
	a.mu.Unlock()
	if !ok || time.Now().After(exp) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if !found {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write([]byte(body))
}

func (a *AWS) set(path, body string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if body == "" {
		delete(a.documents, path)
	} else {
		a.documents[path] = body
		a.published = now
	}
	return now
}

// SetSpotInterruption publishes spot/instance-action with action
// (terminate, stop, hibernate) at the given time, and returns when it became
// visible.
func (a *AWS) SetSpotInterruption(action string, at time.Time) time.Time {
	return a.set(AWSInstanceAction, fmt.Sprintf(`{"action":%q,"time":%q}`, action, at.UTC().Format(time.RFC3339)))
}

// SetRebalance publishes a rebalance recommendation.
func (a *AWS) SetRebalance(noticeTime time.Time) time.Time {
	return a.set(AWSRebalance, fmt.Sprintf(`{"noticeTime":%q}`, noticeTime.UTC().Format(time.RFC3339)))
}

// SetScheduled publishes events/maintenance/scheduled as given (a JSON list).
func (a *AWS) SetScheduled(events string) time.Time {
	return a.set(AWSScheduled, events)
}

// Clear withdraws every document.
func (a *AWS) Clear() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.documents = map[string]string{}
}

// RevokeTokens makes every token issued so far answer 401.
func (a *AWS) RevokeTokens() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tokens = map[string]time.Time{}
}

// Tokens is how many tokens were issued.
func (a *AWS) Tokens() int { return a.Requests(AWSToken) }

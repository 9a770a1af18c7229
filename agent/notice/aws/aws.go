// Package aws watches EC2's instance metadata service (IMDSv2) for Spot
// interruption notices (spot/instance-action), rebalance recommendations
// (events/recommendations/rebalance) and scheduled maintenance
// (events/maintenance/scheduled).
package aws

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Defaults.
const (
	DefaultEndpoint = "http://169.254.169.254"
	// DefaultInterval: a Spot notice comes two minutes ahead; polling every
	// second spends at most a second of it.
	DefaultInterval = time.Second
	// DefaultTokenTTL is the IMDSv2 session length asked for (the maximum
	// is 6 hours).
	DefaultTokenTTL = 6 * time.Hour
)

// IMDS paths.
const (
	pathToken          = "/latest/api/token"
	PathInstanceAction = "/latest/meta-data/spot/instance-action"
	PathRebalance      = "/latest/meta-data/events/recommendations/rebalance"
	PathScheduled      = "/latest/meta-data/events/maintenance/scheduled"

	headerToken    = "X-aws-ec2-metadata-token"
	headerTokenTTL = "X-aws-ec2-metadata-token-ttl-seconds"
)

// Options configure the watcher.
type Options struct {
	// Endpoint is IMDS's base URL (DefaultEndpoint).
	Endpoint string
	// Interval between checks (DefaultInterval).
	Interval time.Duration
	// RequestTimeout bounds each request (notice.DefaultRequestTimeout).
	RequestTimeout time.Duration
	// TokenTTL is the session token's lifetime (DefaultTokenTTL).
	TokenTTL time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Source checks IMDS.
type Source struct {
	opts Options
	http *notice.HTTPClient

	mu          sync.Mutex
	token       string
	tokenExpiry time.Time
}

var _ notice.Source = &Source{}

// New returns a source with opts' zero fields defaulted.
func New(opts Options) *Source {
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	opts.Endpoint = strings.TrimRight(opts.Endpoint, "/")
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = notice.DefaultRequestTimeout
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = DefaultTokenTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Source{opts: opts, http: notice.NewHTTPClient()}
}

// Provider implements notice.Source.
func (s *Source) Provider() telemetryv1.CloudProvider {
	return telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS
}

// Watch implements notice.Source: it checks every interval.
func (s *Source) Watch(ctx context.Context, observe func([]notice.Notice, error)) {
	notice.Poll(ctx, s.opts.Interval, s.Check, observe)
}

// Check reads the three documents once. A document that cannot be read or
// parsed adds to the error; the others' notices are still returned, and so
// are those of a scheduled-events list that holds an event it cannot read.
func (s *Source) Check(ctx context.Context) ([]notice.Notice, error) {
	var notices []notice.Notice
	var errs []error
	for _, doc := range []struct {
		path  string
		parse func([]byte, time.Time) ([]notice.Notice, error)
	}{
		{PathInstanceAction, one(ParseInstanceAction)},
		{PathRebalance, one(ParseRebalance)},
		{PathScheduled, ParseScheduledEvents},
	} {
		body, ok, err := s.get(ctx, doc.path)
		if err == nil && ok {
			// Detected is when the document was read, as on GCP and Azure:
			// a check may start before a notice is published and still
			// read it.
			var found []notice.Notice
			found, err = doc.parse(body, s.opts.Now())
			notices = append(notices, found...)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return notices, errors.Join(errs...)
}

// one adapts a parser of a single notice to a list.
func one(parse func([]byte, time.Time) (notice.Notice, error)) func([]byte, time.Time) ([]notice.Notice, error) {
	return func(body []byte, now time.Time) ([]notice.Notice, error) {
		n, err := parse(body, now)
		if err != nil {
			return nil, err
		}
		return []notice.Notice{n}, nil
	}
}

// get reads one metadata path with the session token, getting a new token
// when IMDS answers 401 (the token expired or IMDS restarted). ok is false
// when IMDS says the document does not exist (404: no notice).
func (s *Source) get(ctx context.Context, path string) (body []byte, ok bool, err error) {
	for attempt := 0; attempt < 2; attempt++ {
		token, err := s.sessionToken(ctx, attempt > 0)
		if err != nil {
			return nil, false, err
		}
		resp, err := s.http.Do(ctx, http.MethodGet, s.opts.Endpoint+path, http.Header{headerToken: {token}}, nil, s.opts.RequestTimeout)
		if err != nil {
			return nil, false, err
		}
		switch resp.Status {
		case http.StatusOK:
			return resp.Body, true, nil
		case http.StatusNotFound:
			return nil, false, nil
		case http.StatusUnauthorized:
			continue
		default:
			return nil, false, fmt.Errorf("GET %s%s: IMDS answered %d %s", s.opts.Endpoint, path, resp.Status, notice.Excerpt(resp.Body))
		}
	}
	return nil, false, fmt.Errorf("GET %s%s: IMDS refused a fresh session token (401 twice)", s.opts.Endpoint, path)
}

// sessionToken returns the IMDSv2 token, asking for a new one when forced or
// when it is within a tenth of its lifetime from expiring.
func (s *Source) sessionToken(ctx context.Context, force bool) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	if !force && s.token != "" && now.Add(s.opts.TokenTTL/10).Before(s.tokenExpiry) {
		return s.token, nil
	}
	ttl := int(s.opts.TokenTTL / time.Second)
	url := s.opts.Endpoint + pathToken
	resp, err := s.http.Do(ctx, http.MethodPut, url, http.Header{headerTokenTTL: {strconv.Itoa(ttl)}}, nil, s.opts.RequestTimeout)
	if err != nil {
		return "", fmt.Errorf("IMDSv2 session token: %w (an agent outside the host network needs the instance's metadata hop limit at 2 or more)", err)
	}
	if resp.Status != http.StatusOK {
		return "", fmt.Errorf("IMDSv2 session token: PUT %s answered %d %s", url, resp.Status, notice.Excerpt(resp.Body))
	}
	token := strings.TrimSpace(string(resp.Body))
	if token == "" || len(token) > 1024 || strings.ContainsAny(token, "\r\n\x00") {
		return "", fmt.Errorf("IMDSv2 session token: PUT %s answered a malformed token %s", url, notice.Excerpt(resp.Body))
	}
	s.token, s.tokenExpiry = token, now.Add(s.opts.TokenTTL)
	return token, nil
}

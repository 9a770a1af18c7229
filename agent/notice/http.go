package notice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// MaxBodyBytes bounds what the agent reads from a metadata service. Real
// answers are a few hundred bytes (an Azure document with many events a few
// KB); anything larger is refused rather than held in memory.
const MaxBodyBytes = 256 << 10

// DefaultRequestTimeout bounds one request, body included.
const DefaultRequestTimeout = 2 * time.Second

// HTTPClient makes bounded requests to a metadata service.
type HTTPClient struct {
	client *http.Client
}

// NewHTTPClient returns a client for metadata services. It never uses a
// proxy (the metadata service is link-local; a proxy from the environment
// would answer for the wrong machine) and never follows redirects.
func NewHTTPClient() *HTTPClient {
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            (&net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:           4,
		IdleConnTimeout:        90 * time.Second,
		ResponseHeaderTimeout:  0, // the request's context bounds it
		MaxResponseHeaderBytes: 16 << 10,
	}
	return &HTTPClient{client: &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}}
}

// Response is a metadata answer read in full.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Do sends a request and reads the whole answer within timeout. The error
// names the URL and says what went wrong in words: no answer in time, a body
// over MaxBodyBytes, a connection cut before the body was complete.
func (c *HTTPClient) Do(ctx context.Context, method, rawURL string, header http.Header, body []byte, timeout time.Duration) (*Response, error) {
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequestWithContext(ctx, method, rawURL, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, rawURL, err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, describe(method, rawURL, timeout, err)
	}
	defer resp.Body.Close()
	if resp.ContentLength > MaxBodyBytes {
		return nil, fmt.Errorf("%s %s: answer of %d bytes is over the %d-byte limit for metadata (is the endpoint a metadata service?)", method, rawURL, resp.ContentLength, MaxBodyBytes)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes+1))
	if err != nil {
		return nil, describe(method, rawURL, timeout, err)
	}
	if len(data) > MaxBodyBytes {
		return nil, fmt.Errorf("%s %s: answer is over the %d-byte limit for metadata (is the endpoint a metadata service?)", method, rawURL, MaxBodyBytes)
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: data}, nil
}

func describe(method, rawURL string, timeout time.Duration, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s %s: no complete answer within %v", method, rawURL, timeout)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s %s: the connection closed before the answer was complete (truncated body)", method, rawURL)
	}
	return fmt.Errorf("%s %s: %w", method, rawURL, err)
}

// Excerpt quotes the start of a body for an error message.
func Excerpt(b []byte) string {
	const max = 80
	s := string(b)
	if len(s) > max {
		s = s[:max] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// Poll runs check every interval until ctx ends, observing each result: the
// Watch of the sources that poll (AWS, Azure).
func Poll(ctx context.Context, interval time.Duration, check func(context.Context) ([]Notice, error), observe func([]Notice, error)) {
	for {
		notices, err := check(ctx)
		if ctx.Err() != nil {
			return
		}
		observe(notices, err)
		if !Sleep(ctx, interval) {
			return
		}
	}
}

// Sleep waits for d or until ctx ends; it reports whether ctx is still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Package metadatatest runs fake cloud metadata services on loopback — EC2's
// IMDSv2, the GCE metadata server and Azure's Scheduled Events — that speak
// the real protocols (tokens and 401s, wait_for_change with ETags, the
// Metadata headers, StartRequests), so the notice watchers and the reclaim
// flow are tested against what they will meet. Each fake can also
// misbehave on any path (Fault) to test what a broken service does to the
// agent.
package metadatatest

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fault is a misbehaving answer.
type Fault = http.HandlerFunc

// Request timeouts for a watcher of a fake in tests. RequestTimeout is for a
// test of anything but a timeout: long, since on a loaded machine (-race on
// two busy cores) a healthy answer can take longer than a few hundred
// milliseconds, and one that timed out would be a failed check the test did
// not ask for. ShortTimeout is for a test of a timeout: Hang and Drip faults
// used with it take seconds, so no answer can beat it however late its timer
// fires.
const (
	RequestTimeout = 10 * time.Second
	ShortTimeout   = 300 * time.Millisecond
)

// Garbage answers 200 with body.
func Garbage(body string) Fault {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		w.Write([]byte(body))
	}
}

// Status answers code with body.
func Status(code int, body string) Fault {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		w.WriteHeader(code)
		w.Write([]byte(body))
	}
}

// Truncated promises more bytes than it sends, then closes the connection.
func Truncated(body string) Fault {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)*2+10))
		w.WriteHeader(http.StatusOK)
		w.Write([]byte(body))
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
			}
		}
	}
}

// Huge answers 200 with n bytes of a repeated JSON-ish pattern, streamed
// without a Content-Length when chunked is true.
func Huge(n int, chunked bool) Fault {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		if !chunked {
			w.Header().Set("Content-Length", strconv.Itoa(n))
		}
		w.WriteHeader(http.StatusOK)
		chunk := []byte(strings.Repeat(`{"action":"terminate",`, 512))
		for sent := 0; sent < n; sent += len(chunk) {
			if len(chunk) > n-sent {
				chunk = chunk[:n-sent]
			}
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
}

// Hang answers nothing for d (or until the client gives up).
func Hang(d time.Duration) Fault {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
	}
}

// Drip sends body one byte every interval: headers at once, the body too
// slowly to finish.
func Drip(body string, interval time.Duration) Fault {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		f, _ := w.(http.Flusher)
		for i := 0; i < len(body); i++ {
			if _, err := w.Write([]byte{body[i]}); err != nil {
				return
			}
			if f != nil {
				f.Flush()
			}
			select {
			case <-time.After(interval):
			case <-r.Context().Done():
				return
			}
		}
	}
}

// Reset closes the connection without answering.
func Reset() Fault {
	return func(w http.ResponseWriter, r *http.Request) {
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				if tc, ok := c.(*net.TCPConn); ok {
					tc.SetLinger(0)
				}
				c.Close()
			}
		}
	}
}

// server is what the three fakes share: a loopback HTTP server, per-path
// faults and request counts.
type server struct {
	srv *httptest.Server
	// stopped ends requests a fake holds open (GCP's wait_for_change), so
	// that Close does not wait for them to time out.
	stopped chan struct{}

	mu        sync.Mutex
	faults    map[string]Fault
	requests  map[string]int
	published time.Time
}

func newServer(h func(w http.ResponseWriter, r *http.Request)) *server {
	s := &server{faults: map[string]Fault{}, requests: map[string]int{}, stopped: make(chan struct{})}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests[r.URL.Path]++
		f := s.faults[r.URL.Path]
		s.mu.Unlock()
		if f != nil {
			f(w, r)
			return
		}
		h(w, r)
	}))
	return s
}

// URL is the server's base URL (http://127.0.0.1:port).
func (s *server) URL() string { return s.srv.URL }

// Close stops the server.
func (s *server) Close() {
	select {
	case <-s.stopped:
	default:
		close(s.stopped)
	}
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// SetFault makes path misbehave; nil restores it.
func (s *server) SetFault(path string, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f == nil {
		delete(s.faults, path)
	} else {
		s.faults[path] = f
	}
}

// Requests is how many requests path received.
func (s *server) Requests(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[path]
}

// Published is when the latest notice became visible to clients.
func (s *server) Published() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.published
}

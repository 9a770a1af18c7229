// Package gcp watches the GCE metadata server for preemption
// (instance/preempted) and host maintenance (instance/maintenance-event),
// using wait_for_change so a change is seen the moment the server has it.
package gcp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Defaults.
const (
	DefaultEndpoint = "http://metadata.google.internal"
	// DefaultWaitTimeout is how long one wait_for_change request may hang
	// before the server answers with the unchanged value.
	DefaultWaitTimeout = 60 * time.Second
	// DefaultPreemptionNotice is how long a preempted VM has (about 30 s).
	DefaultPreemptionNotice = 30 * time.Second
	// DefaultMaintenanceNotice is how far ahead maintenance-event changes.
	DefaultMaintenanceNotice = 60 * time.Second
	// DefaultRetryInterval paces requests after an error.
	DefaultRetryInterval = time.Second
)

// Metadata paths.
const (
	PathPreempted   = "/computeMetadata/v1/instance/preempted"
	PathMaintenance = "/computeMetadata/v1/instance/maintenance-event"
)

// Options configure the watcher.
type Options struct {
	// Endpoint is the metadata server's base URL (DefaultEndpoint).
	Endpoint string
	// WaitTimeout is timeout_sec of each wait_for_change request.
	WaitTimeout time.Duration
	// RequestTimeout bounds requests that do not wait for a change.
	RequestTimeout time.Duration
	// PreemptionNotice and MaintenanceNotice turn a notice into a deadline.
	PreemptionNotice  time.Duration
	MaintenanceNotice time.Duration
	// RetryInterval paces requests after an error.
	RetryInterval time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// BootID names this boot of the VM, to tell a notice from one in an
	// earlier boot with the same ETag (BootIDPath when empty; without one,
	// only the events this agent saw end are told apart).
	BootID string
}

// BootIDPath is the kernel's random id of the running boot; a container
// reads the host's.
const BootIDPath = "/proc/sys/kernel/random/boot_id"

// Source watches the metadata server.
type Source struct {
	opts Options
	http *notice.HTTPClient
}

var _ notice.Source = &Source{}

// New returns a source with opts' zero fields defaulted.
func New(opts Options) *Source {
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	opts.Endpoint = strings.TrimRight(opts.Endpoint, "/")
	if opts.WaitTimeout <= 0 {
		opts.WaitTimeout = DefaultWaitTimeout
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = notice.DefaultRequestTimeout
	}
	if opts.PreemptionNotice <= 0 {
		opts.PreemptionNotice = DefaultPreemptionNotice
	}
	if opts.MaintenanceNotice <= 0 {
		opts.MaintenanceNotice = DefaultMaintenanceNotice
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.BootID == "" {
		if b, err := os.ReadFile(BootIDPath); err == nil {
			opts.BootID = strings.TrimSpace(string(b))
		}
	}
	return &Source{opts: opts, http: notice.NewHTTPClient()}
}

// Provider implements notice.Source.
func (s *Source) Provider() telemetryv1.CloudProvider {
	return telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP
}

type parser func(body []byte, etag string, detected time.Time, period time.Duration) (*notice.Notice, error)

// key is one watched metadata value.
type key struct {
	path   string
	parse  parser
	period time.Duration

	// Guarded by the Source's Watch lock.
	notice *notice.Notice
	err    error
	known  bool
}

// Watch implements notice.Source: one wait_for_change loop per value; every
// change of either is observed with the state of both.
func (s *Source) Watch(ctx context.Context, observe func([]notice.Notice, error)) {
	keys := []*key{
		{path: PathPreempted, parse: ParsePreempted, period: s.opts.PreemptionNotice},
		{path: PathMaintenance, parse: ParseMaintenanceEvent, period: s.opts.MaintenanceNotice},
	}
	var mu sync.Mutex
	publish := func() {
		var notices []notice.Notice
		var errs, unread []error
		for _, k := range keys {
			if k.notice != nil {
				notices = append(notices, *k.notice)
			}
			if k.err != nil {
				errs = append(errs, k.err)
			} else if !k.known {
				unread = append(unread, fmt.Errorf("%s: not read yet", k.path))
			}
		}
		if len(unread) > 0 && len(errs) == 0 && len(notices) == 0 {
			// The first answer at start, the other value's still on its
			// way: nothing to say yet. Observed with an error, it would
			// count as a failed check and report the collector failing
			// on every start with a healthy metadata server.
			return
		}
		// A notice goes out at once; the value not read yet keeps the
		// check unsettled, so that nothing is taken as withdrawn.
		observe(notices, errors.Join(append(errs, unread...)...))
	}
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.watchKey(ctx, k, func(n *notice.Notice, err error) {
				mu.Lock()
				defer mu.Unlock()
				if ctx.Err() != nil {
					return
				}
				if err == nil {
					k.notice, k.known = n, true
				}
				k.err = err
				publish()
			})
		}()
	}
	wg.Wait()
}

// watchKey reads one value at once, then waits for each change (last_etag
// makes the server answer at once if the value changed in between). After an
// error it starts over with a plain read.
func (s *Source) watchKey(ctx context.Context, k *key, update func(*notice.Notice, error)) {
	etag := ""
	// ended counts, by ETag, the events seen to end; current is the ETag
	// of the event being announced, if any.
	ended := map[string]int{}
	current, inEvent := "", false
	for ctx.Err() == nil {
		var (
			resp *notice.Response
			err  error
			u    = s.opts.Endpoint + k.path
		)
		if etag == "" {
			resp, err = s.http.Do(ctx, http.MethodGet, u, flavor, nil, s.opts.RequestTimeout)
		} else {
			q := url.Values{"wait_for_change": {"true"}, "last_etag": {etag}, "timeout_sec": {strconv.Itoa(int(s.opts.WaitTimeout / time.Second))}}
			resp, err = s.http.Do(ctx, http.MethodGet, u+"?"+q.Encode(), flavor, nil, s.opts.WaitTimeout+s.opts.RequestTimeout)
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = checkResponse(u, resp)
		}
		var n *notice.Notice
		newETag := ""
		if err == nil {
			newETag = resp.Header.Get("ETag")
			n, err = k.parse(resp.Body, eventTag(newETag, s.opts.BootID, ended[newETag]), s.opts.Now(), k.period)
		}
		if err != nil {
			update(nil, err)
			etag = ""
			if !notice.Sleep(ctx, s.opts.RetryInterval) {
				return
			}
			continue
		}
		// An event ends when the value goes quiet or turns to another one.
		if inEvent && (n == nil || newETag != current) {
			ended[current]++
		}
		current, inEvent = newETag, n != nil
		update(n, nil)
		if newETag == "" {
			// Without an ETag the server cannot wait for a change from a
			// known value; poll instead.
			if !notice.Sleep(ctx, s.opts.RetryInterval) {
				return
			}
		}
		etag = newETag
	}
}

var flavor = http.Header{"Metadata-Flavor": {"Google"}}

func checkResponse(u string, resp *notice.Response) error {
	if resp.Status != http.StatusOK {
		return fmt.Errorf("GET %s: metadata server answered %d %s", u, resp.Status, notice.Excerpt(resp.Body))
	}
	if resp.Header.Get("Metadata-Flavor") != "Google" {
		return fmt.Errorf("GET %s: the answer lacks \"Metadata-Flavor: Google\": not the GCE metadata server", u)
	}
	return nil
}

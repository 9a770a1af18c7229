// Package gcp watches the GCE metadata server for preemption
// (instance/preempted) and host maintenance (instance/maintenance-event),
// using wait_for_change so a change is seen the moment the server has it, and
// for maintenance GCE announces ahead (instance/upcoming-maintenance), which
// it polls.
package gcp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
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
	// DefaultUpcomingMaintenancePoll is how often upcoming-maintenance is
	// read. It is announced hours to weeks ahead, and acted on minutes
	// before it starts (the maintenance lead time), so seconds late is on
	// time; maintenance-event still gives the last 60 s at once.
	DefaultUpcomingMaintenancePoll = 10 * time.Second
)

// Metadata paths.
const (
	PathPreempted   = "/computeMetadata/v1/instance/preempted"
	PathMaintenance = "/computeMetadata/v1/instance/maintenance-event"
	// PathUpcomingMaintenance is read with alt=json; without it the server
	// answers "key value" lines.
	PathUpcomingMaintenance = "/computeMetadata/v1/instance/upcoming-maintenance"
	// PathOnHostMaintenance is the VM's scheduling option: MIGRATE or
	// TERMINATE.
	PathOnHostMaintenance = "/computeMetadata/v1/instance/scheduling/on-host-maintenance"
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
	// UpcomingMaintenancePoll is how often instance/upcoming-maintenance
	// is read (DefaultUpcomingMaintenancePoll). It is polled rather than
	// waited on: Google documents wait_for_change for metadata in general
	// but nothing of it for this key, which most VMs answer with 404 or
	// 503, neither of which carries an ETag to wait on.
	UpcomingMaintenancePoll time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// BootID names this boot of the VM, to tell a notice from one in an
	// earlier boot with the same ETag (BootIDPath when empty; without one,
	// only the events this agent saw end are told apart).
	BootID string
	// Unfinished are the ids of notices an earlier agent on this node left
	// work unfinished for (reclaim.UnfinishedNotices), most recent first.
	// The maintenance upcoming-maintenance announces at start takes the
	// first of them made in this boot: GCE may have moved the window while
	// no agent ran, and an id made from the new start would end the work
	// for the old one as withdrawn and start it over, as a new notice to
	// the scheduler too. So does a maintenance-event TERMINATE at start
	// that upcoming-maintenance no longer announces.
	Unfinished []string
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
	if opts.UpcomingMaintenancePoll <= 0 {
		opts.UpcomingMaintenancePoll = DefaultUpcomingMaintenancePoll
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
	// query is added to every request.
	query url.Values
	// poll, when set, reads the value at this interval instead of
	// waiting for a change.
	poll time.Duration
	// nothing reports whether an answer other than 200 says that no event
	// is announced.
	nothing func(*notice.Response) bool
	// same, when set, gives a notice the id of the event it continues.
	same func(*notice.Notice) *notice.Notice

	// Guarded by the Source's Watch lock.
	notice *notice.Notice
	err    error
	known  bool
}

// Watch implements notice.Source: one loop per value; every change of one is
// observed with the state of all.
//
// While upcoming-maintenance announces a maintenance, maintenance-event's
// turn about 60 s before a maintenance starts is that maintenance, one
// notice (oneMaintenance): announced and started are the two ends of what
// GCE documents for a VM's host maintenance, and a second notice would be
// acted on again, with new checkpoint commands for its gangs' other members.
func (s *Source) Watch(ctx context.Context, observe func([]notice.Notice, error)) {
	resume := unfinishedAnnounced(s.opts.Unfinished, s.opts.BootID)
	same := &sameMaintenance{resume: resume}
	preempted := &key{path: PathPreempted, parse: ParsePreempted, period: s.opts.PreemptionNotice}
	maintenance := &key{path: PathMaintenance, parse: ParseMaintenanceEvent, period: s.opts.MaintenanceNotice}
	upcoming := &key{
		path: PathUpcomingMaintenance, query: url.Values{"alt": {"json"}}, poll: s.opts.UpcomingMaintenancePoll,
		parse: func(body []byte, _ string, detected time.Time, _ time.Duration) (*notice.Notice, error) {
			n, err := ParseUpcomingMaintenance(body, s.opts.BootID, detected)
			if n != nil && s.migrates(ctx) {
				// What maintenance-event would say of it: a live
				// migration, which stops nothing (reclaim.Disruptive).
				// Its id is not the one the maintenance would have if it
				// stopped the VM: the switch to TERMINATE is news the
				// live migration's notice was not acted on for
				// (sameMaintenance).
				n.Action = MaintenanceMigrate
				n.ID = upcomingPrefix + upcomingMigration + strings.TrimPrefix(n.ID, upcomingPrefix)
			}
			return n, err
		},
		nothing: noUpcomingMaintenance, same: same.same,
	}
	keys := []*key{preempted, maintenance, upcoming}
	var mu sync.Mutex
	// announced is the notice maintenance-event's is merged into, kept
	// for as long as maintenance-event says the maintenance starts, and
	// says of it what was announced (oneMaintenance): GCE may stop
	// announcing it once it is under way, and the notice must not turn
	// into another one then.
	var announced *notice.Notice
	// alone is the id maintenance-event's notice last went out under on
	// its own (no announcement read yet, or none), and adopted the id of
	// the announcement that took it over: GCE announces one maintenance at
	// a time, so one announced while maintenance-event's turn is out is
	// that turn's maintenance, and under the announcement's id it would be
	// a second notice, acted on again while the first ends as withdrawn.
	// It keeps the id and action that went out for as long as GCE
	// announces it, also where an earlier agent of this boot put the turn
	// out on its own and left its work unfinished.
	var alone, adopted string
	var adoptedAs notice.Notice
	publish := func() {
		var notices []notice.Notice
		if preempted.notice != nil {
			notices = append(notices, *preempted.notice)
		}
		m, u := maintenance.notice, upcoming.notice
		if u == nil {
			adopted = ""
		} else if u.ID == adopted {
			c := *u
			c.ID, c.Action = adoptedAs.ID, adoptedAs.Action
			u = &c
		}
		if resume != "" && maintenance.known && (upcoming.known || upcoming.err != nil) {
			// At start, maintenance-event's turn while GCE no longer
			// announces a maintenance (it may stop once the maintenance
			// is under way) is the announced one an earlier agent left
			// work unfinished for: GCE announces one at a time, and one
			// that happened ended the boot. Under its own id it would
			// be a second notice, acted on again, and the work for the
			// first would end as withdrawn. A live migration is news
			// that work was not for.
			if m != nil && u == nil && m.Action != MaintenanceMigrate {
				c := *m
				c.ID = resume
				announced = &c
			}
			resume = ""
		}
		switch {
		case m == nil:
			announced = nil
		case u != nil && oneMaintenance(*m, *u):
			c := *u
			if (alone == m.ID || slices.Contains(s.opts.Unfinished, m.ID)) && u.ID != m.ID {
				adopted, adoptedAs = u.ID, *m
				c.ID, c.Action = m.ID, m.Action
				u = &c
			}
			announced = &c
		case announced != nil && !oneMaintenance(*m, *announced):
			// maintenance-event turned from the held live migration
			// to a TERMINATE without NONE between (a change missed,
			// or GCE's own): news the held notice, which stops
			// nothing, was not acted on for.
			announced = nil
		}
		alone = ""
		switch {
		case announced != nil:
			notices = append(notices, merge(*announced, *m))
			if u != nil && u.ID != announced.ID {
				notices = append(notices, *u)
			}
		case m != nil && !upcoming.known && upcoming.err == nil:
			// At start, until upcoming-maintenance first answers (it
			// and on-host-maintenance, each read bounded by
			// RequestTimeout): out now under its own id, the notice
			// would be a second one a moment later.
		default:
			if m != nil {
				alone = m.ID
			}
			for _, n := range []*notice.Notice{m, u} {
				if n != nil {
					notices = append(notices, *n)
				}
			}
		}
		var errs, unread []error
		for _, k := range keys {
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
	// of the event being announced, if any, and last the value last read.
	ended := map[string]int{}
	current, inEvent, last := "", false, ""
	for ctx.Err() == nil {
		var (
			resp    *notice.Response
			err     error
			nothing bool
			u       = s.opts.Endpoint + k.path
			q       = url.Values{}
			timeout = s.opts.RequestTimeout
			waited  = etag != "" && k.poll == 0
			sent    = time.Now()
		)
		for name, v := range k.query {
			q[name] = v
		}
		if waited {
			q.Set("wait_for_change", "true")
			q.Set("last_etag", etag)
			q.Set("timeout_sec", strconv.Itoa(int(s.opts.WaitTimeout/time.Second)))
			timeout += s.opts.WaitTimeout
		}
		if len(q) > 0 {
			u += "?" + q.Encode()
		}
		resp, err = s.http.Do(ctx, http.MethodGet, u, flavor, nil, timeout)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			nothing, err = checkResponse(u, resp, k.nothing)
		}
		var n *notice.Notice
		newETag, tag, value := "", "", ""
		if err == nil && !nothing {
			newETag, value = resp.Header.Get("ETag"), strings.TrimSpace(string(resp.Body))
			tag = newETag
			if inEvent && value == last {
				// The same value is the same event, whatever the ETag
				// says: a server that drops the header, or changes it
				// for an unchanged value, would otherwise give the
				// notice a new id, the old one withdrawn and the event
				// acted on again.
				tag = current
			}
			n, err = k.parse(resp.Body, eventTag(tag, s.opts.BootID, ended[tag]), s.opts.Now(), k.period)
		}
		if err == nil && k.same != nil {
			n = k.same(n)
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
		if inEvent && (n == nil || tag != current) {
			ended[current]++
		}
		unchanged := waited && !nothing && value == last
		current, inEvent, last = tag, n != nil, value
		update(n, nil)
		switch {
		case k.poll > 0:
			if !notice.Sleep(ctx, k.poll) {
				return
			}
		case newETag == "", unchanged && time.Since(sent) < s.opts.WaitTimeout/2:
			// Without an ETag the server cannot wait for a change from a
			// known value; poll instead. Nor does one that answers a wait
			// well before its timeout with the value waited on: asked
			// again at once, it would be asked thousands of times a
			// second.
			if !notice.Sleep(ctx, s.opts.RetryInterval) {
				return
			}
		}
		etag = newETag
	}
}

var flavor = http.Header{"Metadata-Flavor": {"Google"}}

// migrates reports whether the VM is live-migrated for host maintenance
// (its scheduling option on-host-maintenance is MIGRATE), so that announced
// maintenance does not drain it for nothing. GPU VMs are mostly terminated
// instead; an answer that is not a clear MIGRATE (an error, another value)
// is taken as TERMINATE: acting on maintenance that turns out harmless costs
// a move, missing one loses the work.
func (s *Source) migrates(ctx context.Context) bool {
	resp, err := s.http.Do(ctx, http.MethodGet, s.opts.Endpoint+PathOnHostMaintenance, flavor, nil, s.opts.RequestTimeout)
	return err == nil && resp.Status == http.StatusOK && resp.Header.Get("Metadata-Flavor") == "Google" &&
		strings.TrimSpace(string(resp.Body)) == "MIGRATE"
}

// checkResponse returns nothing true for an answer other than 200 that
// nothing (when set) takes for "no event announced", and an error for any
// other answer but a 200 from the metadata server.
func checkResponse(u string, resp *notice.Response, nothing func(*notice.Response) bool) (bool, error) {
	if resp.Status != http.StatusOK && (nothing == nil || !nothing(resp)) {
		return false, fmt.Errorf("GET %s: metadata server answered %d %s", u, resp.Status, notice.Excerpt(resp.Body))
	}
	if resp.Header.Get("Metadata-Flavor") != "Google" {
		return false, fmt.Errorf("GET %s: the answer lacks \"Metadata-Flavor: Google\": not the GCE metadata server", u)
	}
	return resp.Status != http.StatusOK, nil
}

// noUpcomingMaintenance takes 404 (the key absent, as on machine types GCE
// announces no maintenance to) and 503 with the no-notifications error (what
// GCE answers while it announced none) for no maintenance announced.
func noUpcomingMaintenance(resp *notice.Response) bool {
	switch resp.Status {
	case http.StatusNotFound:
		return true
	case http.StatusServiceUnavailable:
		o, err := notice.ParseObject(PathUpcomingMaintenance, resp.Body)
		if err != nil {
			return false
		}
		msg, _, err := o.String("error", true)
		return err == nil && strings.HasPrefix(msg, noNotifications)
	}
	return false
}

// unfinishedAnnounced is the most recent of the unfinished notices
// (Options.Unfinished) that is an announced maintenance of this boot, or "".
func unfinishedAnnounced(unfinished []string, boot string) string {
	for _, id := range unfinished {
		if upcomingOfBoot(id, boot) {
			return id
		}
	}
	return ""
}

// sameMaintenance keeps one id for the maintenance upcoming-maintenance
// announces, from the first time it is read until it is no longer announced:
// GCE gives it no id, and a window GCE moves is the same maintenance, to be
// followed to its new time rather than acted on again. The first read after
// start continues resume, an unfinished notice of this boot, if any: GCE
// announces one maintenance at a time, and one that happened ended the boot.
// A failed read changes nothing. A live migration's id is kept only while
// it stays one: a VM switched to TERMINATE meanwhile (or an answer that is
// not a clear MIGRATE) loses what runs on it, news the live migration's
// notice, acted on as draining nothing, was not acted on for. The new id is
// then kept for as long as the maintenance is announced, also when the option
// reads MIGRATE again: a notice each time it turns would be acted on, and
// called off, over and over. It is used by one goroutine.
type sameMaintenance struct {
	id     string
	resume string
	// migrates is set while id is a live migration's.
	migrates bool
}

func (s *sameMaintenance) same(n *notice.Notice) *notice.Notice {
	switch {
	case n == nil:
		s.id = ""
	case s.id == "", s.migrates && n.Action != MaintenanceMigrate:
		s.id, s.migrates = n.ID, n.Action == MaintenanceMigrate
		if s.resume != "" {
			s.id, s.migrates = s.resume, false
		}
		n.ID = s.id
	default:
		n.ID = s.id
	}
	// Only the maintenance announced at start is the one an earlier agent
	// saw; one announced after it ended is new.
	s.resume = ""
	return n
}

// oneMaintenance reports whether maintenance-event's notice m is the start of
// the maintenance upcoming-maintenance announces (u): both say it stops the
// VM, or both that it migrates it. A TERMINATE while a live migration is
// announced is news the announced notice was not acted on for, and stays a
// notice of its own.
func oneMaintenance(m, u notice.Notice) bool {
	return (m.Action == MaintenanceMigrate) == (u.Action == MaintenanceMigrate)
}

// merge is the announced notice u once maintenance-event (m) says the
// maintenance starts: its id and action, and m's deadline when that is
// sooner, an emergency GCE brought forward or did not announce, which must
// not wait for the announced window.
func merge(u, m notice.Notice) notice.Notice {
	if m.Deadline.Before(u.Deadline) {
		u.Deadline, u.Estimated = m.Deadline, m.Estimated
	}
	return u
}

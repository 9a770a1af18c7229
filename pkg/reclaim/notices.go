package reclaim

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/configmaplines"
	"github.com/pennysched/penny/pkg/gang"
)

// NoticesKey is the ConfigMap key that holds the notices being handled: one
// line per notice, "<node> <notice id> <kind> <provider> <action> <detected>
// <deadline> <gangs> <members>", e.g. "a aws-spot-1 SPOT_INTERRUPTION AWS
// terminate 2026-11-30T08:00:00Z 2026-11-30T08:02:00Z
// label:ml/llm,podgroup:ml/pg
// 3f0c2b1e-6a4d-4c1f-9b7e-2d5a8c9e0f11,9a1e0d2c-7b3f-4e5a-8c6d-1f2e3a4b5c6d"
// (an empty action or deadline is "-"; the members are pod UIDs, and a line
// without them, as saved before Penny kept them, stands for every live
// member of the gangs). A notice whose first plan was called off because
// the cloud postponed it adds a tenth field, the deadline it is planned
// again by (noticeRecord.round); its gangs and members are "-" until then.
const NoticesKey = "notices"

// noticesStaleAfter is how long past its deadline a record is kept: nothing
// is left to do for it, but a replica whose clock lags may still be at it.
const noticesStaleAfter = 10 * time.Minute

// noticeWriteTimeout bounds writing a record.
const noticeWriteTimeout = 5 * time.Second

// NoticeStore is where the coordinator keeps the notices it is handling, so
// that a restarted scheduler still evicts the gang members it planned to
// after the reclaimed node's own pods are gone (and with them the gangs'
// trace). It belongs in Penny's own namespace: a tenant who could write it
// could have the scheduler evict other tenants' pods.
type NoticeStore struct {
	Client          kubernetes.Interface
	Namespace, Name string

	// mu keeps this replica's handlers from conflicting with each other.
	mu sync.Mutex
}

// noticeRecord is a notice being handled and the gangs found for it. Its
// notice's Detected says which announcement of the notice it is (the cloud
// may withdraw a notice and announce it again under the same id), and with
// round names the plan's commands (commandID).
type noticeRecord struct {
	nodeNotice
	gangs []gang.Ref
	// members are the UIDs of the gangs' members on other nodes that the
	// notice's plan chose: by the time a restarted scheduler resumes
	// the notice, the gangs' owners have usually replaced those already
	// evicted, and the replacements must be left running. Empty stands for
	// every live member of the gangs (a record saved before Penny kept the
	// UIDs, or one too large to keep them).
	members []types.UID
	// round is zero for the notice's first plan. A postponement that
	// called that plan off (the members were asked to checkpoint but not
	// evicted) sets it to the deadline the notice was postponed to: the
	// plan made again at the new lead time names its commands by it, so
	// that the agents, which run a command id once, run them, and every
	// replica and a restarted scheduler name them alike. Until that plan
	// is made the record holds no gangs and no members: it is made afresh.
	round time.Time
}

// errTooLarge says the records would not fit under configmaplines.MaxBytes.
var errTooLarge = errors.New("the records would not fit")

func (s *NoticeStore) key() configmaplines.Key {
	return configmaplines.Key{Client: s.Client, Namespace: s.Namespace, Name: s.Name, Key: NoticesKey}
}

// load reads the records. A missing ConfigMap holds none; malformed lines
// are skipped and reported together in the error, the rest are returned.
// A read the API server could not answer is tried again for a few seconds
// (loadRetry): given up, it leaves every recorded notice unresumed, and
// nothing it would hold back could be done while the API server is away.
func (s *NoticeStore) load(ctx context.Context) ([]noticeRecord, error) {
	var text string
	var readErr error
	err := wait.ExponentialBackoffWithContext(ctx, loadRetry, func(ctx context.Context) (bool, error) {
		text, readErr = s.key().Read(ctx)
		return readErr == nil, nil
	})
	if readErr != nil {
		return nil, readErr
	}
	if err != nil {
		return nil, err
	}
	return parseNotices(text, s.key().String())
}

// loadRetry spaces the reads of the records at start: about 7.5 s in all,
// well inside a Spot notice's two minutes.
var loadRetry = wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Steps: 5}

// put records a notice, its gangs and its members, adding to those another
// replica recorded for it. Records that would not fit with the members'
// UIDs are saved without them rather than with some: a member left out
// would be left running when the notice is resumed, while a record without
// UIDs resumes, as records did before Penny kept them, on every live member.
func (s *NoticeStore) put(ctx context.Context, r noticeRecord, log logr.Logger) error {
	// Update calls the change again on a conflict, on what it reads then:
	// each call merges into r as given, not into the last call's merge.
	merge := func(r noticeRecord) func(map[string]noticeRecord) {
		return func(recs map[string]noticeRecord) {
			merged := r
			if old, ok := recs[r.key()]; ok {
				merged = mergeRecords(old, r)
			}
			recs[r.key()] = merged
		}
	}
	err := s.update(ctx, log, merge(r))
	if !errors.Is(err, errTooLarge) || len(r.members) == 0 {
		return err
	}
	log.Error(err, "recording the notice without its members' UIDs: a scheduler that restarts before its handling ends acts on every live member of its gangs, replacements of members already evicted included",
		"members", len(r.members))
	r.members = nil
	return s.update(ctx, log, merge(r))
}

// mergeRecords adds to r what another replica recorded in old. A notice
// withdrawn and announced again under the same id is detected later: its
// record replaces the earlier announcement's, to which a replica that did
// not hear of the withdrawal adds nothing. A plan made after a postponement
// replaces the plan it called off; a replica still at the plan called off
// adds nothing to the new one. Of the same plan, a record still waiting to
// be planned again (no gangs) takes the gangs and members of one planned.
func mergeRecords(old, r noticeRecord) noticeRecord {
	switch {
	case r.notice.Detected.After(old.notice.Detected):
		return r
	case old.notice.Detected.After(r.notice.Detected):
		return old
	case r.round.After(old.round):
		return r
	case old.round.After(r.round):
		return old
	case len(old.gangs) == 0:
		return r
	case len(r.gangs) == 0:
		r.gangs, r.members = old.gangs, old.members
		return r
	}
	r.gangs = unionGangs(old.gangs, r.gangs)
	r.members = unionMembers(old.members, r.members)
	return r
}

// remove drops the record of nn's announcement once its handling has ended;
// the record of a later announcement (nn withdrawn and announced again),
// whose handling goes on, stays.
func (s *NoticeStore) remove(ctx context.Context, nn nodeNotice, log logr.Logger) error {
	return s.update(ctx, log, func(recs map[string]noticeRecord) {
		if r, ok := recs[nn.key()]; ok && !r.notice.Detected.After(nn.notice.Detected) {
			delete(recs, nn.key())
		}
	})
}

// update applies change to the records read and writes them back, dropping
// those long past their deadline. Records that would grow past
// configmaplines.MaxBytes are not written: the error wraps errTooLarge.
func (s *NoticeStore) update(ctx context.Context, log logr.Logger, change func(map[string]noticeRecord)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.key()
	var tooLarge error
	err := k.Update(ctx, func(text string) string {
		tooLarge = nil
		list, err := parseNotices(text, k.String())
		if err != nil {
			log.Error(err, "Saved reclaim notices: lines skipped")
		}
		recs := make(map[string]noticeRecord, len(list))
		for _, r := range list {
			recs[r.key()] = r
		}
		change(recs)
		cutoff := time.Now().Add(-noticesStaleAfter)
		kept := make([]noticeRecord, 0, len(recs))
		for _, r := range recs {
			if r.deadline().After(cutoff) {
				kept = append(kept, r)
			}
		}
		out := formatNotices(kept)
		// Shrinking is always written, so that a record can be removed
		// whatever the size.
		if len(out) > configmaplines.MaxBytes && len(out) > len(text) {
			tooLarge = fmt.Errorf("%s: %w: %d notices would take %d bytes, more than the %d a ConfigMap key may hold (the API server holds an object to 1 MiB)",
				k, errTooLarge, len(kept), len(out), configmaplines.MaxBytes)
			return text
		}
		return out
	})
	if err != nil {
		return err
	}
	return tooLarge
}

func (r noticeRecord) deadline() time.Time {
	return Deadline(r.notice.Kind, r.notice.Detected, r.notice.Deadline)
}

func unionGangs(a, b []gang.Ref) []gang.Ref {
	out := slices.Clone(a)
	for _, g := range b {
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	slices.SortFunc(out, func(x, y gang.Ref) int { return strings.Compare(x.Key(), y.Key()) })
	return out
}

// unionMembers is empty, every live member, when either is.
func unionMembers(a, b []types.UID) []types.UID {
	if len(a) == 0 || len(b) == 0 {
		return nil
	}
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

// field writes a free-form value as one space-free word; "-" stands for
// empty.
func field(s string) string {
	if s == "" {
		return "-"
	}
	return strings.ReplaceAll(url.PathEscape(s), "-", "%2D")
}

func unfield(s string) (string, error) {
	if s == "-" {
		return "", nil
	}
	return url.PathUnescape(s)
}

// formatNotices writes the records as saved, ordered by node and notice.
func formatNotices(recs []noticeRecord) string {
	recs = slices.Clone(recs)
	slices.SortFunc(recs, func(a, b noticeRecord) int { return strings.Compare(a.key(), b.key()) })
	var b strings.Builder
	for _, r := range recs {
		n := r.notice
		deadline := "-"
		if !n.Deadline.IsZero() {
			deadline = n.Deadline.UTC().Format(time.RFC3339Nano)
		}
		gangs := make([]string, len(r.gangs))
		for i, g := range r.gangs {
			gangs[i] = g.Key()
		}
		if len(gangs) == 0 {
			gangs = []string{"-"} // a plan called off, not yet made again
		}
		fmt.Fprintf(&b, "%s %s %s %s %s %s %s %s", r.node, field(n.ID),
			strings.TrimPrefix(n.Kind.String(), "RECLAIM_KIND_"), strings.TrimPrefix(n.Provider.String(), "CLOUD_PROVIDER_"),
			field(n.Action), n.Detected.UTC().Format(time.RFC3339Nano), deadline, strings.Join(gangs, ","))
		// Without members the line is as saved before Penny kept them, so
		// that a scheduler of that version still reads it.
		for i, uid := range r.members {
			sep := ","
			if i == 0 {
				sep = " "
			}
			m := url.PathEscape(string(uid))
			if m == "-" {
				// Bare, it would read as "no members" before a round.
				m = "%2D"
			}
			b.WriteString(sep + m)
		}
		if !r.round.IsZero() {
			if len(r.members) == 0 {
				b.WriteString(" -")
			}
			b.WriteString(" " + r.round.UTC().Format(time.RFC3339Nano))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// parseNotices reads saved records. Lines that do not parse are skipped;
// the error names each with the fix, and the records returned are the good
// ones.
func parseNotices(data, source string) ([]noticeRecord, error) {
	return configmaplines.Parse(data, source, parseNoticeLine)
}

func parseNoticeLine(line string) (noticeRecord, error) {
	const want = `want "<node> <notice id> <kind> <provider> <action> <detected> <deadline> <gangs> <members> <round>", the kind as SPOT_INTERRUPTION, REBALANCE_RECOMMENDATION, MAINTENANCE or TERMINATION, the provider as AWS, GCP or AZURE, the times in RFC 3339, "-" for an empty action or deadline, the gangs as <label|podgroup>:<namespace>/<name> separated by commas, the members as pod UIDs separated by commas (or left out for every live member of the gangs), the round (left out for a first plan) as the RFC 3339 deadline a postponed notice is planned again by, with "-" for its gangs and members until then, e.g. "a aws-spot-1 SPOT_INTERRUPTION AWS terminate 2026-11-30T08:00:00Z 2026-11-30T08:02:00Z label:ml/llm 3f0c2b1e-6a4d-4c1f-9b7e-2d5a8c9e0f11"`
	f := strings.Fields(line)
	if len(f) < 8 || len(f) > 10 {
		return noticeRecord{}, errors.New(want)
	}
	r := noticeRecord{nodeNotice: nodeNotice{node: f[0]}}
	n := &r.notice
	var err error
	if n.ID, err = unfield(f[1]); err != nil || n.ID == "" {
		return noticeRecord{}, fmt.Errorf("notice id %q: %s", f[1], want)
	}
	kind, ok := telemetryv1.ReclaimKind_value["RECLAIM_KIND_"+f[2]]
	if !ok || kind == 0 {
		return noticeRecord{}, fmt.Errorf("kind %q: %s", f[2], want)
	}
	n.Kind = telemetryv1.ReclaimKind(kind)
	provider, ok := telemetryv1.CloudProvider_value["CLOUD_PROVIDER_"+f[3]]
	if !ok || provider == 0 {
		return noticeRecord{}, fmt.Errorf("provider %q: %s", f[3], want)
	}
	n.Provider = telemetryv1.CloudProvider(provider)
	if n.Action, err = unfield(f[4]); err != nil {
		return noticeRecord{}, fmt.Errorf("action %q: %s", f[4], want)
	}
	if n.Detected, err = configmaplines.ParseTime(f[5]); err != nil {
		return noticeRecord{}, fmt.Errorf("detected %q is not an RFC 3339 time: %s", f[5], want)
	}
	if f[6] != "-" {
		if n.Deadline, err = configmaplines.ParseTime(f[6]); err != nil {
			return noticeRecord{}, fmt.Errorf("deadline %q is not an RFC 3339 time: %s", f[6], want)
		}
	}
	if len(f) == 10 {
		if r.round, err = configmaplines.ParseTime(f[9]); err != nil {
			return noticeRecord{}, fmt.Errorf("round %q is not an RFC 3339 time: %s", f[9], want)
		}
		if r.round.IsZero() {
			// formatNotices leaves a zero round out, and a record not yet
			// planned again would then be a line with "-" for its gangs.
			return noticeRecord{}, fmt.Errorf("round %q is the zero time, not a deadline the notice was postponed to: %s", f[9], want)
		}
		if f[7] == "-" {
			if f[8] != "-" {
				return noticeRecord{}, fmt.Errorf("members %q of a notice not yet planned again: %s", f[8], want)
			}
			return r, nil
		}
		if f[8] == "-" {
			f = f[:8]
		}
	}
	for _, g := range strings.Split(f[7], ",") {
		src, rest, _ := strings.Cut(g, ":")
		ns, name, _ := strings.Cut(rest, "/")
		if src != string(gang.SourceLabel) && src != string(gang.SourcePodGroup) || ns == "" || name == "" || strings.Contains(name, "/") {
			return noticeRecord{}, fmt.Errorf("gang %q: %s", g, want)
		}
		r.gangs = append(r.gangs, gang.Ref{Source: gang.Source(src), Namespace: ns, Name: name})
	}
	if len(f) >= 9 {
		for _, m := range strings.Split(f[8], ",") {
			uid, err := url.PathUnescape(m)
			if err != nil || uid == "" {
				return noticeRecord{}, fmt.Errorf("member %q: %s", m, want)
			}
			r.members = append(r.members, types.UID(uid))
		}
	}
	return r, nil
}

package aws

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// ParseInstanceAction reads spot/instance-action:
// {"action":"terminate|stop|hibernate","time":"2017-09-18T08:22:00Z"}. The
// time is when the action happens: the notice's deadline.
func ParseInstanceAction(body []byte, detected time.Time) (notice.Notice, error) {
	o, err := notice.ParseObject("spot/instance-action", body)
	if err != nil {
		return notice.Notice{}, err
	}
	action, _, err := o.String("action", true)
	if err != nil {
		return notice.Notice{}, err
	}
	when, _, err := o.String("time", true)
	if err != nil {
		return notice.Notice{}, err
	}
	if !instanceActions[action] {
		return notice.Notice{}, fmt.Errorf("spot/instance-action: action %s is not terminate, stop or hibernate", notice.Excerpt([]byte(action)))
	}
	at, err := parseTime(when)
	if err != nil {
		return notice.Notice{}, fmt.Errorf("spot/instance-action: time: %w", err)
	}
	return notice.Notice{
		ID:   "aws-spot-" + action + "-" + at.Format("20060102T150405Z"),
		Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS,
		Action: action, Detected: detected, Deadline: at,
	}, nil
}

// Spot instance actions (spot/instance-action "action").
var instanceActions = map[string]bool{"terminate": true, "stop": true, "hibernate": true}

// ParseRebalance reads events/recommendations/rebalance:
// {"noticeTime":"2020-11-05T08:22:00Z"}. A recommendation has no deadline.
func ParseRebalance(body []byte, detected time.Time) (notice.Notice, error) {
	o, err := notice.ParseObject("events/recommendations/rebalance", body)
	if err != nil {
		return notice.Notice{}, err
	}
	when, _, err := o.String("noticeTime", true)
	if err != nil {
		return notice.Notice{}, err
	}
	at, err := parseTime(when)
	if err != nil {
		return notice.Notice{}, fmt.Errorf("events/recommendations/rebalance: noticeTime: %w", err)
	}
	return notice.Notice{
		ID:   "aws-rebalance-" + at.Format("20060102T150405Z"),
		Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS,
		Action: "rebalance", Detected: detected,
	}, nil
}

// MaxScheduledEvents bounds the list; an instance has a handful at most.
const MaxScheduledEvents = 64

// ParseScheduledEvents reads events/maintenance/scheduled, a list of
// {"NotBefore","Code","Description","EventId","NotAfter","State"}. Only
// active events are notices; completed and canceled ones stay listed for a
// while and are skipped.
//
// Each event is judged on its own: the notices of the well-formed active
// events come back together with an error that names every event that is
// not well-formed (its index, the field and the value), so that one odd
// event, or a State AWS adds later, neither hides an active one beside it
// nor passes unseen. The error makes the check a failed one, and a failed
// check withdraws no notice: the event that cannot be read may be one
// already seen.
func ParseScheduledEvents(body []byte, detected time.Time) ([]notice.Notice, error) {
	const what = "events/maintenance/scheduled"
	items, err := notice.ParseList(what, body)
	if err != nil {
		return nil, err
	}
	if len(items) > MaxScheduledEvents {
		return nil, fmt.Errorf("%s: %d events; more than %d is not a plausible answer", what, len(items), MaxScheduledEvents)
	}
	var out []notice.Notice
	var bad []error
	// first is the index of each active event's id, in items and in out
	// (notice.Relist).
	first := map[string][2]int{}
	for i, raw := range items {
		n, active, err := parseScheduledEvent(fmt.Sprintf("%s[%d]", what, i), raw, detected)
		switch {
		case err != nil:
			bad = append(bad, err)
		case active:
			if at, dup := first[n.ID]; dup {
				if notice.Relist(&out[at[1]], n) {
					bad = append(bad, fmt.Errorf("%s[%d]: EventId %s is listed twice, differently (also %s[%d]); the earlier deadline is taken", what, i, notice.Excerpt([]byte(strings.TrimPrefix(n.ID, "aws-"))), what, at[0]))
				}
				continue
			}
			first[n.ID] = [2]int{i, len(out)}
			out = append(out, n)
		}
	}
	return out, errors.Join(bad...)
}

// parseScheduledEvent reads one event of the list, named what in errors;
// active is false for a completed or canceled one.
func parseScheduledEvent(what string, raw []byte, detected time.Time) (n notice.Notice, active bool, err error) {
	e, err := notice.ParseObject(what, raw)
	if err != nil {
		return notice.Notice{}, false, err
	}
	var id, code, state, notBefore string
	for _, f := range []struct {
		key string
		v   *string
	}{{"EventId", &id}, {"Code", &code}, {"State", &state}, {"NotBefore", &notBefore}} {
		if *f.v, _, err = e.String(f.key, true); err != nil {
			return notice.Notice{}, false, err
		}
	}
	if !validID(id) {
		return notice.Notice{}, false, fmt.Errorf("%s: EventId %s is not an event id", what, notice.Excerpt([]byte(id)))
	}
	switch state {
	case "active":
	case "completed", "canceled":
		return notice.Notice{}, false, nil
	default:
		// Neither taken as active nor skipped: AWS documents these
		// three, and a fourth is a change of format someone must see.
		return notice.Notice{}, false, fmt.Errorf("%s: State %s is not active, completed or canceled", what, notice.Excerpt([]byte(state)))
	}
	// AWS documents five codes (instance-reboot, system-reboot,
	// system-maintenance, instance-retirement, instance-stop), every one a
	// disruption at NotBefore. A code it adds later is taken as one too,
	// not refused: refused, the event would be no notice at all.
	if !validID(code) {
		return notice.Notice{}, false, fmt.Errorf("%s: Code %s is not an event code (one word, like system-reboot)", what, notice.Excerpt([]byte(code)))
	}
	// The code is the notice's action, which the telemetry API bounds: a
	// notice with a longer one would get every report of the node refused.
	if len(code) > telemetryv1.MaxActionLen {
		return notice.Notice{}, false, fmt.Errorf("%s: Code %s is longer than %d characters, the most a notice's action may be", what, notice.Excerpt([]byte(code)), telemetryv1.MaxActionLen)
	}
	at, err := parseTime(notBefore)
	if err != nil {
		return notice.Notice{}, false, fmt.Errorf("%s: NotBefore: %w", what, err)
	}
	return notice.Notice{
		ID:   "aws-" + id,
		Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE, Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS,
		Action: code, Detected: detected, Deadline: at,
	}, true, nil
}

// validID accepts what AWS event ids look like: short, printable, no spaces.
func validID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// IMDS writes instance-action and rebalance times as RFC 3339, and scheduled
// events as "21 Jan 2019 09:00:43 GMT". The zone of the latter is always GMT
// (UTC is taken as the same): Go's parser would take any other abbreviation
// ("PST", "EST") as UTC, or as whatever offset the agent's local zone gives
// it, and move the deadline by hours without a word, so it is refused.
var timeLayouts = []string{time.RFC3339, "2 Jan 2006 15:04:05 GMT", "2 Jan 2006 15:04:05 UTC"}

func parseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			if t.Year() < 2000 || t.Year() > 9999 {
				return time.Time{}, fmt.Errorf("%q is not a plausible time", s)
			}
			return t.UTC(), nil
		}
	}
	// A time without a zone is refused in words of its own: taking it as
	// UTC would be a guess.
	for _, l := range []string{"2006-01-02T15:04:05", "2 Jan 2006 15:04:05"} {
		if _, err := time.Parse(l, s); err == nil {
			return time.Time{}, fmt.Errorf("%s has no time zone: want UTC, as IMDS writes it (e.g. 2026-05-01T10:00:00Z or 21 Jan 2019 09:00:43 GMT)", notice.Excerpt([]byte(s)))
		}
	}
	if t, err := time.Parse("2 Jan 2006 15:04:05 MST", s); err == nil {
		zone, _ := t.Zone()
		return time.Time{}, fmt.Errorf("%s is in time zone %q, which IMDS never writes: want GMT (e.g. 21 Jan 2019 09:00:43 GMT) or RFC 3339 (e.g. 2026-05-01T10:00:00Z)", notice.Excerpt([]byte(s)), zone)
	}
	return time.Time{}, fmt.Errorf("%s is not a time (want RFC 3339, e.g. 2026-05-01T10:00:00Z, or 21 Jan 2019 09:00:43 GMT)", notice.Excerpt([]byte(s)))
}

package aws

import (
	"encoding/json"
	"testing"
	"time"
)

var detected = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

// FuzzInstanceAction: no input crashes the parser, and a notice comes only
// from a JSON object whose action is terminate, stop or hibernate and whose
// time is a string.
func FuzzInstanceAction(f *testing.F) {
	for _, s := range []string{
		`{"action":"terminate","time":"2017-09-18T08:22:00Z"}`, `{"action":"stop","time":"2017-09-18T08:22:00Z"}`,
		`{"action":"hibernate","time":"2017-09-18T08:22:00+02:00"}`, `{"action":"terminate"}`, `{"action":1,"time":2}`,
		`null`, `[]`, `{`, `"terminate"`, `{"action":"terminate","time":"2017-09-18T08:22:00Z"} x`, "\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		n, err := ParseInstanceAction(body, detected)
		if err != nil {
			return
		}
		var m map[string]any
		if json.Unmarshal(body, &m) != nil {
			t.Fatalf("notice %v from a body that is not a JSON object: %q", n, body)
		}
		action, _ := m["action"].(string)
		if _, isString := m["time"].(string); !instanceActions[action] || !isString {
			t.Fatalf("notice %v from %q", n, body)
		}
		if err := n.Validate(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzRebalance: as FuzzInstanceAction for the rebalance recommendation.
func FuzzRebalance(f *testing.F) {
	for _, s := range []string{`{"noticeTime":"2020-11-05T08:22:00Z"}`, `{"noticeTime":null}`, `{}`, `{"noticeTime":"x"}`, `[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		n, err := ParseRebalance(body, detected)
		if err != nil {
			return
		}
		var m map[string]any
		if json.Unmarshal(body, &m) != nil {
			t.Fatalf("notice %v from a body that is not a JSON object: %q", n, body)
		}
		if _, ok := m["noticeTime"].(string); !ok {
			t.Fatalf("notice %v from %q", n, body)
		}
		if !n.Deadline.IsZero() {
			t.Fatalf("rebalance notice with a deadline: %v", n)
		}
		if err := n.Validate(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzScheduledEvents: a notice comes only from an active event with a
// well-formed code in a JSON list, and every active event is a notice
// unless the error names one.
func FuzzScheduledEvents(f *testing.F) {
	for _, s := range []string{
		`[{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","Description":"scheduled reboot","EventId":"instance-event-0d59937288b749b32","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"active"}]`,
		`[{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","EventId":"e","State":"canceled"}]`,
		`[{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","EventId":"e1","State":"active"},{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","EventId":"e2","State":"paused"}]`,
		`[]`, `[{}]`, `[{"State":1}]`, `{}`, `[null]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		notices, err := ParseScheduledEvents(body, detected)
		var list []map[string]any
		if json.Unmarshal(body, &list) != nil {
			if len(notices) > 0 {
				t.Fatalf("notices %v from a body that is not a JSON list: %q", notices, body)
			}
			return
		}
		active, ids := 0, map[string]bool{}
		for _, e := range list {
			if e["State"] == "active" {
				active++
				id, _ := e["EventId"].(string)
				ids["aws-"+id] = true
			}
		}
		if err == nil && len(notices) != active {
			t.Fatalf("%d notices and no error from %d active events in %q", len(notices), active, body)
		}
		for _, n := range notices {
			if !ids[n.ID] {
				t.Fatalf("notice %v matches no active event in %q", n, body)
			}
			if err := n.Validate(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

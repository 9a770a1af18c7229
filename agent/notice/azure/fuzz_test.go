package azure

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzScheduledEvents: no document crashes the parser, every event of a
// document is either read or Unread, and a notice comes only from an event
// of a known type that lists this VM.
func FuzzScheduledEvents(f *testing.F) {
	for _, s := range []string{
		`{"DocumentIncarnation":1,"Events":[]}`,
		`{"DocumentIncarnation":2,"Events":[{"EventId":"602d9444-d2cd-49c7-8624-8643e7171297","EventType":"Preempt","ResourceType":"VirtualMachine","Resources":["vm0"],"EventStatus":"Scheduled","NotBefore":"Mon, 19 Sep 2016 18:29:47 GMT","Description":"","EventSource":"Platform","DurationInSeconds":-1}]}`,
		`{"DocumentIncarnation":2,"Events":[{"EventId":"x","EventType":"Freeze","Resources":["vm0","vm1"],"EventStatus":"Started","NotBefore":""}]}`,
		`{"DocumentIncarnation":"2","Events":[]}`, `{"Events":null}`, `[]`, `{`,
	} {
		f.Add([]byte(s))
	}
	detected := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte) {
		doc, err := ParseDocument(body)
		if err != nil {
			return
		}
		// An independent reading must agree on the events there.
		var top map[string]json.RawMessage
		var w struct {
			Events []map[string]any
		}
		if json.Unmarshal(body, &top) != nil || json.Unmarshal(top["Events"], &w.Events) != nil {
			t.Fatalf("document %+v from a body encoding/json cannot read: %q", doc, body)
		}
		if len(doc.Events)+len(doc.Unread) != len(w.Events) {
			t.Fatalf("%d events read and %d unread of %d in %q", len(doc.Events), len(doc.Unread), len(w.Events), body)
		}
		notices, _ := doc.Notices("vm0", detected, DefaultPreemptNotice)
		for _, n := range notices {
			found := false
			for _, e := range w.Events {
				res, _ := e["Resources"].([]any)
				mine := false
				for _, r := range res {
					if s, _ := r.(string); s == "vm0" || s == "VM0" || s == "Vm0" || s == "vM0" {
						mine = true
					}
				}
				if "azure-"+asString(e["EventId"]) == n.ID && mine && eventKinds[asString(e["EventType"])] == n.Kind {
					found = true
				}
			}
			if !found {
				t.Fatalf("notice %v matches no event of this VM in %q", n, body)
			}
			if err := n.Validate(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func asString(v any) string {
	s, _ := v.(string)
	return s
}

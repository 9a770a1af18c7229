package reclaim

import (
	"slices"
	"strings"
	"testing"
)

// noticeSeeds are saved records as formatNotices writes them (a plan, one
// without members as saved before Penny kept them, one postponed and not
// yet planned again, one planned again) and damaged ones.
var noticeSeeds = []string{
	"a aws%2Dspot%2D1 SPOT_INTERRUPTION AWS terminate 2026-11-30T08:00:00Z 2026-11-30T08:02:00Z label:ml/llm,podgroup:ml/pg 3f0c2b1e-6a4d-4c1f-9b7e-2d5a8c9e0f11,odd%2Cuid%20with%20spaces\n",
	"b gce%20maint%2F1 REBALANCE_RECOMMENDATION GCP - 2026-11-30T08:00:00.000000123Z - podgroup:ml/pg,label:ml/llm\n",
	"c aws%2Dmaint%2D1 MAINTENANCE AWS system%2Dreboot 2026-11-30T08:00:00Z 2026-12-01T09:00:00Z - - 2026-12-01T08:00:00Z\n",
	"d aws%2Dmaint%2D2 MAINTENANCE AWS system%2Dreboot 2026-11-30T08:00:00Z 2026-12-01T08:00:00Z label:ml/llm - 2026-12-01T08:00:00Z\n" +
		"e az TERMINATION AZURE - 2026-11-30T08:00:00+02:00 2026-11-30T08:00:00-02:00 label:ml/llm uid-1 2026-12-01T08:00:00Z\n",
	"a x SOMETHING AWS - 2026-11-30T08:00:00Z - label:ml/g\na x MAINTENANCE AWS - yesterday - label:ml/g\n",
	"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - label:ml/g uid-1,,uid-2\na x MAINTENANCE AWS - 2026-11-30T08:00:00Z - label:ml/g uid-1,uid-%zz\n",
	"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - - uid-1 2026-12-01T08:00:00Z\n",
	"a x MAINTENANCE AWS - 0000-01-01T00:00:00+01:00 - label:ml/g\n",
	"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - - - 0001-01-01T00:00:00Z\n",
	"a x MAINTENANCE AWS - 2026-11-30T08:00:00Z - label:ml/g %2D 2026-12-01T08:00:00Z\n",
	"nonsense\n", "", "\n\n",
}

// noticeFields are the names an error for one line starts with: the field
// it refuses, or, for a line with the wrong number of fields, the format.
var noticeFields = []string{"want ", "notice id ", "kind ", "provider ", "action ", "detected ", "deadline ", "round ", "members ", "gang ", "member "}

// The saved notices are read back by a restarted scheduler from a
// ConfigMap that an operator may edit: reading never panics, a line that
// is refused is named by its number and the field at fault, and a record
// that is read is written back as a line that reads as the same record, so
// that the next save does not lose it.
func FuzzParseNotices(f *testing.F) {
	for _, s := range noticeSeeds {
		f.Add(s)
	}
	const source = "configmap penny-system/penny-reclaim-notices key notices"
	f.Fuzz(func(t *testing.T, text string) {
		recs, err := parseNotices(text, source)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, source+" line ") {
					t.Fatalf("error line %q does not name the key and line; whole error:\n%v", line, err)
				}
			}
		}
		for _, line := range strings.Split(text, "\n") {
			line = strings.TrimSpace(line)
			if line == "" {
				continue
			}
			if _, err := parseNoticeLine(line); err != nil && !slices.ContainsFunc(noticeFields, func(f string) bool { return strings.HasPrefix(err.Error(), f) }) {
				t.Fatalf("line %q: error %q names no field", line, err)
			}
		}
		for _, r := range recs {
			out := formatNotices([]noticeRecord{r})
			back, err := parseNotices(out, source)
			if err != nil || len(back) != 1 {
				t.Fatalf("%+v written as %q and read back as %+v, %v", r, out, back, err)
			}
			if !sameRecord(r, back[0]) {
				t.Fatalf("%+v written as %q and read back as %+v", r, out, back[0])
			}
		}
	})
}

// sameRecord compares records as saved: the times as instants, whatever
// zone they were read in.
func sameRecord(a, b noticeRecord) bool {
	an, bn := a.notice, b.notice
	return a.node == b.node && an.ID == bn.ID && an.Kind == bn.Kind && an.Provider == bn.Provider && an.Action == bn.Action &&
		an.Detected.Equal(bn.Detected) && an.Deadline.Equal(bn.Deadline) && a.round.Equal(b.round) &&
		slices.Equal(a.gangs, b.gangs) && slices.Equal(a.members, b.members)
}

// The moves back to Spot being evicted are read back from the same
// ConfigMap: reading never panics, a line refused names the field at
// fault, and a record read is written back as a line that reads as the
// same record.
func FuzzParseReturns(f *testing.F) {
	for _, s := range []string{
		"gang:label:ml%2Fg 2026-12-03T10:00:00Z ml/g-0/uid-g-0,ml/g-1/uid-g-1",
		"pod:ml%2Fsolo 2026-12-03T10:00:00.123456789+02:00 ml/solo/3f0c2b1e-6a4d-4c1f-9b7e-2d5a8c9e0f11",
		"- 2026-12-03T10:00:00Z ml/g-0/uid", "w%zz 2026-12-03T10:00:00Z ml/g-0/uid", "w yesterday ml/g-0/uid",
		"w 2026-12-03T10:00:00Z ml/g-0", "w 2026-12-03T10:00:00Z ml/g-0/uid,,ml/g-1/uid", "w 0000-01-01T00:00:00+01:00 a/b/c",
		"w 2026-12-03T10:00:00Z", "nonsense", "",
	} {
		f.Add(s)
	}
	fields := []string{"want ", "workload ", "evict until ", "pod "}
	f.Fuzz(func(t *testing.T, line string) {
		r, err := parseReturnLine(line)
		if err != nil {
			if !slices.ContainsFunc(fields, func(f string) bool { return strings.HasPrefix(err.Error(), f) }) {
				t.Fatalf("line %q: error %q names no field", line, err)
			}
			return
		}
		again, err := parseReturnLine(r.String())
		if err != nil {
			t.Fatalf("line %q read as %+v, written as %q, which reads as an error: %v", line, r, r.String(), err)
		}
		if again.workload != r.workload || !again.until.Equal(r.until) || !slices.Equal(again.pods, r.pods) {
			t.Fatalf("line %q read as %+v, written as %q, read back as %+v", line, r, r.String(), again)
		}
	})
}

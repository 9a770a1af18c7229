package reclaim

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// stateSeeds are job files as save writes them (a notice part done, a
// finished command) and damaged ones.
func stateSeeds(t testing.TB) [][]byte {
	detected := time.Date(2026, 11, 30, 8, 0, 0, 123, time.UTC)
	jobs := []*Job{
		{Version: stateVersion, ID: "notice-aws-spot-1", Notice: &NoticeRecord{ID: "aws-spot-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
			Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, Action: "terminate", Detected: detected, Deadline: detected.Add(2 * time.Minute)},
			Deadline: detected.Add(2 * time.Minute), Tainted: true, Updated: detected.Add(time.Second),
			Pods: map[string]*PodRecord{"ml/a": {UID: "uid-a", Checkpoint: "STATE_DONE"}, "ml/b": {UID: "uid-b", Checkpoint: "STATE_FAILED", Message: "no space", Evicted: true}}},
		{Version: stateVersion, ID: "command-gang-cmd-1", Command: &CommandRecord{ID: "gang-cmd-1", Pods: []string{"ml/a"}, Reason: "gang member on a reclaimed node",
			OriginNode: "n2", OriginNotice: "aws-spot-1", Received: detected}, Deadline: detected.Add(time.Minute), Done: true, Acknowledged: true, Withdrawn: true, Updated: detected},
	}
	var seeds [][]byte
	for _, j := range jobs {
		data, err := json.MarshalIndent(j, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, data)
	}
	for _, s := range []string{
		`{"version":1,"id":"notice-x"}`,
		`{"version":1,"id":"command-c","done":true,"deadline":"2026-11-30T08:00:00Z"}`,
		`{"version":1,"id":"notice-n","notice":{"id":"n","kind":1,"provider":1,"detected":"0000-01-01T00:00:00+01:00"},"pods":{"ml/a":null}}`,
		`{"version":1,"id":"command-c","command":{"id":"c","pods":null},"deadline":"9999-12-31T23:59:59.999999999-23:59"}`,
		`{"version":2,"id":"notice-x"}`, `{"version":1}`, `{"version":1,"id":"x","notice":{"kind":"SPOT"}}`,
		"", "null", "[]", "{", "\xff",
	} {
		seeds = append(seeds, []byte(s))
	}
	return seeds
}

// A restarted agent reads the state directory, a hostPath anything on the
// node may have written: whatever a file holds, reading it gives a job the
// flow can run, or an error that names the file, and never a panic; a job
// that is read is saved and read back as itself.
func FuzzReadState(f *testing.F) {
	for _, s := range stateSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		dir := t.TempDir()
		st := &stateStore{dir: dir}
		path := filepath.Join(dir, "job.json")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		j, ok, err := st.read(path)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file %s", err, path)
			}
			return
		}
		if !ok {
			t.Fatal("a file that exists read as none")
		}
		// Run resumes it: runNotice or runCommand.
		if j.Notice == nil && j.Command == nil {
			t.Fatalf("read %+v: neither a notice nor a command to run", j)
		}
		want, err := json.Marshal(j)
		if err != nil {
			t.Fatalf("read %+v, which does not write: %v", j, err)
		}
		if err := st.save(j); err != nil {
			t.Fatalf("read %+v, which does not save: %v", j, err)
		}
		back, ok, err := st.load(j.ID)
		if err != nil || !ok {
			t.Fatalf("%+v saved and loaded as %v, %v", j, ok, err)
		}
		if got, _ := json.Marshal(back); !bytes.Equal(got, want) {
			t.Fatalf("saved %s, loaded %s", want, got)
		}
		if _, err := UnfinishedNotices(dir, time.Now()); err != nil {
			t.Fatal(err)
		}
	})
}

// A job's file is named after its id, which comes from the cloud (the
// notice id) or the scheduler (the command id): whatever the id, the name
// is one file in the state directory that all finds (no path separator,
// not "." or "..", ending in .json), fits a file system's 255-byte limit,
// and differs from every other id's.
func FuzzFileName(f *testing.F) {
	for _, s := range [][2]string{
		{"notice-aws-spot-1", "command-gang-cmd-1"},
		{"notice-../../etc/passwd", "notice-..%2F..%2Fetc%2Fpasswd"},
		{"notice-\x100", "notice-\u0100"},
		{"notice-\xff", "notice-\xfe"},
		{"notice-" + strings.Repeat("é", 200), "notice-" + strings.Repeat("é", 199) + "e"},
		{"", "."},
		{"..", "/"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		name := fileName(a)
		if strings.ContainsAny(name, `/\`+"\x00") || name == "." || name == ".." || filepath.Base(name) != name {
			t.Fatalf("id %q: file name %q is not one file in the directory", a, name)
		}
		if !strings.HasSuffix(name, ".json") || len(name) > 255 {
			t.Fatalf("id %q: file name %q (%d bytes)", a, name, len(name))
		}
		if a != b && fileName(b) == name {
			t.Fatalf("ids %q and %q share the file name %q", a, b, name)
		}
	})
}

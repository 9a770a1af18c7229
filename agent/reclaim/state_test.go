package reclaim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/pennysched/penny/agent/notice"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

func newPruneTestFlow(t *testing.T, dir string, retention time.Duration) *Flow {
	t.Helper()
	f, err := New(Options{Node: "n1", Client: fake.NewClientset(), StateDir: dir, Retention: retention,
		Recorder: record.NewFakeRecorder(100), Log: testr.NewWithOptions(t, testr.Options{Verbosity: 1})})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func stateFileExists(t *testing.T, dir, id string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(dir, fileName(id)))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return err == nil
}

func waitForState(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return cond(), nil
	}); err != nil {
		t.Fatalf("%s: not within 10s", what)
	}
}

// An agent on a node that is never reclaimed itself runs for weeks and gets
// a command for every reclaim of a node its gangs share: the files of that
// finished work go once past their retention, not at the next restart.
func TestFinishedWorkIsPrunedWhileTheAgentRuns(t *testing.T) {
	dir := t.TempDir()
	f := newPruneTestFlow(t, dir, 50*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// A command for no pod of this node finishes at once; once it is done,
	// Run is past what it does at start.
	f.HandleCheckpoint(ctx, &telemetryv1.CheckpointCommand{Id: "gang-cmd-1", Deadline: timestamppb.New(time.Now().Add(time.Hour))})
	waitForState(t, "the command recorded as done", func() bool {
		j, ok, err := f.state.load("command-gang-cmd-1")
		return err == nil && ok && j.Done && f.Running() == 0
	})

	// Work an agent finished two days ago, as it would be found by one
	// that has run since.
	old := &Job{ID: "command-gang-cmd-0", Command: &CommandRecord{ID: "gang-cmd-0"},
		Deadline: time.Now().Add(-47 * time.Hour), Done: true, Updated: time.Now().Add(-48 * time.Hour)}
	if err := f.state.save(old); err != nil {
		t.Fatal(err)
	}
	waitForState(t, "the finished command past its retention removed while the agent runs", func() bool {
		return !stateFileExists(t, dir, old.ID)
	})
}

// expire, at start and while the agent runs, removes only what can no
// longer stop a second action or a lost status.
func TestPruneKeepsWhatIsStillOfUse(t *testing.T) {
	dir := t.TempDir()
	f := newPruneTestFlow(t, dir, 24*time.Hour)
	now := time.Now()
	day := 24 * time.Hour
	removed := []*Job{
		{ID: "notice-past-retention", Notice: &NoticeRecord{ID: "a"}, Done: true, Updated: now.Add(-day - time.Hour)},
		{ID: "notice-withdrawn-past-retention", Notice: &NoticeRecord{ID: "b"}, Done: true, Withdrawn: true, Updated: now.Add(-day - time.Hour)},
		{ID: "command-past-deadline", Command: &CommandRecord{ID: "c"}, Deadline: now.Add(-day), Done: true, Updated: now.Add(-day - time.Hour)},
	}
	kept := []*Job{
		// A restarted agent that sees the notice again knows it as handled.
		{ID: "notice-inside-retention", Notice: &NoticeRecord{ID: "d"}, Done: true, Updated: now.Add(-day + time.Hour)},
		// Work to finish, however old.
		{ID: "notice-unfinished", Notice: &NoticeRecord{ID: "e"}, Updated: now.Add(-3 * day)},
		// The scheduler may wait for its statuses until the deadline.
		{ID: "command-before-deadline", Command: &CommandRecord{ID: "f"}, Deadline: now.Add(time.Hour), Done: true, Updated: now.Add(-day - time.Hour)},
		// Running again (a notice called off and announced again): its
		// file is the running job's.
		{ID: "notice-running", Notice: &NoticeRecord{ID: "g"}, Done: true, Withdrawn: true, Updated: now.Add(-day - time.Hour)},
	}
	for _, j := range append(removed, kept...) {
		if err := f.state.save(j); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "unreadable.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.running["notice-running"] = true

	f.prune(now)
	for _, j := range removed {
		if stateFileExists(t, dir, j.ID) {
			t.Errorf("%s: kept, want it removed", j.ID)
		}
	}
	for _, j := range kept {
		if !stateFileExists(t, dir, j.ID) {
			t.Errorf("%s: removed, want it kept", j.ID)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "unreadable.json")); err != nil {
		t.Errorf("an unreadable file is left for a human to look at: %v", err)
	}
}

// Work a restarted agent finds long past its deadline is recorded as done
// then; pruned at once, the notice still listed after the reboot would be
// acted on by the next agent.
func TestWorkLeftLongPastItsDeadlineIsKeptForTheRetention(t *testing.T) {
	dir := t.TempDir()
	f := newPruneTestFlow(t, dir, 24*time.Hour)
	now := time.Now()
	stale := &Job{ID: "notice-stale", Notice: &NoticeRecord{ID: "stale", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE},
		Deadline: now.Add(-time.Hour), Updated: now.Add(-48 * time.Hour)}
	if err := f.state.save(stale); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	waitForState(t, "the stale work recorded as done", func() bool {
		j, ok, err := f.state.load(stale.ID)
		return err == nil && ok && j.Done
	})
	cancel()
	<-done

	f.prune(time.Now())
	if !stateFileExists(t, dir, stale.ID) {
		t.Error("work recorded as done at start was pruned at once: its retention runs from when it was recorded done")
	}
}

// The notices a restarted flow resumes, most recent first: not finished
// ones, not commands, not those the node outlived.
func TestUnfinishedNotices(t *testing.T) {
	dir := t.TempDir()
	st, err := newStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	noticeJob := func(id string, detected, deadline time.Time, done bool) *Job {
		return &Job{ID: "notice-" + id, Notice: &NoticeRecord{ID: id, Detected: detected, Deadline: deadline}, Deadline: deadline, Done: done}
	}
	for _, j := range []*Job{
		noticeJob("older", now.Add(-2*time.Hour), now.Add(time.Hour), false),
		noticeJob("newer", now.Add(-time.Hour), now.Add(72*time.Hour), false),
		noticeJob("finished", now.Add(-time.Minute), now.Add(time.Hour), true),
		noticeJob("outlived", now.Add(-3*time.Hour), now.Add(-time.Hour), false),
		{ID: "command-c", Command: &CommandRecord{ID: "c"}, Deadline: now.Add(time.Hour)},
	} {
		if err := st.save(j); err != nil {
			t.Fatal(err)
		}
	}
	notices, err := UnfinishedNotices(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(notices) != 2 || notices[0].ID != "newer" || notices[1].ID != "older" || !notices[1].Detected.Equal(now.Add(-2*time.Hour)) {
		t.Errorf("unfinished notices %+v, want newer, then older detected %v", notices, now.Add(-2*time.Hour))
	}
}

// A slow state directory holds start and prune, which read it under the
// flow's lock; new work is still taken from the notice watcher and the
// report stream at once (it is saved before it is acted on, by the job).
func TestNewWorkDoesNotWaitForTheStateDirectory(t *testing.T) {
	f := newPruneTestFlow(t, t.TempDir(), time.Hour)
	f.mu.Lock() // as start and prune hold it while they read a slow disk
	defer f.mu.Unlock()
	taken := make(chan struct{})
	go func() {
		now := time.Now()
		f.OnNotice(notice.Notice{ID: "n", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, Detected: now, Deadline: now.Add(time.Minute)})
		f.HandleCheckpoint(context.Background(), &telemetryv1.CheckpointCommand{Id: "c", Deadline: timestamppb.New(now.Add(time.Minute))})
		close(taken)
	}()
	// The bound only stops a hang: taking work is two appends.
	select {
	case <-taken:
	case <-time.After(10 * time.Second):
		t.Fatal("OnNotice and HandleCheckpoint wait for the flow's lock, which a slow state directory holds")
	}
}

// Run resumes an unfinished job as a notice or, without one, as a command:
// a file that holds neither (written by hand, or damaged) would stop the
// agent at every start. It is refused with the file named, and left in
// place (found by FuzzReadState).
func TestStateWithNeitherNoticeNorCommandIsRefused(t *testing.T) {
	dir := t.TempDir()
	st := &stateStore{dir: dir}
	path := filepath.Join(dir, fileName("notice-x"))
	if err := os.WriteFile(path, []byte(`{"version":1,"id":"notice-x"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	j, ok, err := st.load("notice-x")
	if err == nil || ok || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "neither a notice nor a command") {
		t.Fatalf("read %+v, %v, %v; want an error naming %s", j, ok, err, path)
	}
}

// A job's file is named after its id, which the cloud or the scheduler
// chose: distinct ids get distinct files, and a long id still saves
// (found by FuzzFileName).
func TestStateFileNamesAreDistinctAndFit(t *testing.T) {
	for _, ids := range [][2]string{{"notice-\x100", "notice-\u0100"}, {"notice-\xff", "notice-\xfe"}} {
		if a, b := fileName(ids[0]), fileName(ids[1]); a == b {
			t.Errorf("ids %q and %q share the file %q", ids[0], ids[1], a)
		}
	}
	st := &stateStore{dir: t.TempDir()}
	for _, id := range []string{"notice-" + strings.Repeat("é", 200), "notice-" + strings.Repeat("é", 199) + "e"} {
		if err := st.save(&Job{ID: id, Notice: &NoticeRecord{ID: strings.TrimPrefix(id, "notice-")}}); err != nil {
			t.Fatalf("a job with a %d-byte id: %v", len(id), err)
		}
	}
	jobs, errs := st.all()
	if len(jobs) != 2 || len(errs) != 0 {
		t.Fatalf("read back %d jobs, %v; want both", len(jobs), errs)
	}
}

// An agent that dies between writing a job's temporary file and renaming it
// leaves the file behind; nothing reads it, so the next agent removes it at
// start rather than let such files pile up in the hostPath. It removes only
// the names save makes, and not one a second agent on the node may be
// saving with now.
func TestTemporaryFilesOfCutSavesAreRemovedAtStart(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	write := func(name string, mtime time.Time) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(`{"version":1,"id":"notice-x","notice":{"id":"x"}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	write(".tmp-1234567", old)
	removed := []string{".tmp-1234567"}
	write(".tmp-42", time.Now())   // a save in flight
	write(".tmp-notes", old)       // not a name save makes
	write("notes.txt", old)        // a human's
	write(".tmp-1234567.bak", old) // a human's copy
	if err := os.Mkdir(filepath.Join(dir, ".tmp-99"), 0o700); err != nil {
		t.Fatal(err)
	}
	kept := []string{".tmp-42", ".tmp-notes", "notes.txt", ".tmp-1234567.bak", ".tmp-99"}

	f := newPruneTestFlow(t, dir, time.Hour)
	// Finished work past its retention, removed at start after the
	// temporary files: its removal says Run is past them.
	finished := &Job{ID: "command-finished", Command: &CommandRecord{ID: "finished"}, Deadline: old, Done: true, Updated: old.Add(-time.Hour)}
	if err := f.state.save(finished); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitForState(t, "the finished work removed at start", func() bool { return !stateFileExists(t, dir, finished.ID) })

	for _, name := range removed {
		if _, err := os.Lstat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s: kept (%v), want the temporary file of a cut save removed", name, err)
		}
	}
	for _, name := range kept {
		if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s: %v, want it kept", name, err)
		}
	}

	// One an agent that restarted at once left too young to be taken for
	// a cut save goes with the hourly prune.
	f.prune(time.Now().Add(staleTemp + time.Second))
	if _, err := os.Lstat(filepath.Join(dir, ".tmp-42")); !os.IsNotExist(err) {
		t.Errorf(".tmp-42: kept (%v) once older than %v, want it removed while the agent runs", err, staleTemp)
	}
}

// Work whose file cannot be read (damaged, or written by another version)
// is started over when it comes again: asked again, the pods lose nothing,
// where work left undone would lose theirs. The file, which may say which
// pods wrote their checkpoints, is kept for a human, not overwritten by the
// new record.
func TestUnreadableWorkIsStartedOverAndItsFileKept(t *testing.T) {
	dir := t.TempDir()
	f := newPruneTestFlow(t, dir, time.Hour)
	id := "command-gang-cmd-2"
	path := filepath.Join(dir, fileName(id))
	damaged := []byte(`{"version":9,"id":"command-gang-cmd-2","command":{"id":"gang-cmd-2"},"pods":{"ml/p":{"checkpoint":"STATE_DONE"}}}`)
	if err := os.WriteFile(path, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.state.load(id); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "delete the file") {
		t.Fatalf("reading a file another version wrote: %v, want an error naming %s and what to do", err, path)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	f.HandleCheckpoint(ctx, &telemetryv1.CheckpointCommand{Id: "gang-cmd-2", Deadline: timestamppb.New(time.Now().Add(time.Hour))})
	waitForState(t, "the command started over and done", func() bool {
		j, ok, err := f.state.load(id)
		return err == nil && ok && j.Done && f.Running() == 0
	})
	kept, err := os.ReadFile(path + unreadableSuffix)
	if err != nil || string(kept) != string(damaged) {
		t.Errorf("the unreadable file: %q, %v; want it kept as it was beside the new record", kept, err)
	}
	if jobs, errs := f.state.all(); len(jobs) != 1 || len(errs) != 0 {
		t.Errorf("the directory reads as %d jobs, errors %v; want the new record alone", len(jobs), errs)
	}
}

// The cloud calls a notice off and announces it again while the work for it
// is ending, withdrawn: the watcher hands the announcement on once, and
// start, finding the work still running, dropped it, so the notice stayed
// pending with no work for it. The work that ends withdrawn starts it; work
// that ends after acting on the notice does not act on it twice.
func TestNoticeAnnouncedAgainAsItsWithdrawnWorkEndsIsStarted(t *testing.T) {
	f := newPruneTestFlow(t, t.TempDir(), time.Hour)
	queued := func() []*Job {
		f.queueMu.Lock()
		defer f.queueMu.Unlock()
		q := f.queue
		f.queue = nil
		return q
	}
	for _, withdrawn := range []bool{true, false} {
		j := &Job{ID: "notice-x", Notice: &NoticeRecord{ID: "x", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_MAINTENANCE},
			Deadline: time.Now().Add(time.Hour)}
		f.mu.Lock()
		f.running[j.ID] = true // the work for the first announcement, ending
		f.mu.Unlock()
		f.start(context.Background(), j, false)
		if q := queued(); len(q) != 0 {
			t.Fatalf("queued %v while the work ran", q)
		}
		f.ended(j.ID, withdrawn)
		q := queued()
		if withdrawn && (len(q) != 1 || q[0] != j) {
			t.Errorf("work that ended withdrawn queued %v; want the notice announced again", q)
		}
		if !withdrawn && len(q) != 0 {
			t.Errorf("work that ended after acting queued %v; want nothing", q)
		}
		if f.Running() != 0 {
			t.Errorf("%d jobs still running", f.Running())
		}
	}
}

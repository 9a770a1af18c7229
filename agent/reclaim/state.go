package reclaim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Job is one piece of reclaim work the agent persists until it is finished:
// a notice on this node, or a scheduler command to checkpoint some of its
// pods. It is written to the state directory (a hostPath) after every step,
// so an agent that restarts in the middle finishes it.
type Job struct {
	Version int `json:"version"`
	// ID is "notice-<notice id>" or "command-<command id>".
	ID string `json:"id"`

	Notice  *NoticeRecord  `json:"notice,omitempty"`
	Command *CommandRecord `json:"command,omitempty"`

	// Deadline is when the checkpoints must be written (before the safety
	// margin is taken off).
	Deadline time.Time `json:"deadline"`
	Tainted  bool      `json:"tainted,omitempty"`
	// Pods by namespace/name.
	Pods         map[string]*PodRecord `json:"pods,omitempty"`
	Acknowledged bool                  `json:"acknowledged,omitempty"`
	Done         bool                  `json:"done,omitempty"`
	// Withdrawn marks a notice the cloud called off before it was time to
	// evict: the pods were left in place, so the same notice announced
	// again is new work.
	Withdrawn bool `json:"withdrawn,omitempty"`
	// Outlived marks work an earlier agent left unfinished long past its
	// deadline, recorded done at start with the pods left alone: the same
	// notice listed again due later was postponed, and is work to do.
	Outlived bool      `json:"outlived,omitempty"`
	Updated  time.Time `json:"updated"`
}

// NoticeRecord is the notice a job acts on.
type NoticeRecord struct {
	ID       string                    `json:"id"`
	Kind     telemetryv1.ReclaimKind   `json:"kind"`
	Provider telemetryv1.CloudProvider `json:"provider"`
	Action   string                    `json:"action"`
	Detected time.Time                 `json:"detected"`
	Deadline time.Time                 `json:"deadline,omitzero"`
	// Estimated: the cloud named no time; Deadline is the agent's guess
	// from when it detected the notice.
	Estimated bool `json:"estimated,omitempty"`
}

// CommandRecord is the scheduler command a job carries out.
type CommandRecord struct {
	ID           string    `json:"id"`
	Pods         []string  `json:"pods"` // namespace/name
	Reason       string    `json:"reason"`
	OriginNode   string    `json:"originNode,omitempty"`
	OriginNotice string    `json:"originNotice,omitempty"`
	Received     time.Time `json:"received"`
}

// PodRecord is what happened to one pod.
type PodRecord struct {
	UID string `json:"uid"`
	// Checkpoint is the CheckpointStatus state name ("STATE_DONE").
	Checkpoint string `json:"checkpoint,omitempty"`
	Message    string `json:"message,omitempty"`
	Evicted    bool   `json:"evicted,omitempty"`
}

const stateVersion = 1

// stateStore keeps jobs as one JSON file each.
type stateStore struct {
	dir string
	mu  sync.Mutex
}

func newStateStore(dir string) (*stateStore, error) {
	if dir == "" {
		return nil, errors.New("reclaim state directory is empty: set --reclaim-state-dir to a hostPath directory, so a restarted agent finishes what it started")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("reclaim state directory: %w", err)
	}
	return &stateStore{dir: dir}, nil
}

// fileName makes a job id safe as a file name: bytes other than letters,
// digits, '-', '_' and '.' are written as %xx, so that distinct ids have
// distinct names (ASCII ids are named as before; the id comes from the cloud
// or the scheduler, and may hold anything). A name that would pass
// maxFileName, which a file system refuses (a job it could not save would be
// lost to a restart), is cut and ends in a hash of the whole id after a '~',
// which no escaped id holds.
func fileName(id string) string {
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02x", c)
		}
	}
	name := b.String()
	if len(name)+len(".json") > maxFileName {
		sum := sha256.Sum256([]byte(id))
		name = name[:maxFileName-len(".json")-1-2*len(sum)] + "~" + hex.EncodeToString(sum[:])
	}
	return name + ".json"
}

// maxFileName is the longest file name most Linux file systems take
// (NAME_MAX).
const maxFileName = 255

// save writes a job atomically: an agent that dies leaves the old file or
// the new one, never half of one. There is no fsync: the file has to
// outlive the agent process, not the machine, which is the one going away,
// and on a busy node an fsync in the path of a notice can take seconds.
func (s *stateStore) save(j *Job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	j.Version = stateVersion
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	final := filepath.Join(s.dir, fileName(j.ID))
	f, err := os.CreateTemp(s.dir, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("save reclaim state %s: %w", j.ID, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("save reclaim state %s: %w", j.ID, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save reclaim state %s: %w", j.ID, err)
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return fmt.Errorf("save reclaim state %s: %w", j.ID, err)
	}
	return nil
}

// tempPrefix starts the name of the file save writes before it renames it;
// os.CreateTemp ends it in decimal digits.
const tempPrefix = ".tmp-"

// staleTemp is how old a temporary file must be to be taken for one an
// agent that died mid-save left (save has it for the time of one small
// write): a second agent on the node, as a DaemonSet update with a surge
// runs, may be saving with it now.
const staleTemp = time.Minute

// removeStaleTemps removes the temporary files of saves an agent did not
// finish (it died between writing and renaming); nothing else reads them,
// so they would pile up in the hostPath for good. Only names save makes
// are removed: the directory may hold files a human put there.
func (s *stateStore) removeStaleTemps(now time.Time) []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return []error{fmt.Errorf("reclaim state directory: %w", err)}
	}
	var errs []error
	for _, e := range entries {
		digits, ok := strings.CutPrefix(e.Name(), tempPrefix)
		if !ok || digits == "" || strings.Trim(digits, "0123456789") != "" || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil || now.Sub(info.ModTime()) < staleTemp {
			continue
		}
		if err := os.Remove(filepath.Join(s.dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errs
}

// load reads one job; ok is false when there is none.
func (s *stateStore) load(id string) (*Job, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.read(filepath.Join(s.dir, fileName(id)))
}

func (s *stateStore) read(path string) (*Job, bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	var j Job
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, false, fmt.Errorf("reclaim state %s is not valid JSON (%v): delete it if the notice is over", path, err)
	}
	if j.Version != stateVersion || j.ID == "" {
		return nil, false, fmt.Errorf("reclaim state %s: version %d, id %q: this agent reads version %d; finish the work with the penny-agent that wrote it, or delete the file if the notice is over", path, j.Version, j.ID, stateVersion)
	}
	if j.Notice == nil && j.Command == nil {
		// Run would resume it as a command and stop at its missing record.
		return nil, false, fmt.Errorf("reclaim state %s: job %q holds neither a notice nor a command, so there is nothing to resume: delete it", path, j.ID)
	}
	return &j, true, nil
}

// unreadableSuffix is added to the name of a job's file that cannot be
// read when the job comes again: all no longer reads it, and the new record
// does not overwrite it.
const unreadableSuffix = ".unreadable"

// setAside renames the file of job id, which cannot be read, out of the way
// of the record of the work started over, and returns its new path: what
// it held (which pods wrote their checkpoints, for a human to look at) is
// not overwritten.
func (s *stateStore) setAside(id string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	path := filepath.Join(s.dir, fileName(id))
	aside := path + unreadableSuffix
	if err := os.Rename(path, aside); err != nil {
		return "", fmt.Errorf("reclaim state %s cannot be set aside: %w", path, err)
	}
	return aside, nil
}

// all reads every job; files it cannot read are returned as errors and
// left in place for a human to look at.
func (s *stateStore) all() ([]*Job, []error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	paths, err := filepath.Glob(filepath.Join(s.dir, "*.json"))
	if err != nil {
		return nil, []error{err}
	}
	var jobs []*Job
	var errs []error
	for _, p := range paths {
		j, ok, err := s.read(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			jobs = append(jobs, j)
		}
	}
	return jobs, errs
}

// remove deletes a finished job's file.
func (s *stateStore) remove(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := os.Remove(filepath.Join(s.dir, fileName(id)))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// outlived reports whether unfinished work is long past its deadline, so
// that the node outlived it and a restarted agent leaves it (Run).
func outlived(j *Job, now time.Time) bool {
	return !j.Done && !j.Deadline.IsZero() && now.Sub(j.Deadline) > staleAfter
}

// postponed reports whether the cloud lists the notice of old again with a
// time of its own later than old's: a node that outlived its maintenance
// may still see the notice listed, due when it was (left alone), while a
// guess made from when this agent detected it (Estimated) is always later
// and says nothing.
func postponed(old, j *Job) bool {
	return j.Notice != nil && !j.Notice.Estimated && !j.Notice.Deadline.IsZero() && j.Deadline.After(old.Deadline)
}

// UnfinishedNotices returns the notices whose work an earlier agent left
// unfinished in the state directory dir and a flow started now resumes,
// most recently detected first. The watcher is given them
// (notice.Watcher.Resume) so that it reports each as detected when it was,
// and the cloud's source where the cloud names no event (GCE's upcoming
// maintenance), so that it gives the event it still announces the id the
// work was recorded under. Unreadable files are left out (Run logs them).
func UnfinishedNotices(dir string, now time.Time) ([]NoticeRecord, error) {
	st, err := newStateStore(dir)
	if err != nil {
		return nil, err
	}
	jobs, _ := st.all()
	var notices []NoticeRecord
	for _, j := range jobs {
		if j.Notice != nil && !j.Done && !outlived(j, now) {
			notices = append(notices, *j.Notice)
		}
	}
	sort.SliceStable(notices, func(a, b int) bool { return notices[a].Detected.After(notices[b].Detected) })
	return notices, nil
}

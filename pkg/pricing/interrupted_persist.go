package pricing

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"

	"github.com/pennysched/penny/pkg/configmaplines"
)

// InterruptedKey is the ConfigMap key that holds the saved runs: one line
// per workload, the one a reclaim hit longest ago first, "<workload>
// <longest run> <last reclaim>", e.g.
// "gang:label:ml/llm 14h50m0s 2026-11-30T08:00:00Z" (lines without the
// time, as saved before Penny recorded it, count as the oldest).
const InterruptedKey = "runs"

// PersistOptions say where Interrupted keeps its copy. The ConfigMap
// belongs in Penny's own namespace: tenants must not be able to write it
// (clearing it would let a workload back onto Spot; filling it would keep
// others' workloads off).
type PersistOptions struct {
	Client          kubernetes.Interface
	Namespace, Name string
	// MinInterval is the least time between two writes (default 5s): runs
	// recorded meanwhile go in the next one.
	MinInterval time.Duration
	// Resync is how often the copy is read and merged even when nothing
	// was recorded here (default 1m), for replicas that share it.
	Resync time.Duration
	Log    logr.Logger
}

func (o *PersistOptions) defaults() {
	if o.MinInterval <= 0 {
		o.MinInterval = 5 * time.Second
	}
	if o.Resync <= 0 {
		o.Resync = time.Minute
	}
}

func (o *PersistOptions) key() configmaplines.Key {
	return configmaplines.Key{Client: o.Client, Namespace: o.Namespace, Name: o.Name, Key: InterruptedKey}
}

// Load merges the saved copy into m. A missing ConfigMap is an empty copy;
// malformed lines are skipped and reported together in the error, the rest
// are merged.
func (m *Interrupted) Load(ctx context.Context, o PersistOptions) error {
	text, err := o.key().Read(ctx)
	if err != nil {
		return err
	}
	runs, err := ParseInterruptedRuns(text, o.key().String())
	m.Merge(runs)
	return err
}

// Save merges the saved copy into m and writes m back when the copy lacks
// something m knows. Writes are conditional on the copy read, so replicas
// that save at once do not erase each other's runs: the loser reads again.
func (m *Interrupted) Save(ctx context.Context, o PersistOptions) error {
	k := o.key()
	return m.saved(k.Update(ctx, func(text string) string {
		runs, err := ParseInterruptedRuns(text, k.String())
		if err != nil {
			o.Log.Error(err, "Saved interrupted runs: lines skipped")
		}
		m.Merge(runs)
		return FormatInterruptedRuns(m.Runs())
	}))
}

func (m *Interrupted) saved(err error) error {
	result := "success"
	if err != nil {
		result = "error"
	}
	metricInterruptedSaves.WithLabelValues(result).Inc()
	return err
}

// Persist keeps the saved copy up to date until ctx ends: it writes soon
// after each recorded run and merges the copy every Resync. It does not
// load first (Load) nor write on the way out: the caller does both, so that
// scheduling starts with the copy merged and the last runs are not lost to
// a shutdown.
func (m *Interrupted) Persist(ctx context.Context, o PersistOptions) {
	o.defaults()
	resync := time.NewTicker(o.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.changed:
		case <-resync.C:
		}
		if err := m.Save(ctx, o); err != nil && ctx.Err() == nil {
			o.Log.Error(err, "Saving interrupted runs failed; retrying at the next run or resync")
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(o.MinInterval):
		}
	}
}

// FormatInterruptedRuns writes runs as saved, oldest first, each run to the
// second, leaving out the oldest past the size limit.
func FormatInterruptedRuns(runs []InterruptedRun) string {
	lines := make([]string, 0, len(runs))
	size := 0
	for i := len(runs) - 1; i >= 0; i-- {
		// To the second: the rule needs none finer, and nanoseconds (how
		// the reclaim coordinator measures a run) took nine more bytes a
		// line (with 63-character namespaces the copy held 6,274 Job
		// workloads, not 6,727). Never 0s, which would not load again.
		l := runs[i].Key + " " + max(runs[i].Ran.Round(time.Second), time.Second).String()
		if !runs[i].At.IsZero() {
			l += " " + runs[i].At.UTC().Format(time.RFC3339)
		}
		// Past the limit the oldest workloads are left out of the copy.
		if size+len(l)+1 > configmaplines.MaxBytes {
			break
		}
		size += len(l) + 1
		lines = append(lines, l)
	}
	var b strings.Builder
	b.Grow(size)
	for i := len(lines) - 1; i >= 0; i-- {
		b.WriteString(lines[i])
		b.WriteByte('\n')
	}
	return b.String()
}

// ParseInterruptedRuns reads saved runs. Lines that do not parse are
// skipped; the error names each with the fix, and the runs returned are the
// good ones.
func ParseInterruptedRuns(data, source string) ([]InterruptedRun, error) {
	return configmaplines.Parse(data, source, parseInterruptedLine)
}

func parseInterruptedLine(line string) (InterruptedRun, error) {
	const want = `want "<workload> <run> <last reclaim>", the workload as gang:<label|podgroup>:<namespace>/<name>, owner:<namespace>/<uid> or pod:<namespace>/<name>, the run as a Go duration, the time in RFC 3339 (may be left out), e.g. "gang:label:ml/llm 14h50m0s 2026-11-30T08:00:00Z"`
	f := strings.Fields(line)
	if len(f) < 2 || len(f) > 3 {
		return InterruptedRun{}, errors.New(want)
	}
	kind, ref, _ := strings.Cut(f[0], ":")
	if kind != "gang" && kind != "owner" && kind != "pod" || !strings.Contains(ref, "/") {
		return InterruptedRun{}, fmt.Errorf("workload %q: %s", f[0], want)
	}
	r := InterruptedRun{Key: f[0]}
	var err error
	if r.Ran, err = time.ParseDuration(f[1]); err != nil || r.Ran <= 0 {
		return InterruptedRun{}, fmt.Errorf("run %q is not a positive Go duration: %s", f[1], want)
	}
	if len(f) == 3 {
		if r.At, err = time.Parse(time.RFC3339, f[2]); err != nil {
			return InterruptedRun{}, fmt.Errorf("last reclaim %q is not an RFC 3339 time: %s", f[2], want)
		}
	}
	return r, nil
}

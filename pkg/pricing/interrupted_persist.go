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

// PersistOptions say where Interrupted and RiskModel keep their copies,
// each under its own key (InterruptedKey, RiskKey). The ConfigMap
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
	// was recorded here (default 1m; DefaultRiskResync for RiskModel),
	// for replicas that share it.
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
	metricInterruptedSaves.WithLabelValues(resultOf(err)).Inc()
	return err
}

// Persist keeps the saved copy up to date until ctx ends: it writes soon
// after each recorded run and merges the copy every Resync. It does not
// load first (Load) nor write on the way out: the caller does both, so that
// scheduling starts with the copy merged and the last runs are not lost to
// a shutdown.
func (m *Interrupted) Persist(ctx context.Context, o PersistOptions) {
	o.defaults()
	persist(ctx, o, m.changed, func(ctx context.Context) error { return m.Save(ctx, o) }, "interrupted runs")
}

// persist calls save soon after each signal on changed, at most once every
// o.MinInterval, and every o.Resync, until ctx ends.
func persist(ctx context.Context, o PersistOptions, changed <-chan struct{}, save func(context.Context) error, what string) {
	resync := time.NewTicker(o.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-resync.C:
		}
		if err := save(ctx); err != nil && ctx.Err() == nil {
			o.Log.Error(err, "Saving "+what+" failed; retrying at the next change or resync")
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(o.MinInterval):
		}
	}
}

// FormatInterruptedRuns writes runs (oldest first, as Runs lists them) as
// saved, each run to the second. Past the size limit, workloads are left out
// of the copy as Interrupted forgets them past its limit: the oldest of the
// namespace that holds the most first, so that one tenant's flood does not
// cost others their records at the next restart.
func FormatInterruptedRuns(runs []InterruptedRun) string {
	lines := make([]string, len(runs))
	namespaces := make([]string, len(runs))
	for i, r := range runs {
		// To the second: the rule needs none finer, and nanoseconds (how
		// the reclaim coordinator measures a run) took nine more bytes a
		// line (with 63-character namespaces the copy held 6,274 Job
		// workloads, not 6,727). Never 0s, which would not load again.
		l := r.Key + " " + max(r.Ran.Round(time.Second), time.Second).String()
		if !r.At.IsZero() {
			l += " " + r.At.UTC().Format(time.RFC3339)
		}
		lines[i], namespaces[i] = l, workloadNamespace(r.Key)
	}
	drop := shed(namespaces, func(i int) int { return len(lines[i]) + 1 }, configmaplines.MaxBytes)
	var b strings.Builder
	for i, l := range lines {
		if !drop[i] {
			b.WriteString(l)
			b.WriteByte('\n')
		}
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
		if r.At, err = configmaplines.ParseTime(f[2]); err != nil {
			return InterruptedRun{}, fmt.Errorf("last reclaim %q is not an RFC 3339 time: %s", f[2], want)
		}
	}
	return r, nil
}

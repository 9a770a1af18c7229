package pricing

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pennysched/penny/pkg/configmaplines"
)

// RiskKey is the ConfigMap key, next to InterruptedKey in the same
// ConfigMap, that holds the risk model's evidence: one line per Spot pool,
// "<instance type>/<zone>/spot <reclaims> <node-hours> <as of> [<node>@<until> ...]",
// the reclaims and node-hours observed discounted by the half-life to the
// pool's last observation, then the nodes whose reclaim they count, each
// with when ReclaimMemory ends for it, e.g.
// "p4d.24xlarge/us-east-1a/spot 2.5 1460 2026-11-30T08:00:00Z ip-10-0-1-5.ec2.internal@2026-11-30T09:00:00Z".
const RiskKey = "reclaim-risk"

// RiskMaxBytes bounds the saved evidence. It shares its ConfigMap with the
// interrupted runs, which may take configmaplines.MaxBytes, and the API
// server holds a ConfigMap's data to 1 MiB: 64 KiB is some 600 pools.
const RiskMaxBytes = 64 << 10

// DefaultRiskResync is how often Persist writes the evidence when no
// reclaim asked for it sooner. Exposure changes it every minute; writing
// each minute, on every replica, would buy back only minutes of node-hours
// after a crash, against a 14-day half-life.
const DefaultRiskResync = 10 * time.Minute

// forgetBelow is how little evidence is worth keeping: a pool whose
// reclaims and node-hours (in PriorNodeHours) have both decayed below it
// is forgotten, so that pools no node belongs to any more do not stay in
// the model and its copy for good. Below it the evidence moves the rate by
// under 0.4% even in the safest bucket, whose prior weighs 0.025 reclaims;
// one reclaim decays to it in 13 half-lives.
const forgetBelow = 1e-4

// SavedPool is one Spot pool's evidence as saved: the reclaims and
// node-hours observed, discounted to At, the pool's last observation, and
// the nodes counted among the reclaims, each until when a report of it
// again is the same reclaim.
type SavedPool struct {
	Pool                Pool
	Reclaims, NodeHours float64
	At                  time.Time
	Counted             map[string]time.Time
}

func (o *PersistOptions) riskKey() configmaplines.Key {
	return configmaplines.Key{Client: o.Client, Namespace: o.Namespace, Name: o.Name, Key: RiskKey}
}

// Saved lists the Spot pools' evidence, by pool, leaving out pools whose
// evidence has decayed to nearly nothing.
func (m *RiskModel) Saved() []SavedPool {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	out := make([]SavedPool, 0, len(m.pools))
	for pool, e := range m.pools {
		if pool.Capacity != Spot || e.at.IsZero() || m.faded(e, now) {
			continue
		}
		s := SavedPool{Pool: pool, Reclaims: e.reclaims, NodeHours: e.nodeHours, At: e.at}
		for node, until := range e.counted {
			if now.Before(until) {
				if s.Counted == nil {
					s.Counted = map[string]time.Time{}
				}
				s.Counted[node] = until
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pool.String() < out[j].Pool.String() })
	return out
}

// faded is whether e has decayed below forgetBelow by now. m.mu is held.
func (m *RiskModel) faded(e *evidence, now time.Time) bool {
	r, h := m.decayed(e, now)
	return r < forgetBelow && h < forgetBelow*m.cfg.PriorNodeHours
}

// forgetFaded drops the pools whose evidence has faded: their rates are
// their priors but for a rounding. Pools whose nodes are gone (scaled to
// zero, or of a type the catalog no longer lists) get there in months.
func (m *RiskModel) forgetFaded() {
	var forgot []Pool
	defer func() { m.notify(forgot...) }()
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	for pool, e := range m.pools {
		if m.faded(e, now) {
			delete(m.pools, pool)
			forgot = append(forgot, pool)
		}
	}
}

// Merge adds evidence saved elsewhere: a copy saved before a restart, or
// by another replica. Every replica runs a reclaim coordinator that hears
// every agent and counts the nodes from its own informer, so replicas hold
// the same evidence, each as much of it as it saw; adding a copy would
// count each reclaim once per replica and once more at every resync.
// Instead each pool keeps, both discounted to the later of the two times,
// the larger of the reclaims and the larger of the node-hours: merging is
// idempotent, takes in what this replica missed while it was down, and
// never counts anything twice. A reclaim that one replica saw and another
// did not, while that one saw a different one, counts once, not twice.
// The nodes the copy counted are taken in too, so that neither replica nor
// a restarted one counts one of them again when its notice comes in (later).
func (m *RiskModel) Merge(saved []SavedPool) {
	var merged []Pool
	defer func() { m.notify(merged...) }()
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	for _, s := range saved {
		if s.Pool.Capacity != Spot || !validEvidence(s.Reclaims) || !validEvidence(s.NodeHours) || s.At.IsZero() {
			continue
		}
		// As decayTo: a copy whose writer's clock ran ahead would not
		// decay until that time.
		in := &evidence{reclaims: s.Reclaims, nodeHours: s.NodeHours, at: s.At}
		if in.at.After(now) {
			in.at = now
		}
		e := m.ev(s.Pool)
		at := in.at
		if e.at.After(at) {
			at = e.at
		}
		r, h := m.decayed(e, at)
		ir, ih := m.decayed(in, at)
		e.reclaims, e.nodeHours, e.at = max(r, ir), max(h, ih), at
		for node, until := range s.Counted {
			if node == "" || !now.Before(until) {
				continue
			}
			// A writer whose clock ran ahead would have a node stay
			// counted for longer than ReclaimMemory.
			e.markCounted(node, minTime(until, now.Add(ReclaimMemory)))
		}
		m.publish(s.Pool)
		merged = append(merged, s.Pool)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// validEvidence is whether x can be evidence: NaN or +Inf would stay in the
// model for good (ObserveExposure).
func validEvidence(x float64) bool { return x >= 0 && !math.IsInf(x, 1) }

// Load merges the saved evidence into m. A missing ConfigMap is an empty
// copy; malformed lines are skipped and reported together in the error, the
// rest are merged.
func (m *RiskModel) Load(ctx context.Context, o PersistOptions) error {
	k := o.riskKey()
	text, err := k.Read(ctx)
	if err != nil {
		return err
	}
	pools, err := ParseSavedPools(text, k.String())
	m.Merge(pools)
	return err
}

// Save merges the saved copy into m, forgets what has faded, and writes m
// back when the copy differs. Writes are conditional on the copy read, so
// replicas that save at once do not erase each other's evidence.
func (m *RiskModel) Save(ctx context.Context, o PersistOptions) error {
	k := o.riskKey()
	err := k.Update(ctx, func(text string) string {
		pools, err := ParseSavedPools(text, k.String())
		if err != nil {
			o.Log.Error(err, "Saved reclaim risk evidence: lines skipped")
		}
		m.Merge(pools)
		m.forgetFaded()
		return FormatSavedPools(m.Saved())
	})
	metricRiskSaves.WithLabelValues(resultOf(err)).Inc()
	return err
}

// Persist keeps the saved evidence up to date until ctx ends: it writes
// soon after each reclaim and every Resync (DefaultRiskResync unless set),
// merging what other replicas saved. Like Interrupted.Persist it neither
// loads first nor writes on the way out: the caller does both.
func (m *RiskModel) Persist(ctx context.Context, o PersistOptions) {
	if o.Resync <= 0 {
		o.Resync = DefaultRiskResync
	}
	o.defaults()
	persist(ctx, o, m.changed, func(ctx context.Context) error { return m.Save(ctx, o) }, "reclaim risk evidence")
}

// FormatSavedPools writes pools as saved, by pool, the evidence exact.
// Past RiskMaxBytes the pools observed longest ago are left out.
func FormatSavedPools(pools []SavedPool) string {
	lines := make([]string, len(pools))
	byAge := make([]int, len(pools))
	for i, p := range pools {
		lines[i] = p.Pool.String() + " " + strconv.FormatFloat(p.Reclaims, 'g', -1, 64) + " " +
			strconv.FormatFloat(p.NodeHours, 'g', -1, 64) + " " + p.At.UTC().Format(time.RFC3339Nano)
		nodes := slices.Sorted(maps.Keys(p.Counted))
		for _, node := range nodes {
			lines[i] += " " + node + "@" + p.Counted[node].UTC().Format(time.RFC3339Nano)
		}
		byAge[i] = i
	}
	sort.SliceStable(byAge, func(a, b int) bool { return pools[byAge[a]].At.After(pools[byAge[b]].At) })
	keep := make([]bool, len(pools))
	size := 0
	for _, i := range byAge {
		if size+len(lines[i])+1 > RiskMaxBytes {
			break
		}
		size += len(lines[i]) + 1
		keep[i] = true
	}
	var b strings.Builder
	b.Grow(size)
	for i, l := range lines {
		if keep[i] {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// ParseSavedPools reads saved evidence. Lines that do not parse are
// skipped; the error names each with the fix, and the pools returned are
// the good ones. A pool the catalog no longer lists is read like any other:
// no node asks for its rate, and its evidence fades until it is forgotten.
func ParseSavedPools(data, source string) ([]SavedPool, error) {
	return configmaplines.Parse(data, source, parseSavedPool)
}

func parseSavedPool(line string) (SavedPool, error) {
	const want = `want "<instance type>/<zone>/spot <reclaims> <node-hours> <as of> [<node>@<until> ...]", the reclaims and node-hours numbers >= 0, the times in RFC 3339, e.g. "p4d.24xlarge/us-east-1a/spot 2.5 1460 2026-11-30T08:00:00Z ip-10-0-1-5.ec2.internal@2026-11-30T09:00:00Z"`
	f := strings.Fields(line)
	if len(f) < 4 {
		return SavedPool{}, errors.New(want)
	}
	parts := strings.Split(f[0], "/")
	if len(parts) != 3 || CapacityType(parts[2]) != Spot {
		return SavedPool{}, fmt.Errorf("pool %q is not <instance type>/<zone>/spot (only Spot pools are reclaimed): %s", f[0], want)
	}
	s := SavedPool{Pool: Pool{InstanceType: parts[0], Zone: parts[1], Capacity: Spot}}
	var err error
	for _, v := range []struct {
		name string
		text string
		to   *float64
	}{{"reclaims", f[1], &s.Reclaims}, {"node-hours", f[2], &s.NodeHours}} {
		if *v.to, err = strconv.ParseFloat(v.text, 64); err != nil || !validEvidence(*v.to) {
			return SavedPool{}, fmt.Errorf("%s %q is not a finite number >= 0: %s", v.name, v.text, want)
		}
	}
	if s.At, err = configmaplines.ParseTime(f[3]); err != nil {
		return SavedPool{}, fmt.Errorf("as of %q is not an RFC 3339 time: %s", f[3], want)
	}
	for _, c := range f[4:] {
		at := strings.LastIndexByte(c, '@')
		if at <= 0 {
			return SavedPool{}, fmt.Errorf("counted node %q is not <node>@<until>: %s", c, want)
		}
		until, err := configmaplines.ParseTime(c[at+1:])
		if err != nil {
			return SavedPool{}, fmt.Errorf("counted node %q: %q is not an RFC 3339 time: %s", c, c[at+1:], want)
		}
		if s.Counted == nil {
			s.Counted = map[string]time.Time{}
		}
		s.Counted[c[:at]] = until
	}
	return s, nil
}

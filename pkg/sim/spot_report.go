package sim

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/pennysched/penny/plugins/spotrisk"
)

// SpotReport is the output of `penny sim replay --scenario`: one elastic
// replay per policy and a summary keyed by policy.
type SpotReport struct {
	Kind     string                 `json:"kind"`
	Command  string                 `json:"command,omitempty"`
	Scenario string                 `json:"scenario"`
	Pods     string                 `json:"pods_file"`
	Seed     uint64                 `json:"seed"`
	Machine  Machine                `json:"machine"`
	Runs     []*ElasticResult       `json:"runs"`
	Summary  map[string]SpotSummary `json:"summary"`
	// Bound is the least any policy could pay (BillLowerBound).
	Bound *BillBound `json:"bound"`
}

// SpotSummary is one policy's headline numbers; the ratios compare with the
// default policy of the same run when it is there.
type SpotSummary struct {
	BillUSD          float64 `json:"bill_usd"`
	BillVsDefault    float64 `json:"bill_vs_default,omitempty"`
	BillVsBound      float64 `json:"bill_vs_bound,omitempty"`
	AllocatedUSD     float64 `json:"allocated_usd"`
	IdleUSD          float64 `json:"idle_usd"`
	UsefulGPUHours   float64 `json:"useful_gpu_hours"`
	LostGPUHours     float64 `json:"lost_gpu_hours"`
	LostPctOfUseful  float64 `json:"lost_pct_of_useful"`
	NeverOnSpot      int     `json:"never_on_spot"`
	Reclaims         int     `json:"reclaims"`
	ServiceDowntimeH float64 `json:"service_downtime_hours"`
	QueueDelayP50S   float64 `json:"queue_delay_p50_s"`
	QueueDelayP95S   float64 `json:"queue_delay_p95_s"`
	// QueueDelayP95ByClassS is the p95 per Spot policy
	// (ElasticResult.QueueDelayByClass).
	QueueDelayP95ByClassS map[string]float64 `json:"queue_delay_p95_by_class_s"`
	// FirstStartDelayP95S is the p95 of the waits before pods first ran
	// (ElasticResult.FirstStartDelay).
	FirstStartDelayP95S float64 `json:"first_start_delay_p95_s"`
	NeverScheduled      int     `json:"never_scheduled"`
	// Unfinished counts pods that ran but had not finished when a stalled
	// replay ended (ElasticResult.Stalled).
	Unfinished int `json:"unfinished"`
	// GangWaitGPUHours is what gang members held waiting for the rest of
	// their gang (ElasticResult.GangWaitGPUHours).
	GangWaitGPUHours float64 `json:"gang_wait_gpu_hours"`
}

// RunSpotReplays replays the trace once per policy on the scenario's fleet,
// parallel policies at a time; progress, when not nil, gets a line every
// ProgressEvery of a replay.
func RunSpotReplays(ctx context.Context, sc *SpotScenario, tr *Trace, policies []*Policy, seed uint64, cfg []byte, progress io.Writer, parallel int) (*SpotReport, error) {
	rep := &SpotReport{Kind: "spot-replay", Seed: seed, Summary: map[string]SpotSummary{}}
	classArgs, err := pennyClassArgs(cfg)
	if err != nil {
		return nil, err
	}
	bound, err := BillLowerBound(sc, tr, seed, classArgs)
	if err != nil {
		return nil, err
	}
	rep.Bound = bound
	parallel = min(max(parallel, 1), max(len(policies), 1))
	if progress != nil && parallel > 1 {
		progress = &lockedWriter{w: progress}
	}
	// One replay keeps the engine's own default.
	engineParallelism := 0
	if parallel > 1 {
		engineParallelism = cpusEach(parallel)
	}
	rep.Runs, err = runAll(ctx, len(policies), parallel, func(ctx context.Context, i int) (*ElasticResult, error) {
		p := policies[i]
		res, err := ElasticReplay(ctx, ElasticOptions{Scenario: sc, Trace: tr, Policy: p, Seed: seed, SchedulerConfig: cfg, Progress: progress,
			Parallelism: engineParallelism})
		if err != nil {
			return nil, fmt.Errorf("policy %s: %w", p.Name, err)
		}
		return res, nil
	})
	if err != nil {
		return nil, err
	}
	var def *ElasticResult
	for _, r := range rep.Runs {
		if r.Policy == "default" {
			def = r
		}
	}
	for _, r := range rep.Runs {
		s := SpotSummary{BillUSD: r.BillUSD, AllocatedUSD: r.AllocatedUSD, IdleUSD: r.IdleUSD,
			UsefulGPUHours: round2(r.UsefulGPUHours), LostGPUHours: round2(r.LostGPUHours), NeverOnSpot: r.NeverOnSpot,
			Reclaims: r.Reclaims, ServiceDowntimeH: round2(r.ServiceDowntimeHours),
			QueueDelayP50S: r.QueueDelayP50Seconds, QueueDelayP95S: r.QueueDelayP95Seconds, NeverScheduled: r.NeverScheduled, Unfinished: r.Unfinished,
			GangWaitGPUHours: round2(r.GangWaitGPUHours), QueueDelayP95ByClassS: map[string]float64{},
			FirstStartDelayP95S: r.FirstStartDelay.P95}
		for c, d := range r.QueueDelayByClass {
			s.QueueDelayP95ByClassS[c] = d.P95
		}
		if r.UsefulGPUHours > 0 {
			s.LostPctOfUseful = round2(100 * r.LostGPUHours / r.UsefulGPUHours)
		}
		if def != nil && def.BillUSD > 0 {
			s.BillVsDefault = round3(r.BillUSD / def.BillUSD)
		}
		if bound.BillUSD > 0 {
			s.BillVsBound = round3(r.BillUSD / bound.BillUSD)
		}
		rep.Summary[r.Policy] = s
	}
	return rep, nil
}

// StallCauses is what makes a replay stall (ElasticResult.Stalled), for the
// report and penny's warning.
const StallCauses = "a job that restarts forever, gangs placed in part that wait for the room each other holds, or pods no pool can take"

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }

// Markdown is the report as a table, with the command that made it.
func (rep *SpotReport) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Spot cost/risk on an elastic fleet\n\n")
	fmt.Fprintf(&b, "Scenario `%s`, trace `%s`, seed %d. Machine: %d CPUs (%s), %s.\n\n", rep.Scenario, rep.Pods, rep.Seed, rep.Machine.CPUs, rep.Machine.Model, rep.Machine.Go)
	if rep.Command != "" {
		fmt.Fprintf(&b, "Command: `%s` (`make bench-spot` for the reference scenario).\n\n", rep.Command)
	}
	b.WriteString("| policy | bill (USD) | vs default | vs bound | allocated | idle | useful GPU-h | lost GPU-h | lost % | never-class pods on Spot | reclaims | service downtime (h) | queue p50 (s) | queue p95 (s) | never scheduled | wall (s) |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rep.Runs {
		s := rep.Summary[r.Policy]
		vs := "-"
		if s.BillVsDefault > 0 {
			vs = fmt.Sprintf("%.3f", s.BillVsDefault)
		}
		vb := "-"
		if s.BillVsBound > 0 {
			vb = fmt.Sprintf("%.2f", s.BillVsBound)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %.0f | %.0f | %.0f | %.1f | %.2f | %d | %d | %.1f | %.0f | %.0f | %d | %.1f |\n",
			r.Policy, s.BillUSD, vs, vb, s.AllocatedUSD, s.IdleUSD, s.UsefulGPUHours, s.LostGPUHours, s.LostPctOfUseful,
			s.NeverOnSpot, s.Reclaims, s.ServiceDowntimeH, s.QueueDelayP50S, s.QueueDelayP95S, s.NeverScheduled, r.WallSeconds)
	}
	if bd := rep.Bound; bd != nil {
		fmt.Fprintf(&b, "\nLower bound on any policy's bill (docs/spot.md#lower-bound): $%.0f = the pools' min nodes $%.0f + never-class pods on "+
			"the cheapest whole non-Spot nodes at every moment $%.0f + the other pods at the lowest price per GPU, vCPU or GiB $%.0f, over %.0f h", bd.BillUSD, bd.FixedUSD, bd.NeverUSD, bd.RestUSD, bd.HorizonHours)
		if bd.LeftOut > 0 {
			fmt.Fprintf(&b, " (%d pods left out: withdrawn by the trace, or too large for every pool they may use)", bd.LeftOut)
		}
		b.WriteString(".\n")
	}
	for _, r := range rep.Runs {
		if !r.Stalled && r.NeverScheduled > 0 {
			fmt.Fprintf(&b, "\n%s: %d pods were never scheduled (%d fit no pool, %d belong to gangs larger than any pool that runs their members): its bill pays for less work than a run that placed them (useful GPU-h).\n",
				r.Policy, r.NeverScheduled, r.FitsNoPool, r.GangTooLarge)
		}
		if r.GangWaitGPUHours >= 0.05 {
			fmt.Fprintf(&b, "\n%s: gang members held %.1f GPU-hours waiting for the rest of their gang: placed one by one, a job's first workers "+
				"wait on their GPUs until its last one runs (billed, neither useful nor lost; %.2f%% of its allocated GPU-hours).\n",
				r.Policy, r.GangWaitGPUHours, 100*r.GangWaitGPUHours/max(r.AllocatedGPUHours, 1e-9))
		}
		if r.Returns > 0 {
			fmt.Fprintf(&b, "\n%s: moved %d workloads (%d pods) that had fallen back to on-demand back to Spot once it had room (returnToSpot; docs/spot.md), "+
				"where they then ran %.1f GPU-hours.\n", r.Policy, r.Returns, r.ReturnedPods, r.ReturnedGPUHours)
		}
		if r.Stalled {
			fmt.Fprintf(&b, "\n%s: the replay ended early, at %.0f h of trace time, with %d pods that had run and not finished and %d never scheduled: "+
				"nothing could make progress (%s; docs/spot.md).\n",
				r.Policy, r.HorizonHours, r.Unfinished, r.NeverScheduled, StallCauses)
		}
	}
	b.WriteString("\nBill by capacity type (USD):\n\n| policy | on-demand | reserved | spot |\n|---|---:|---:|---:|\n")
	for _, r := range rep.Runs {
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f |\n", r.Policy, r.BillByCapacity["on-demand"], r.BillByCapacity["reserved"], r.BillByCapacity["spot"])
	}
	rep.poolTable(&b)
	rep.namespaceTable(&b)
	rep.classTable(&b, "GPU-hours pods held by their Spot policy (Penny's reading, the same pods in every run; a gang member's wait for its gang included), on on-demand / reserved / Spot nodes", "---:",
		func(r *ElasticResult, c string) string {
			h := r.GPUHoursByClass[c]
			return fmt.Sprintf("%.0f / %.0f / %.0f", h["on-demand"], h["reserved"], h["spot"])
		})
	rep.classTable(&b, "Lost GPU-hours by the pod's Spot policy, by the pool they were lost on (largest first)", "---",
		func(r *ElasticResult, c string) string { return lostByPool(r.LostGPUHoursByClass[c]) })
	rep.classTable(&b, "Queueing delay by the pod's Spot policy, p50 / p95 / max (s; pods that ran; - where the trace has none)", "---:",
		func(r *ElasticResult, c string) string {
			d, ok := r.QueueDelayByClass[c]
			if !ok {
				return "-"
			}
			return fmt.Sprintf("%.0f / %.0f / %.0f", d.P50, d.P95, d.Max)
		})
	// The queue delays above count the waits after reclaims too; these say
	// how much of the tail those are.
	firsts := make([]string, len(rep.Runs))
	for k, r := range rep.Runs {
		d := r.FirstStartDelay
		firsts[k] = fmt.Sprintf("%s %.0f / %.0f / %.0f", r.Policy, d.P50, d.P95, d.Max)
	}
	fmt.Fprintf(&b, "\nQueueing delay before each pod first ran (the waits after reclaims left out), p50 / p95 / max (s): %s.\n", strings.Join(firsts, ", "))
	return b.String()
}

// poolTable writes a row per policy and pool it used, dearest first: what
// the pool cost, how much of that was idle, and how much of its GPU time
// pods held, which tells idle GPUs from the CPU and memory of busy GPU nodes.
func (rep *SpotReport) poolTable(b *strings.Builder) {
	b.WriteString("\nBy pool (idle: the bill less what pods' requests cost; GPUs held: the share of the nodes' GPU-hours that running pods held; " +
		"at max: hours with the pool's max nodes up or on their way, when the scenario's limit, not the policy, decided what waited):\n\n" +
		"| policy | pool | node-hours | bill (USD) | idle (USD) | GPUs held | at max (h) |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, r := range rep.Runs {
		for _, name := range largestFirst(r.BillByPool, func(bill float64) bool { return bill > 0 }) {
			held := "-"
			if offered := r.GPUHoursByPool[name]; offered > 0 {
				held = fmt.Sprintf("%.0f%%", 100*r.HeldGPUHoursByPool[name]/offered)
			}
			fmt.Fprintf(b, "| %s | %s | %.0f | %.0f | %.0f | %s | %.0f |\n", r.Policy, name, r.NodeHoursByPool[name], r.BillByPool[name],
				r.BillByPool[name]-r.AllocatedByPool[name], held, r.HoursAtMaxByPool[name])
		}
	}
}

// namespaceTable writes who spent what, a row per namespace (a Philly
// trace's virtual cluster), dearest first, when the trace has more than one.
func (rep *SpotReport) namespaceTable(b *strings.Builder) {
	names := map[string]float64{}
	for _, r := range rep.Runs {
		for ns, c := range r.ByNamespace {
			names[ns] = max(names[ns], c.AllocatedUSD)
		}
	}
	if len(names) < 2 {
		return
	}
	order := largestFirst(names, func(float64) bool { return true })
	b.WriteString("\nBy namespace (allocated USD / lost GPU-hours; the bill's idle part is no namespace's):\n\n| namespace | useful GPU-h |")
	for _, r := range rep.Runs {
		fmt.Fprintf(b, " %s |", r.Policy)
	}
	b.WriteString("\n|---|---:|" + strings.Repeat("---:|", len(rep.Runs)) + "\n")
	for _, ns := range order {
		var useful float64
		for _, r := range rep.Runs {
			if c := r.ByNamespace[ns]; c != nil {
				useful = max(useful, c.UsefulGPUHours)
			}
		}
		fmt.Fprintf(b, "| %s | %.0f |", ns, useful)
		for _, r := range rep.Runs {
			c := r.ByNamespace[ns]
			if c == nil {
				c = &NamespaceCost{}
			}
			fmt.Fprintf(b, " %.0f / %.1f |", c.AllocatedUSD, c.LostGPUHours)
		}
		b.WriteString("\n")
	}
}

// classTable writes a table with a row per run and a column per Spot
// policy.
func (rep *SpotReport) classTable(b *strings.Builder, title, align string, cell func(r *ElasticResult, class string) string) {
	classes := []spotrisk.Policy{spotrisk.Never, spotrisk.Avoid, spotrisk.Allow, spotrisk.Prefer, spotrisk.Only}
	fmt.Fprintf(b, "\n%s:\n\n| policy |", title)
	for _, c := range classes {
		fmt.Fprintf(b, " %s |", c)
	}
	b.WriteString("\n|---|" + strings.Repeat(align+"|", len(classes)) + "\n")
	for _, r := range rep.Runs {
		fmt.Fprintf(b, "| %s |", r.Policy)
		for _, c := range classes {
			fmt.Fprintf(b, " %s |", cell(r, string(c)))
		}
		b.WriteString("\n")
	}
}

// lostByPool lists pools by the GPU-hours lost there, largest first; "0"
// when none were.
func lostByPool(byPool map[string]float64) string {
	pools := largestFirst(byPool, func(h float64) bool { return h >= 0.05 })
	if len(pools) == 0 {
		return "0"
	}
	parts := make([]string, len(pools))
	for i, p := range pools {
		parts[i] = fmt.Sprintf("%s %.1f", p, byPool[p])
	}
	return strings.Join(parts, ", ")
}

// largestFirst lists the keys whose values keep accepts, largest value
// first and by name on ties, so that a report reads the same every run.
func largestFirst(values map[string]float64, keep func(float64) bool) []string {
	keys := make([]string, 0, len(values))
	for k, v := range values {
		if keep(v) {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if values[keys[i]] != values[keys[j]] {
			return values[keys[i]] > values[keys[j]]
		}
		return keys[i] < keys[j]
	})
	return keys
}

// lockedWriter lets replays that run at once report to one writer a line at
// a time.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

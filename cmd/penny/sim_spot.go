package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/pennysched/penny/benchmarks/scenarios"
	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/sim"
)

// spotPolicies is what `penny sim replay` compares on a priced fleet when
// --policy is not given.
const spotPolicies = "default,spot-first,penny"

// runSpotReplay is `penny sim replay --scenario`: the trace on the
// scenario's elastic, priced fleet, once per policy (docs/spot.md). Without
// a scenario it is the reference one built into penny.
func runSpotReplay(cmd *cobra.Command, tf *traceFlags, scenario, policies string, seed uint64, out, markdown string, parallel int) error {
	if err := checkOutputFile("out", out, "spot.json"); err != nil {
		return err
	}
	if err := checkOutputFile("markdown", markdown, "spot.md"); err != nil {
		return err
	}
	var sc *sim.SpotScenario
	var err error
	if scenario == "" {
		scenario = scenarios.SpotOpenbPath + " (built in)"
		fmt.Fprintf(cmd.ErrOrStderr(), "no --scenario or --nodes: replaying on the reference scenario built into penny, %s (docs/spot.md)\n", scenarios.SpotOpenbPath)
		sc, err = sim.ParseSpotScenarioFrom(scenario, scenarios.SpotOpenb, builtInFile)
	} else {
		if sc, err = sim.LoadSpotScenario(scenario); err != nil {
			return fmt.Errorf("--scenario: %w", err)
		}
	}
	if err != nil {
		return err
	}
	ps, err := sim.ParsePolicies(policies)
	if err != nil {
		return err
	}
	if err := checkSchedulerConfig(tf.schedulerConfig, ps); err != nil {
		return err
	}
	if err := checkParallel(parallel); err != nil {
		return err
	}
	tr, cfg, err := tf.loadPods()
	if err != nil {
		return err
	}
	for _, u := range sc.UnclassedQoS(tr) {
		what := fmt.Sprintf("no class rule of the scenario names qos %q, which %d pod(s) of the trace carry", u.QoS, u.Pods)
		if u.QoS == "" {
			// Traces without a qos column (Philly) leave every pod so.
			what = fmt.Sprintf(`%d pod(s) of the trace have no qos value, and no class rule of the scenario names ""`, u.Pods)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s (first: %s): they take no rule's annotations and run as batch; add it to a rule's qos (values are matched exactly), or fix the trace\n",
			what, u.First)
	}
	rep, err := sim.RunSpotReplays(cmd.Context(), sc, tr, ps, seed, cfg, cmd.ErrOrStderr(), parallel)
	if err != nil {
		return err
	}
	rep.Command, rep.Scenario, rep.Pods, rep.Machine = commandLine(), scenario, tf.pods, sim.ThisMachine()
	warnAtMax(cmd.ErrOrStderr(), sc, rep)
	for _, r := range rep.Runs {
		if r.FitsNoPool > 0 {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: policy %s: %d pod(s) fit no pool of the scenario and were never scheduled (first: %s): no pool's node passes their filters (GPU model or size, Spot rules); add a pool that can run them or drop them from the trace\n",
				r.Policy, r.FitsNoPool, r.FitsNoPoolExample)
		}
		if r.Stalled {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: policy %s: the replay stalled at %.0f h of trace time with %d pod(s) that ran and did not finish and %d never scheduled: nothing could make progress (%s); its bill pays for the fleet until then (docs/spot.md)\n",
				r.Policy, r.HorizonHours, r.Unfinished, r.NeverScheduled, sim.StallCauses)
		}
		if r.GangTooLarge > 0 {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: policy %s: %d pod(s) of gangs larger than any pool were never scheduled (first: %s): the gang plugin places a gang in one pool, all of it or none; raise that pool's max or drop the job from the trace\n",
				r.Policy, r.GangTooLarge, r.GangTooLargeExample)
		}
	}
	md := rep.Markdown()
	fmt.Fprint(cmd.OutOrStdout(), md)
	if out != "" {
		if err := sim.WriteJSON(out, rep); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
	}
	if markdown != "" {
		if err := sim.WriteFile(markdown, []byte(md)); err != nil {
			return fmt.Errorf("--markdown: %w", err)
		}
	}
	return nil
}

// atMaxShare is the share of a replay a pool may spend at its max before
// the replay warns that the scenario's limits, not the policy, shaped it.
const atMaxShare = 0.1

// warnAtMax says which pools that may grow spent more than atMaxShare of a
// replay at their max: what waited for them then waited for the scenario's
// limit, and a comparison of policies there compares fleet sizes too.
func warnAtMax(w io.Writer, sc *sim.SpotScenario, rep *sim.SpotReport) {
	for _, r := range rep.Runs {
		for _, pool := range sc.Pools {
			h := r.HoursAtMaxByPool[pool.Name]
			if pool.Min == pool.Max || r.HorizonHours <= 0 || h <= atMaxShare*r.HorizonHours {
				continue
			}
			fmt.Fprintf(w, "warning: policy %s: pool %s was at its max of %d nodes for %.0f of %.0f h (%.0f%%): pods that needed it waited for the scenario's limit, not the policy; raise pools[].max to compare placement alone\n",
				r.Policy, pool.Name, pool.Max, h, r.HorizonHours, 100*h/r.HorizonHours)
		}
	}
}

// builtInFile reads the files the built-in scenario names: its catalog is
// the one deploy/ ships.
func builtInFile(path string) ([]byte, error) {
	if filepath.ToSlash(path) == "deploy/pricing/catalog.yaml" {
		return deploy.PriceCatalog, nil
	}
	return nil, fmt.Errorf("%s is not built into penny", path)
}

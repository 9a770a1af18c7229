package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/pennysched/penny/pkg/sim"
)

// runSpotReplay is `penny sim replay --scenario`: the trace on the
// scenario's elastic, priced fleet, once per policy (docs/spot.md).
func runSpotReplay(cmd *cobra.Command, tf *traceFlags, scenario, policies string, seed uint64, out, markdown string) error {
	sc, err := sim.LoadSpotScenario(scenario)
	if err != nil {
		return err
	}
	ps, err := sim.ParsePolicies(policies)
	if err != nil {
		return err
	}
	tr, cfg, err := tf.loadPods()
	if err != nil {
		return err
	}
	rep, err := sim.RunSpotReplays(cmd.Context(), sc, tr, ps, seed, cfg, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	rep.Command, rep.Scenario, rep.Pods, rep.Machine = commandLine(), scenario, tf.pods, sim.ThisMachine()
	for _, r := range rep.Runs {
		if r.FitsNoPool > 0 {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: policy %s: %d pod(s) fit no pool of the scenario and were never scheduled (first: %s): no pool's node passes their filters (GPU model or size, Spot rules); add a pool that can run them or drop them from the trace\n",
				r.Policy, r.FitsNoPool, r.FitsNoPoolExample)
		}
	}
	md := rep.Markdown()
	fmt.Fprint(cmd.OutOrStdout(), md)
	if out != "" {
		if err := sim.WriteJSON(out, rep); err != nil {
			return err
		}
	}
	if markdown != "" {
		return os.WriteFile(markdown, []byte(md), 0o644)
	}
	return nil
}

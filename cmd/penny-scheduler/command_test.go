package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"

	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/reclaim"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
)

func testParts() (*telemetryFlags, *expanderFlags, []part) {
	tf := &telemetryFlags{store: telemetry.NewStore(telemetry.StoreOptions{}),
		reclaim: &reclaimFlags{coordinator: reclaim.NewCoordinator(), interrupted: pricing.NewInterrupted(0)}}
	ef := &expanderFlags{srv: spotrisk.NewExpanderServer()}
	return tf, ef, []part{tf, ef}
}

// penny-scheduler's command is kube-scheduler's with Penny's flags added:
// every upstream flag is there, with its default and its help, and --help
// lists Penny's in sections of their own.
func TestCommandKeepsEveryKubeSchedulerFlag(t *testing.T) {
	_, _, parts := testParts()
	cmd := newSchedulerCommand(parts)
	upstream := app.NewSchedulerCommand()
	upstream.Flags().VisitAll(func(want *pflag.Flag) {
		got := cmd.Flags().Lookup(want.Name)
		if want.Name == "help" {
			want.Usage = "help for penny-scheduler"
		}
		switch {
		case got == nil:
			t.Errorf("--%s is missing", want.Name)
		case got.DefValue != want.DefValue || got.Usage != want.Usage || got.Value.Type() != want.Value.Type() || got.Deprecated != want.Deprecated || got.Hidden != want.Hidden:
			t.Errorf("--%s differs from kube-scheduler's: %+v, want %+v", want.Name, got, want)
		}
	})
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if upstream.Flags().Lookup(f.Name) == nil && !strings.HasPrefix(f.Name, "telemetry-") && !strings.HasPrefix(f.Name, "reclaim-") && !strings.HasPrefix(f.Name, "expander-") {
			t.Errorf("--%s is neither kube-scheduler's nor Penny's", f.Name)
		}
	})
	var help bytes.Buffer
	cmd.SetOut(&help)
	cmd.SetArgs([]string{"--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Leader election flags:", "Penny telemetry flags:", "--telemetry-bind-address", "Penny reclaim flags:", "--reclaim-notices-configmap", "Penny Cluster Autoscaler expander flags:", "--expander-bind-address"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

// A flag that only takes effect with another is refused without it, naming
// both; without either, nothing starts and nothing is refused.
func TestFlagsThatNeedAnotherAreRefusedWithoutIt(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{nil, nil},
		{[]string{"--reclaim-keep-gangs-running"}, []string{"--reclaim-keep-gangs-running takes effect only with --telemetry-bind-address"}},
		{[]string{"--telemetry-tls-cert-file=/c", "--reclaim-notices-configmap="}, []string{"--telemetry-tls-cert-file, --reclaim-notices-configmap take effect only with --telemetry-bind-address", "set --telemetry-bind-address or leave out"}},
		{[]string{"--expander-tls-cert-file=/c", "--expander-tls-key-file=/k"}, []string{"--expander-tls-cert-file, --expander-tls-key-file take effect only with --expander-bind-address"}},
	} {
		_, _, parts := testParts()
		cmd := newSchedulerCommand(parts)
		if err := cmd.ParseFlags(c.args); err != nil {
			t.Fatal(err)
		}
		var errs []string
		for _, p := range parts {
			stopped, err := p.start(context.Background(), cmd)
			if stopped != nil {
				t.Errorf("%v: a part started without its address", c.args)
			}
			if err != nil {
				errs = append(errs, err.Error())
			}
		}
		got := strings.Join(errs, "\n")
		if len(c.want) == 0 && got != "" {
			t.Errorf("%v: refused: %s", c.args, got)
		}
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%v: errors %q lack %q", c.args, got, w)
			}
		}
	}
}

// kube-scheduler's coordinated leader election registers its candidate as
// kube-scheduler in kube-system whatever the configuration says: a
// penny-scheduler replica would stand in the default scheduler's election.
// The start is refused, naming the gate; without leader election the gate
// does nothing and is let be.
func TestCoordinatedLeaderElectionIsRefused(t *testing.T) {
	out := refusedStart(t, "--leader-elect=true", "--feature-gates=CoordinatedLeaderElection=true")
	if !strings.Contains(out, "command ended: --feature-gates: penny-scheduler does not support CoordinatedLeaderElection") {
		t.Errorf("got %s, want the start refused naming --feature-gates and CoordinatedLeaderElection", out)
	}
}

// refusedStart runs penny-scheduler's command with args against an API
// server that is not there, in a process of its own (the command applies
// logging and feature gates once per process), and returns what it printed
// on ending. The scheduler's set-up never calls the API server, its run
// does: a command not refused by then runs on and fails the test. Penny's
// plugins are registered, the expander's server with them.
func refusedStart(t *testing.T, args ...string) string {
	t.Helper()
	kubeconfig := writeFile(t, t.TempDir(), "kubeconfig", []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCommandProcess$")
	cmd.Env = append(os.Environ(), commandArgsEnv+"="+strings.Join(append([]string{"--kubeconfig=" + kubeconfig, "--secure-port=0"}, args...), "\n"))
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("the scheduler started with %v", args)
	}
	if err == nil {
		t.Fatalf("the command with %v ended without an error:\n%s", args, out)
	}
	return string(out)
}

// commandArgsEnv holds the arguments, one a line, of the command
// TestCommandProcess runs.
const commandArgsEnv = "PENNY_TEST_COMMAND_ARGS"

// TestCommandProcess is the process refusedStart starts; run by go test, it
// has no arguments and runs nothing.
func TestCommandProcess(t *testing.T) {
	args := os.Getenv(commandArgsEnv)
	if args == "" {
		return
	}
	ef := &expanderFlags{srv: spotrisk.NewExpanderServer()}
	cmd := newSchedulerCommand([]part{ef}, plugins.Options(plugins.Deps{Expander: ef.srv})...)
	cmd.SetArgs(strings.Split(args, "\n"))
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	err := cmd.Execute()
	fmt.Fprintf(os.Stderr, "command ended: %v\n", err)
	os.Exit(3)
}

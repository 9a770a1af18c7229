package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/plugins"
)

// runUpCommand runs `penny up` with args as a user would type them, with
// TMPDIR set to a directory of the test's, and returns what it printed,
// what it left in TMPDIR, and its error.
func runUpCommand(t *testing.T, ctx context.Context, args ...string) (string, []string, error) {
	t.Helper()
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	cmd := newUpCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	var left []string
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	return out.String(), left, err
}

// Flags that cannot work are refused at once, naming the flag, before a
// control plane starts; and a refusal leaves no log file behind, nor points
// at one: nothing was logged.
func TestUpRefusesBadFlagsAtOnce(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	state := filepath.Join(dir, "state")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--demo", "--demo-timeout", "-1s"}, "--demo-timeout -1s"},
		{[]string{"--demo", "--demo-timeout", "0s"}, "--demo-timeout 0s"},
		{[]string{"--demo-timeout", "1m"}, "--demo-timeout needs --demo"},
		{[]string{"--exit-after-demo"}, "--exit-after-demo needs --demo"},
		{[]string{"--summary-json", filepath.Join(dir, "no", "such", "dir", "s.json")}, "--summary-json"},
		{[]string{"--summary-json", "/proc/penny-summary.json"}, "--summary-json /proc/penny-summary.json: cannot create a file in /proc"},
		{[]string{"--summary-json", dir}, "--summary-json " + dir + " is a directory"},
		{[]string{"--cluster", filepath.Join(dir, "fleet.yaml")}, "--cluster"},
		{[]string{"--dir", file}, "--dir " + file + " is a file"},
		{[]string{"--port", "70000"}, "--port 70000 is not a TCP port"},
	}
	for _, c := range cases {
		args := append([]string{"--dir", state, "--port", "0"}, c.args...)
		began := time.Now()
		_, left, err := runUpCommand(t, context.Background(), args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v; want an error mentioning %q", c.args, err, c.want)
			continue
		}
		if took := time.Since(began); took > 2*time.Second {
			t.Errorf("%v: refused after %v; want before anything starts", c.args, took)
		}
		if strings.Contains(err.Error(), "logs:") || strings.Contains(err.Error(), "state directory") || len(left) > 0 {
			t.Errorf("%v: %v, leaving %v; want no log file named nor left, and the flag named", c.args, err, left)
		}
		if _, err := os.Stat(state); !os.IsNotExist(err) {
			t.Errorf("%v: the state directory was made", c.args)
		}
	}
}

// Ctrl-C while the cluster starts stops it and says so; "context canceled"
// and a log file to read suggest something broke.
func TestUpInterruptedWhileStarting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	state := filepath.Join(t.TempDir(), "state")
	began := time.Now()
	_, left, err := runUpCommand(t, ctx, "--dir", state, "--port", "0")
	if err == nil || !strings.Contains(err.Error(), "interrupted") || strings.Contains(err.Error(), "context canceled") || strings.Contains(err.Error(), "logs:") {
		t.Errorf("%v; want it to say it was interrupted", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("took %v to stop after an interrupt", took)
	}
	if len(left) > 0 {
		t.Errorf("left %v in TMPDIR", left)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("the state directory is still there: %v", err)
	}
}

// Ctrl-C while penny-scheduler starts (its start runs to its end, about
// half a second, whatever the interrupt) stops penny up as an interrupted
// start, not as a run that came up: it says so, exits non-zero and leaves
// nothing behind. The interrupt comes as the start begins and as it ends.
func TestUpInterruptedWhileTheSchedulerStarts(t *testing.T) {
	for _, when := range []string{"as it begins", "as it ends"} {
		t.Run(when, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			real := startScheduler
			t.Cleanup(func() { startScheduler = real })
			started := false
			startScheduler = func(sctx context.Context, so plugins.SchedulerOptions) (*plugins.Scheduler, error) {
				if when == "as it begins" {
					cancel()
				} else {
					defer cancel()
				}
				started = true
				return real(sctx, so)
			}
			state := filepath.Join(t.TempDir(), "state")
			summaryFile := filepath.Join(t.TempDir(), "summary.json")
			out, left, err := runUpCommand(t, ctx, "--dir", state, "--port", "0", "--summary-json", summaryFile)
			if !started {
				t.Fatalf("penny up did not start the scheduler: %v\n%s", err, out)
			}
			if err == nil || !strings.Contains(err.Error(), "interrupted while starting penny-scheduler, before it scheduled anything") || !strings.Contains(err.Error(), "removed what penny up made") {
				t.Errorf("%v; want it to say it was interrupted before the scheduler ran, and what it cleaned up", err)
			}
			if strings.Contains(out, "Penny is up") || strings.Contains(out, "Running.") {
				t.Errorf("an interrupted start reads as a run that came up:\n%s", out)
			}
			if len(left) > 0 {
				t.Errorf("left %v in TMPDIR", left)
			}
			if _, err := os.Stat(state); !os.IsNotExist(err) {
				t.Errorf("the state directory is still there: %v", err)
			}
			if s := readSummary(t, summaryFile); s.Status != summaryFailed || !strings.Contains(s.Error, "interrupted") {
				t.Errorf("summary: status %q, error %q; want failed, interrupted", s.Status, s.Error)
			}
		})
	}
}

// On a fleet with no GPU nodes the demo's GPU pods cannot place: penny up
// fails, within --demo-timeout (the whole demo's bound, as the error says),
// after printing what did place. The spec's name is shown, and the
// kubeconfig's path works from any directory.
func TestUpDemoThatDoesNotPlaceFailsWithinItsTimeout(t *testing.T) {
	dir := t.TempDir()
	spec := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(spec, []byte(`name: cpu-only-fleet
pools:
- {name: cpu, count: 1, instanceType: m7i.8xlarge, capacityType: on-demand, zone: z, hourlyPrice: 1.6, cpu: "32", memory: 128Gi}
`), 0o644)
	t.Chdir(dir)
	summaryFile := filepath.Join(dir, "summary.json")
	began := time.Now()
	out, _, err := runUpCommand(t, context.Background(), "--cluster", spec, "--dir", "state", "--port", "0",
		"--demo", "--exit-after-demo", "--demo-timeout", "5s", "--summary-json", summaryFile)
	took := time.Since(began)
	if err == nil || !strings.Contains(err.Error(), "demo pods were not scheduled within 5s") {
		t.Fatalf("%v; want the pending pods reported\n%s", err, out)
	}
	if took > 40*time.Second {
		t.Errorf("took %v with --demo-timeout 5s\n%s", took, out)
	}
	for _, want := range []string{"cpu-only-fleet", "data-prep", "<pending>", "kubeconfig: " + filepath.Join(dir, "state", "kubeconfig")} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// A script reading the summary learns the run failed, and still sees
	// what placed and what did not.
	s := readSummary(t, summaryFile)
	if s.Status != summaryFailed || !strings.Contains(s.Error, "demo pods were not scheduled within 5s") || s.PodsPending == 0 || len(s.Pods) != s.PodsTotal {
		t.Errorf("summary: status %q, error %q, %d pending of %d, %d pods listed; want failed, saying why, with the pods listed and counted", s.Status, s.Error, s.PodsPending, s.PodsTotal, len(s.Pods))
	}
}

// readSummary reads what --summary-json wrote.
func readSummary(t *testing.T, path string) upSummary {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the summary: %v", err)
	}
	var s upSummary
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("the summary is not JSON: %v\n%s", err, data)
	}
	return s
}

// A run that fails writes a summary that says so and why, in place of an
// earlier good run's: a script reading the file must not see that run's
// success as this one's.
func TestUpSummarySaysTheRunFailed(t *testing.T) {
	const earlier = `{"pods_total": 9, "pods_scheduled": 9, "pods_pending": 0}`
	interrupted, cancel := context.WithCancel(context.Background())
	cancel()
	cases := []struct {
		name  string
		ctx   context.Context
		args  []string
		error string
	}{
		{"cluster spec missing", context.Background(), []string{"--cluster", filepath.Join(t.TempDir(), "fleet.yaml")}, "--cluster"},
		{"interrupted while starting", interrupted, nil, "interrupted while starting"},
		// Refused for its flags before anything started: the earlier run's
		// "ok" would otherwise stand for this one.
		{"flags refused", context.Background(), []string{"--exit-after-demo"}, "--exit-after-demo needs --demo"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "summary.json")
			if err := os.WriteFile(file, []byte(earlier), 0o644); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"--dir", filepath.Join(t.TempDir(), "state"), "--port", "0", "--summary-json", file}, c.args...)
			_, _, err := runUpCommand(t, c.ctx, args...)
			if err == nil {
				t.Fatal("penny up succeeded; want it to fail")
			}
			s := readSummary(t, file)
			if s.Status != summaryFailed || s.Error != err.Error() || !strings.Contains(s.Error, c.error) {
				t.Errorf("summary: status %q, error %q; want %q and the error penny up returned (%v)", s.Status, s.Error, summaryFailed, err)
			}
		})
	}
}

// heldOutput is penny up's output in a test: it tells the test what was
// written so far, and holds a write that starts with hold until the test
// lets it go, so that the test acts while penny up is at that line.
type heldOutput struct {
	mu      sync.Mutex
	text    strings.Builder
	written chan struct{}
	hold    string
	release chan struct{}
}

func newHeldOutput(hold string) *heldOutput {
	return &heldOutput{written: make(chan struct{}, 1), hold: hold, release: make(chan struct{})}
}

func (h *heldOutput) Write(p []byte) (int, error) {
	h.mu.Lock()
	h.text.Write(p)
	h.mu.Unlock()
	select {
	case h.written <- struct{}{}:
	default:
	}
	if h.hold != "" && strings.HasPrefix(string(p), h.hold) {
		<-h.release
	}
	return len(p), nil
}

func (h *heldOutput) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.text.String()
}

// waitFor waits until the output holds want; the bound only keeps a broken
// penny up from hanging the test.
func (h *heldOutput) waitFor(t *testing.T, want string) {
	t.Helper()
	bound := time.After(3 * time.Minute)
	for !strings.Contains(h.String(), want) {
		select {
		case <-h.written:
		case <-bound:
			t.Fatalf("penny up never wrote %q:\n%s", want, h.String())
		}
	}
}

// A second Ctrl-C while penny up shuts down exits at once, as kubectl,
// docker compose and kind do, and says what it leaves behind. The shutdown
// is held at its first line, so that the second Ctrl-C surely comes while
// penny up is stopping.
func TestUpSecondCtrlCExitsAtOnce(t *testing.T) {
	// Ctrl-C is sent to this process: until penny up listens for it, and
	// after, it must not end the test binary.
	guard := make(chan os.Signal, 4)
	signal.Notify(guard, os.Interrupt)
	defer signal.Stop(guard)
	exited := make(chan int, 1)
	exitNow = func(code int) { exited <- code }
	t.Cleanup(func() { exitNow = os.Exit })
	t.Setenv("TMPDIR", t.TempDir())

	state := filepath.Join(t.TempDir(), "state")
	summaryFile := filepath.Join(t.TempDir(), "summary.json")
	out, errOut := newHeldOutput("Stopping"), newHeldOutput("")
	cmd := newUpCommand()
	cmd.SetOut(out)
	cmd.SetErr(errOut)
	cmd.SetArgs([]string{"--dir", state, "--port", "0", "--summary-json", summaryFile})
	returned := make(chan error, 1)
	go func() { returned <- cmd.ExecuteContext(context.Background()) }()
	released := false
	defer func() {
		if !released {
			close(out.release)
		}
		<-returned
	}()

	out.waitFor(t, "Running.")
	if s := readSummary(t, summaryFile); s.Status != summaryOK {
		t.Errorf("summary of a run that is up: status %q, error %q; want %q", s.Status, s.Error, summaryOK)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "Stopping")
	if !strings.Contains(out.String(), "Ctrl-C again") {
		t.Errorf("the shutdown does not say that Ctrl-C again exits at once:\n%s", out.String())
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-exited:
		if code != 130 {
			t.Errorf("exit status %d after the second Ctrl-C; want 130, as for an interrupted command", code)
		}
	case <-time.After(time.Minute):
		t.Fatalf("penny up did not exit after a second Ctrl-C while stopping\n%s%s", out.String(), errOut.String())
	}
	msg := errOut.String()
	for _, want := range []string{"interrupted again", "the state directory " + state, "penny up --dir " + state, "the log file ", "penny-scheduler-"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the message on the second Ctrl-C lacks %q:\n%s", want, msg)
		}
	}
	// The stand-in for exit returned: penny up goes on to clean up.
	close(out.release)
	released = true
}

// Output to a reader that has gone (`penny up | head -3`, a pager quit
// early, a tee that the same Ctrl-C ended first) must not cost the cleanup:
// after Ctrl-C, or SIGHUP from a terminal closed under it, penny up still
// stops the cluster and removes its state directory, the scheduler's
// temporary directory and its log file, instead of dying of SIGPIPE on its
// next line of output (or of the SIGHUP).
func TestUpCleansUpWhenItsOutputIsGone(t *testing.T) {
	if state := os.Getenv("PENNY_UP_TEST_STATE"); state != "" {
		// The child: penny up as the binary runs it, its standard output
		// the parent's pipe.
		cmd := newUpCommand()
		cmd.SetArgs([]string{"--dir", state, "--port", "0"})
		if err := cmd.ExecuteContext(context.Background()); err != nil {
			fmt.Fprintf(os.Stderr, "penny: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	for _, sig := range []os.Signal{os.Interrupt, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			state := filepath.Join(t.TempDir(), "state")
			tmp := t.TempDir()
			child := exec.Command(os.Args[0], "-test.run=^TestUpCleansUpWhenItsOutputIsGone$")
			child.Env = append(os.Environ(), "PENNY_UP_TEST_STATE="+state, "TMPDIR="+tmp)
			stdout, err := child.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			child.Stderr = &stderr
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- child.Wait() }()
			waited := false
			defer func() {
				if !waited {
					child.Process.Kill()
					<-exited
				}
			}()
			lines := bufio.NewScanner(stdout)
			var out strings.Builder
			for lines.Scan() {
				out.WriteString(lines.Text() + "\n")
				if strings.HasPrefix(lines.Text(), "Running.") {
					break
				}
			}
			if !strings.Contains(out.String(), "Running.") {
				t.Fatalf("penny up did not come up:\n%s%s", out.String(), stderr.String())
			}
			// The reader goes, then the user presses Ctrl-C (or closes the
			// terminal, which takes the reader with it).
			stdout.Close()
			if err := child.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				waited = true
				if err != nil {
					t.Errorf("penny up exited with %v after %v; want 0\n%s", err, sig, stderr.String())
				}
			case <-time.After(90 * time.Second):
				t.Fatalf("penny up still running 90s after %v\n%s", sig, stderr.String())
			}
			if _, err := os.Stat(state); !os.IsNotExist(err) {
				t.Errorf("the state directory is still there: %v", err)
			}
			var left []string
			entries, _ := os.ReadDir(tmp)
			for _, e := range entries {
				left = append(left, e.Name())
			}
			if len(left) > 0 {
				t.Errorf("left %v in TMPDIR", left)
			}
		})
	}
}

// TestUpHelpDescribesTheDemoWorkload holds penny up --help to what --demo
// submits: the help said "an inference Deployment" after a second one, on
// GPU shares, joined the one on MIG slices.
func TestUpHelpDescribesTheDemoWorkload(t *testing.T) {
	jobs, deployments, pods := demoWorkload()
	help := strings.Join(strings.Fields(newUpCommand().Long), " ")
	count := func(n int, one, many string) string {
		if n == 1 {
			return one
		}
		return many
	}
	want := []string{
		count(len(jobs), "a training Job", "training Jobs"),
		count(len(deployments), "an inference Deployment", "inference Deployments"),
		count(len(pods), "a CPU pod", "CPU pods"),
	}
	for _, d := range deployments {
		for name := range d.Spec.Template.Spec.Containers[0].Resources.Limits {
			switch {
			case name == gpu.ResourceGPUMilli:
				want = append(want, "GPU shares")
			case strings.HasPrefix(string(name), gpu.MIGResourcePrefix):
				want = append(want, "MIG slices")
			}
		}
	}
	for _, w := range want {
		if !strings.Contains(help, w) {
			t.Errorf("penny up --help does not say %q of the demo workload:\n%s", w, help)
		}
	}
}

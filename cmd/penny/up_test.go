package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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
	began := time.Now()
	out, _, err := runUpCommand(t, context.Background(), "--cluster", spec, "--dir", "state", "--port", "0",
		"--demo", "--exit-after-demo", "--demo-timeout", "5s")
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

// Package e2e runs the penny binary as a user would.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pennysched/penny/test/harness"
)

var pennyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "penny-e2e-")
	if err != nil {
		panic(err)
	}
	pennyBin = filepath.Join(dir, "penny")
	build := exec.Command("go", "build", "-o", pennyBin, "./cmd/penny")
	build.Dir = harness.RepoRoot()
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build penny: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func penny(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, pennyBin, args...)
	cmd.Dir = harness.RepoRoot()
	return cmd
}

func TestUpDemoSchedulesEveryPodAndLeavesNothingBehind(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	port := freePort(t)
	summary := filepath.Join(t.TempDir(), "summary.json")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := penny(ctx, "up", "--demo", "--exit-after-demo", "--summary-json", summary, "--dir", dir, "--port", fmt.Sprint(port)).CombinedOutput()
	if err != nil {
		t.Fatalf("penny up --demo: %v\n%s", err, out)
	}
	for _, want := range []string{"POD", "NODE", "POOL", "CAPACITY", "GPUS", "$/H", "llm-pretrain", "chat-inference", "data-prep"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	var s struct {
		Status         string  `json:"status"`
		PodsTotal      int     `json:"pods_total"`
		PodsScheduled  int     `json:"pods_scheduled"`
		PodsPending    int     `json:"pods_pending"`
		StartupSeconds float64 `json:"startup_seconds"`
	}
	data, err := os.ReadFile(summary)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("summary: %v\n%s", err, data)
	}
	if s.Status != "ok" || s.PodsTotal < 9 || s.PodsScheduled != s.PodsTotal || s.PodsPending != 0 {
		t.Errorf("summary %+v: want every demo pod (at least 9) scheduled", s)
	}
	if s.StartupSeconds <= 0 || s.StartupSeconds > 30 {
		t.Errorf("startup took %.1fs, want under 30s", s.StartupSeconds)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state directory %s left behind (stat: %v)", dir, err)
	}
	if !portFree(port) {
		t.Errorf("port %d still in use after exit", port)
	}
}

func TestSecondUpFailsClearlyAndCtrlCCleansUp(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	port := freePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	first := penny(ctx, "up", "--dir", dir, "--port", fmt.Sprint(port))
	stdout, err := first.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var firstErr bytes.Buffer
	first.Stderr = &firstErr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "Penny is up") {
				close(up)
			}
		}
	}()
	select {
	case <-up:
	case <-time.After(60 * time.Second):
		first.Process.Kill()
		t.Fatalf("first penny up did not come up: %s", firstErr.String())
	}

	for name, c := range map[string]struct {
		args []string
		want string // the flag, and that it is in use
	}{
		"same dir":  {[]string{"up", "--dir", dir, "--port", fmt.Sprint(freePort(t))}, "--dir " + dir + " is in use"},
		"same port": {[]string{"up", "--dir", filepath.Join(t.TempDir(), "other"), "--port", fmt.Sprint(port)}, fmt.Sprintf("--port %d on 127.0.0.1 is in use", port)},
	} {
		start := time.Now()
		out, err := penny(ctx, c.args...).CombinedOutput()
		if err == nil {
			t.Errorf("%s: second penny up succeeded:\n%s", name, out)
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("%s: error does not say %q:\n%s", name, c.want, out)
		}
		if time.Since(start) > 15*time.Second {
			t.Errorf("%s: took %v to fail; want a prompt error, not a hang", name, time.Since(start))
		}
	}

	first.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- first.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("penny up after Ctrl-C: %v\n%s", err, firstErr.String())
		}
	case <-time.After(30 * time.Second):
		first.Process.Kill()
		t.Fatal("penny up did not stop within 30s of Ctrl-C")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state directory left behind after Ctrl-C")
	}
	if !portFree(port) {
		t.Errorf("port %d still held after Ctrl-C", port)
	}
}

func TestUpRejectsMalformedSpec(t *testing.T) {
	spec := filepath.Join(t.TempDir(), "fleet.yaml")
	os.WriteFile(spec, []byte("pools:\n- name: gpu\n  count: 2\n  gpusPerNode: eight\n"), 0o644)
	out, err := penny(context.Background(), "up", "--cluster", spec, "--dir", filepath.Join(t.TempDir(), "s")).CombinedOutput()
	if err == nil {
		t.Fatalf("penny up accepted a malformed spec:\n%s", out)
	}
	if !strings.Contains(string(out), spec+":4") || !strings.Contains(string(out), "eight") {
		t.Errorf("error does not name the file, line and bad value:\n%s", out)
	}
}

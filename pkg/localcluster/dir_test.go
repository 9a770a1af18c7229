package localcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A cluster empties its state directory when it starts and stops, so it
// claims only one that is new, empty or an earlier cluster's, and removes
// only what it made.
func TestStateDirectoryIsOnlyEverPennys(t *testing.T) {
	write := func(t *testing.T, path, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("someone else's", func(t *testing.T) {
		for name, files := range map[string]map[string]string{
			"project":         {"go.mod": "module x\n", "src/main.go": "package main\n"},
			"file-named-lock": {"lock": "not a pid\n", "notes.txt": "keep me\n"},
		} {
			dir := t.TempDir()
			for f, content := range files {
				write(t, filepath.Join(dir, f), content)
			}
			c := &Cluster{}
			err := c.claimDir(dir)
			c.Stop()
			if err == nil || !strings.Contains(err.Error(), "state directory "+dir+" is not empty") || !strings.Contains(err.Error(), "give a new or empty directory") {
				t.Errorf("%s: %v; want a refusal naming the directory", name, err)
			}
			for f, content := range files {
				if b, err := os.ReadFile(filepath.Join(dir, f)); err != nil || string(b) != content {
					t.Errorf("%s: %s is %q, %v after the refusal; want it untouched", name, f, b, err)
				}
			}
		}
	})
	t.Run("new", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		c := &Cluster{}
		if err := c.claimDir(dir); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, "etcd", "member"), "x")
		c.Stop()
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("the directory penny made is still there: %v", err)
		}
	})
	t.Run("empty", func(t *testing.T) {
		dir := t.TempDir()
		c := &Cluster{}
		if err := c.claimDir(dir); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, "etcd", "member"), "x")
		c.Stop()
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 0 {
			t.Errorf("the empty directory given holds %v, %v after the cluster stopped; want it there and empty", entries, err)
		}
	})
	t.Run("killed before writing its pid", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		write(t, filepath.Join(dir, "lock"), "")
		c := &Cluster{}
		if err := c.claimDir(dir); err != nil {
			t.Fatalf("a directory holding only an empty lock file: %v; want it claimed", err)
		}
		c.Stop()
	})
	t.Run("a killed cluster's", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		write(t, filepath.Join(dir, "lock"), "12345\n")
		write(t, filepath.Join(dir, "etcd", "member"), "stale")
		c := &Cluster{}
		if err := c.claimDir(dir); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "etcd")); !os.IsNotExist(err) {
			t.Errorf("the killed cluster's data is still there: %v", err)
		}
		other := &Cluster{}
		if err := other.claimDir(dir); err == nil || !strings.Contains(err.Error(), "is in use by another local cluster") {
			t.Errorf("a second claim: %v; want in use", err)
		}
		c.Stop()
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("the state directory is still there: %v", err)
		}
	})
}

// A port out of range is said to be one, not to be in use, and nothing is
// started or made for it; a port another process holds is in use.
func TestStartSaysWhatIsWrongWithThePort(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	for _, port := range []int{70000, -1} {
		_, err := Start(context.Background(), Options{Dir: dir, APIServerPort: port})
		if err == nil || !strings.Contains(err.Error(), "is not a TCP port: choose one of 1..65535") || strings.Contains(err.Error(), "in use") {
			t.Errorf("port %d: %v", port, err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the state directory was made: %v", err)
	}
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	port := held.Addr().(*net.TCPAddr).Port
	if _, err := Start(context.Background(), Options{Dir: dir, APIServerPort: port}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("port %d on 127.0.0.1 is in use", port)) {
		t.Errorf("port %d held: %v; want in use", port, err)
	}
}

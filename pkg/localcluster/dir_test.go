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
			if err == nil || !strings.Contains(err.Error(), "state directory "+dir+" is not empty") || !strings.Contains(err.Error(), "give a new or empty one") {
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
	// A cluster killed on an empty directory the user gave leaves its lock
	// (with its pid) and its data there; the next cluster on it clears
	// that, and still only empties the directory: it is the user's.
	t.Run("empty, after a killed cluster", func(t *testing.T) {
		dir := t.TempDir()
		killed := &Cluster{}
		if err := killed.claimDir(dir); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, "etcd", "member"), "x")
		// Killed: the lock is let go with the process, nothing is removed.
		killed.lock.Close()
		c := &Cluster{}
		if err := c.claimDir(dir); err != nil {
			t.Fatalf("the empty directory given, after a killed cluster: %v; want it claimed", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "etcd")); !os.IsNotExist(err) {
			t.Errorf("the killed cluster's data is still there: %v", err)
		}
		c.Stop()
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 0 {
			t.Errorf("the empty directory given holds %v, %v after the next cluster stopped; want it there and empty", entries, err)
		}
	})
	t.Run("new, after a killed cluster", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		killed := &Cluster{}
		if err := killed.claimDir(dir); err != nil {
			t.Fatal(err)
		}
		killed.lock.Close()
		c := &Cluster{}
		if err := c.claimDir(dir); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("the directory a killed cluster made is still there: %v", err)
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
		// The pid, and that the killed cluster made the directory.
		write(t, filepath.Join(dir, "lock"), "12345\nmade\n")
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

// A start that fails after it took its port, before the kube-apiserver
// runs (here: an API group it does not know), lets go of the port and the
// state directory, as it does everything else it started: a caller that
// retries, or a test process that starts clusters one after another, finds
// the port free.
func TestFailedStartLetsGoOfItsPort(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	_, err = Start(context.Background(), Options{Dir: dir, APIServerPort: port,
		RuntimeConfig: map[string]string{"bogus.example.com/v9": "true"}})
	if err == nil || !strings.Contains(err.Error(), "bogus.example.com/v9") {
		t.Fatalf("%v; want the unknown API group refused", err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("port %d after the failed start: %v; want it free", port, err)
	}
	l.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the state directory is still there: %v", err)
	}
}

// Errors about the state directory and the port name the flags a command
// gave them as (penny up's --dir and --port), and say what is wrong with a
// --dir that is a file.
func TestDirAndPortErrorsNameTheFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(file, []byte("keep me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), Options{Dir: file, DirFlag: "--dir", PortFlag: "--port"})
	if err == nil || !strings.HasPrefix(err.Error(), "--dir "+file+" is a file, not a directory") || strings.Contains(err.Error(), "state directory") {
		t.Errorf("--dir a file: %v; want it named as --dir and said to be a file", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me\n" {
		t.Errorf("the file given as --dir now holds %q", b)
	}

	dir := filepath.Join(t.TempDir(), "state")
	first := &Cluster{dirFlag: "--dir"}
	if err := first.claimDir(dir); err != nil {
		t.Fatal(err)
	}
	defer first.Stop()
	second := &Cluster{dirFlag: "--dir"}
	err = second.claimDir(dir)
	if err == nil || !strings.HasPrefix(err.Error(), "--dir "+dir+" is in use by another local cluster") || strings.Contains(err.Error(), "state directory") {
		t.Errorf("--dir in use: %v; want it named as --dir", err)
	}
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "go.mod"), []byte("module x\n"), 0o644)
	err = (&Cluster{dirFlag: "--dir"}).claimDir(other)
	if err == nil || !strings.HasPrefix(err.Error(), "--dir "+other+" is not empty") || strings.Contains(err.Error(), "state directory") {
		t.Errorf("--dir not empty: %v; want it named as --dir", err)
	}

	for _, port := range []int{-1, 70000} {
		_, err := Start(context.Background(), Options{Dir: filepath.Join(t.TempDir(), "s"), APIServerPort: port, DirFlag: "--dir", PortFlag: "--port"})
		if err == nil || !strings.HasPrefix(err.Error(), fmt.Sprintf("--port %d is not a TCP port", port)) {
			t.Errorf("--port %d: %v; want it named as --port", port, err)
		}
	}
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	port := held.Addr().(*net.TCPAddr).Port
	_, err = Start(context.Background(), Options{Dir: filepath.Join(t.TempDir(), "s"), APIServerPort: port, DirFlag: "--dir", PortFlag: "--port"})
	if err == nil || !strings.HasPrefix(err.Error(), fmt.Sprintf("--port %d on 127.0.0.1 is in use", port)) {
		t.Errorf("--port %d held: %v; want it named as --port", port, err)
	}
}

// The default state directory is in the shared temporary directory, where
// anyone can make it first. A cluster claims only a directory of its own
// user's, and never follows a lock that is a link: it would write its pid
// over the file the link points to.
func TestStateDirectoryMustBeTheUsersOwn(t *testing.T) {
	t.Run("lock is a link", func(t *testing.T) {
		dir := t.TempDir()
		victim := filepath.Join(t.TempDir(), "victim")
		if err := os.WriteFile(victim, []byte("4242\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(victim, filepath.Join(dir, "lock")); err != nil {
			t.Fatal(err)
		}
		c := &Cluster{}
		err := c.claimDir(dir)
		c.Stop()
		if err == nil || !strings.Contains(err.Error(), "lock") {
			t.Errorf("a lock that is a link: %v; want a refusal", err)
		}
		if b, _ := os.ReadFile(victim); string(b) != "4242\n" {
			t.Errorf("the file the lock links to now holds %q", b)
		}
	})
	t.Run("someone else's directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		if err := os.Mkdir(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		// The directory is ours; to claimDir we are now another user.
		me := os.Getuid()
		getuid = func() int { return me + 1 }
		t.Cleanup(func() { getuid = os.Getuid })
		c := &Cluster{dirFlag: "--dir"}
		err := c.claimDir(dir)
		c.Stop()
		if want := fmt.Sprintf("--dir %s belongs to user %d", dir, me); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("another user's empty directory: %v; want a refusal", err)
		}
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("the directory went: %v", err)
		}
	})
}

package localcluster

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"

	"go.etcd.io/etcd/server/v3/embed"
)

// etcd's error for a client port another process holds must still say
// EADDRINUSE, or startEtcd would not know to try again.
func TestEtcdReportsATakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e, _, err := startEtcdOnce(t.TempDir(), l.Addr().(*net.TCPAddr).Port)
	if err == nil {
		e.Close()
		t.Fatal("etcd started on a port another listener holds")
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("error %q does not unwrap to EADDRINUSE", err)
	}
}

// A port taken between freePort and etcd's bind costs a try, not the start;
// other errors, and a port that stays taken, are returned.
func TestStartEtcdTriesAgainWhenItsPortIsTaken(t *testing.T) {
	once := startEtcdOnce
	defer func() { startEtcdOnce = once }()
	taken := &net.OpError{Op: "listen", Net: "tcp", Err: syscall.EADDRINUSE}

	tries := 0
	startEtcdOnce = func(dir string, port int) (*embed.Etcd, string, error) {
		if tries++; tries <= 2 {
			return nil, "", taken
		}
		return once(dir, port)
	}
	e, url, err := startEtcd(t.TempDir(), 0)
	if err != nil {
		t.Fatalf("start after two taken ports: %v", err)
	}
	e.Close()
	if tries != 3 || !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("%d tries, url %q; want 3 and a loopback URL", tries, url)
	}

	tries = 0
	startEtcdOnce = func(string, int) (*embed.Etcd, string, error) { tries++; return nil, "", taken }
	if _, _, err := startEtcd(t.TempDir(), 0); !errors.Is(err, syscall.EADDRINUSE) || tries != etcdStartAttempts {
		t.Fatalf("port always taken: %v after %d tries; want EADDRINUSE after %d", err, tries, etcdStartAttempts)
	}

	tries = 0
	other := errors.New("disk full")
	startEtcdOnce = func(string, int) (*embed.Etcd, string, error) { tries++; return nil, "", other }
	if _, _, err := startEtcd(t.TempDir(), 0); !errors.Is(err, other) || tries != 1 {
		t.Fatalf("other error: %v after %d tries; want it at once", err, tries)
	}
}

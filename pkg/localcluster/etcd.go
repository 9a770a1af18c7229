package localcluster

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// startEtcd runs an embedded etcd on loopback with its data under dir. A
// port freePort picks is free when picked, not when etcd binds it: another
// process (a test package running beside this one) may take it in between,
// so a start that finds its port taken is tried again on new ones.
func startEtcd(dir string, clientPort int) (*embed.Etcd, string, error) {
	var err error
	for attempt := 1; attempt <= etcdStartAttempts; attempt++ {
		var e *embed.Etcd
		var url string
		if e, url, err = startEtcdOnce(dir, clientPort); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			return e, url, err
		}
		// The listeners come before the data directory; clear it anyway
		// so that the next try starts a fresh member.
		if rmErr := os.RemoveAll(filepath.Join(dir, "etcd")); rmErr != nil {
			return nil, "", rmErr
		}
	}
	return nil, "", fmt.Errorf("%w (%d tries)", err, etcdStartAttempts)
}

// etcdStartAttempts bounds startEtcd's tries.
const etcdStartAttempts = 5

// startEtcdOnce is one try of startEtcd.
var startEtcdOnce = func(dir string, clientPort int) (*embed.Etcd, string, error) {
	if clientPort == 0 {
		p, err := FreePort()
		if err != nil {
			return nil, "", err
		}
		clientPort = p
	}
	peerPort, err := FreePort()
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Name = "penny-local"
	cfg.Dir = filepath.Join(dir, "etcd")
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{clientURL}, []url.URL{clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	// A local, throw-away cluster: durability is not worth the fsync latency.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("start etcd on %s: %w", clientURL.Host, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("etcd: %w", err)
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("etcd did not become ready in 30s (log: %s)", filepath.Join(dir, "etcd.log"))
	}
	return e, clientURL.String(), nil
}

// FreePort is a loopback TCP port free now (another process may take it
// before the caller listens on it).
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

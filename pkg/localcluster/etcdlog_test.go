package localcluster

import (
	"bytes"
	"context"
	"flag"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/klog/v2"
)

// The kube-apiserver's etcd client logs through klog, as the rest of the
// control plane does, not straight to standard error: a request its caller
// cancelled (as every request in flight is at shutdown) is no warning, and
// one that failed otherwise still is. The child process logs through the
// apiserver's etcd client logger; the parent reads its standard error and
// what klog wrote.
func TestEtcdClientLogsGoThroughKlog(t *testing.T) {
	if os.Getenv("PENNY_ETCD_LOG_CHILD") != "" {
		etcdClientLogChild(t)
		return
	}
	child := exec.Command(os.Args[0], "-test.run=^TestEtcdClientLogsGoThroughKlog$")
	child.Env = append(os.Environ(), "PENNY_ETCD_LOG_CHILD=1")
	var stdout, stderr bytes.Buffer
	child.Stdout, child.Stderr = &stdout, &stderr
	if err := child.Run(); err != nil {
		t.Fatalf("child: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	if strings.Contains(stderr.String(), "etcd-client") || strings.Contains(stderr.String(), "unary invoker") {
		t.Errorf("the etcd client wrote to standard error, past klog:\n%s", stderr.String())
	}
	klogged := stdout.String()
	// klog writes a warning to its INFO output as well: the same writer.
	var warnings []string
	for _, line := range strings.Split(klogged, "\n") {
		if strings.HasPrefix(line, "W") && strings.Contains(line, "etcd-client") && !slices.Contains(warnings, line) {
			warnings = append(warnings, line)
		}
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "deadline exceeded") {
		t.Errorf("klog got etcd client warnings %q; want one, for the request past its deadline, not the cancelled one\n%s", warnings, klogged)
	}
}

// etcdClientLogChild makes two requests fail at once, with the apiserver's
// etcd client logger, against a cluster's etcd: one cancelled, one past its
// deadline; klog writes to standard output.
func etcdClientLogChild(t *testing.T) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.Set("logtostderr", "false")
	fs.Set("alsologtostderr", "false")
	fs.Set("stderrthreshold", "FATAL")
	klog.SetOutput(os.Stdout)
	defer klog.Flush()

	c, err := Start(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{c.etcd.Config().ListenClientUrls[0].String()},
		DialTimeout: 10 * time.Second,
		Logger:      apiserverEtcdClientLogger,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := cli.Get(cancelled, "/registry"); err == nil {
		t.Error("a cancelled Get succeeded")
	}
	late, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := cli.Get(late, "/registry"); err == nil {
		t.Error("a Get past its deadline succeeded")
	}
}

package telemetry_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/benchtest"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// BenchmarkServeFleet runs the telemetry server in this process and 5,000
// agents' streams in another (so that their CPU is not counted here), each
// agent sending an 8-GPU report every 5 seconds, staggered, as a fleet
// would. One op is one second of that load; run it with -benchtime=10x.
//
// It reports the server process's CPU (user + system, all threads: gRPC,
// TLS, validation, store, garbage collection) in cores, under load and,
// as the baseline measured in the same run, with the same 5,000 streams
// open and idle. Token checks happen once per stream at connect and are
// not part of the per-report cost measured here.
func BenchmarkServeFleet(b *testing.B) {
	var stored atomic.Int64
	env := telemetrytest.Start(b, telemetrytest.Options{Store: telemetry.StoreOptions{MaxAge: time.Hour, OnUpdate: func(_, _ *telemetry.NodeState) { stored.Add(1) }}})
	ca := filepath.Join(b.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, env.Cert.CertPEM, 0o600); err != nil {
		b.Fatal(err)
	}
	const idle = 3 * time.Second
	load := time.Duration(b.N) * time.Second
	cmd := exec.Command(os.Args[0], "-test.run=^TestFleetLoadGenerator$", "-test.v=false")
	cmd.Env = append(os.Environ(),
		"PENNY_LOADGEN_ADDR="+env.Addr, "PENNY_LOADGEN_CA="+ca,
		"PENNY_LOADGEN_NODES="+strconv.Itoa(benchNodes), "PENNY_LOADGEN_GPUS="+strconv.Itoa(benchGPUs),
		"PENNY_LOADGEN_PERIOD="+benchPeriod.String(), "PENNY_LOADGEN_LOAD="+load.String())
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	expect := func(want string) {
		for lines.Scan() {
			if lines.Text() == want {
				return
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		b.Fatalf("load generator ended before %q", want)
	}
	b.ResetTimer()
	expect("connected")
	// Every agent's first report is in before the idle window starts.
	for stored.Load() < benchNodes {
		time.Sleep(10 * time.Millisecond)
	}
	cpu0, t0 := benchtest.ProcessCPU(), time.Now()
	time.Sleep(idle)
	idleCores := (benchtest.ProcessCPU() - cpu0).Seconds() / time.Since(t0).Seconds()
	cpu1, t1, n1 := benchtest.ProcessCPU(), time.Now(), stored.Load()
	if _, err := fmt.Fprintln(in, "load"); err != nil {
		b.Fatal(err)
	}
	expect("done")
	elapsed := time.Since(t1)
	loadCores := (benchtest.ProcessCPU() - cpu1).Seconds() / elapsed.Seconds()
	rate := float64(stored.Load()-n1) / elapsed.Seconds()
	b.StopTimer()
	if err := cmd.Wait(); err != nil {
		b.Fatalf("load generator: %v", err)
	}
	genCores := (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds() / (time.Since(t0).Seconds())
	b.ReportMetric(loadCores, "server-cores")
	b.ReportMetric(idleCores, "server-cores-idle")
	b.ReportMetric(rate, "reports/s")
	b.ReportMetric(genCores, "loadgen-cores")
	if rate < 0.9*reportsPerSecond {
		b.Errorf("the server stored %.0f reports/s, below the %.0f the fleet sends: it is not keeping up", rate, reportsPerSecond)
	}
}

// TestFleetLoadGenerator is BenchmarkServeFleet's other process; run alone
// it does nothing.
func TestFleetLoadGenerator(t *testing.T) {
	addr := os.Getenv("PENNY_LOADGEN_ADDR")
	if addr == "" {
		return
	}
	env := func(k string) string { return os.Getenv("PENNY_LOADGEN_" + k) }
	nodes, _ := strconv.Atoi(env("NODES"))
	gpus, _ := strconv.Atoi(env("GPUS"))
	period, _ := time.ParseDuration(env("PERIOD"))
	load, _ := time.ParseDuration(env("LOAD"))
	pem, err := os.ReadFile(env("CA"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: telemetrytest.ServerName})

	const conns = 50
	clients := make([]*grpc.ClientConn, conns)
	for i := range clients {
		if clients[i], err = grpc.NewClient(addr, grpc.WithTransportCredentials(creds)); err != nil {
			t.Fatal(err)
		}
		defer clients[i].Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	type agent struct {
		stream grpc.BidiStreamingClient[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage]
		report *telemetryv1.NodeReport
	}
	agents := make([]*agent, nodes)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range agents {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			node := fmt.Sprintf("gpu-node-%04d", i)
			sctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer node:"+node)
			st, err := telemetryv1.NewTelemetryClient(clients[i%conns]).Connect(sctx)
			if err != nil {
				t.Errorf("connect %s: %v", node, err)
				return
			}
			a := &agent{stream: st, report: telemetrytest.Report(node, gpus, 1, time.Now())}
			if err := st.Send(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_Report{Report: a.report}}); err != nil {
				t.Errorf("send %s: %v", node, err)
				return
			}
			go func() { // refusals would come here; there should be none
				for {
					msg, err := st.Recv()
					if err != nil {
						return
					}
					t.Errorf("%s: scheduler answered %v", node, msg)
				}
			}()
			agents[i] = a
		}(i)
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	fmt.Println("connected")
	// The benchmark measures the idle streams, then says "load".
	if line, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil || line != "load\n" {
		t.Fatalf("waiting for the benchmark: %q %v", line, err)
	}
	start := time.Now()
	end := start.Add(load)
	for i, a := range agents {
		wg.Add(1)
		go func(i int, a *agent) {
			defer wg.Done()
			next := start.Add(time.Duration(i) * period / time.Duration(len(agents)))
			for next.Before(end) {
				time.Sleep(time.Until(next))
				a.report.Sequence++
				a.report.CollectedAt = timestamppb.Now()
				if err := a.stream.Send(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_Report{Report: a.report}}); err != nil {
					t.Errorf("send: %v", err)
					return
				}
				next = next.Add(period)
			}
		}(i, a)
	}
	wg.Wait()
	fmt.Println("done")
}

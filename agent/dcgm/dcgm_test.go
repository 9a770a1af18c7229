package dcgm

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

const (
	uuid0 = "GPU-00000000-0000-0000-0000-000000000000"
	uuid1 = "GPU-11111111-1111-1111-1111-111111111111"
)

// exporterOutput is what dcgm-exporter 3.x serves for one whole GPU and one
// GPU in MIG mode (labels trimmed to the ones it always sets).
var exporterOutput = fmt.Sprintf(`# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %%).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="%[1]s",device="nvidia0",modelName="NVIDIA A100-SXM4-40GB",Hostname="n1"} 87
# HELP DCGM_FI_PROF_GR_ENGINE_ACTIVE Ratio of time the graphics engine is active.
# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge
DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",UUID="%[1]s",device="nvidia0",modelName="NVIDIA A100-SXM4-40GB",Hostname="n1",pod="trainer",namespace="team-a",container="main"} 0.812345
DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="1",UUID="%[2]s",device="nvidia1",modelName="NVIDIA A100-SXM4-40GB",GPU_I_PROFILE="3g.20gb",GPU_I_ID="1",Hostname="n1"} 0.25
DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="1",UUID="%[2]s",device="nvidia1",modelName="NVIDIA A100-SXM4-40GB",GPU_I_PROFILE="1g.5gb",GPU_I_ID="13",Hostname="n1"} 1.0000001
# HELP DCGM_FI_PROF_PIPE_TENSOR_ACTIVE Ratio of cycles the tensor (HMMA) pipe is active.
# TYPE DCGM_FI_PROF_PIPE_TENSOR_ACTIVE gauge
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{gpu="0",UUID="%[1]s",device="nvidia0",modelName="NVIDIA A100-SXM4-40GB",Hostname="n1"} 0.5
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{gpu="1",UUID="%[2]s",device="nvidia1",GPU_I_PROFILE="3g.20gb",GPU_I_ID="1",Hostname="n1"} NaN
# HELP DCGM_FI_PROF_DRAM_ACTIVE Ratio of cycles the device memory interface is active.
# TYPE DCGM_FI_PROF_DRAM_ACTIVE gauge
DCGM_FI_PROF_DRAM_ACTIVE{gpu="0",UUID="%[1]s",device="nvidia0",Hostname="n1"} 0.3
`, uuid0, uuid1)

func TestScrapeAndAttach(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, exporterOutput)
	}))
	defer srv.Close()
	r := New(srv.URL + "/metrics").Collect(context.Background())
	if r.Status.State != telemetryv1.CollectorStatus_STATE_OK {
		t.Fatalf("%v: %s", r.Status.State, r.Status.Message)
	}
	gpus := []*telemetryv1.GPU{
		{Uuid: uuid0},
		{Uuid: uuid1, MigInstances: []*telemetryv1.MIGInstance{{GpuInstanceId: 1}, {GpuInstanceId: 13}, {GpuInstanceId: 5}}},
	}
	Attach(gpus, r.Values)
	p := gpus[0].Profiling
	if p.GetGraphicsEngineActive() != 0.812345 || p.GetTensorActive() != 0.5 || p.GetDramActive() != 0.3 {
		t.Errorf("GPU 0: %v", p)
	}
	if gpus[1].Profiling != nil {
		t.Errorf("GPU 1 in MIG mode got whole-GPU values %v", gpus[1].Profiling)
	}
	m := gpus[1].MigInstances
	if m[0].Profiling.GetGraphicsEngineActive() != 0.25 || m[0].Profiling.TensorActive != nil {
		t.Errorf("MIG 1 (NaN tensor must be left unset): %v", m[0].Profiling)
	}
	if m[1].Profiling.GetGraphicsEngineActive() != 1 {
		t.Errorf("MIG 13: a ratio above 1 is clamped, got %v", m[1].Profiling)
	}
	if m[2].Profiling != nil {
		t.Errorf("MIG 5 has no samples, got %v", m[2].Profiling)
	}
}

func TestDisabledAndErrors(t *testing.T) {
	if r := New("").Collect(context.Background()); r.Status.State != telemetryv1.CollectorStatus_STATE_DISABLED {
		t.Errorf("no URL: %v", r.Status.State)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/broken" {
			fmt.Fprint(w, "DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu=\"0\" 1\n")
			return
		}
		http.Error(w, "no", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	for path, want := range map[string]string{"/metrics": "503", "/broken": "parse"} {
		r := New(srv.URL + path).Collect(context.Background())
		if r.Status.State != telemetryv1.CollectorStatus_STATE_ERROR || !strings.Contains(r.Status.Message, want) {
			t.Errorf("%s: %v %q", path, r.Status.State, r.Status.Message)
		}
	}
	addr := srv.Listener.Addr().String()
	srv.Close()
	if r := New("http://" + addr + "/metrics").Collect(context.Background()); r.Status.State != telemetryv1.CollectorStatus_STATE_ERROR {
		t.Errorf("exporter down: %v", r.Status.State)
	}
}

// An answer larger than the scraper reads is an error saying so, not the
// values that happened to fit: cut at a line boundary it parses, and GPUs
// whose lines came later would silently have no values.
func TestAnswerTooLarge(t *testing.T) {
	line := "# " + strings.Repeat("x", 61) + "\n" // 64 bytes: maxBody ends on a line boundary
	padding := strings.Repeat(line, maxBody/len(line))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/midline" {
			fmt.Fprint(w, "#") // the limit falls inside a line
		}
		fmt.Fprint(w, padding)
		fmt.Fprint(w, exporterOutput)
	}))
	defer srv.Close()
	// Reading 8 MiB can take longer than a scrape may on a busy test
	// machine (the race detector): that is not what this test is about.
	scraper := func(url string) *Scraper {
		s := New(url)
		s.client.Timeout = time.Minute
		return s
	}
	for _, path := range []string{"/metrics", "/midline"} {
		r := scraper(srv.URL + path).Collect(context.Background())
		if r.Status.State != telemetryv1.CollectorStatus_STATE_ERROR || !strings.Contains(r.Status.Message, "larger than 8 MiB") || r.Values != nil {
			t.Errorf("%s: %v %q with %d values", path, r.Status.State, r.Status.Message, len(r.Values))
		}
	}
	// Exactly the limit is fine.
	srv2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, exporterOutput)
		fmt.Fprint(w, "# "+strings.Repeat("x", maxBody-len(exporterOutput)-3)+"\n")
	}))
	defer srv2.Close()
	if r := scraper(srv2.URL).Collect(context.Background()); r.Status.State != telemetryv1.CollectorStatus_STATE_OK || len(r.Values) == 0 {
		t.Errorf("answer of exactly %d bytes: %v %q", maxBody, r.Status.State, r.Status.Message)
	}
}

// dcgm-exporter run with --use-old-namespace labels the GPU "uuid", not
// "UUID"; the fields keep their names. Its values are read all the same.
func TestOldNamespaceUUIDLabel(t *testing.T) {
	old := strings.ReplaceAll(exporterOutput, `UUID="`, `uuid="`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, old) }))
	defer srv.Close()
	r := New(srv.URL).Collect(context.Background())
	if r.Status.State != telemetryv1.CollectorStatus_STATE_OK {
		t.Fatalf("%v: %s", r.Status.State, r.Status.Message)
	}
	gpus := []*telemetryv1.GPU{{Uuid: uuid0}, {Uuid: uuid1, MigInstances: []*telemetryv1.MIGInstance{{GpuInstanceId: 1}}}}
	Attach(gpus, r.Values)
	if p := gpus[0].Profiling; p.GetGraphicsEngineActive() != 0.812345 || p.GetTensorActive() != 0.5 || p.GetDramActive() != 0.3 {
		t.Errorf("GPU 0: %v", p)
	}
	if p := gpus[1].MigInstances[0].Profiling; p.GetGraphicsEngineActive() != 0.25 {
		t.Errorf("MIG 1: %v", p)
	}
}

// An answer that cannot give a value, or gives none for this node's GPUs,
// is an error saying why, not an OK collector with nothing in it.
func TestAnswerWithoutThisNodesValuesSaysWhy(t *testing.T) {
	answers := map[string]string{
		// node-exporter's port, or the profiling fields not configured
		"/no-fields": "# TYPE node_load1 gauge\nnode_load1 0.5\nDCGM_FI_DEV_GPU_UTIL{gpu=\"0\",UUID=\"" + uuid0 + "\"} 3\n",
		"/no-uuid":   "DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu=\"0\",device=\"nvidia0\"} 0.5\n",
		"/other":     "DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu=\"0\",UUID=\"" + uuid1 + "\"} 0.5\n",
		"/mine":      "DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu=\"0\",UUID=\"" + uuid0 + "\"} 0.5\n",
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, answers[r.URL.Path]) }))
	defer srv.Close()
	for path, want := range map[string]string{
		"/no-fields": "none of DCGM_FI_PROF_GR_ENGINE_ACTIVE, DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, DCGM_FI_PROF_DRAM_ACTIVE",
		"/no-uuid":   "UUID",
		"/other":     "none of this node's GPUs (it answers for " + uuid1,
		"/mine":      "",
	} {
		r := &telemetryv1.NodeReport{Gpus: []*telemetryv1.GPU{{Uuid: uuid0}}}
		New(srv.URL+path).Fill(context.Background(), r)
		if want == "" {
			if r.Profiling.GetState() != telemetryv1.CollectorStatus_STATE_OK || r.Gpus[0].Profiling.GetGraphicsEngineActive() != 0.5 {
				t.Errorf("%s: %v %q, GPU %v", path, r.Profiling.GetState(), r.Profiling.GetMessage(), r.Gpus[0].Profiling)
			}
			continue
		}
		if r.Profiling.GetState() != telemetryv1.CollectorStatus_STATE_ERROR || !strings.Contains(r.Profiling.GetMessage(), want) {
			t.Errorf("%s: %v %q, want an error saying %q", path, r.Profiling.GetState(), r.Profiling.GetMessage(), want)
		}
	}
}

// A slow exporter does not hold up the report: after the first scrape a
// collection waits for its scrape only briefly and takes the last answer,
// which a scrape that fails (the client's timeout) replaces with its error.
func TestSlowExporterDoesNotHoldUpTheReport(t *testing.T) {
	var slow atomic.Bool
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow.Load() {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		fmt.Fprint(w, exporterOutput)
	}))
	defer srv.Close()
	defer close(release)
	s := New(srv.URL)
	s.client.Timeout = 2 * time.Second
	fill := func() (*telemetryv1.NodeReport, time.Duration) {
		r := &telemetryv1.NodeReport{Gpus: []*telemetryv1.GPU{{Uuid: uuid0}}}
		start := time.Now()
		s.Fill(context.Background(), r)
		return r, time.Since(start)
	}
	if r, _ := fill(); r.Profiling.GetState() != telemetryv1.CollectorStatus_STATE_OK || r.Gpus[0].Profiling == nil {
		t.Fatalf("fast exporter: %v %q", r.Profiling.GetState(), r.Profiling.GetMessage())
	}
	slow.Store(true)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, took := fill()
		if took > time.Second {
			t.Fatalf("a collection waited %v for a slow exporter", took)
		}
		if r.Profiling.GetState() == telemetryv1.CollectorStatus_STATE_ERROR {
			if !strings.Contains(r.Profiling.GetMessage(), "Timeout") || r.Gpus[0].Profiling != nil {
				t.Fatalf("after the timeout: %q with %v", r.Profiling.GetMessage(), r.Gpus[0].Profiling)
			}
			break
		}
		if r.Gpus[0].Profiling == nil {
			t.Fatalf("while the exporter is slow: %v %q and no values", r.Profiling.GetState(), r.Profiling.GetMessage())
		}
		if time.Now().After(deadline) {
			t.Fatal("the scrape's timeout never showed in the report")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

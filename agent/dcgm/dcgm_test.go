package dcgm

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
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

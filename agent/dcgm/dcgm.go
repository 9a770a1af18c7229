// Package dcgm reads DCGM profiling fields (how busy the SMs, tensor cores
// and memory really are) from a dcgm-exporter /metrics endpoint, when the
// node runs one. NVML's utilisation only says whether a kernel ran; these
// say how much of the GPU it used.
package dcgm

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Fields Penny reads, and the labels dcgm-exporter puts on them.
const (
	FieldGraphicsEngineActive = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
	FieldTensorActive         = "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"
	FieldDRAMActive           = "DCGM_FI_PROF_DRAM_ACTIVE"
	labelUUID                 = "UUID"
	labelGPUInstance          = "GPU_I_ID"
)

// maxBody bounds a scrape; an 8-GPU node's exporter answers in tens of KB.
const maxBody = 8 << 20

// Key names a GPU (GPUInstance empty) or one of its MIG GPU instances.
type Key struct {
	UUID        string
	GPUInstance string
}

// Scraper reads one dcgm-exporter endpoint.
type Scraper struct {
	url    string
	client *http.Client
}

// Result is what one scrape found.
type Result struct {
	Status *telemetryv1.CollectorStatus
	Values map[Key]*telemetryv1.Profiling
}

// New returns a scraper for url ("http://127.0.0.1:9400/metrics"); with an
// empty url every collection reports the DISABLED state.
func New(url string) *Scraper {
	return &Scraper{url: url, client: &http.Client{Timeout: 3 * time.Second}}
}

// Collect scrapes once. It never fails: problems end up in Result.Status.
func (s *Scraper) Collect(ctx context.Context) Result {
	if s.url == "" {
		return Result{Status: &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_DISABLED}}
	}
	values, err := s.scrape(ctx)
	if err != nil {
		return Result{Status: &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_ERROR, Message: fmt.Sprintf("dcgm-exporter %s: %v", s.url, err)}}
	}
	return Result{Status: &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_OK}, Values: values}
}

// Fill implements agent/report.Source: it scrapes and attaches the values
// to the report's GPUs, which must already be there.
func (s *Scraper) Fill(ctx context.Context, r *telemetryv1.NodeReport) {
	res := s.Collect(ctx)
	r.Profiling = res.Status
	Attach(r.Gpus, res.Values)
}

func (s *Scraper) scrape(ctx context.Context) (map[Key]*telemetryv1.Profiling, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	// Read one byte past the limit to tell an answer that ends there from
	// one that goes on: cut at a line boundary, the part that fits parses,
	// and the GPUs whose lines came later would silently have no values.
	body := &countingReader{r: io.LimitReader(resp.Body, maxBody+1)}
	families, err := parser.TextToMetricFamilies(body)
	if body.n > maxBody {
		return nil, fmt.Errorf("answer larger than %d MiB", maxBody>>20)
	}
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return Extract(families), nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Extract picks Penny's fields out of parsed metric families.
func Extract(families map[string]*dto.MetricFamily) map[Key]*telemetryv1.Profiling {
	out := map[Key]*telemetryv1.Profiling{}
	set := func(field string, assign func(p *telemetryv1.Profiling, v *float64)) {
		mf, ok := families[field]
		if !ok {
			return
		}
		for _, m := range mf.GetMetric() {
			var k Key
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case labelUUID:
					k.UUID = l.GetValue()
				case labelGPUInstance:
					k.GPUInstance = l.GetValue()
				}
			}
			if k.UUID == "" {
				continue
			}
			v := value(m)
			if math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			p, ok := out[k]
			if !ok {
				p = &telemetryv1.Profiling{}
				out[k] = p
			}
			assign(p, proto.Float64(min(max(v, 0), 1)))
		}
	}
	set(FieldGraphicsEngineActive, func(p *telemetryv1.Profiling, v *float64) { p.GraphicsEngineActive = v })
	set(FieldTensorActive, func(p *telemetryv1.Profiling, v *float64) { p.TensorActive = v })
	set(FieldDRAMActive, func(p *telemetryv1.Profiling, v *float64) { p.DramActive = v })
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue()
	}
	return math.NaN()
}

// Attach puts scraped values on the GPUs and MIG instances they belong to.
func Attach(gpus []*telemetryv1.GPU, values map[Key]*telemetryv1.Profiling) {
	for _, g := range gpus {
		g.Profiling = values[Key{UUID: g.Uuid}]
		for _, m := range g.MigInstances {
			m.Profiling = values[Key{UUID: g.Uuid, GPUInstance: strconv.Itoa(int(m.GpuInstanceId))}]
		}
	}
}

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
	"strings"
	"sync"
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
	// labelOldUUID is the UUID label of dcgm-exporter run with
	// --use-old-namespace (its 1.x label names); the fields keep their
	// names.
	labelOldUUID     = "uuid"
	labelGPUInstance = "GPU_I_ID"
)

// fields are the ones Penny reads, for messages.
var fields = []string{FieldGraphicsEngineActive, FieldTensorActive, FieldDRAMActive}

// maxBody bounds a scrape; an 8-GPU node's exporter answers in tens of KB.
const maxBody = 8 << 20

// Key names a GPU (GPUInstance empty) or one of its MIG GPU instances.
type Key struct {
	UUID        string
	GPUInstance string
}

// DefaultWait is how long a report waits for the scrape its collection
// started before it takes the last one that finished.
const DefaultWait = 250 * time.Millisecond

// Scraper reads one dcgm-exporter endpoint.
type Scraper struct {
	url    string
	client *http.Client
	// wait bounds how long Fill waits for a scrape (DefaultWait).
	wait time.Duration

	mu sync.Mutex
	// scraping is closed when the scrape in flight ends; nil when none is.
	scraping chan struct{}
	// last is what the last scrape that finished found; nil before one.
	last *Result
}

// Result is what one scrape found.
type Result struct {
	Status *telemetryv1.CollectorStatus
	Values map[Key]*telemetryv1.Profiling
}

// New returns a scraper for url ("http://127.0.0.1:9400/metrics"); with an
// empty url every collection reports the DISABLED state.
func New(url string) *Scraper {
	return &Scraper{url: url, client: &http.Client{Timeout: 3 * time.Second}, wait: DefaultWait}
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

// Fill implements agent/report.Source: it attaches the values of the
// latest scrape to the report's GPUs, which must already be there. The
// report waits for a slow exporter no longer than the wait (only the first
// report waits for the first scrape to end, within the client's timeout):
// profiling is a nicety, and a report held up for seconds every collection
// would delay what matters (a pod taking a GPU, an XID) as long. The values
// used are at most the client's timeout plus a collect interval old; a
// scrape that failed replaces them with its error.
func (s *Scraper) Fill(ctx context.Context, r *telemetryv1.NodeReport) {
	res := s.latest(ctx)
	r.Profiling = res.Status
	Attach(r.Gpus, res.Values)
	if other := foreignGPU(r.Gpus, res.Values); other != "" {
		// A Service URL (one node's exporter, another's at the next
		// scrape) or another node's IP: the values are not this node's.
		r.Profiling = &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_ERROR, Message: fmt.Sprintf(
			"dcgm-exporter %s answers for none of this node's GPUs (it answers for %s, among others): give --dcgm-exporter-url this node's exporter, e.g. http://$(NODE_IP):9400/metrics, not a Service", s.url, other)}
	}
}

// foreignGPU returns the least GPU values has samples of when none of them
// is one of gpus, and "" otherwise. (The least, so that the message of an
// unchanged answer is the same and does not count as a change.)
func foreignGPU(gpus []*telemetryv1.GPU, values map[Key]*telemetryv1.Profiling) string {
	if len(gpus) == 0 {
		return ""
	}
	other := ""
	for k := range values {
		for _, g := range gpus {
			if g.Uuid == k.UUID {
				return ""
			}
		}
		if other == "" || k.UUID < other {
			other = k.UUID
		}
	}
	return other
}

// latest starts a scrape unless one is in flight, waits for it within the
// wait (without one to fall back on, until it ends), and returns the last
// scrape that finished.
func (s *Scraper) latest(ctx context.Context) Result {
	if s.url == "" {
		return s.Collect(ctx)
	}
	s.mu.Lock()
	done := s.scraping
	if done == nil {
		done = make(chan struct{})
		s.scraping = done
		go func() {
			res := s.Collect(ctx)
			s.mu.Lock()
			defer s.mu.Unlock()
			s.last, s.scraping = &res, nil
			close(done)
		}()
	}
	first := s.last == nil
	s.mu.Unlock()
	if first {
		// Collect ends within the client's timeout, or with ctx.
		<-done
	} else {
		select {
		case <-done:
		case <-time.After(s.wait):
		case <-ctx.Done():
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return *s.last
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
	if err := checkFields(families); err != nil {
		return nil, err
	}
	return Extract(families), nil
}

// checkFields says what is wrong with an answer Extract would find nothing
// in, where the exporter is not serving what Penny reads: without this the
// collector would read OK with no values, and nobody would know why.
func checkFields(families map[string]*dto.MetricFamily) error {
	found := false
	for _, f := range fields {
		mf, ok := families[f]
		if !ok {
			continue
		}
		found = true
		for _, m := range mf.GetMetric() {
			if uuidOf(m) != "" {
				return nil
			}
		}
	}
	if !found {
		return fmt.Errorf("the answer has none of %s: is the URL dcgm-exporter's, and are these profiling fields in its counters file (GPUs without DCGM profiling support have none)?", strings.Join(fields, ", "))
	}
	return fmt.Errorf("no sample of %s has a %s (or %s) label naming its GPU", strings.Join(fields, ", "), labelUUID, labelOldUUID)
}

// uuidOf returns the GPU UUID a sample is labelled with, "" if none.
func uuidOf(m *dto.Metric) string {
	old := ""
	for _, l := range m.GetLabel() {
		switch l.GetName() {
		case labelUUID:
			if l.GetValue() != "" {
				return l.GetValue()
			}
		case labelOldUUID:
			old = l.GetValue()
		}
	}
	return old
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
			k := Key{UUID: uuidOf(m)}
			for _, l := range m.GetLabel() {
				if l.GetName() == labelGPUInstance {
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

package sim

import (
	"encoding/csv"
	"fmt"
	"io"
	"strings"
)

// Trace formats LoadTrace reads.
const (
	// FormatAuto tells the format from the file's first row.
	FormatAuto   = "auto"
	FormatOpenb  = "openb"
	FormatPhilly = "philly"
	// FormatSpotGPU is the job list of Alibaba's trace of AI jobs on Spot
	// GPUs (LoadSpotGPU).
	FormatSpotGPU = "alibaba-spot-gpu"
	// FormatHelios is the job log of SenseTime's Helios GPU datacenter
	// (LoadHelios).
	FormatHelios = "helios"
)

// openbPodColumns are the columns LoadOpenbPods needs.
var openbPodColumns = []string{"name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "creation_time"}

// LoadTrace reads a workload trace of the given format (FormatAuto: told
// from the file).
func LoadTrace(path, format string, philly PhillyOptions) (*Trace, error) {
	if format == FormatAuto {
		var err error
		if format, err = DetectFormat(path); err != nil {
			return nil, err
		}
	}
	switch format {
	case FormatOpenb:
		return LoadOpenbPods(path)
	case FormatPhilly:
		return LoadPhilly(path, philly)
	case FormatSpotGPU:
		return LoadSpotGPU(path, philly)
	case FormatHelios:
		return LoadHelios(path, philly)
	}
	return nil, fmt.Errorf("unknown --format %q; valid formats: %s, %s, %s, %s, %s", format, FormatAuto, FormatOpenb, FormatPhilly, FormatSpotGPU, FormatHelios)
}

// DetectFormat tells a trace's format from its first row: the header of an
// openb pod list, of an Alibaba Spot GPU job list, of a Helios job log or of
// a Philly-derived job list, or a Philly row without a header (numbers where
// timestamp, duration and num_gpus go).
func DetectFormat(path string) (string, error) {
	f, err := openTraceFile(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	r := csv.NewReader(skipBOM(f))
	r.TrimLeadingSpace = true
	r.FieldsPerRecord = -1
	row, err := r.Read()
	if err == io.EOF {
		return "", fmt.Errorf("%s: empty file: expected an openb pod list, a Philly-derived job list, an Alibaba Spot GPU job list or a Helios job log", path)
	}
	if err != nil {
		return "", csvError(path, err)
	}
	cols := map[string]bool{}
	for _, h := range row {
		cols[columnName(h)] = true
	}
	has := func(names ...string) bool {
		for _, n := range names {
			if !cols[n] {
				return false
			}
		}
		return true
	}
	switch {
	case has("num_gpu", "creation_time"):
		return FormatOpenb, nil
	case has(SpotGPUColumns[:4]...):
		return FormatSpotGPU, nil
	case has(heliosHeader...):
		return FormatHelios, nil
	case has(PhillyColumns[:3]...), numericPrefix(row, 3):
		return FormatPhilly, nil
	}
	return "", fmt.Errorf("%s:1: cannot tell the trace's format from its first row %q%s: an openb pod list has a header with the columns %s, a Philly-derived job list the columns %s (its header may be left out), an Alibaba Spot GPU job list (cluster-trace-v2026-spot-gpu) at least the columns %s, a Helios job log (cluster_log.csv) at least the columns %s; fix the header or name the format with --format",
		path, strings.Join(row, ","), separatorHint(row), strings.Join(openbPodColumns, ","), strings.Join(PhillyColumns, ","), strings.Join(SpotGPUColumns[:4], ","), strings.Join(heliosHeader, ","))
}

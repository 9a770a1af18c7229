package gpu

import (
	"fmt"
	"strconv"
	"strings"
)

// The penny.dev/gpu-assignment annotation lists the devices a pod holds on
// its node, comma-separated, one entry per device (see docs/architecture.md):
//
//	<gpu>                     a whole GPU                "0,1,2,3"
//	<gpu>:<milli>m            a share of one GPU         "3:460m"
//	<gpu>:<profile>@<start>   a MIG instance             "0:3g.40gb@4,1:1g.10gb@0"
//
// <gpu> is the device index on the node (0-based, as NVML and the device
// plugin number them); <start> is the memory-slice offset of the instance.

// String renders the annotation value.
func (a Assignment) String() string {
	var b strings.Builder
	for i, s := range a {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s.GPU))
		switch {
		case s.MIG.Profile != "":
			b.WriteByte(':')
			b.WriteString(s.MIG.String())
		case s.Milli != MilliPerGPU:
			b.WriteByte(':')
			b.WriteString(strconv.FormatInt(s.Milli, 10))
			b.WriteByte('m')
		}
	}
	return b.String()
}

// ParseAssignment reads an annotation value written by Assignment.String.
func ParseAssignment(v string) (Assignment, error) {
	if strings.TrimSpace(v) == "" {
		return nil, fmt.Errorf("%s is empty: expected e.g. \"0,1\", \"3:460m\" or \"0:3g.40gb@4\"", AnnotationAssignment)
	}
	var a Assignment
	for i, tok := range strings.Split(v, ",") {
		s, err := parseSlot(strings.TrimSpace(tok))
		if err != nil {
			return nil, fmt.Errorf("%s %q, entry %d (%q): %w", AnnotationAssignment, v, i+1, tok, err)
		}
		a = append(a, s)
	}
	return a, nil
}

func parseSlot(tok string) (Slot, error) {
	idx, rest, hasRest := strings.Cut(tok, ":")
	g, err := strconv.Atoi(idx)
	if err != nil || g < 0 {
		return Slot{}, fmt.Errorf("GPU index %q is not a non-negative integer", idx)
	}
	if !hasRest {
		return Slot{GPU: g, Milli: MilliPerGPU}, nil
	}
	if prof, start, ok := strings.Cut(rest, "@"); ok {
		p, err := ParseProfileName(prof)
		if err != nil {
			return Slot{}, err
		}
		st, err := strconv.Atoi(start)
		if err != nil || st < 0 || st >= MemorySlices {
			return Slot{}, fmt.Errorf("MIG offset %q must be 0..%d", start, MemorySlices-1)
		}
		return Slot{GPU: g, MIG: Placement{Profile: p.Name, Start: st}}, nil
	}
	m, ok := strings.CutSuffix(rest, "m")
	milli, err := strconv.ParseInt(m, 10, 64)
	if !ok || err != nil || milli < 1 || milli >= MilliPerGPU {
		return Slot{}, fmt.Errorf("share %q must be <milli>m with milli 1..%d, e.g. 460m", rest, MilliPerGPU-1)
	}
	return Slot{GPU: g, Milli: milli}, nil
}

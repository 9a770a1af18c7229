package pricing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pennysched/penny/pkg/yamldoc"
)

// The catalog file format (see deploy/pricing/catalog.yaml):
//
//	apiVersion: penny.dev/v1alpha1
//	kind: PriceCatalog
//	splitRatios: {cpuCoreHour: 0.031611, ramGiBHour: 0.004237, gpuHour: 0.95}
//	defaultInterruption: ">20%"
//	instanceTypes:
//	- {name: p4d.24xlarge, provider: aws, gpus: 8, gpuModel: A100-40GB, vcpus: 96, memoryGiB: 1152}
//	prices:
//	- {instanceType: p4d.24xlarge, capacityType: on-demand, region: us-east-1, hourly: 32.7726,
//	   source: "...", date: "2026-11-28"}
const (
	FileAPIVersion = "penny.dev/v1alpha1"
	FileKind       = "PriceCatalog"
)

type fileCatalog struct {
	APIVersion          string         `yaml:"apiVersion"`
	Kind                string         `yaml:"kind"`
	SplitRatios         *fileRatios    `yaml:"splitRatios"`
	DefaultInterruption string         `yaml:"defaultInterruption"`
	InstanceTypes       []fileInstance `yaml:"instanceTypes"`
	Prices              []filePrice    `yaml:"prices"`
}

// fileRatios leaves a field out as nil: a block that sets only some
// ratios keeps OpenCost's for the rest, rather than 0 (a GPU priced at 0).
type fileRatios struct {
	CPUCoreHour *float64 `yaml:"cpuCoreHour"`
	RAMGiBHour  *float64 `yaml:"ramGiBHour"`
	GPUHour     *float64 `yaml:"gpuHour"`
}

type fileInstance struct {
	Name      string  `yaml:"name"`
	Provider  string  `yaml:"provider"`
	GPUs      int     `yaml:"gpus"`
	GPUModel  string  `yaml:"gpuModel"`
	VCPUs     float64 `yaml:"vcpus"`
	MemoryGiB float64 `yaml:"memoryGiB"`
}

type filePrice struct {
	InstanceType string   `yaml:"instanceType"`
	CapacityType string   `yaml:"capacityType"`
	Region       string   `yaml:"region"`
	Zone         string   `yaml:"zone"`
	Hourly       *float64 `yaml:"hourly"`
	Interruption string   `yaml:"interruption"`
	Source       string   `yaml:"source"`
	Date         string   `yaml:"date"`
}

// LoadFile reads and validates a catalog file.
func LoadFile(path string) (*Catalog, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, path)
}

// Parse reads and validates a catalog; name (a file or ConfigMap) prefixes
// every error, with the line and path of the offending field.
func Parse(data []byte, name string) (*Catalog, error) {
	var f fileCatalog
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var root yaml.Node
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: the price catalog is empty; expected apiVersion: %s, kind: %s, instanceTypes and prices", name, FileAPIVersion, FileKind)
		}
		if yaml.Unmarshal(data, &root) != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		if len(root.Content) > 0 && root.Content[0].Kind != yaml.MappingNode {
			n := root.Content[0]
			return nil, fmt.Errorf("%s:%d: the price catalog is %s; want a map of fields: apiVersion: %s, kind: %s, instanceTypes and prices (docs/spot.md, Price catalog)",
				name, n.Line, yamldoc.Describe(n), FileAPIVersion, FileKind)
		}
		return nil, yamldoc.DecodeError(name, &root, &f, err, func(p yamldoc.Problem) string {
			return fmt.Sprintf("unknown field %q (check its spelling; docs/spot.md lists a catalog's fields)", p.Unknown)
		})
	}
	_ = yaml.Unmarshal(data, &root) // the strict decode above already succeeded

	bad := &CatalogError{}
	// at places a problem at its field, or at the row or list that leaves
	// the field out.
	at := func(p Problem) {
		p.File, p.Line = name, yamldoc.LineOf(&root, p.Path())
		bad.Problems = append(bad.Problems, p)
	}
	// A document after the first would be ignored, its rows with it (a
	// catalog with an updated copy appended after "---" loaded the old
	// one, silently).
	if line, err := yamldoc.Extra(dec); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	} else if line > 0 {
		bad.Problems = append(bad.Problems, Problem{File: name, Line: line, List: "catalog", Index: -1,
			Msg: fmt.Sprintf("a second YAML document starts at line %d: a price catalog is one document; merge its instanceTypes and prices into the first or remove it", line)})
	}
	if f.APIVersion != FileAPIVersion {
		at(Problem{List: "apiVersion", Index: -1, Msg: fmt.Sprintf("%q: want apiVersion: %s", f.APIVersion, FileAPIVersion)})
	}
	if f.Kind != FileKind {
		at(Problem{List: "kind", Index: -1, Msg: fmt.Sprintf("%q: want kind: %s", f.Kind, FileKind)})
	}
	if len(f.Prices) == 0 {
		// Loaded, it would leave every node unpriced; the last good
		// catalog stays in force instead.
		at(Problem{List: "prices", Index: -1, Msg: "empty: list at least one {instanceType, capacityType, region, hourly}"})
	}
	ratios := OpenCostSplitRatios
	if r := f.SplitRatios; r != nil {
		for _, v := range []struct {
			set *float64
			to  *float64
		}{{r.CPUCoreHour, &ratios.CPUCoreHour}, {r.RAMGiBHour, &ratios.RAMGiBHour}, {r.GPUHour, &ratios.GPUHour}} {
			if v.set != nil {
				*v.to = *v.set
			}
		}
	}
	def := BucketUnknown
	if f.DefaultInterruption != "" {
		b, err := ParseBucket(f.DefaultInterruption)
		if err != nil {
			at(Problem{List: "defaultInterruption", Index: -1, Msg: err.Error()})
		}
		def = b
	}
	types := make([]InstanceType, len(f.InstanceTypes))
	for i, t := range f.InstanceTypes {
		types[i] = InstanceType(t)
		// YAML decodes 1.5 into an int as 1: an instance written with
		// gpus: 0.5 would be priced as one without GPUs.
		if v := yamldoc.ValueAt(&root, fmt.Sprintf("instanceTypes[%d].gpus", i)); v != nil && v.Tag != "!!int" {
			at(Problem{List: "instanceTypes", Index: i, Field: "gpus",
				Msg: fmt.Sprintf("%s: gpus is %s: give the whole number of GPUs the instance has (a share of a GPU is the pod's request, not the instance's)", t.Name, yamldoc.Describe(v))})
		}
	}
	entries := make([]Entry, len(f.Prices))
	for i, p := range f.Prices {
		e := Entry{InstanceType: p.InstanceType, Capacity: CapacityType(p.CapacityType), Region: p.Region, Zone: p.Zone, Source: p.Source, Date: p.Date}
		if p.Hourly == nil {
			at(Problem{List: "prices", Index: i, Field: "hourly", Msg: fmt.Sprintf("%s %s: hourly is missing; give the node's price in USD per hour", p.InstanceType, p.CapacityType)})
		} else {
			e.Hourly = *p.Hourly
		}
		if p.Interruption != "" {
			b, err := ParseBucket(p.Interruption)
			if err != nil {
				at(Problem{List: "prices", Index: i, Field: "interruption", Msg: err.Error()})
			}
			e.Interruption = b
		}
		// A price is as good as the day it was taken: a date that is
		// not one cannot be checked against the source's.
		if _, err := time.Parse(time.DateOnly, p.Date); p.Date != "" && err != nil {
			at(Problem{List: "prices", Index: i, Field: "date", Msg: fmt.Sprintf("%s %s: %q is not a date: give the day the price was taken as YYYY-MM-DD, e.g. 2026-11-28", p.InstanceType, p.CapacityType, p.Date)})
		}
		entries[i] = e
	}
	c, err := NewCatalog(ratios, types, entries, def)
	if err != nil {
		var ce *CatalogError
		if !errors.As(err, &ce) {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		for _, p := range ce.Problems {
			// A missing hourly is reported above; NewCatalog saw 0.
			if p.List == "prices" && p.Field == "hourly" && p.Index < len(f.Prices) && f.Prices[p.Index].Hourly == nil {
				continue
			}
			at(p)
		}
	}
	if len(bad.Problems) > 0 {
		return nil, bad
	}
	return c, nil
}

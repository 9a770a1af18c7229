package localcluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/pkg/yamldoc"
)

// Spec describes the simulated fleet of a local cluster: pools of identical
// nodes, each with the labels and capacity a real cloud GPU node has.
type Spec struct {
	// Name is shown in output; it does not affect the nodes.
	Name string `yaml:"name"`
	// Region goes to topology.kubernetes.io/region on every node.
	Region string `yaml:"region"`
	Pools  []Pool `yaml:"pools"`
}

// Capacity types as Karpenter spells them in karpenter.sh/capacity-type.
const (
	CapacityOnDemand = "on-demand"
	CapacitySpot     = "spot"
	CapacityReserved = "reserved"
)

// Pool is a group of identical nodes.
type Pool struct {
	Name         string `yaml:"name"`
	Count        int    `yaml:"count"`
	InstanceType string `yaml:"instanceType"`
	// Cloud sets the node's providerID scheme (aws, gcp, azure); empty means kwok.
	Cloud string `yaml:"cloud"`
	// GPUModel is a model name known to pkg/gpu (e.g. A100-80GB); empty for CPU-only pools.
	GPUModel    string   `yaml:"gpuModel"`
	GPUsPerNode int      `yaml:"gpusPerNode"`
	MIG         *MIGSpec `yaml:"mig"`
	// CapacityType is on-demand, spot or reserved.
	CapacityType string  `yaml:"capacityType"`
	Zone         string  `yaml:"zone"`
	HourlyPrice  float64 `yaml:"hourlyPrice"`
	CPU          string  `yaml:"cpu"`
	Memory       string  `yaml:"memory"`
	// Labels are extra node labels.
	Labels map[string]string `yaml:"labels"`
}

// MIGSpec partitions some of a node's GPUs, the same way on each (the device
// plugin's "mixed" strategy: those GPUs appear only as nvidia.com/mig-*).
type MIGSpec struct {
	// GPUs is how many GPUs of each node are in MIG mode; 0 means all.
	GPUs int `yaml:"gpus"`
	// Layout is the profiles on each MIG GPU, e.g. [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb].
	Layout []string `yaml:"layout"`
	// OnDemand partitions all the node's GPUs when pods ask, instead of with
	// a fixed layout (label penny.dev/mig-partitioning=on-demand): the
	// scheduler picks each instance's placement. Layout must then be empty.
	OnDemand bool `yaml:"onDemand"`
}

// LoadSpec reads and validates a cluster spec file.
func LoadSpec(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cluster spec: %w", err)
	}
	return ParseSpec(path, data)
}

// ParseSpec decodes and validates a cluster spec. Errors name the file, the
// line, the field and what is expected, so a user can fix the file at once.
func ParseSpec(file string, data []byte) (*Spec, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: not valid YAML: %v", file, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var spec Spec
	if err := dec.Decode(&spec); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: the cluster spec is empty; give at least pools:, e.g. deploy/examples/cluster.yaml", file)
		}
		return nil, describeDecodeError(file, &root, err)
	}
	if line, err := yamldoc.Extra(dec); err != nil {
		return nil, fmt.Errorf("%s: not valid YAML: %v", file, err)
	} else if line > 0 {
		return nil, fmt.Errorf("%s:%d: a second YAML document: a cluster spec is one YAML document; put every pool in the first one's list of pools", file, line)
	}
	if errs := spec.validate(); len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = fmt.Sprintf("%s:%d: %s: %s", file, yamldoc.LineOf(&root, e.path), e.path, e.msg)
		}
		return nil, errors.New(strings.Join(msgs, "\n"))
	}
	return &spec, nil
}

// describeDecodeError places yaml's errors at their fields ("file:N:
// pools[0].count: want a whole number, not "many"") and names unknown fields
// in words a user can act on.
func describeDecodeError(file string, root *yaml.Node, err error) error {
	return yamldoc.DecodeError(file, root, &Spec{}, err, func(p yamldoc.Problem) string {
		return fmt.Sprintf("unknown field %q in %s (check its spelling; fields are listed in docs/local-cluster.md)", p.Unknown, strings.TrimPrefix(p.In, "localcluster."))
	})
}

type fieldError struct{ path, msg string }

var (
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// derivedLabels are the node labels Penny sets from a pool's fields; an
// extra label may not contradict them (the demo's CAPACITY column, SpotRisk
// and the GPU packer read them), so the spec names the field to set instead.
var derivedLabels = map[string]string{
	corev1.LabelHostname:           "the node's name, <name>-<index>",
	corev1.LabelInstanceTypeStable: "instanceType",
	corev1.LabelTopologyZone:       "zone",
	corev1.LabelTopologyRegion:     "region (at the top of the spec)",
	LabelCapacityType:              "capacityType",
	LabelPool:                      "name",
	gpu.LabelProduct:               "gpuModel",
	gpu.LabelCount:                 "gpusPerNode",
	gpu.LabelMemory:                "gpuModel",
	gpu.LabelMIGStrategy:           "mig",
	gpu.LabelMIGPartitioning:       "mig.onDemand",
}

// labelValueProblem says why v cannot be a label value, or "".
func labelValueProblem(v string) string {
	if len(validation.IsValidLabelValue(v)) > 0 {
		return "expected at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit"
	}
	return ""
}

func (s *Spec) validate() []fieldError {
	var errs []fieldError
	add := func(path, format string, args ...any) {
		errs = append(errs, fieldError{path, fmt.Sprintf(format, args...)})
	}
	if len(s.Pools) == 0 {
		add("pools", "at least one pool is required")
	}
	if why := labelValueProblem(s.Region); why != "" {
		add("region", "%q cannot be the label topology.kubernetes.io/region: %s", s.Region, why)
	}
	seen := map[string]bool{}
	for i := range s.Pools {
		p := &s.Pools[i]
		at := fmt.Sprintf("pools[%d]", i)
		switch {
		case p.Name == "":
			add(at+".name", "required: a DNS label such as a100-spot")
		case !dnsLabel.MatchString(p.Name) || len(p.Name) > 50:
			add(at+".name", "%q is not a DNS label of at most 50 characters (lower-case letters, digits, '-')", p.Name)
		case seen[p.Name]:
			add(at+".name", "%q is used by another pool; pool names must be unique", p.Name)
		}
		seen[p.Name] = true
		if p.Count < 0 || p.Count > 5000 {
			add(at+".count", "%d is out of range: expected 0..5000 nodes", p.Count)
		}
		if p.InstanceType == "" {
			add(at+".instanceType", "required, e.g. p4d.24xlarge")
		} else if why := labelValueProblem(p.InstanceType); why != "" {
			add(at+".instanceType", "%q cannot be the label %s: %s", p.InstanceType, corev1.LabelInstanceTypeStable, why)
		}
		switch p.Cloud {
		case "", "aws", "gcp", "azure":
		default:
			add(at+".cloud", "%q is not one of aws, gcp, azure (or leave it empty)", p.Cloud)
		}
		switch p.CapacityType {
		case CapacityOnDemand, CapacitySpot, CapacityReserved:
		default:
			add(at+".capacityType", "%q is not one of on-demand, spot, reserved", p.CapacityType)
		}
		if p.Zone == "" {
			add(at+".zone", "required, e.g. us-east-1a")
		} else if why := labelValueProblem(p.Zone); why != "" {
			add(at+".zone", "%q cannot be the label %s: %s", p.Zone, corev1.LabelTopologyZone, why)
		}
		switch {
		case math.IsNaN(p.HourlyPrice) || math.IsInf(p.HourlyPrice, 0):
			add(at+".hourlyPrice", "%v is not a price: expected the node's price in USD per hour, e.g. 40.97", p.HourlyPrice)
		case p.HourlyPrice < 0:
			add(at+".hourlyPrice", "%v is negative: expected the node's price in USD per hour", p.HourlyPrice)
		case p.HourlyPrice > pricing.MaxHourlyPrice:
			// The demo's total, count x price, would overflow to +Inf,
			// which --summary-json cannot write.
			add(at+".hourlyPrice", "%v is more than %v: expected the node's price in USD per hour (not per month, not in cents)", p.HourlyPrice, pricing.MaxHourlyPrice)
		}
		keys := make([]string, 0, len(p.Labels))
		for k := range p.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if len(validation.IsQualifiedName(k)) > 0 {
				add(at+".labels", "%q is not a label key: expected a name such as team, or prefix/name such as example.com/team (names as label values, the prefix a DNS subdomain)", k)
			} else if field, ok := derivedLabels[k]; ok {
				add(at+".labels", "%s is set from %s; set that instead of the label", k, field)
			} else if why := labelValueProblem(p.Labels[k]); why != "" {
				add(at+".labels", "%s: %q is not a label value: %s", k, p.Labels[k], why)
			}
		}
		for _, f := range []struct{ name, val, example string }{{"cpu", p.CPU, "96"}, {"memory", p.Memory, "1152Gi"}} {
			if f.val == "" {
				add(at+"."+f.name, "required, a Kubernetes quantity such as %q", f.example)
				continue
			}
			if q, err := resource.ParseQuantity(f.val); err != nil || q.Sign() <= 0 {
				add(at+"."+f.name, "%q is not a positive Kubernetes quantity such as %q", f.val, f.example)
			}
		}
		errs = append(errs, p.validateGPUs(at)...)
	}
	return errs
}

func (p *Pool) validateGPUs(at string) []fieldError {
	var errs []fieldError
	add := func(path, format string, args ...any) {
		errs = append(errs, fieldError{path, fmt.Sprintf(format, args...)})
	}
	if p.GPUModel == "" {
		if p.GPUsPerNode != 0 {
			add(at+".gpuModel", "required when gpusPerNode is set; one of %s", strings.Join(gpu.ModelNames(), ", "))
		}
		if p.MIG != nil {
			add(at+".mig", "needs a gpuModel that supports MIG")
		}
		return errs
	}
	model, ok := gpu.LookupModel(p.GPUModel)
	if !ok {
		add(at+".gpuModel", "%q is not a known GPU model; expected one of %s", p.GPUModel, strings.Join(gpu.ModelNames(), ", "))
		return errs
	}
	if p.GPUsPerNode < 1 || p.GPUsPerNode > 16 {
		add(at+".gpusPerNode", "%d is out of range: expected 1..16 GPUs per node", p.GPUsPerNode)
	}
	if p.MIG == nil {
		return errs
	}
	if !model.SupportsMIG() {
		add(at+".mig", "%s does not support MIG; MIG models: A100-40GB, A100-80GB, H100-80GB, H100-NVL, H200-141GB", model.Name)
		return errs
	}
	if p.MIG.GPUs < 0 || p.MIG.GPUs > p.GPUsPerNode {
		add(at+".mig.gpus", "%d is out of range: expected 0..gpusPerNode (%d); 0 means all", p.MIG.GPUs, p.GPUsPerNode)
	}
	if p.MIG.OnDemand && p.MIG.GPUs != 0 && p.MIG.GPUs != p.GPUsPerNode {
		add(at+".mig.gpus", "onDemand partitions all GPUs of a node; leave gpus out")
	}
	switch {
	case p.MIG.OnDemand && len(p.MIG.Layout) > 0:
		add(at+".mig.layout", "must be empty with onDemand: true (instances are created as pods ask for them)")
	case p.MIG.OnDemand:
	case len(p.MIG.Layout) == 0:
		add(at+".mig.layout", "at least one profile is required, e.g. [%s], or set onDemand: true", strings.Join(model.ProfileNames()[:2], ", "))
	default:
		if _, err := model.Layout(p.MIG.Layout); err != nil {
			add(at+".mig.layout", "%v", err)
		}
	}
	return errs
}

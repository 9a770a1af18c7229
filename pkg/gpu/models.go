package gpu

import "strings"

// Model is a GPU model as Penny knows it.
type Model struct {
	// Name is Penny's short name, used in cluster specs and price catalogs.
	Name string
	// Product is the value GPU feature discovery puts in nvidia.com/gpu.product.
	Product string
	// MemoryGB is the device memory.
	MemoryGB int
	// MIG lists the MIG profiles, smallest first; empty when the model has no MIG.
	MIG []Profile
}

// SupportsMIG reports whether the model can be partitioned.
func (m *Model) SupportsMIG() bool { return len(m.MIG) > 0 }

// The MIG tables follow NVIDIA's MIG user guide (supported profiles), less
// the +me variants, which take their base profile's place.
var models = []Model{
	{Name: "A100-40GB", Product: "NVIDIA-A100-SXM4-40GB", MemoryGB: 40,
		MIG: migGeometry("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb")},
	{Name: "A100-80GB", Product: "NVIDIA-A100-SXM4-80GB", MemoryGB: 80,
		MIG: migGeometry("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")},
	{Name: "H100-80GB", Product: "NVIDIA-H100-80GB-HBM3", MemoryGB: 80,
		MIG: migGeometry("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")},
	{Name: "H100-NVL", Product: "NVIDIA-H100-NVL", MemoryGB: 94,
		MIG: migGeometry("1g.12gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb")},
	{Name: "H200-141GB", Product: "NVIDIA-H200", MemoryGB: 141,
		MIG: migGeometry("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb")},
	{Name: "L40S", Product: "NVIDIA-L40S", MemoryGB: 48},
	{Name: "L4", Product: "NVIDIA-L4", MemoryGB: 24},
	{Name: "A10G", Product: "NVIDIA-A10G", MemoryGB: 24},
	{Name: "A10", Product: "NVIDIA-A10", MemoryGB: 24},
	{Name: "T4", Product: "Tesla-T4", MemoryGB: 16},
	{Name: "V100-16GB", Product: "Tesla-V100-SXM2-16GB", MemoryGB: 16},
	{Name: "V100-32GB", Product: "Tesla-V100-SXM2-32GB", MemoryGB: 32},
	{Name: "P100", Product: "Tesla-P100-PCIE-16GB", MemoryGB: 16},
}

// LookupModel finds a model by Penny's short name or by its product label,
// ignoring case. Unknown models return false: callers decide whether an
// unknown GPU is an error (a cluster spec) or just has no MIG (a real node).
func LookupModel(name string) (*Model, bool) {
	for i := range models {
		if strings.EqualFold(models[i].Name, name) || strings.EqualFold(models[i].Product, name) {
			return &models[i], true
		}
	}
	return nil, false
}

// ModelNames lists the short names of all known models, for error messages.
func ModelNames() []string {
	out := make([]string, len(models))
	for i := range models {
		out[i] = models[i].Name
	}
	return out
}

package gpu

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// A MIG-capable GPU has 7 compute slices and 8 memory slices. A GPU instance
// of a profile occupies a run of memory slices that must start at one of the
// profile's allowed offsets, so two layouts with the same profiles can differ
// in what still fits: geometry, not just counts, decides.
const (
	ComputeSlices = 7
	MemorySlices  = 8
)

// Profile is one MIG GPU-instance profile on one GPU model.
type Profile struct {
	// Name as the device plugin spells it: "1g.10gb".
	Name string
	// Compute slices (the "1g" part).
	Compute int
	// MemoryGB as in the name (the "10gb" part).
	MemoryGB int
	// Size is the number of memory slices an instance occupies.
	Size int
	// Starts are the memory-slice offsets where an instance may be placed.
	Starts []int
	// Max is how many instances of this profile alone fit on one GPU.
	Max int
}

// Placement is one MIG instance at a memory-slice offset.
type Placement struct {
	Profile string
	Start   int
}

func (p Placement) String() string { return p.Profile + "@" + strconv.Itoa(p.Start) }

// ParseProfileName reads "<g>g.<mem>gb" without knowing the GPU model, so it
// knows compute and memory but not the geometry; Model.Profile has that.
func ParseProfileName(name string) (Profile, error) {
	g, mem, ok := strings.Cut(name, "g.")
	if !ok || !strings.HasSuffix(mem, "gb") {
		return Profile{}, fmt.Errorf("MIG profile %q: expected <g>g.<mem>gb, e.g. 1g.10gb", name)
	}
	c, err := strconv.Atoi(g)
	if err != nil || c < 1 || c > ComputeSlices {
		return Profile{}, fmt.Errorf("MIG profile %q: compute slices must be 1..%d", name, ComputeSlices)
	}
	m, err := strconv.Atoi(strings.TrimSuffix(mem, "gb"))
	if err != nil || m < 1 {
		return Profile{}, fmt.Errorf("MIG profile %q: memory must be a positive number of GB", name)
	}
	// Atoi reads "01" and "+1" as 1, but the device plugin advertises
	// only the plain spelling: a pod asking for nvidia.com/mig-01g.10gb
	// would wait for a resource no node has, and an assignment naming it
	// would match no instance on the GPU.
	if plain := fmt.Sprintf("%dg.%dgb", c, m); name != plain {
		return Profile{}, fmt.Errorf("MIG profile %q: write numbers without signs or leading zeros, as the device plugin does: %s", name, plain)
	}
	return Profile{Name: name, Compute: c, MemoryGB: m}, nil
}

// migGeometry builds a model's profile table. small is the memory of the
// smallest 1g profile; the others follow NVIDIA's fixed shapes.
func migGeometry(names ...string) []Profile {
	var out []Profile
	for _, n := range names {
		p, err := ParseProfileName(n)
		if err != nil {
			panic(err)
		}
		out = append(out, p)
	}
	// The smallest 1g profile takes one memory slice; a 1g profile with more
	// memory takes two.
	small := 0
	for _, p := range out {
		if p.Compute == 1 && (small == 0 || p.MemoryGB < small) {
			small = p.MemoryGB
		}
	}
	for i := range out {
		p := &out[i]
		switch {
		case p.Compute == 1 && p.MemoryGB == small:
			p.Size, p.Starts = 1, []int{0, 1, 2, 3, 4, 5, 6}
		case p.Compute == 1:
			p.Size, p.Starts = 2, []int{0, 2, 4, 6}
		case p.Compute == 2:
			p.Size, p.Starts = 2, []int{0, 2, 4}
		case p.Compute == 3:
			p.Size, p.Starts = 4, []int{0, 4}
		case p.Compute == 4:
			p.Size, p.Starts = 4, []int{0}
		case p.Compute == 7:
			p.Size, p.Starts = 8, []int{0}
		default:
			panic("no MIG geometry for " + p.Name)
		}
		p.Max = len(p.Starts)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Compute != out[j].Compute {
			return out[i].Compute < out[j].Compute
		}
		return out[i].MemoryGB < out[j].MemoryGB
	})
	return out
}

// Profile returns the named profile with this model's geometry.
func (m *Model) Profile(name string) (Profile, bool) {
	for _, p := range m.MIG {
		if p.Name == name {
			return p, true
		}
	}
	return Profile{}, false
}

// ProfileNames lists the model's MIG profiles, smallest first.
func (m *Model) ProfileNames() []string {
	out := make([]string, len(m.MIG))
	for i, p := range m.MIG {
		out[i] = p.Name
	}
	return out
}

// FreeStarts returns the offsets where one more instance of profile fits next
// to the placements already on the GPU.
func (m *Model) FreeStarts(existing []Placement, profile string) ([]int, error) {
	p, ok := m.Profile(profile)
	if !ok {
		return nil, fmt.Errorf("MIG profile %q does not exist on %s; valid profiles: %s", profile, m.Name, strings.Join(m.ProfileNames(), ", "))
	}
	var used [MemorySlices]bool
	compute := 0
	for _, e := range existing {
		ep, ok := m.Profile(e.Profile)
		if !ok {
			return nil, fmt.Errorf("MIG profile %q does not exist on %s", e.Profile, m.Name)
		}
		compute += ep.Compute
		for s := e.Start; s < e.Start+ep.Size && s < MemorySlices; s++ {
			used[s] = true
		}
	}
	if compute+p.Compute > ComputeSlices {
		return nil, nil
	}
	var starts []int
	for _, st := range p.Starts {
		free := true
		for s := st; s < st+p.Size; s++ {
			if used[s] {
				free = false
				break
			}
		}
		if free {
			starts = append(starts, st)
		}
	}
	return starts, nil
}

// Layout places the given profiles on one empty GPU, largest first, or says
// why they do not fit together.
func (m *Model) Layout(profiles []string) ([]Placement, error) {
	if len(m.MIG) == 0 {
		return nil, fmt.Errorf("%s does not support MIG", m.Name)
	}
	order := append([]string(nil), profiles...)
	for _, n := range order {
		if _, ok := m.Profile(n); !ok {
			return nil, fmt.Errorf("MIG profile %q does not exist on %s; valid profiles: %s", n, m.Name, strings.Join(m.ProfileNames(), ", "))
		}
	}
	sort.SliceStable(order, func(i, j int) bool {
		pi, _ := m.Profile(order[i])
		pj, _ := m.Profile(order[j])
		return pi.Size > pj.Size || (pi.Size == pj.Size && pi.Compute > pj.Compute)
	})
	var placed []Placement
	var try func(i int) bool
	try = func(i int) bool {
		if i == len(order) {
			return true
		}
		starts, _ := m.FreeStarts(placed, order[i])
		for _, s := range starts {
			placed = append(placed, Placement{Profile: order[i], Start: s})
			if try(i + 1) {
				return true
			}
			placed = placed[:len(placed)-1]
		}
		return false
	}
	if !try(0) {
		return nil, fmt.Errorf("MIG profiles [%s] do not fit together on one %s (7 compute and 8 memory slices, fixed placements)", strings.Join(profiles, " "), m.Name)
	}
	return placed, nil
}

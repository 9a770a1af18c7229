package pricing

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	resourcehelper "k8s.io/component-helpers/resource"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/pkg/gpu"
)

// InstanceType is what a catalog knows about one machine shape.
type InstanceType struct {
	Name     string
	Provider string
	GPUs     int
	// GPUModel is Penny's short GPU model name (pkg/gpu).
	GPUModel  string
	VCPUs     float64
	MemoryGiB float64
}

// Entry is one price row of a catalog.
type Entry struct {
	InstanceType string
	Capacity     CapacityType
	Region       string
	// Zone is empty for a price that holds in every zone of the region.
	Zone string
	// Hourly is the node's price in USD per hour. For reserved capacity it is
	// the effective committed rate, which is paid whether the node is used
	// or not.
	Hourly float64
	// Interruption is the Spot-Advisor-style bucket of the pool, when the
	// source gives one (Spot only).
	Interruption Bucket
	Source       string
	Date         string
}

// SplitRatios are the relative prices of one vCPU-hour, one GiB-hour of
// memory and one GPU-hour. Only their ratios matter: they split a node price
// the way OpenCost does when only the node's total price is known.
type SplitRatios struct {
	CPUCoreHour float64
	RAMGiBHour  float64
	GPUHour     float64
}

// OpenCostSplitRatios are OpenCost's default component prices (its
// configs/default.json: CPU 0.031611 $/core-h, RAM 0.004237 $/GiB-h, GPU
// 0.95 $/h), used for their ratios only.
var OpenCostSplitRatios = SplitRatios{CPUCoreHour: 0.031611, RAMGiBHour: 0.004237, GPUHour: 0.95}

// Price is what one node costs per hour and its split into components.
type Price struct {
	InstanceType string
	Capacity     CapacityType
	// NodeHourly is the price of the whole node.
	NodeHourly float64
	// GPUHourly, CPUCoreHourly and RAMGiBHourly split NodeHourly over the
	// node's GPUs, vCPUs and memory; they add up to NodeHourly.
	GPUHourly     float64
	CPUCoreHourly float64
	RAMGiBHourly  float64
	Interruption  Bucket
}

// Marginal is what one more hour of a whole node adds to the bill. Reserved
// capacity is already paid for, so it adds nothing and fills first.
func (p Price) Marginal() float64 {
	if p.Capacity == Reserved {
		return 0
	}
	return p.NodeHourly
}

// MarginalFactor scales component prices to marginal ones: 0 for reserved
// capacity, 1 otherwise.
func (p Price) MarginalFactor() float64 {
	if p.Capacity == Reserved {
		return 0
	}
	return 1
}

// Usage is what a workload takes of a node, for pricing.
type Usage struct {
	// GPUMilli is thousandths of a GPU.
	GPUMilli int64
	// CPUMilli is thousandths of a vCPU.
	CPUMilli int64
	// MemoryBytes is memory in bytes.
	MemoryBytes int64
}

// HourlyFor is the OpenCost-style cost of a usage on this node: each
// resource taken times its component price. Callers pass requests, which is
// what the node's owner pays for.
func (p Price) HourlyFor(u Usage) float64 {
	return float64(u.GPUMilli)/gpu.MilliPerGPU*p.GPUHourly +
		float64(u.CPUMilli)/1000*p.CPUCoreHourly +
		float64(u.MemoryBytes)/(1<<30)*p.RAMGiBHourly
}

type priceKey struct {
	instanceType string
	capacity     CapacityType
	region       string
	zone         string
}

// Catalog is an immutable, validated price list. Build one with Parse or
// NewCatalog; a Store hands out the current one.
type Catalog struct {
	ratios  SplitRatios
	types   map[string]InstanceType
	prices  map[priceKey]Entry
	entries int
	// defaultInterruption is the bucket for Spot pools the catalog has no
	// bucket for.
	defaultInterruption Bucket
	// misses holds the priceKeys (zone empty) of nodes found unpriced, so
	// each is reported once per catalog, not at every scheduling cycle;
	// missCount bounds them (maxMisses), as Cluster Autoscaler's template
	// nodes can name anything.
	misses    sync.Map
	missCount atomic.Int32
}

const maxMisses = 256

// NewCatalog validates instance types and entries and builds a catalog.
// Errors name the offending row and say how to fix it; all of them are
// reported at once.
func NewCatalog(ratios SplitRatios, types []InstanceType, entries []Entry, defaultInterruption Bucket) (*Catalog, error) {
	c := &Catalog{
		ratios:              ratios,
		types:               map[string]InstanceType{},
		prices:              map[priceKey]Entry{},
		defaultInterruption: defaultInterruption,
	}
	var bad CatalogError
	// invalid is the row of each instance type whose definition was
	// refused: its price rows point there, not to a missing definition.
	invalid := map[string]int{}
	for i, t := range types {
		if field, err := validateType(t); err != nil {
			bad.add("instanceTypes", i, field, err.Error())
			if _, seen := invalid[t.Name]; t.Name != "" && !seen {
				invalid[t.Name] = i
			}
			continue
		}
		if _, dup := c.types[t.Name]; dup {
			bad.add("instanceTypes", i, "name", fmt.Sprintf("%q is defined twice; keep one definition", t.Name))
			continue
		}
		c.types[t.Name] = t
	}
	for i, e := range entries {
		if j, ok := invalid[e.InstanceType]; ok {
			if _, defined := c.types[e.InstanceType]; !defined {
				bad.add("prices", i, "instanceType", fmt.Sprintf("instance type %q is defined in instanceTypes[%d], which is not valid; fix it there", e.InstanceType, j))
				continue
			}
		}
		if field, err := c.validateEntry(e); err != nil {
			bad.add("prices", i, field, err.Error())
			continue
		}
		k := priceKey{e.InstanceType, e.Capacity, e.Region, e.Zone}
		if _, dup := c.prices[k]; dup {
			bad.add("prices", i, "", fmt.Sprintf("a %s price for %s in %s is listed twice; keep one", e.Capacity, e.InstanceType, where(e.Region, e.Zone)))
			continue
		}
		c.prices[k] = e
	}
	if field, err := validateRatios(ratios); err != nil {
		bad.add("splitRatios", -1, field, err.Error())
	} else if ratios.GPUHour == 0 {
		for _, t := range types {
			if t.GPUs > 0 {
				// Every GPU would be free, and its node's whole price
				// would fall on the CPU and memory of the pods beside it.
				bad.add("splitRatios", -1, "gpuHour", fmt.Sprintf("0 while instance type %s has GPUs: its GPUs would be priced at 0; give gpuHour > 0 (%s)", t.Name, openCostRatios))
				break
			}
		}
	}
	if len(bad.Problems) == 0 {
		// Ratios that are each finite can still split a price into
		// nothing: near the float limits the weights overflow (every
		// component 0, every pod free) or underflow (+Inf and NaN).
		for _, e := range entries {
			if msg := c.splitProblem(e); msg != "" {
				bad.add("splitRatios", -1, "", msg)
				break
			}
		}
	}
	if len(bad.Problems) > 0 {
		return nil, &bad
	}
	c.entries = len(c.prices)
	return c, nil
}

func where(region, zone string) string {
	if zone == "" {
		return "region " + region
	}
	return "zone " + zone + " of region " + region
}

// ValidPrice reports whether x can be a price: a finite number >= 0 (YAML
// reads .nan and .inf as numbers, and NaN compares false with everything).
func ValidPrice(x float64) bool { return x >= 0 && !math.IsInf(x, 1) }

// MaxHourlyPrice is the most a node may cost an hour, in USD: a hundred
// times the dearest GPU instance any cloud lists (about 100). A larger
// price is a typo or a unit mistake (cents, a month), and prices near
// float64's limit made bills and cost metrics overflow to +Inf.
const MaxHourlyPrice = 10000.0

// validateRatios returns the field of r at fault ("" for all of them) and
// what is wrong with it.
func validateRatios(r SplitRatios) (string, error) {
	for _, f := range []struct {
		name string
		v    float64
	}{{"cpuCoreHour", r.CPUCoreHour}, {"ramGiBHour", r.RAMGiBHour}, {"gpuHour", r.GPUHour}} {
		if !ValidPrice(f.v) {
			return f.name, fmt.Errorf("%g: a component price must be a finite number >= 0 (OpenCost's default is %s)", f.v, openCostRatios)
		}
	}
	if r.CPUCoreHour+r.RAMGiBHour == 0 {
		// Every node has vCPUs and memory, but not every node GPUs: a
		// node without any would split its price over nothing, and its
		// pods would cost 0 wherever they run.
		return "", fmt.Errorf("cpuCoreHour and ramGiBHour are both 0: a node without GPUs would have its price split over nothing and its pods priced at 0; give at least one of them > 0 (%s)", openCostRatios)
	}
	return "", nil
}

// openCostRatios names OpenCostSplitRatios, for errors about split ratios.
var openCostRatios = fmt.Sprintf("OpenCost's defaults are cpuCoreHour: %g, ramGiBHour: %g, gpuHour: %g",
	OpenCostSplitRatios.CPUCoreHour, OpenCostSplitRatios.RAMGiBHour, OpenCostSplitRatios.GPUHour)

// validateType returns the field of t at fault and what is wrong with it.
func validateType(t InstanceType) (string, error) {
	switch {
	case t.Name == "":
		return "name", fmt.Errorf("name is empty: give the cloud's instance type name, e.g. p4d.24xlarge")
	case t.GPUs < 0:
		return "gpus", fmt.Errorf("%s: gpus is %d: must be >= 0", t.Name, t.GPUs)
	case !(t.VCPUs > 0) || !(t.MemoryGiB > 0) || math.IsInf(t.VCPUs, 1) || math.IsInf(t.MemoryGiB, 1):
		// Without its shape a node's price cannot be split into CPU and
		// memory prices, and its pods would be priced at 0.
		field := "memoryGiB"
		if !(t.VCPUs > 0) || math.IsInf(t.VCPUs, 1) {
			field = "vcpus"
		}
		return field, fmt.Errorf("%s: vcpus is %g and memoryGiB %g: give both as the instance's finite size > 0 (e.g. vcpus: 32, memoryGiB: 128); its price is split over them", t.Name, t.VCPUs, t.MemoryGiB)
	case t.GPUs > 0 && t.GPUModel == "":
		return "gpuModel", fmt.Errorf("%s: has %d GPUs but no gpuModel; known models: %s", t.Name, t.GPUs, strings.Join(gpu.ModelNames(), ", "))
	case t.GPUs == 0 && t.GPUModel != "":
		// A GPU instance whose count was left out would be priced as one
		// without GPUs: its whole price on CPU and memory, its GPUs free.
		return "gpus", fmt.Errorf("%s: has gpuModel %s but gpus is 0 (or left out): give the number of GPUs the instance has, or remove gpuModel", t.Name, t.GPUModel)
	}
	if t.GPUModel != "" {
		if _, ok := gpu.LookupModel(t.GPUModel); !ok {
			return "gpuModel", fmt.Errorf("%s: gpuModel %q is unknown; known models: %s", t.Name, t.GPUModel, strings.Join(gpu.ModelNames(), ", "))
		}
	}
	// The simulator gives a type's nodes their cloud's providerID, and the
	// reclaim notice follows it: a provider spelled "gce" or "GCP" gave
	// nodes no cloud and AWS's two-minute notice instead of GCP's 30 s.
	if t.Provider != "" && !slices.Contains(Providers, t.Provider) {
		return "provider", fmt.Errorf("%s: provider %q is not one of %s (or leave it out for a node of no cloud)", t.Name, t.Provider, strings.Join(Providers, ", "))
	}
	return "", nil
}

// Providers are the clouds an instance type's provider may name, as
// localcluster.Pool.Cloud spells them.
var Providers = []string{"aws", "gcp", "azure"}

// validateEntry returns the field of e at fault ("" for the row as a
// whole) and what is wrong with it.
func (c *Catalog) validateEntry(e Entry) (string, error) {
	if _, ok := c.types[e.InstanceType]; !ok {
		hint := ""
		if s := closest(e.InstanceType, c.typeNames()); s != "" {
			hint = fmt.Sprintf(" (did you mean %q?)", s)
		}
		return "instanceType", fmt.Errorf("instance type %q is not defined in instanceTypes%s; define it there with its gpus, gpuModel, vcpus and memoryGiB", e.InstanceType, hint)
	}
	if _, err := ParseCapacityType(string(e.Capacity)); err != nil {
		return "capacityType", fmt.Errorf("%s: %v", e.InstanceType, err)
	}
	if e.Region == "" {
		return "region", fmt.Errorf("%s %s: region is empty; give the region the price holds in, e.g. us-east-1", e.InstanceType, e.Capacity)
	}
	if e.Zone != "" && !strings.HasPrefix(e.Zone, e.Region) {
		// Every cloud names a zone after its region (us-east-1a,
		// us-central1-a, eastus-1): a zone of another region is a typo
		// whose price no node would ever get.
		return "zone", fmt.Errorf("%s %s: zone %q is not in region %q; give a zone of the region (named after it, e.g. %sa) or fix the region", e.InstanceType, e.Capacity, e.Zone, e.Region, e.Region)
	}
	if !ValidPrice(e.Hourly) || e.Hourly > MaxHourlyPrice {
		return "hourly", fmt.Errorf("%s %s in %s: hourly is %g: a price must be a finite number >= 0 and at most %g USD per node-hour (not per month, not in cents)", e.InstanceType, e.Capacity, where(e.Region, e.Zone), e.Hourly, MaxHourlyPrice)
	}
	if e.Hourly == 0 && e.Capacity != Reserved {
		// Reserved capacity is paid for up front and may cost nothing
		// more; an on-demand or Spot node that costs nothing is a price
		// left out, and would make every node of its type look free.
		return "hourly", fmt.Errorf("%s %s in %s: hourly is 0: give the node's %s price in USD per hour (only reserved capacity, paid up front, may be priced 0)", e.InstanceType, e.Capacity, where(e.Region, e.Zone), e.Capacity)
	}
	if e.Interruption != BucketUnknown && e.Capacity != Spot {
		return "interruption", fmt.Errorf("%s %s: interruption is only meaningful for spot prices; remove it", e.InstanceType, e.Capacity)
	}
	return "", nil
}

func (c *Catalog) typeNames() []string {
	out := make([]string, 0, len(c.types))
	for n := range c.types {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// closest returns the candidate with the smallest edit distance to s when it
// is a plausible typo (distance <= 2).
func closest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Len is the number of price rows.
func (c *Catalog) Len() int { return c.entries }

// InstanceType returns what the catalog knows about a machine shape.
func (c *Catalog) InstanceType(name string) (InstanceType, bool) {
	t, ok := c.types[name]
	return t, ok
}

// DefaultInterruption is the bucket assumed for Spot pools without one.
func (c *Catalog) DefaultInterruption() Bucket { return c.defaultInterruption }

// Lookup finds the price of an instance type bought as capacity in a zone:
// the zone's own row if there is one, else the region's. Reserved capacity
// without a row of its own is priced like on-demand, which is what a
// reservation at list price costs.
func (c *Catalog) Lookup(instanceType string, capacity CapacityType, region, zone string) (Price, bool) {
	e, ok := c.find(instanceType, capacity, region, zone)
	if !ok && capacity == Reserved {
		e, ok = c.find(instanceType, OnDemand, region, zone)
	}
	if !ok {
		return Price{}, false
	}
	p := Price{InstanceType: instanceType, Capacity: capacity, NodeHourly: e.Hourly, Interruption: e.Interruption}
	if capacity == Spot && p.Interruption == BucketUnknown && e.Zone != "" {
		// A zone's row that gives its own price only keeps the region's
		// bucket: it took the catalog's default, five to ten times riskier.
		if r, ok := c.prices[priceKey{instanceType, capacity, region, ""}]; ok {
			p.Interruption = r.Interruption
		}
	}
	if capacity == Spot && p.Interruption == BucketUnknown {
		p.Interruption = c.defaultInterruption
	}
	p.GPUHourly, p.CPUCoreHourly, p.RAMGiBHourly = c.split(c.types[instanceType], e.Hourly)
	return p, true
}

// split divides a node's price over its GPUs, vCPUs and memory by the
// catalog's ratios. OpenCost: ramMultiple = gpus*gpu/ram + cpus*cpu/ram +
// ramGiB; the node price divided by it is the price of one GiB-hour.
func (c *Catalog) split(t InstanceType, hourly float64) (gpuHourly, cpuCoreHourly, ramGiBHourly float64) {
	r := c.ratios
	weight := float64(t.GPUs)*r.GPUHour + t.VCPUs*r.CPUCoreHour + t.MemoryGiB*r.RAMGiBHour
	if weight > 0 {
		unit := hourly / weight
		if t.GPUs > 0 {
			gpuHourly = unit * r.GPUHour
		}
		cpuCoreHourly = unit * r.CPUCoreHour
		ramGiBHourly = unit * r.RAMGiBHour
	}
	return gpuHourly, cpuCoreHourly, ramGiBHourly
}

// splitProblem says why the split of e's price is not one a score can use
// ("" when it is): each component a finite price >= 0, together the price
// of the node.
func (c *Catalog) splitProblem(e Entry) string {
	t := c.types[e.InstanceType]
	g, cpu, ram := c.split(t, e.Hourly)
	sum := float64(t.GPUs)*g + t.VCPUs*cpu + t.MemoryGiB*ram
	finite := ValidPrice(g) && ValidPrice(cpu) && ValidPrice(ram) && ValidPrice(sum)
	if finite && math.Abs(sum-e.Hourly) <= 1e-9*e.Hourly {
		return ""
	}
	return fmt.Sprintf("split over %s's %d GPUs, %g vCPUs and %g GiB, the %s price %g comes to %g per GPU-hour, %g per vCPU-hour and %g per GiB-hour, which do not add up to it; give ratios of the size of the component prices they stand for (%s)",
		e.InstanceType, t.GPUs, t.VCPUs, t.MemoryGiB, e.Capacity, e.Hourly, g, cpu, ram, openCostRatios)
}

func (c *Catalog) find(instanceType string, capacity CapacityType, region, zone string) (Entry, bool) {
	if zone != "" {
		if e, ok := c.prices[priceKey{instanceType, capacity, region, zone}]; ok {
			return e, true
		}
	}
	e, ok := c.prices[priceKey{instanceType, capacity, region, ""}]
	return e, ok
}

// NodeKey is what a catalog prices a node by, read from its labels: its
// pool (instance type, zone and capacity type) and its region. Nodes with
// one key have one price (PricesByKey).
type NodeKey struct {
	Pool
	Region string
}

// NodeKeyOf is a node's key, given its capacity type (NodeCapacity).
func NodeKeyOf(node *corev1.Node, c Capacity) NodeKey {
	return NodeKey{Pool: PoolOf(node, c), Region: node.Labels[corev1.LabelTopologyRegion]}
}

// PricesByKey reports whether b prices a node by its NodeKey alone, as a
// Catalog and a Store (its catalog in force) do: a caller that prices many
// nodes at once may then price each key once. Another PriceBook may read
// anything of a node.
func PricesByKey(b PriceBook) bool {
	switch b.(type) {
	case *Catalog, *Store:
		return true
	}
	return false
}

// NodePrice prices a node by its key (NodeKeyOf).
func (c *Catalog) NodePrice(node *corev1.Node) (Price, bool) {
	if c == nil || node == nil {
		return Price{}, false
	}
	k := NodeKeyOf(node, NodeCapacity(node))
	it, capacity, region := k.InstanceType, k.Capacity, k.Region
	if it != "" {
		if p, ok := c.Lookup(it, capacity, region, k.Zone); ok {
			return p, true
		}
	}
	// An unpriced node scores last in SpotRisk whatever it costs, and
	// nothing else would tell the operator why.
	if c.missCount.Load() >= maxMisses {
		return Price{}, false
	}
	if _, seen := c.misses.LoadOrStore(priceKey{instanceType: it, capacity: capacity, region: region}, true); !seen {
		c.missCount.Add(1)
		metricCatalogMisses.Inc()
		why := "the price catalog has no row for its instance type, capacity type and region; add one"
		if it == "" {
			why = "it has no " + corev1.LabelInstanceTypeStable + " (or " + corev1.LabelInstanceType + ") label to look its price up by"
		}
		klog.InfoS("Node has no price; SpotRisk scores it after every priced node: "+why,
			"node", node.Name, "instanceType", it, "capacityType", capacity, "region", region)
	}
	return Price{}, false
}

// Entries returns the price rows, sorted, for reports and metrics.
func (c *Catalog) Entries() []Entry {
	out := make([]Entry, 0, len(c.prices))
	for _, e := range c.prices {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.InstanceType != b.InstanceType {
			return a.InstanceType < b.InstanceType
		}
		if a.Capacity != b.Capacity {
			return a.Capacity < b.Capacity
		}
		if a.Region != b.Region {
			return a.Region < b.Region
		}
		return a.Zone < b.Zone
	})
	return out
}

// Problem is one thing wrong with a catalog, located by its field and,
// when the catalog came from a file, by file and line.
type Problem struct {
	File string
	Line int
	// List is "instanceTypes", "prices", or another field at the top of
	// the catalog ("splitRatios", "kind"), or "catalog" for the document as
	// a whole; Index is the row in it, -1 for a field that is not a list.
	List  string
	Index int
	// Field is the field of the row, or of List, at fault: "hourly" in
	// prices[3].hourly; "" for the row or List as a whole.
	Field string
	Msg   string
}

// Path is the field's path in the catalog: prices[3].hourly.
func (p Problem) Path() string {
	path := p.List
	if p.Index >= 0 {
		path = fmt.Sprintf("%s[%d]", p.List, p.Index)
	}
	if p.Field != "" {
		path += "." + p.Field
	}
	return path
}

func (p Problem) String() string {
	loc := ""
	if p.File != "" {
		loc = p.File
		if p.Line > 0 {
			loc += fmt.Sprintf(":%d", p.Line)
		}
		loc += ": "
	}
	return loc + p.Path() + ": " + p.Msg
}

// CatalogError lists every problem found in a catalog, so that one pass
// fixes them all.
type CatalogError struct {
	Problems []Problem
}

func (e *CatalogError) add(list string, index int, field, msg string) {
	e.Problems = append(e.Problems, Problem{List: list, Index: index, Field: field, Msg: msg})
}

func (e *CatalogError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// With returns a catalog with extra rows added; a row for the same instance
// type, capacity type, region and zone replaces the catalog's. The simulator
// uses it to price a scenario's pools.
func (c *Catalog) With(extra ...Entry) (*Catalog, error) {
	types := make([]InstanceType, 0, len(c.types))
	for _, n := range c.typeNames() {
		types = append(types, c.types[n])
	}
	replaced := map[priceKey]bool{}
	for _, e := range extra {
		replaced[priceKey{e.InstanceType, e.Capacity, e.Region, e.Zone}] = true
	}
	var entries []Entry
	for _, e := range c.Entries() {
		if !replaced[priceKey{e.InstanceType, e.Capacity, e.Region, e.Zone}] {
			entries = append(entries, e)
		}
	}
	return NewCatalog(c.ratios, types, append(entries, extra...), c.defaultInterruption)
}

// PodUsage is what a pod reserves of a node, the basis of its price: its
// requests, as the kubelet counts them, and its GPU request in thousandths
// (pkg/gpu's reading: whole GPUs, a share, or MIG slices as sevenths).
func PodUsage(pod *corev1.Pod) Usage {
	req := resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{})
	u := Usage{CPUMilli: req.Cpu().MilliValue(), MemoryBytes: req.Memory().Value()}
	r, err := gpu.ParsePodRequest(pod)
	if err != nil {
		// A pod Penny would not place (whole GPUs beside MIG slices on a
		// node in NVIDIA's mixed mode, shares adding up to a GPU or more)
		// that another scheduler placed holds its devices all the same:
		// they were billed at nothing.
		r = gpu.RequestOf(req)
	}
	u.GPUMilli = r.TotalMilli()
	return u
}

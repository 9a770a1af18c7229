package pricing

import (
	"fmt"
	"math"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/capacity"
)

func testCatalog(t *testing.T) *Catalog {
	t.Helper()
	c, err := NewCatalog(OpenCostSplitRatios,
		[]InstanceType{{Name: "p4d.24xlarge", GPUs: 8, GPUModel: "A100-40GB", VCPUs: 96, MemoryGiB: 1152},
			{Name: "m5.large", VCPUs: 2, MemoryGiB: 8}},
		[]Entry{
			{InstanceType: "p4d.24xlarge", Capacity: OnDemand, Region: "us-east-1", Hourly: 32},
			{InstanceType: "p4d.24xlarge", Capacity: Spot, Region: "us-east-1", Hourly: 8},
			{InstanceType: "p4d.24xlarge", Capacity: Spot, Region: "us-east-1", Zone: "us-east-1b", Hourly: 6, Interruption: Bucket5To10},
			{InstanceType: "m5.large", Capacity: OnDemand, Region: "us-east-1", Hourly: 0.096},
		}, BucketOver20)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLookupSplitsLikeOpenCost(t *testing.T) {
	c := testCatalog(t)
	p, ok := c.Lookup("p4d.24xlarge", OnDemand, "us-east-1", "us-east-1a")
	if !ok {
		t.Fatal("no price")
	}
	sum := 8*p.GPUHourly + 96*p.CPUCoreHourly + 1152*p.RAMGiBHourly
	if math.Abs(sum-32) > 1e-9 {
		t.Fatalf("components add up to %g, want the node price 32", sum)
	}
	// OpenCost's ratios: gpu/ram = 0.95/0.004237 and cpu/ram = 0.031611/0.004237.
	if r := p.GPUHourly / p.RAMGiBHourly; math.Abs(r-0.95/0.004237) > 1e-6 {
		t.Fatalf("gpu/ram ratio %g", r)
	}
	// A pod with one GPU, 12 cores and 144 GiB is an eighth of the node.
	u := Usage{GPUMilli: 1000, CPUMilli: 12000, MemoryBytes: 144 << 30}
	if got := p.HourlyFor(u); math.Abs(got-4) > 1e-9 {
		t.Fatalf("an eighth of the node costs %g, want 4", got)
	}
	// A CPU-only node puts its whole price on CPU and memory.
	m, _ := c.Lookup("m5.large", OnDemand, "us-east-1", "")
	if m.GPUHourly != 0 || math.Abs(2*m.CPUCoreHourly+8*m.RAMGiBHourly-0.096) > 1e-12 {
		t.Fatalf("m5.large split %+v", m)
	}
}

func TestLookupZoneRegionReserved(t *testing.T) {
	c := testCatalog(t)
	zoned, _ := c.Lookup("p4d.24xlarge", Spot, "us-east-1", "us-east-1b")
	if zoned.NodeHourly != 6 || zoned.Interruption != Bucket5To10 {
		t.Fatalf("zone row not used: %+v", zoned)
	}
	region, _ := c.Lookup("p4d.24xlarge", Spot, "us-east-1", "us-east-1c")
	if region.NodeHourly != 8 || region.Interruption != BucketOver20 {
		t.Fatalf("region row with default bucket expected: %+v", region)
	}
	res, ok := c.Lookup("p4d.24xlarge", Reserved, "us-east-1", "")
	if !ok || res.NodeHourly != 32 || res.Capacity != Reserved || res.Marginal() != 0 {
		t.Fatalf("reserved without a row: %+v ok=%v; want on-demand price, marginal 0", res, ok)
	}
	if od, _ := c.Lookup("p4d.24xlarge", OnDemand, "us-east-1", ""); od.Marginal() != 32 {
		t.Fatalf("on-demand marginal %g", od.Marginal())
	}
	if _, ok := c.Lookup("p4d.24xlarge", OnDemand, "eu-west-1", ""); ok {
		t.Fatal("a region without rows has no price")
	}
	// A zone's row that gives only its price keeps the region row's bucket;
	// it took the catalog's default (>20%).
	priced, err := c.With(
		Entry{InstanceType: "p4d.24xlarge", Capacity: Spot, Region: "us-east-1", Hourly: 8, Interruption: BucketUnder5},
		Entry{InstanceType: "p4d.24xlarge", Capacity: Spot, Region: "us-east-1", Zone: "us-east-1d", Hourly: 7},
	)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := priced.Lookup("p4d.24xlarge", Spot, "us-east-1", "us-east-1d"); p.NodeHourly != 7 || p.Interruption != BucketUnder5 {
		t.Fatalf("zone row with a price only: %+v, want its price 7 and the region's bucket <5%%", p)
	}
}

func TestNodePrice(t *testing.T) {
	c := testCatalog(t)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{
		corev1.LabelInstanceTypeStable: "p4d.24xlarge",
		corev1.LabelTopologyRegion:     "us-east-1",
		corev1.LabelTopologyZone:       "us-east-1b",
		capacity.LabelKarpenter:        "spot",
	}}}
	p, ok := c.NodePrice(node)
	if !ok || p.NodeHourly != 6 || p.Capacity != Spot {
		t.Fatalf("got %+v %v", p, ok)
	}
	delete(node.Labels, corev1.LabelInstanceTypeStable)
	if _, ok := c.NodePrice(node); ok {
		t.Fatal("a node without an instance type has no price")
	}
	var nilCatalog *Catalog
	if _, ok := nilCatalog.NodePrice(node); ok {
		t.Fatal("nil catalog prices nothing")
	}
}

func TestNewCatalogReportsEveryProblem(t *testing.T) {
	_, err := NewCatalog(OpenCostSplitRatios,
		[]InstanceType{{Name: "g5.xlarge", GPUs: 1, GPUModel: "A10G", VCPUs: 4, MemoryGiB: 16},
			{Name: "x.large", GPUs: 1, GPUModel: "Z9000", VCPUs: 4, MemoryGiB: 16},
			{Name: "m7i.8xlarge"},
			{Name: "g5.2xlarge", GPUs: 1, GPUModel: "A10G", VCPUs: math.NaN(), MemoryGiB: 32},
			{Name: "c7i.large", VCPUs: 2, MemoryGiB: math.Inf(1)}},
		[]Entry{
			{InstanceType: "g5.xlarg", Capacity: OnDemand, Region: "us-east-1", Hourly: 1},
			{InstanceType: "g5.xlarge", Capacity: OnDemand, Region: "us-east-1", Hourly: -1},
			{InstanceType: "g5.xlarge", Capacity: "ondemand", Region: "us-east-1", Hourly: 1},
		}, BucketUnknown)
	if err == nil {
		t.Fatal("want error")
	}
	msg := err.Error()
	for _, want := range []string{
		`instanceTypes[1].gpuModel: x.large: gpuModel "Z9000" is unknown`,
		// Without its shape a node's price cannot be split, and its pods
		// would cost nothing.
		`instanceTypes[2].vcpus: m7i.8xlarge: vcpus is 0 and memoryGiB 0: give both as the instance's finite size > 0`,
		`instanceTypes[3].vcpus: g5.2xlarge: vcpus is NaN`,
		`instanceTypes[4].memoryGiB: c7i.large: vcpus is 2 and memoryGiB +Inf`,
		`prices[0].instanceType: instance type "g5.xlarg" is not defined in instanceTypes (did you mean "g5.xlarge"?)`,
		`prices[1].hourly: g5.xlarge on-demand in region us-east-1: hourly is -1: a price must be a finite number >= 0`,
		`prices[2].capacityType: g5.xlarge: capacity type "ondemand"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
}

// A catalog that would price a node, or every pod on it, at 0 without
// saying so is refused: an on-demand or Spot row of 0, and split ratios
// that give a node without GPUs nothing to split its price over (Lookup
// priced each of its components 0). Reserved capacity may cost 0.
func TestNewCatalogRefusesSilentZeroPrices(t *testing.T) {
	types := []InstanceType{{Name: "m5.large", VCPUs: 2, MemoryGiB: 8}}
	for _, c := range []struct {
		name   string
		ratios SplitRatios
		entry  Entry
		want   string
	}{
		{"on-demand at 0", OpenCostSplitRatios, Entry{InstanceType: "m5.large", Capacity: OnDemand, Region: "us-east-1"},
			"prices[0].hourly: m5.large on-demand in region us-east-1: hourly is 0: give the node's on-demand price in USD per hour"},
		{"spot at 0", OpenCostSplitRatios, Entry{InstanceType: "m5.large", Capacity: Spot, Region: "us-east-1", Zone: "us-east-1a"},
			"prices[0].hourly: m5.large spot in zone us-east-1a of region us-east-1: hourly is 0"},
		{"no CPU or memory ratio", SplitRatios{GPUHour: 0.95}, Entry{InstanceType: "m5.large", Capacity: OnDemand, Region: "us-east-1", Hourly: 0.096},
			"splitRatios: cpuCoreHour and ramGiBHour are both 0"},
		{"a ratio that is not a number", SplitRatios{CPUCoreHour: math.NaN(), RAMGiBHour: 1}, Entry{InstanceType: "m5.large", Capacity: OnDemand, Region: "us-east-1", Hourly: 0.096},
			"splitRatios.cpuCoreHour: NaN: a component price must be a finite number >= 0"},
	} {
		if _, err := NewCatalog(c.ratios, types, []Entry{c.entry}, BucketUnknown); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	c, err := NewCatalog(SplitRatios{CPUCoreHour: 1}, types,
		[]Entry{{InstanceType: "m5.large", Capacity: Reserved, Region: "us-east-1"}, {InstanceType: "m5.large", Capacity: OnDemand, Region: "us-east-1", Hourly: 0.096}}, BucketUnknown)
	if err != nil {
		t.Fatal(err)
	}
	// CPU alone carries the price when memory's ratio is 0.
	if p, _ := c.Lookup("m5.large", OnDemand, "us-east-1", ""); math.Abs(2*p.CPUCoreHourly-0.096) > 1e-12 || p.RAMGiBHourly != 0 {
		t.Errorf("on-demand split %+v; want all of 0.096 on the 2 vCPUs", p)
	}
	if p, ok := c.Lookup("m5.large", Reserved, "us-east-1", ""); !ok || p.NodeHourly != 0 {
		t.Errorf("reserved %+v, %v; want its own row, 0", p, ok)
	}
}

func TestWithReplacesAndAdds(t *testing.T) {
	c := testCatalog(t)
	d, err := c.With(
		Entry{InstanceType: "p4d.24xlarge", Capacity: Spot, Region: "us-east-1", Zone: "us-east-1b", Hourly: 5},
		Entry{InstanceType: "p4d.24xlarge", Capacity: Reserved, Region: "us-east-1", Hourly: 20},
	)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := d.Lookup("p4d.24xlarge", Spot, "us-east-1", "us-east-1b"); p.NodeHourly != 5 {
		t.Fatalf("zone row not replaced: %v", p.NodeHourly)
	}
	if p, _ := d.Lookup("p4d.24xlarge", Reserved, "us-east-1", ""); p.NodeHourly != 20 {
		t.Fatalf("reserved row not added: %v", p.NodeHourly)
	}
	if p, _ := c.Lookup("p4d.24xlarge", Spot, "us-east-1", "us-east-1b"); p.NodeHourly != 6 {
		t.Fatal("the original catalog changed")
	}
	if _, err := c.With(Entry{InstanceType: "nope", Capacity: Spot, Region: "r", Hourly: 1}); err == nil {
		t.Fatal("an unknown instance type must be rejected")
	}
}

// A node whose instance type, capacity type or region the catalog has no
// row for scores after every priced node; nothing said so, so an operator
// saw a cheap node left idle and no reason. Each such pool is reported once
// per catalog, however often it is priced, and the reports are bounded.
func TestNodePriceReportsUnpricedNodesOnce(t *testing.T) {
	c := testCatalog(t)
	node := func(name, instanceType string) *corev1.Node {
		l := map[string]string{corev1.LabelTopologyRegion: "us-east-1", corev1.LabelTopologyZone: "us-east-1a"}
		if instanceType != "" {
			l[corev1.LabelInstanceTypeStable] = instanceType
		}
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
	}
	misses := func() float64 { return exported(t, "penny_price_catalog_misses_total") }
	before := misses()
	for _, n := range []*corev1.Node{node("a", "g6.xlarge"), node("a", "g6.xlarge"), node("b", "g6.xlarge"), node("c", ""), node("d", "")} {
		if _, ok := c.NodePrice(n); ok {
			t.Fatalf("%s: priced", n.Name)
		}
	}
	if _, ok := c.NodePrice(node("p", "p4d.24xlarge")); !ok {
		t.Fatal("a priced node went unpriced")
	}
	if got := misses() - before; got != 2 {
		t.Fatalf("misses counted %v, want 2: g6.xlarge on-demand in us-east-1, and nodes without an instance type", got)
	}
	// A new catalog is a new chance to have the row.
	c2 := testCatalog(t)
	c2.NodePrice(node("a", "g6.xlarge"))
	if got := misses() - before; got != 3 {
		t.Fatalf("misses counted %v after a new catalog, want 3", got)
	}
	for i := range 2 * maxMisses {
		c2.NodePrice(node("x", fmt.Sprintf("made-up-%d", i)))
	}
	if got := misses() - before; got != 2+maxMisses {
		t.Fatalf("misses counted %v, want them bounded at %d per catalog", got, 2+maxMisses)
	}
}

package pricing

import (
	"math"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const goodYAML = `apiVersion: penny.dev/v1alpha1
kind: PriceCatalog
defaultInterruption: "10-15%"
instanceTypes:
- {name: g5.xlarge, provider: aws, gpus: 1, gpuModel: A10G, vcpus: 4, memoryGiB: 16}
prices:
- {instanceType: g5.xlarge, capacityType: on-demand, region: us-east-1, hourly: 1.006, source: test, date: "2026-11-28"}
- {instanceType: g5.xlarge, capacityType: spot, region: us-east-1, hourly: 0.4, interruption: "<5%"}
`

func TestParseGood(t *testing.T) {
	c, err := Parse([]byte(goodYAML), "good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Len() != 2 || c.DefaultInterruption() != Bucket10To15 {
		t.Fatalf("len %d default %v", c.Len(), c.DefaultInterruption())
	}
	p, ok := c.Lookup("g5.xlarge", Spot, "us-east-1", "us-east-1a")
	if !ok || p.NodeHourly != 0.4 || p.Interruption != BucketUnder5 {
		t.Fatalf("%+v %v", p, ok)
	}
}

// Every kind of bad input is reported with the file, the line of the row
// and what to do about it.
func TestParseBadInputNamesFileLineAndFix(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown instance type", strings.Replace(goodYAML, "{instanceType: g5.xlarge, capacityType: spot", "{instanceType: g5.xlarg, capacityType: spot", 1),
			[]string{`cat.yaml:8: prices[1].instanceType: instance type "g5.xlarg" is not defined in instanceTypes (did you mean "g5.xlarge"?); define it there`}},
		{"negative price", strings.Replace(goodYAML, "hourly: 1.006", "hourly: -1.006", 1),
			[]string{`cat.yaml:7: prices[0].hourly: g5.xlarge on-demand in region us-east-1: hourly is -1.006: a price must be a finite number >= 0 and at most 10000 USD per node-hour (not per month, not in cents)`}},
		{"price not a number", strings.Replace(goodYAML, "hourly: 1.006", "hourly: .nan", 1),
			[]string{`cat.yaml:7: prices[0].hourly: g5.xlarge on-demand in region us-east-1: hourly is NaN: a price must be a finite number >= 0 and at most 10000 USD per node-hour (not per month, not in cents)`}},
		{"infinite price", strings.Replace(goodYAML, "hourly: 1.006", "hourly: .inf", 1),
			[]string{`cat.yaml:7: prices[0].hourly: g5.xlarge on-demand in region us-east-1: hourly is +Inf: a price must be a finite number >= 0 and at most 10000 USD per node-hour (not per month, not in cents)`}},
		// Finite, but a node-hours x price sum overflowed to +Inf.
		{"price past any instance's", strings.Replace(goodYAML, "hourly: 1.006", "hourly: 1e308", 1),
			[]string{`cat.yaml:7: prices[0].hourly: g5.xlarge on-demand in region us-east-1: hourly is 1e+308: a price must be a finite number >= 0 and at most 10000 USD per node-hour (not per month, not in cents)`}},
		{"missing price", strings.Replace(goodYAML, "hourly: 0.4, ", "", 1),
			[]string{`cat.yaml:8: prices[1].hourly: g5.xlarge spot: hourly is missing`}},
		{"broken yaml", goodYAML + "- {instanceType: [\n",
			[]string{`cat.yaml: yaml: line 9: did not find expected node content`}},
		{"unknown field", strings.Replace(goodYAML, "hourly: 1.006", "hourly: 1.006, hourlyy: 2", 1),
			[]string{`cat.yaml:7: prices[0].hourlyy: unknown field "hourlyy" (check its spelling; docs/spot.md lists a catalog's fields)`}},
		{"wrong type", strings.Replace(goodYAML, "hourly: 1.006", "hourly: cheap", 1),
			[]string{`cat.yaml:7: prices[0].hourly: want a number, not "cheap"`}},
		{"bad bucket", strings.Replace(goodYAML, `"<5%"`, `"low"`, 1),
			[]string{`cat.yaml:8: prices[1].interruption: interruption bucket "low": want one of <5%, 5-10%, 10-15%, 15-20%, >20%`}},
		// YAML decodes 0.5 into an int as 0: the type was priced as one
		// without GPUs, all of its price on CPU and memory.
		{"fractional gpus", strings.Replace(goodYAML, "gpus: 1", "gpus: 0.5", 1),
			[]string{`cat.yaml:5: instanceTypes[0].gpus: g5.xlarge: gpus is "0.5": give the whole number of GPUs the instance has`}},
		{"unknown gpu model", strings.Replace(goodYAML, "gpuModel: A10G", "gpuModel: A10X", 1),
			[]string{`cat.yaml:5: instanceTypes[0].gpuModel: g5.xlarge: gpuModel "A10X" is unknown; known models:`}},
		// A provider the simulator does not know gave nodes AWS's reclaim
		// notice, whatever their cloud.
		{"unknown provider", strings.Replace(goodYAML, "provider: aws", "provider: gce", 1),
			[]string{`cat.yaml:5: instanceTypes[0].provider: g5.xlarge: provider "gce" is not one of aws, gcp, azure (or leave it out`}},
		{"provider in capitals", strings.Replace(goodYAML, "provider: aws", "provider: AWS", 1),
			[]string{`cat.yaml:5: instanceTypes[0].provider: g5.xlarge: provider "AWS" is not one of aws, gcp, azure`}},
		{"wrong kind", strings.Replace(goodYAML, "kind: PriceCatalog", "kind: Prices", 1),
			[]string{`cat.yaml:2: kind: "Prices": want kind: PriceCatalog`}},
		{"empty", "", []string{`cat.yaml: the price catalog is empty`}},
		{"no prices", goodYAML[:strings.Index(goodYAML, "prices:")] + "prices: []\n",
			[]string{`cat.yaml:6: prices: empty: list at least one {instanceType, capacityType, region, hourly}`}},
		{"instance type without its shape", strings.Replace(goodYAML, "vcpus: 4, memoryGiB: 16", "memoryGiB: 16", 1),
			[]string{`cat.yaml:5: instanceTypes[0].vcpus: g5.xlarge: vcpus is 0 and memoryGiB 16: give both as the instance's finite size > 0`}},
		// The decoder's words named a Go type: "cannot unmarshal !!seq
		// into pricing.fileCatalog".
		{"a list for the catalog", "- " + strings.ReplaceAll(strings.TrimSuffix(goodYAML, "\n"), "\n", "\n  ") + "\n",
			[]string{`cat.yaml:1: the price catalog is a list; want a map of fields: apiVersion: penny.dev/v1alpha1, kind: PriceCatalog, instanceTypes and prices`}},
		{"a word for the catalog", "catalog.yaml\n",
			[]string{`cat.yaml:1: the price catalog is "catalog.yaml"; want a map of fields`}},
		// Through an alias the decoder's error had no field.
		{"wrong type through an alias", strings.Replace(goodYAML, "defaultInterruption: \"10-15%\"\n", "defaultInterruption: &cheap cheap\n", 1) + "- {instanceType: g5.xlarge, capacityType: on-demand, region: us-west-2, hourly: *cheap}\n",
			[]string{`cat.yaml:3: prices[2].hourly: want a number, not "cheap"`}},
		// An on-demand or Spot node priced 0 looks free to every score.
		{"on-demand price of 0", strings.Replace(goodYAML, "hourly: 1.006", "hourly: 0", 1),
			[]string{`cat.yaml:7: prices[0].hourly: g5.xlarge on-demand in region us-east-1: hourly is 0: give the node's on-demand price in USD per hour (only reserved capacity, paid up front, may be priced 0)`}},
		{"spot price of 0", strings.Replace(goodYAML, "hourly: 0.4", "hourly: 0.0", 1),
			[]string{`cat.yaml:8: prices[1].hourly: g5.xlarge spot in region us-east-1: hourly is 0: give the node's spot price in USD per hour`}},
		{"a date that is not one", strings.Replace(goodYAML, `date: "2026-11-28"`, `date: "2026-13-40"`, 1),
			[]string{`cat.yaml:7: prices[0].date: g5.xlarge on-demand: "2026-13-40" is not a date: give the day the price was taken as YYYY-MM-DD, e.g. 2026-11-28`}},
		{"a date in another form", strings.Replace(goodYAML, `date: "2026-11-28"`, `date: 11/28/2026`, 1),
			[]string{`cat.yaml:7: prices[0].date: g5.xlarge on-demand: "11/28/2026" is not a date`}},
		// A node without GPUs had nothing to split its price over: every
		// pod on it was priced 0.
		{"split ratios that leave a CPU-only node no price", strings.Replace(goodYAML, "kind: PriceCatalog\n", "kind: PriceCatalog\nsplitRatios: {cpuCoreHour: 0, ramGiBHour: 0, gpuHour: 0.95}\n", 1),
			[]string{`cat.yaml:3: splitRatios: cpuCoreHour and ramGiBHour are both 0: a node without GPUs would have its price split over nothing and its pods priced at 0; give at least one of them > 0 (OpenCost's defaults are cpuCoreHour: 0.031611, ramGiBHour: 0.004237, gpuHour: 0.95)`}},
		{"a negative split ratio", strings.Replace(goodYAML, "kind: PriceCatalog\n", "kind: PriceCatalog\nsplitRatios:\n  cpuCoreHour: 0.03\n  ramGiBHour: -1\n", 1),
			[]string{`cat.yaml:5: splitRatios.ramGiBHour: -1: a component price must be a finite number >= 0`}},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.yaml), "cat.yaml")
		if err == nil {
			t.Errorf("%s: want error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error lacks %q:\n%v", c.name, w, err)
			}
		}
	}
}

// A problem in a row written over several lines is placed at its field,
// not at the row's first line: the message used to say "prices[0]: ...
// hourly is -1" at the line of "- instanceType".
func TestParsePlacesProblemsAtTheirField(t *testing.T) {
	y := `apiVersion: penny.dev/v1alpha1
kind: PriceCatalog
instanceTypes:
- name: g5.xlarge
  provider: aws
  gpus: 1
  gpuModel: A10X
  vcpus: 4
  memoryGiB: 16
- name: c7i.large
  vcpus: 2
  memoryGiB: 0
- {name: m5.large, vcpus: 2, memoryGiB: 8}
prices:
- instanceType: g6.xlarge
  capacityType: on-demand
  region: us-east-1
  hourly: 1
- instanceType: g6.xlarge
  capacityType: spot
  region: us-east-1
  hourly: 0.4
- instanceType: m5.large
  capacityType: ondemand
  region: us-east-1
  hourly: 0.096
- instanceType: m5.large
  capacityType: spot
  region: us-east-1
  hourly: -1
  date: "2026-11-31"
- instanceType: m5.large
  capacityType: spot
  hourly: 0.04
`
	y = strings.Replace(y, "instanceType: g6.xlarge\n  capacityType: on-demand", "instanceType: g5.xlarge\n  capacityType: on-demand", 1)
	_, err := Parse([]byte(y), "cat.yaml")
	if err == nil {
		t.Fatal("want an error")
	}
	want := []string{
		`cat.yaml:7: instanceTypes[0].gpuModel: g5.xlarge: gpuModel "A10X" is unknown`,
		`cat.yaml:12: instanceTypes[1].memoryGiB: c7i.large: vcpus is 2 and memoryGiB 0`,
		`cat.yaml:15: prices[0].instanceType: instance type "g5.xlarge" is defined in instanceTypes[0], which is not valid`,
		`cat.yaml:19: prices[1].instanceType: instance type "g6.xlarge" is not defined in instanceTypes`,
		`cat.yaml:24: prices[2].capacityType: m5.large: capacity type "ondemand"`,
		`cat.yaml:31: prices[3].date: m5.large spot: "2026-11-31" is not a date`,
		`cat.yaml:30: prices[3].hourly: m5.large spot in region us-east-1: hourly is -1`,
		// A field left out is placed at its row.
		`cat.yaml:32: prices[4].region: m5.large spot: region is empty`,
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(want) {
		t.Errorf("%d problems, want %d:\n%v", len(got), len(want), err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

// Reserved capacity is paid for up front: a price of 0 for it is what a
// catalog says when the scheduler should treat it as free to fill.
func TestParseTakesAReservedPriceOf0(t *testing.T) {
	y := goodYAML + "- {instanceType: g5.xlarge, capacityType: reserved, region: us-east-1, hourly: 0}\n"
	c, err := Parse([]byte(y), "cat.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := c.Lookup("g5.xlarge", Reserved, "us-east-1", ""); !ok || p.NodeHourly != 0 {
		t.Errorf("reserved price %+v, %v; want 0", p, ok)
	}
}

// A price row of an instance type whose definition is refused points to
// that definition: it used to say the type was not defined ("define it
// there"), and suggest another type of a similar name to price it as.
func TestPriceOfAnInvalidInstanceTypePointsToItsDefinition(t *testing.T) {
	y := strings.Replace(goodYAML, "gpuModel: A10G", "gpuModel: A10X", 1)
	y = strings.Replace(y, "prices:\n", "- {name: g5.2xlarge, provider: aws, gpus: 1, gpuModel: A10G, vcpus: 8, memoryGiB: 32}\nprices:\n", 1)
	_, err := Parse([]byte(y), "cat.yaml")
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{
		`cat.yaml:5: instanceTypes[0].gpuModel: g5.xlarge: gpuModel "A10X" is unknown`,
		`cat.yaml:8: prices[0].instanceType: instance type "g5.xlarge" is defined in instanceTypes[0], which is not valid; fix it there`,
		`cat.yaml:9: prices[1].instanceType: instance type "g5.xlarge" is defined in instanceTypes[0], which is not valid; fix it there`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "not defined") || strings.Contains(err.Error(), "did you mean") {
		t.Errorf("error sends the user to define a type that is defined:\n%v", err)
	}
}

// A catalog is one YAML document: a second one, say an updated copy
// appended after "---", was ignored with its rows, and the first loaded as
// if nothing were wrong. A "---" that opens or ends the file starts no rows.
func TestParseRefusesASecondDocument(t *testing.T) {
	updated := strings.Replace(goodYAML, "hourly: 0.4", "hourly: 0.3", 1)
	_, err := Parse([]byte(goodYAML+"---\n"+updated), "cat.yaml")
	if want := "cat.yaml:10: catalog: a second YAML document starts at line 10: a price catalog is one document; merge its instanceTypes and prices into the first or remove it"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want %q", err, want)
	}
	for _, y := range []string{"---\n" + goodYAML + "---\n", goodYAML + "---\n# nothing more\n---\n", goodYAML + "...\n"} {
		if _, err := Parse([]byte(y), "cat.yaml"); err != nil {
			t.Errorf("%q: %v", y, err)
		}
	}
}

// The catalog Penny ships must always load.
func TestShippedCatalogLoads(t *testing.T) {
	c, err := LoadFile("../../deploy/pricing/catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range c.Entries() {
		if e.Source == "" || e.Date == "" {
			t.Errorf("%s %s %s: every shipped price names its source and date", e.InstanceType, e.Capacity, e.Region)
		}
		if e.Capacity == Spot {
			od, ok := c.Lookup(e.InstanceType, OnDemand, e.Region, e.Zone)
			if !ok || od.NodeHourly <= e.Hourly {
				t.Errorf("%s in %s: spot %g is not below on-demand %v", e.InstanceType, e.Region, e.Hourly, od.NodeHourly)
			}
		}
	}
	for _, name := range []string{"p4d.24xlarge", "p5.48xlarge", "Standard_ND96asr_v4", "g2-standard-4", "a2-highgpu-8g"} {
		if _, ok := c.InstanceType(name); !ok {
			t.Errorf("%s missing from the shipped catalog", name)
		}
	}
	// Each of the three clouds has GPU types priced both ways.
	priced := map[string]map[CapacityType]bool{}
	for _, e := range c.Entries() {
		it, _ := c.InstanceType(e.InstanceType)
		if it.GPUs > 0 {
			if priced[it.Provider] == nil {
				priced[it.Provider] = map[CapacityType]bool{}
			}
			priced[it.Provider][e.Capacity] = true
		}
	}
	for _, provider := range []string{"aws", "gcp", "azure"} {
		if !priced[provider][OnDemand] || !priced[provider][Spot] {
			t.Errorf("provider %s: GPU types priced %v; want on-demand and spot", provider, priced[provider])
		}
	}
	// A GKE Spot node is priced from GKE's own labels: host plus GPU.
	gke := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "gke-l4", Labels: map[string]string{
		corev1.LabelInstanceTypeStable: "g2-standard-4", corev1.LabelTopologyRegion: "us-central1",
		corev1.LabelTopologyZone: "us-central1-a", "cloud.google.com/gke-spot": "true"}}}
	if p, ok := c.NodePrice(gke); !ok || math.Abs(p.NodeHourly-(0.05874+0.2231)) > 1e-9 {
		t.Errorf("GKE Spot g2-standard-4 in us-central1: price %+v, %v; want host 0.05874 + L4 0.2231 = 0.28184", p, ok)
	}
}

// Split ratios each finite could still split a price into nothing: with
// ratios near the float limit the weights overflowed and every component
// came to 0 (every pod on the node free), with a denormal one the price of
// a vCPU-hour came to +Inf and of a GPU-hour NaN. Found with
// FuzzParseCatalog's property that components add up to the node's price.
func TestParseRefusesSplitRatiosThatPriceNothing(t *testing.T) {
	for name, ratios := range map[string]string{
		"overflow":  "{cpuCoreHour: 1e308, ramGiBHour: 1e308, gpuHour: 1e308}",
		"underflow": "{cpuCoreHour: 1e-320, ramGiBHour: 0, gpuHour: 1e-320}",
	} {
		y := strings.Replace(goodYAML, "kind: PriceCatalog\n", "kind: PriceCatalog\nsplitRatios: "+ratios+"\n", 1)
		c, err := Parse([]byte(y), "cat.yaml")
		if err == nil {
			p, _ := c.Lookup("g5.xlarge", OnDemand, "us-east-1", "")
			t.Errorf("%s: ratios %s accepted, pricing g5.xlarge %+v", name, ratios, p)
			continue
		}
		if want := "cat.yaml:3: splitRatios: split over g5.xlarge's 1 GPUs, 4 vCPUs and 16 GiB, the on-demand price 1.006 comes to"; !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", name, err, want)
		}
	}
	// Large shapes and the largest price split as they should.
	for _, y := range []string{
		strings.Replace(goodYAML, "vcpus: 4, memoryGiB: 16", "vcpus: 1e308, memoryGiB: 1e308", 1),
		strings.Replace(goodYAML, "hourly: 1.006", "hourly: 10000", 1),
	} {
		if _, err := Parse([]byte(y), "cat.yaml"); err != nil {
			t.Errorf("%v", err)
		}
	}
}

// provider may be left out: such a type's simulated nodes belong to no
// cloud.
func TestParseTakesNoProvider(t *testing.T) {
	c, err := Parse([]byte(strings.Replace(goodYAML, "provider: aws, ", "", 1)), "cat.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if it, ok := c.InstanceType("g5.xlarge"); !ok || it.Provider != "" {
		t.Errorf("g5.xlarge: %+v %v, want no provider", it, ok)
	}
}

// A catalog that would price some GPUs at 0, or a zone that no node could
// ever be in, is refused at the field to fix.
func TestParseRefusesRowsThatPriceGPUsAtNothing(t *testing.T) {
	for name, c := range map[string]struct{ from, to, want string }{
		"gpus left out": {"gpus: 1, gpuModel", "gpuModel",
			"cat.yaml:5: instanceTypes[0].gpus: g5.xlarge: has gpuModel A10G but gpus is 0 (or left out)"},
		"gpuHour 0": {"kind: PriceCatalog\n", "kind: PriceCatalog\nsplitRatios: {cpuCoreHour: 0.02, ramGiBHour: 0.003, gpuHour: 0}\n",
			"cat.yaml:3: splitRatios.gpuHour: 0 while instance type g5.xlarge has GPUs"},
		"zone of another region": {"region: us-east-1, hourly: 0.4", "region: us-east-1, zone: us-west-2a, hourly: 0.4",
			`cat.yaml:8: prices[1].zone: g5.xlarge spot: zone "us-west-2a" is not in region "us-east-1"`},
	} {
		y := strings.Replace(goodYAML, c.from, c.to, 1)
		if y == goodYAML {
			t.Fatalf("%s: %q is not in the catalog", name, c.from)
		}
		cat, err := Parse([]byte(y), "cat.yaml")
		if err == nil {
			p, _ := cat.Lookup("g5.xlarge", OnDemand, "us-east-1", "")
			t.Errorf("%s: accepted, pricing g5.xlarge %+v", name, p)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", name, err, c.want)
		}
	}
}

// A splitRatios block that sets only some ratios keeps OpenCost's for the
// others: left out, gpuHour was 0, and every GPU free.
func TestParseKeepsOpenCostRatiosLeftOut(t *testing.T) {
	y := strings.Replace(goodYAML, "kind: PriceCatalog\n", "kind: PriceCatalog\nsplitRatios: {cpuCoreHour: 0.02}\n", 1)
	c, err := Parse([]byte(y), "cat.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, ok := c.Lookup("g5.xlarge", OnDemand, "us-east-1", "")
	if !ok {
		t.Fatal("g5.xlarge on-demand not found")
	}
	// 1.006 split over 1 GPU, 4 vCPUs and 16 GiB at 0.95 : 0.02 : 0.004237.
	w := 0.95 + 4*0.02 + 16*OpenCostSplitRatios.RAMGiBHour
	if want := 1.006 * 0.95 / w; !near(p.GPUHourly, want, 1e-9) {
		t.Errorf("GPU-hour %g, want %g", p.GPUHourly, want)
	}
}

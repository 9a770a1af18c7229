package pricing

import (
	"errors"
	"maps"
	"math"
	"strings"
	"testing"
	"time"
)

// catalogSeeds are the catalogs of file_test.go, good and bad, small enough
// for a fuzzer to mutate.
var catalogSeeds = []string{
	goodYAML,
	goodYAML + "- {instanceType: g5.xlarge, capacityType: reserved, region: us-east-1, hourly: 0}\n",
	goodYAML + "- {instanceType: g5.xlarge, capacityType: spot, region: us-east-1, zone: us-east-1a, hourly: 0.35}\n",
	strings.Replace(goodYAML, "kind: PriceCatalog\n", "kind: PriceCatalog\nsplitRatios: {cpuCoreHour: 0.03, ramGiBHour: 0.004, gpuHour: 0.95}\n", 1),
	strings.Replace(goodYAML, "kind: PriceCatalog\n", "kind: PriceCatalog\nsplitRatios: {cpuCoreHour: 0, ramGiBHour: 0, gpuHour: 0.95}\n", 1),
	strings.Replace(goodYAML, "kind: PriceCatalog\n", "kind: PriceCatalog\nsplitRatios: {cpuCoreHour: 1e308, ramGiBHour: 1e308, gpuHour: 1e308}\n", 1),
	strings.Replace(goodYAML, "kind: PriceCatalog\n", "kind: PriceCatalog\nsplitRatios: {cpuCoreHour: 1e-320, ramGiBHour: 0, gpuHour: 0}\n", 1),
	strings.Replace(goodYAML, "vcpus: 4, memoryGiB: 16", "vcpus: 1e308, memoryGiB: 1e308", 1),
	strings.Replace(goodYAML, "hourly: 1.006", "hourly: .nan", 1),
	strings.Replace(goodYAML, "hourly: 1.006", "hourly: -1.006", 1),
	strings.Replace(goodYAML, "gpus: 1", "gpus: 0.5", 1),
	strings.Replace(goodYAML, "vcpus: 4, memoryGiB: 16", "memoryGiB: 16", 1),
	strings.Replace(goodYAML, `"<5%"`, `"low"`, 1),
	strings.Replace(goodYAML, "defaultInterruption: \"10-15%\"\n", "defaultInterruption: &cheap cheap\n", 1) + "- {instanceType: g5.xlarge, capacityType: on-demand, region: us-west-2, hourly: *cheap}\n",
	goodYAML + "---\n" + goodYAML,
	"- " + strings.ReplaceAll(strings.TrimSuffix(goodYAML, "\n"), "\n", "\n  ") + "\n",
	"catalog.yaml\n", "", "{}", "prices: []\n",
}

// A price catalog is user input, from a file or a ConfigMap: whatever it
// holds, it loads into prices a score can use (finite, >= 0, split into
// components that add up to the node's price, in a risk bucket whose
// monthly probability is in [0,1]) or it is refused with an error whose
// every line starts with the file or ConfigMap it came from.
func FuzzParseCatalog(f *testing.F) {
	for _, s := range catalogSeeds {
		f.Add([]byte(s), false)
	}
	f.Add([]byte(goodYAML), true)
	f.Fuzz(func(t *testing.T, data []byte, fromConfigMap bool) {
		name := "catalog.yaml"
		if fromConfigMap {
			name = "configmap penny-system/penny-prices key catalog.yaml"
		}
		c, err := Parse(data, name)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, name) {
					t.Fatalf("error line %q does not name %s; whole error:\n%v", line, name, err)
				}
			}
			var ce *CatalogError
			if errors.As(err, &ce) {
				for _, p := range ce.Problems {
					if p.List == "" || p.Msg == "" {
						t.Fatalf("problem %+v names no field or says nothing", p)
					}
				}
			}
			return
		}
		if c.Len() == 0 {
			t.Fatal("a catalog without prices and without an error")
		}
		checkBucket(t, c.DefaultInterruption())
		for _, e := range c.Entries() {
			if !ValidPrice(e.Hourly) || math.IsNaN(e.Hourly) || e.Hourly > MaxHourlyPrice || (e.Hourly == 0 && e.Capacity != Reserved) {
				t.Fatalf("%s %s: hourly %g", e.InstanceType, e.Capacity, e.Hourly)
			}
			p, ok := c.Lookup(e.InstanceType, e.Capacity, e.Region, e.Zone)
			if !ok || p.NodeHourly != e.Hourly {
				t.Fatalf("%s %s in %s/%s: looked up %+v, %v; want its own row's price %g", e.InstanceType, e.Capacity, e.Region, e.Zone, p, ok, e.Hourly)
			}
			checkBucket(t, p.Interruption)
			it, _ := c.InstanceType(e.InstanceType)
			for _, v := range []float64{p.GPUHourly, p.CPUCoreHourly, p.RAMGiBHourly} {
				if !ValidPrice(v) || math.IsNaN(v) {
					t.Fatalf("%s %s: components %+v", e.InstanceType, e.Capacity, p)
				}
			}
			sum := float64(it.GPUs)*p.GPUHourly + it.VCPUs*p.CPUCoreHourly + it.MemoryGiB*p.RAMGiBHourly
			if math.Abs(sum-p.NodeHourly) > 1e-9*math.Max(1, p.NodeHourly) {
				t.Fatalf("%s %s on %+v: components %+v add up to %g, not the node's %g", e.InstanceType, e.Capacity, it, p, sum, p.NodeHourly)
			}
		}
	})
}

func checkBucket(t *testing.T, b Bucket) {
	t.Helper()
	if m := b.MonthlyProbability(); !(m >= 0 && m <= 1) {
		t.Fatalf("bucket %v: monthly probability %g", b, m)
	}
	if r := RateFromMonthly(b.MonthlyProbability()); !ValidPrice(r) || math.IsNaN(r) {
		t.Fatalf("bucket %v: rate %g", b, r)
	}
}

// A bucket that parses prints as itself, and its rate is a rate; one that
// does not is quoted in the error.
func FuzzParseBucket(f *testing.F) {
	for _, s := range append(bucketNames, " < 5 % ", "10 - 15%", "low", ">20", "\xff") {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBucket(s)
		if err != nil {
			if !strings.Contains(err.Error(), "interruption bucket") {
				t.Fatalf("error %q does not say what it parsed", err)
			}
			return
		}
		if b == BucketUnknown {
			t.Fatalf("%q: the unknown bucket without an error", s)
		}
		if again, err := ParseBucket(b.String()); err != nil || again != b {
			t.Fatalf("%q parsed as %v, which parses as %v, %v", s, b, again, err)
		}
		checkBucket(t, b)
	})
}

// Saved reclaim evidence is read back from a ConfigMap anyone with access
// may edit: the pools read are Spot pools with evidence a model can hold
// (finite, >= 0), they are written back exactly, and a refused line is
// named with the key it came from.
func FuzzParseSavedPools(f *testing.F) {
	for _, s := range []string{
		"p4d.24xlarge/us-east-1a/spot 2.5 1460 2026-11-30T08:00:00Z\n",
		"p5.48xlarge/us-east-1b/spot 0 730.5 2026-11-30T08:00:00.5Z\n/us-east-1a/spot 0 2 2026-11-23T08:00:00+02:00",
		"p4d.24xlarge/us-east-1a/spot 2.5 1460\np4d.24xlarge/us-east-1a 2.5 1460 2026-11-30T08:00:00Z",
		"p4d.24xlarge/us-east-1a/on-demand 2.5 1460 2026-11-30T08:00:00Z\np4d.24xlarge/us-east-1a/spot NaN 1460 2026-11-30T08:00:00Z",
		"p4d.24xlarge/us-east-1a/spot 2.5 -1 2026-11-30T08:00:00Z\np4d.24xlarge/us-east-1a/spot 2.5 1460 yesterday",
		"a/b/spot 1e308 0x1p-2 2026-11-30T08:00:00Z",
		"a/b/spot 0 0 0000-01-01T00:00:00+01:00",
		"a/b/spot 1 2 2026-11-30T08:00:00Z n@1@2026-11-30T09:00:00+01:00 m@2026-11-30T09:00:00Z m@x",
	} {
		f.Add(s)
	}
	const source = "configmap penny-system/penny-state key reclaim-risk"
	f.Fuzz(func(t *testing.T, text string) {
		pools, err := ParseSavedPools(text, source)
		if err != nil && !strings.HasPrefix(err.Error(), source+" line ") {
			t.Fatalf("error %q does not name the key and line", err)
		}
		for _, p := range pools {
			if p.Pool.Capacity != Spot || !validEvidence(p.Reclaims) || !validEvidence(p.NodeHours) || math.IsNaN(p.Reclaims) || math.IsNaN(p.NodeHours) {
				t.Fatalf("read %+v", p)
			}
		}
		if len(FormatSavedPools(pools)) > RiskMaxBytes {
			return // the oldest are left out: not a round trip
		}
		back, err := ParseSavedPools(FormatSavedPools(pools), source)
		if err != nil || len(back) != len(pools) {
			t.Fatalf("%v written and read back as %v, %v", pools, back, err)
		}
		for i := range pools {
			if back[i].Pool != pools[i].Pool || back[i].Reclaims != pools[i].Reclaims || back[i].NodeHours != pools[i].NodeHours || !back[i].At.Equal(pools[i].At) ||
				!maps.EqualFunc(back[i].Counted, pools[i].Counted, time.Time.Equal) {
				t.Fatalf("%+v written and read back as %+v", pools[i], back[i])
			}
			if back[i].At.Location() != time.UTC {
				t.Fatalf("%+v read back in %v", back[i], back[i].At.Location())
			}
		}
	})
}

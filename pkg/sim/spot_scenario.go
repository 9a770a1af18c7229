package sim

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pennysched/penny/pkg/yamldoc"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// SpotScenario is an elastic, priced fleet for `penny sim replay`: pools of
// one instance type bought one way in one zone, which grow when pods wait and
// shrink when nodes idle, the way Cluster Autoscaler and Karpenter behave;
// Spot pools lose nodes to seeded reclaims. Classes map a trace's pods to
// Penny's workload annotations. docs/spot.md describes every field.
type SpotScenario struct {
	Name   string `yaml:"name"`
	Region string `yaml:"region"`
	// Catalog is the price catalog, relative to the scenario file; pools
	// may override a price with hourlyPrice.
	Catalog string `yaml:"catalog"`
	// RestartOverhead is what a reclaimed pod spends before it is useful
	// again (default 5m). It counts as lost work.
	RestartOverhead Duration `yaml:"restartOverhead"`
	// SpotTaint puts the cloud's Spot taint on Spot nodes (as AKS does on
	// every Spot pool). Pods tolerate it where the policy says so.
	SpotTaint bool `yaml:"spotTaint"`
	// GPUTaint puts nvidia.com/gpu:NoSchedule on GPU nodes, as GKE does;
	// pods that ask for GPUs tolerate it, as the ExtendedResourceToleration
	// admission plugin makes them, so CPU-only pods stay off GPU nodes.
	GPUTaint bool `yaml:"gpuTaint"`
	// GPUSharing lists the policies whose scheduler places shares of one
	// GPU (penny.dev/gpu-milli). Pods of the other policies ask for a whole
	// GPU instead, as they must where no scheduler can share one.
	GPUSharing []string       `yaml:"gpuSharing"`
	Pools      []ElasticPool  `yaml:"pools"`
	Classes    []ClassRule    `yaml:"classes"`
	Policies   []PolicyTweaks `yaml:"policies"`

	file    string
	read    func(path string) ([]byte, error)
	catalog *pricing.Catalog
	// keyLines are the lines of the top-level keys, and sharingLines of
	// gpuSharing's items, for errors about one.
	keyLines     map[string]int
	sharingLines []int
}

// lineOf is the line of top-level key, or 1 where the key is left out.
func (s *SpotScenario) lineOf(key string) int {
	if l := s.keyLines[key]; l > 0 {
		return l
	}
	return 1
}

// ElasticPool is one pool of the fleet.
type ElasticPool struct {
	Name         string `yaml:"name"`
	InstanceType string `yaml:"instanceType"`
	CapacityType string `yaml:"capacityType"`
	Zone         string `yaml:"zone"`
	// Min nodes are always up (and start up); Max bounds growth.
	Min int `yaml:"min"`
	Max int `yaml:"max"`
	// ProvisioningDelay is how long a new node takes to join (default 3m).
	ProvisioningDelay Duration `yaml:"provisioningDelay"`
	// ScaleDownAfter is how long a node stays empty before it is removed
	// (default 10m, Cluster Autoscaler's scale-down-unneeded-time).
	ScaleDownAfter Duration `yaml:"scaleDownAfter"`
	// HourlyPrice overrides the catalog's price for this pool.
	HourlyPrice float64 `yaml:"hourlyPrice"`
	// priceGiven is whether the file set hourlyPrice: a 0 written there is
	// a reserved pool paid up front, not the catalog's price.
	priceGiven bool
	// AdvertisedInterruption is the Spot-Advisor bucket the pool shows: the
	// risk model's prior.
	AdvertisedInterruption string `yaml:"advertisedInterruption"`
	// MeanTimeToReclaim is the pool's true reclaim behaviour: each Spot node
	// lives an exponential time with this mean; 0s: never reclaimed. Left
	// out, the pool is reclaimed as its advertised bucket says.
	MeanTimeToReclaim Duration `yaml:"meanTimeToReclaim"`

	capacity pricing.CapacityType
	bucket   pricing.Bucket
	template localcluster.Pool
	line     int
}

// ClassRule maps trace pods to annotations. The first rule that matches a
// pod applies; a rule with a share applies to that seeded fraction of the
// pods it matches and lets the others fall through.
type ClassRule struct {
	// QoS lists the trace QoS values (openb) the rule matches; "" matches
	// pods without one (Philly-derived traces).
	QoS []string `yaml:"qos"`
	// MinRuntime matches pods that run at least this long in the trace.
	MinRuntime Duration `yaml:"minRuntime"`
	// Share is the fraction of matching pods the rule takes (default 1).
	Share       *float64          `yaml:"share"`
	Annotations map[string]string `yaml:"annotations"`
	line        int
	// keyLines are the lines of the annotations' keys, for errors about one.
	keyLines map[string]int
}

// classAnnotations are the penny.dev/ annotations a class rule may set: what
// SpotRisk reads, the checkpoint hook Penny's agent calls on a reclaim
// notice (ReclaimRule), and the gang keys the gang plugin reads from
// annotations. Any other penny.dev/ key, a misspelt one above all, would
// reach the pods and change nothing.
var classAnnotations = slices.Concat(spotrisk.Annotations, []string{spotrisk.AnnotationCheckpointHook}, gang.Keys)

// PolicyTweaks says how a policy's pods and nodes differ: whether its pods
// tolerate the Spot taint, and whether the Penny agent on its nodes turns a
// reclaim notice into checkpoints (ReclaimRule.NoticeCheckpoints).
type PolicyTweaks struct {
	Policy            string `yaml:"policy"`
	TolerateSpot      bool   `yaml:"tolerateSpot"`
	NoticeCheckpoints bool   `yaml:"noticeCheckpoints"`
	line              int
}

// scenarioSections name the scenario's parts by the Go types that decode
// them, for errors about a field one of them does not have.
var scenarioSections = map[string]reflect.Type{
	"sim.SpotScenario": reflect.TypeOf(SpotScenario{}),
	"sim.ElasticPool":  reflect.TypeOf(ElasticPool{}),
	"sim.ClassRule":    reflect.TypeOf(ClassRule{}),
	"sim.PolicyTweaks": reflect.TypeOf(PolicyTweaks{}),
}

// scenarioYAMLError places the decoder's errors at their fields, and
// rewrites "field maxx not found in type sim.ElasticPool" as the fields that
// section takes.
func scenarioYAMLError(file string, root *yaml.Node, err error) error {
	return yamldoc.DecodeError(file, root, &SpotScenario{}, err, func(p yamldoc.Problem) string {
		t, known := scenarioSections[p.In]
		if !known {
			return p.Msg
		}
		var fields []string
		for f := range t.Fields() {
			if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag != "" && tag != "-" {
				fields = append(fields, tag)
			}
		}
		return fmt.Sprintf("unknown field %q; this part of a scenario takes %s", p.Unknown, strings.Join(fields, ", "))
	})
}

// Duration reads Go durations ("90s", "4h") in YAML.
type Duration struct {
	time.Duration
	// given is whether the file set it: a 0s written there means no delay,
	// not the default.
	given bool
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &valueError{n, fmt.Sprintf("want a Go duration such as 90s, 10m or 4h, not %s", yamldoc.Describe(n))}
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return &valueError{n, fmt.Sprintf("%q is not a duration: use a Go duration such as 90s, 10m or 4h", n.Value)}
	}
	if v < 0 {
		return &valueError{n, fmt.Sprintf("%q is negative: a delay or interval must be 0 or more", n.Value)}
	}
	d.Duration, d.given = v, true
	return nil
}

// valueError is a value a field's decoder refused; ParseSpotScenarioFrom
// names the field (the decoder sees the value alone).
type valueError struct {
	at  *yaml.Node
	msg string
}

func (e *valueError) Error() string { return fmt.Sprintf("line %d: %s", e.at.Line, e.msg) }

// BuiltInCatalog names the price catalog of a scenario that gives none:
// deploy/pricing/catalog.yaml, built into Penny.
const BuiltInCatalog = "deploy/pricing/catalog.yaml (built in)"

// Scenario defaults.
const (
	DefaultProvisioningDelay = 3 * time.Minute
	DefaultScaleDownAfter    = 10 * time.Minute
	DefaultRestartOverhead   = 5 * time.Minute
	// LabelQoS is where the openb loader keeps a pod's QoS class.
	LabelQoS = "openb/qos"
)

// Scenario limits. Each is far past any fleet a replay models (Kubernetes
// supports 5,000 nodes a cluster; the dearest GPU instance costs about 100
// USD an hour) and far enough from int64's end that a pool's node count
// times a node's pod slots, a trace time plus a delay, or node-hours times
// a price cannot overflow: past them the replay hangs starting min nodes,
// schedules events before now or bills a negative or infinite sum.
const (
	MaxPoolNodes   = 10000
	MaxDelay       = 365 * 24 * time.Hour
	MaxHourlyPrice = pricing.MaxHourlyPrice
)

// LoadSpotScenario reads and validates a scenario and its catalog.
func LoadSpotScenario(path string) (*SpotScenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("spot scenario: %w", err)
	}
	return ParseSpotScenario(path, data)
}

// ParseSpotScenario decodes and validates a scenario; errors name the file,
// the line, the field and the fix.
func ParseSpotScenario(file string, data []byte) (*SpotScenario, error) {
	return ParseSpotScenarioFrom(file, data, os.ReadFile)
}

// yamlErrorLine finds the line of the YAML syntax error a tab in
// indentation makes.
var yamlErrorLine = regexp.MustCompile(`^yaml: line (\d+): found character that cannot start any token`)

// ParseSpotScenarioFrom is ParseSpotScenario for a scenario that is not on
// disk (one built into a binary): read returns the files it names, its
// catalog, by their path joined to file's folder.
func ParseSpotScenarioFrom(file string, data []byte, read func(path string) ([]byte, error)) (*SpotScenario, error) {
	s := &SpotScenario{file: file, read: read}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(s); err != nil {
		if err == io.EOF {
			return nil, fmt.Errorf("%s: empty file: a scenario needs at least region and pools (docs/spot.md, Scenario file)", file)
		}
		var root yaml.Node
		if yaml.Unmarshal(data, &root) != nil {
			// The parser says only "found character that cannot start any
			// token" of a tab, which editors put in indentation. A tab
			// elsewhere (inside a block scalar) is valid: only the line the
			// parser names is looked at.
			if m := yamlErrorLine.FindStringSubmatch(err.Error()); m != nil {
				n, _ := strconv.Atoi(m[1])
				if lines := strings.Split(string(data), "\n"); n >= 1 && n <= len(lines) && strings.HasPrefix(strings.TrimLeft(lines[n-1], " "), "\t") {
					return nil, fmt.Errorf("%s:%d: the line is indented with a tab (%v): YAML indents with spaces only", file, n, err)
				}
			}
			return nil, fmt.Errorf("%s: %v", file, err)
		}
		var ve *valueError
		if errors.As(err, &ve) {
			if field := yamldoc.PathAt(&root, ve.at.Line, ve.at.Column); field != "" {
				return nil, fmt.Errorf("%s:%d: %s: %s", file, ve.at.Line, field, ve.msg)
			}
		}
		return nil, scenarioYAMLError(file, &root, err)
	}
	if line, err := yamldoc.Extra(dec); err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	} else if line > 0 {
		return nil, fmt.Errorf("%s:%d: a second YAML document starts here: a scenario is one document; move its fields into the first and remove the \"---\"", file, line)
	}
	var lines struct {
		Pools      []yaml.Node `yaml:"pools"`
		Classes    []yaml.Node `yaml:"classes"`
		Policies   []yaml.Node `yaml:"policies"`
		GPUSharing []yaml.Node `yaml:"gpuSharing"`
	}
	_ = yaml.Unmarshal(data, &lines)
	// The decoder drops an empty list item ("-" alone, or "~") from
	// pools, classes and policies, and each item after it was then given
	// the line, and the fields written, of the item before it.
	for _, list := range []struct {
		key, item string
		items     []yaml.Node
	}{{"pools", "pool", lines.Pools}, {"classes", "class rule", lines.Classes}, {"policies", "policy", lines.Policies}} {
		for i, n := range list.items {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return nil, fmt.Errorf("%s:%d: %s[%d]: the item is empty (a \"-\" with nothing after it): remove the \"-\", or write the %s's fields after it", file, n.Line, list.key, i, list.item)
			}
		}
	}
	var top yaml.Node
	_ = yaml.Unmarshal(data, &top)
	if top.Kind == yaml.DocumentNode && len(top.Content) == 1 {
		m := top.Content[0]
		s.keyLines = map[string]int{}
		for k := 0; m.Kind == yaml.MappingNode && k+1 < len(m.Content); k += 2 {
			s.keyLines[m.Content[k].Value] = m.Content[k].Line
		}
	}
	for _, n := range lines.GPUSharing {
		s.sharingLines = append(s.sharingLines, n.Line)
	}
	for i := range s.Pools {
		if i < len(lines.Pools) {
			s.Pools[i].line = lines.Pools[i].Line
			// YAML decodes 1.5 into an int as 1: a node count must be whole.
			n := &lines.Pools[i]
			for k := 0; n.Kind == yaml.MappingNode && k+1 < len(n.Content); k += 2 {
				key, v := n.Content[k].Value, n.Content[k+1]
				if (key == "min" || key == "max") && v.Tag != "!!int" {
					return nil, fmt.Errorf("%s:%d: pools[%d].%s: %q is not a whole number of nodes", file, v.Line, i, key, v.Value)
				}
				if key == "hourlyPrice" {
					s.Pools[i].priceGiven = true
				}
			}
		}
	}
	for i := range s.Classes {
		if i < len(lines.Classes) {
			n := &lines.Classes[i]
			s.Classes[i].line = n.Line
			for k := 0; n.Kind == yaml.MappingNode && k+1 < len(n.Content); k += 2 {
				if a := n.Content[k+1]; n.Content[k].Value == "annotations" && a.Kind == yaml.MappingNode {
					s.Classes[i].keyLines = map[string]int{}
					for j := 0; j+1 < len(a.Content); j += 2 {
						s.Classes[i].keyLines[a.Content[j].Value] = a.Content[j].Line
					}
				}
			}
		}
	}
	for i := range s.Policies {
		if i < len(lines.Policies) {
			s.Policies[i].line = lines.Policies[i].Line
		}
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *SpotScenario) validate() error {
	var errs []string
	add := func(line int, field, format string, args ...any) {
		errs = append(errs, fmt.Sprintf("%s:%d: %s: %s", s.file, line, field, fmt.Sprintf(format, args...)))
	}
	if s.Region == "" {
		add(s.lineOf("region"), "region", "required: the region whose prices the catalog lists, e.g. us-east-1")
	}
	if !s.RestartOverhead.given {
		s.RestartOverhead.Duration = DefaultRestartOverhead
	}
	if s.RestartOverhead.Duration > MaxDelay {
		add(s.lineOf("restartOverhead"), "restartOverhead", "%v: want at most %v (a year)", s.RestartOverhead.Duration, MaxDelay)
	}
	// Without a catalog of its own the scenario is priced by the one Penny
	// ships, built into it.
	path, data := BuiltInCatalog, deploy.PriceCatalog
	if s.Catalog != "" {
		path = s.Catalog
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(s.file), path)
		}
		var err error
		if data, err = s.read(path); err != nil {
			return fmt.Errorf("%s: catalog: %w", s.file, err)
		}
	} else {
		s.Catalog = BuiltInCatalog
	}
	c, err := pricing.Parse(data, path)
	if err != nil {
		return fmt.Errorf("%s: catalog: %w", s.file, err)
	}
	s.catalog = c
	if len(s.Pools) == 0 {
		add(s.lineOf("pools"), "pools", "at least one pool is required")
	}
	names := map[string]bool{}
	var overrides []pricing.Entry
	priced := map[poolPriceKey]int{}
	for i := range s.Pools {
		p := &s.Pools[i]
		at := fmt.Sprintf("pools[%d]", i)
		if p.Name == "" || names[p.Name] {
			add(p.line, at+".name", "%q: every pool needs a unique name", p.Name)
		}
		names[p.Name] = true
		ct, ctErr := pricing.ParseCapacityType(p.CapacityType)
		if ctErr != nil {
			add(p.line, at+".capacityType", "%v", ctErr)
		}
		p.capacity = ct
		switch {
		case p.Zone == "":
			add(p.line, at+".zone", "required, e.g. us-east-1a")
		case s.Region != "" && !strings.HasPrefix(p.Zone, s.Region) && p.Zone != "0":
			// Every cloud names a zone after its region: us-east-1a (AWS),
			// us-central1-a (GCP), eastus-1 (Azure; "0" outside zones).
			add(p.line, at+".zone", "%q is not a zone of region %s: zones are named after their region, e.g. %sa", p.Zone, s.Region, s.Region)
		}
		if p.Min < 0 || p.Max < p.Min || p.Max == 0 {
			add(p.line, at+".max", "min %d, max %d: want 0 <= min <= max and max >= 1", p.Min, p.Max)
		} else if p.Max > MaxPoolNodes {
			add(p.line, at+".max", "%d nodes: a pool may have at most %d; split the fleet into more pools if it is really larger", p.Max, MaxPoolNodes)
		}
		if ct == pricing.Reserved && p.Min != p.Max {
			add(p.line, at+".min", "reserved capacity is bought up front: set min = max (%d, %d)", p.Min, p.Max)
		}
		if !p.ProvisioningDelay.given {
			p.ProvisioningDelay.Duration = DefaultProvisioningDelay
		}
		if !p.ScaleDownAfter.given {
			p.ScaleDownAfter.Duration = DefaultScaleDownAfter
		}
		if !pricing.ValidPrice(p.HourlyPrice) || p.HourlyPrice > MaxHourlyPrice {
			add(p.line, at+".hourlyPrice", "%g: a price must be a finite number >= 0 and at most %g USD per hour (a node's price, not a pool's)", p.HourlyPrice, MaxHourlyPrice)
		} else if p.priceGiven && p.HourlyPrice == 0 && ctErr == nil && ct != pricing.Reserved {
			// As the catalog refuses it: a node that costs nothing is a
			// price left out, and was read as the catalog's.
			add(p.line, at+".hourlyPrice", "0: only reserved capacity, paid up front, may cost nothing; give the node's %s price in USD per hour, or leave hourlyPrice out for the catalog's", ct)
		}
		for _, d := range []struct {
			field string
			v     Duration
		}{{"provisioningDelay", p.ProvisioningDelay}, {"scaleDownAfter", p.ScaleDownAfter}} {
			if d.v.Duration > MaxDelay {
				add(p.line, at+"."+d.field, "%v: want at most %v (a year)", d.v.Duration, MaxDelay)
			}
		}
		if p.AdvertisedInterruption != "" {
			b, err := pricing.ParseBucket(p.AdvertisedInterruption)
			if err != nil {
				add(p.line, at+".advertisedInterruption", "%v", err)
			}
			p.bucket = b
		}
		if ct != pricing.Spot && (p.MeanTimeToReclaim.Duration > 0 || p.AdvertisedInterruption != "") {
			add(p.line, at+".meanTimeToReclaim", "only Spot pools are reclaimed; remove it or set capacityType: spot")
		}
		if ct == pricing.Spot && !p.MeanTimeToReclaim.given {
			// A pool that behaves as it advertises: the bucket's rate.
			if rate := pricing.RateFromMonthly(p.bucket.MonthlyProbability()); rate > 0 {
				p.MeanTimeToReclaim.Duration = time.Duration(float64(time.Hour) / rate)
			}
		}
		// Without a capacity type or a region there is no price to look
		// up: the error above says what to fix, not a price "the catalog
		// has no" of.
		if s.catalog == nil || ctErr != nil || s.Region == "" {
			continue
		}
		t, ok := s.catalog.InstanceType(p.InstanceType)
		if !ok {
			add(p.line, at+".instanceType", "%q is not in the catalog %s; add it there with its GPUs, vCPUs and memory", p.InstanceType, s.Catalog)
			continue
		}
		// The catalog prices a node by its instance type, capacity type and
		// zone, not by its pool: pools that share them share one price, and
		// one pool's hourlyPrice or advertisedInterruption priced the
		// other's nodes too.
		k := poolPriceKey{p.InstanceType, ct, p.Zone}
		j, shared := priced[k]
		if !shared {
			priced[k] = i
		} else if q := &s.Pools[j]; q.priceGiven != p.priceGiven || q.HourlyPrice != p.HourlyPrice || q.bucket != p.bucket {
			field := "hourlyPrice"
			if q.priceGiven == p.priceGiven && q.HourlyPrice == p.HourlyPrice {
				field = "advertisedInterruption"
			}
			add(p.line, at+"."+field, "pools[%d] (%s, line %d) has the same instanceType, capacityType and zone, and nodes are priced by those, not by their pool: give both the same %s, or leave it out of both", j, q.Name, q.line, field)
			continue
		}
		if p.HourlyPrice > 0 || p.priceGiven || p.bucket != pricing.BucketUnknown {
			e := pricing.Entry{InstanceType: p.InstanceType, Capacity: ct, Region: s.Region, Zone: p.Zone, Hourly: p.HourlyPrice,
				Interruption: p.bucket, Source: "scenario " + s.file, Date: "-"}
			if !p.priceGiven {
				base, ok := s.catalog.Lookup(p.InstanceType, ct, s.Region, p.Zone)
				if !ok {
					add(p.line, at+".hourlyPrice", "the catalog has no %s price for %s in %s: give hourlyPrice", ct, p.InstanceType, s.Region)
					continue
				}
				e.Hourly = base.NodeHourly
			}
			if ct != pricing.Spot {
				e.Interruption = pricing.BucketUnknown
			}
			if !shared {
				overrides = append(overrides, e)
			}
		} else if _, ok := s.catalog.Lookup(p.InstanceType, ct, s.Region, p.Zone); !ok {
			add(p.line, at+".instanceType", "the catalog has no %s price for %s in %s: add one or give hourlyPrice", ct, p.InstanceType, s.Region)
		}
		// The node's providerID names its instance type's cloud, as each
		// cloud's nodes carry it: the reclaim rule reads the notice a node
		// gets from it (AWS 2m, GCP and Azure 30s; ReclaimRule.notice).
		// Until 2026-12-02 every node said aws, and a GCP or Azure pool's
		// reclaims had AWS's notice.
		p.template = localcluster.Pool{
			Name: p.Name, InstanceType: p.InstanceType, Cloud: t.Provider, GPUModel: t.GPUModel, GPUsPerNode: t.GPUs,
			CapacityType: string(ct), Zone: p.Zone, HourlyPrice: p.HourlyPrice,
			CPU: fmt.Sprintf("%g", t.VCPUs), Memory: fmt.Sprintf("%gGi", t.MemoryGiB),
		}
	}
	for i, c := range s.Classes {
		at := fmt.Sprintf("classes[%d]", i)
		if c.Share != nil && !(*c.Share > 0 && *c.Share <= 1) { // NaN too
			add(c.line, at+".share", "%g: want a fraction in (0, 1]", *c.Share)
		}
		if len(c.Annotations) == 0 {
			add(c.line, at+".annotations", "a rule must set at least one annotation, e.g. penny.dev/workload: training")
		}
		for _, k := range slices.Sorted(maps.Keys(c.Annotations)) {
			if strings.HasPrefix(k, "penny.dev/") && !slices.Contains(classAnnotations, k) {
				line := c.line
				if l, ok := c.keyLines[k]; ok {
					line = l
				}
				add(line, at+".annotations."+k, "Penny reads no such annotation, so the rule would not change how its pods run: use one of %s", strings.Join(classAnnotations, ", "))
			}
		}
		// Checked here, where the rule is written, not at the first trace
		// row it takes (which may be none).
		if _, err := spotrisk.ClassOf(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: c.Annotations}}, nil); err != nil {
			add(c.line, at+".annotations", "%v", err)
		}
	}
	for i, name := range s.GPUSharing {
		if _, err := LookupPolicy(name); err != nil {
			line := s.lineOf("gpuSharing")
			if i < len(s.sharingLines) {
				line = s.sharingLines[i]
			}
			add(line, fmt.Sprintf("gpuSharing[%d]", i), "%v", err)
		}
	}
	listed := map[string]int{}
	for i, p := range s.Policies {
		pol, err := LookupPolicy(p.Policy)
		if err != nil {
			add(p.line, fmt.Sprintf("policies[%d].policy", i), "%v", err)
			continue
		}
		// Only the first entry of a policy would be read.
		if j, dup := listed[pol.Name]; dup {
			add(p.line, fmt.Sprintf("policies[%d].policy", i), "%s is already listed as policies[%d] (line %d): give each policy one entry", p.Policy, j, s.Policies[j].line)
			continue
		}
		listed[pol.Name] = i
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	if len(overrides) > 0 {
		c, err := s.catalog.With(overrides...)
		if err != nil {
			return fmt.Errorf("%s: pool prices: %w", s.file, err)
		}
		s.catalog = c
	}
	return nil
}

// poolPriceKey is what the catalog prices a pool's nodes by.
type poolPriceKey struct {
	instanceType string
	capacity     pricing.CapacityType
	zone         string
}

// PriceCatalog is the catalog with the pools' own prices.
func (s *SpotScenario) PriceCatalog() *pricing.Catalog { return s.catalog }

// tweaks are the scenario's settings for a policy. A policy it does not
// list runs as the policy means to: spot-first's pods tolerate the Spot
// taint (Spot whenever it fits), Penny's too (SpotRisk decides per class)
// with Penny's agent on its nodes; the others' do not, as workloads without
// a Spot-aware scheduler do not.
func (s *SpotScenario) tweaks(policy string) PolicyTweaks {
	for _, p := range s.Policies {
		if strings.EqualFold(p.Policy, policy) {
			return p
		}
	}
	switch strings.ToLower(policy) {
	case SpotFirstPolicy:
		return PolicyTweaks{Policy: policy, TolerateSpot: true}
	case "penny":
		return PolicyTweaks{Policy: policy, TolerateSpot: true, NoticeCheckpoints: true}
	}
	return PolicyTweaks{Policy: policy}
}

// tolerates reports whether a policy's pods tolerate the Spot taint.
func (s *SpotScenario) tolerates(policy string) bool { return s.tweaks(policy).TolerateSpot }

// reclaimRule is what a reclaim costs the policy's pods.
func (s *SpotScenario) reclaimRule(policy string) ReclaimRule {
	return ReclaimRule{NoticeCheckpoints: s.tweaks(policy).NoticeCheckpoints}
}

// node builds a node of pool p.
func (s *SpotScenario) node(p *ElasticPool, name string) *corev1.Node {
	n := p.template.Node(s.Region, name)
	if s.SpotTaint && p.capacity == pricing.Spot {
		n.Spec.Taints = append(n.Spec.Taints, pricing.SpotTaints...)
	}
	if s.GPUTaint && p.template.GPUsPerNode > 0 {
		n.Spec.Taints = append(n.Spec.Taints, gpuTaint)
	}
	return n
}

// poolShape is a pool's template node, its price, and what an empty node of
// the pool gives pods: CPU, memory and GPUs (in thousandths).
func (s *SpotScenario) poolShape(p *ElasticPool) (*corev1.Node, pricing.Price, pricing.Usage, error) {
	tpl := s.node(p, p.Name+"-template")
	price, ok := s.catalog.NodePrice(tpl)
	if !ok {
		return nil, pricing.Price{}, pricing.Usage{}, fmt.Errorf("pool %s: no price for %s %s in %s", p.Name, p.CapacityType, p.InstanceType, s.Region)
	}
	alloc := tpl.Status.Allocatable
	g := alloc[gpu.ResourceGPU]
	return tpl, price, pricing.Usage{CPUMilli: alloc.Cpu().MilliValue(), MemoryBytes: alloc.Memory().Value(), GPUMilli: g.Value() * gpu.MilliPerGPU}, nil
}

var gpuTaint = corev1.Taint{Key: string(gpu.ResourceGPU), Value: "present", Effect: corev1.TaintEffectNoSchedule}

// admit gives a pod what admission would: a toleration of the GPU taint
// when it asks for GPUs, and of the Spot taint when the policy's pods
// tolerate Spot.
func (s *SpotScenario) admit(pod *corev1.Pod, policy string) {
	if !slices.ContainsFunc(s.GPUSharing, func(v string) bool { return strings.EqualFold(v, policy) }) {
		wholeGPUs(pod)
	}
	if s.GPUTaint && podGPUs(pod) > 0 {
		pod.Spec.Tolerations = append(pod.Spec.Tolerations, corev1.Toleration{Key: gpuTaint.Key, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule})
	}
	if s.tolerates(policy) {
		for _, t := range pricing.SpotTaints {
			pod.Spec.Tolerations = append(pod.Spec.Tolerations, corev1.Toleration{Key: t.Key, Operator: corev1.TolerationOpEqual, Value: t.Value, Effect: t.Effect})
		}
	}
}

// annotate gives a trace pod the annotations of the first class rule that
// takes it; the seeded share uses a hash of the pod's name, so every policy
// sees the same classes, or of its gang's name: a job checkpoints, or does
// not, as a whole.
func (s *SpotScenario) annotate(pod *corev1.Pod, runtime time.Duration, seed uint64) {
	qos := pod.Labels[LabelQoS]
	key := pod.Namespace + "/" + pod.Name
	if g := pod.Labels[gang.LabelName]; g != "" {
		key = pod.Namespace + "/" + gang.LabelName + "=" + g
	}
	for i, r := range s.Classes {
		if len(r.QoS) > 0 && !slices.Contains(r.QoS, qos) {
			continue
		}
		if runtime < r.MinRuntime.Duration {
			continue
		}
		if r.Share != nil && shareDraw(key, seed, i) >= *r.Share {
			continue
		}
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		for k, v := range r.Annotations {
			pod.Annotations[k] = v
		}
		return
	}
}

// UnclassedQoS is a trace QoS value that no class rule of a scenario names.
type UnclassedQoS struct {
	QoS string
	// Pods carry it; First is the first of them, by its source.
	Pods  int
	First string
}

// UnclassedQoS lists the trace's QoS values, in order of first use, that no
// class rule names, for a warning: their pods take no rule's annotations and
// run as batch, the class of a Job's pods, which a misspelt value ("ls" for
// LS) silently made of a service. A scenario without classes classes no pod
// on purpose, and one with a rule for any QoS names every value.
func (s *SpotScenario) UnclassedQoS(tr *Trace) []UnclassedQoS {
	if len(s.Classes) == 0 || slices.ContainsFunc(s.Classes, func(r ClassRule) bool { return len(r.QoS) == 0 }) {
		return nil
	}
	var out []UnclassedQoS
	at := map[string]int{}
	for _, tp := range tr.Pods {
		qos := tp.Pod.Labels[LabelQoS]
		if i, ok := at[qos]; ok {
			if i >= 0 {
				out[i].Pods++
			}
			continue
		}
		at[qos] = -1
		if !slices.ContainsFunc(s.Classes, func(r ClassRule) bool { return slices.Contains(r.QoS, qos) }) {
			at[qos] = len(out)
			out = append(out, UnclassedQoS{QoS: qos, Pods: 1, First: tp.Pod.Name + " (" + tp.Source + ")"})
		}
	}
	return out
}

// ownedByJob makes a trace pod without a controller a pod of a Job, one
// Job per gang: the replay resubmits a pod a reclaim or a move stopped, as
// its Job's controller would replace it, and SpotRisk moves back to Spot
// only pods that something replaces (spotrisk.Movable).
func ownedByJob(pod *corev1.Pod) {
	if metav1.GetControllerOf(pod) != nil {
		return
	}
	name := pod.Name
	if g := pod.Labels[gang.LabelName]; g != "" {
		name = g
	}
	pod.OwnerReferences = append(pod.OwnerReferences, metav1.OwnerReference{APIVersion: "batch/v1", Kind: "Job", Name: name,
		UID: types.UID("job:" + pod.Namespace + "/" + name), Controller: ptr.To(true)})
}

// wholeGPUs turns a request for a share of a GPU into one for a whole GPU.
func wholeGPUs(pod *corev1.Pod) {
	for i := range pod.Spec.Containers {
		res := &pod.Spec.Containers[i].Resources
		for _, l := range []corev1.ResourceList{res.Requests, res.Limits} {
			if _, ok := l[gpu.ResourceGPUMilli]; ok {
				delete(l, gpu.ResourceGPUMilli)
				l[gpu.ResourceGPU] = *resource.NewQuantity(1, resource.DecimalSI)
			}
		}
	}
}

// shareDraw is a deterministic uniform draw in [0,1) per pod and rule.
func shareDraw(key string, seed uint64, rule int) float64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%d/%s", seed, rule, key)
	return float64(h.Sum64()>>11) / float64(1<<53)
}

// podGPUs is the GPUs a pod holds, in GPUs, for GPU-hour accounting.
func podGPUs(pod *corev1.Pod) float64 {
	r, err := gpu.ParsePodRequest(pod)
	if err != nil {
		return 0
	}
	return float64(r.TotalMilli()) / gpu.MilliPerGPU
}

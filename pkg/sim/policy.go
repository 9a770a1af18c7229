package sim

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"

	configv1 "k8s.io/kube-scheduler/config/v1"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/scheme"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/validation"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/deploy"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pluginargs"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// A Policy is a scheduler configuration the simulator can run by name.
//
//   - default: kube-scheduler's default profile, as `kube-scheduler` with no
//     configuration runs it, plus SimGPUDevices so placements are physically
//     valid (devices chosen first-fit, as a device plugin would).
//   - penny: the penny-scheduler profile of deploy/scheduler/config.yaml (or
//     --scheduler-config) with Penny's plugins and no SimGPUDevices:
//     PennyGPUPack chooses the devices and binds with them, as in
//     penny-scheduler.
//   - spot-first: the default profile plus a score that puts a pod on Spot
//     whenever a Spot node fits, the naive baseline of the Spot benchmark
//     (spot_baseline.go, docs/spot.md).
//   - random, dotprod, clustering, packing, bestfit, fgd: the FGD paper's
//     baselines — the default profile's filters, the baseline's score plugin
//     as the only scorer, and SimGPUDevices choosing devices the way the
//     paper's artifact does for that baseline.
type Policy struct {
	Name string
	// Label is the name the FGD paper uses, for tables and plots.
	Label string
	// Published is the paper's mean unallocated GPU % on openb default at
	// 130% arrivals; 0 when it has none.
	Published float64
	// score is the baseline's score plugin; empty for default and penny.
	score string
	// chooser names the device choice: first, best, random or fgd.
	chooser string
}

var policies = []Policy{
	{Name: "default", Label: "Default", chooser: "first"},
	{Name: "penny", Label: "Penny", chooser: "first"},
	{Name: "random", Label: "Random", Published: 12.53, score: RandomScoreName, chooser: "random"},
	{Name: "dotprod", Label: "DotProd", Published: 9.15, score: DotProductScoreName, chooser: "best"},
	{Name: "clustering", Label: "GpuClustering", Published: 8.12, score: GpuClusteringScoreName, chooser: "best"},
	{Name: "packing", Label: "GpuPacking", Published: 8.00, score: GpuPackingScoreName, chooser: "best"},
	{Name: "bestfit", Label: "BestFit", Published: 6.92, score: BestFitScoreName, chooser: "best"},
	{Name: "fgd", Label: "FGD", Published: 4.61, score: FGDScoreName, chooser: "fgd"},
	{Name: "firstfit", Label: "FirstFit", score: FirstFitScoreName, chooser: "first"},
	{Name: SpotFirstPolicy, Label: "Spot-first", chooser: "first"},
}

// PolicyNames lists the policies in a stable order.
func PolicyNames() []string {
	out := make([]string, len(policies))
	for i, p := range policies {
		out[i] = p.Name
	}
	return out
}

// LookupPolicy finds a policy by name, or says which names exist.
func LookupPolicy(name string) (*Policy, error) {
	for i := range policies {
		if strings.EqualFold(policies[i].Name, name) {
			return &policies[i], nil
		}
	}
	return nil, fmt.Errorf("unknown policy %q; valid policies: %s", name, strings.Join(PolicyNames(), ", "))
}

// ParsePolicies reads a comma-separated list of policy names.
func ParsePolicies(list string) ([]*Policy, error) {
	var out []*Policy
	seen := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		p, err := LookupPolicy(n)
		if err != nil {
			return nil, err
		}
		if !seen[p.Name] {
			out = append(out, p)
			seen[p.Name] = true
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no policy given; valid policies: %s", strings.Join(PolicyNames(), ", "))
	}
	return out, nil
}

// NodeLocalFilters says every Filter plugin of the policy's profile judges a
// node by the pod and that node alone, so the engine may memoize Filter
// results (EngineOptions.MemoizeFilters). True for the profiles made of
// in-tree and simulator plugins; false for penny, whose plugins may look at
// more (a gang's members, telemetry).
func (p *Policy) NodeLocalFilters() bool { return p.Name != "penny" }

// Run is what a policy needs to build one run's profile.
type Run struct {
	// Seed drives the random choices of the random baseline.
	Seed uint64
	// Workload is the typical-pod distribution FGD measures against.
	Workload gpu.Workload
	// SchedulerConfig is the KubeSchedulerConfiguration the penny policy
	// reads its profile from; nil means the deployed one.
	SchedulerConfig []byte
	// Deps are handed to Penny's plugins (prices, risk, the virtual clock).
	Deps plugins.Deps
}

// Build returns the profile to run and the out-of-tree plugins it may use.
func (p *Policy) Build(run Run) (*config.KubeSchedulerProfile, frameworkruntime.Registry, error) {
	var prof *config.KubeSchedulerProfile
	var err error
	if p.Name == "penny" {
		data := run.SchedulerConfig
		if data == nil {
			data = deploy.SchedulerConfig
		}
		prof, err = ProfileFromConfig(data, PennyProfile)
	} else {
		prof, err = DefaultProfile()
	}
	if err != nil {
		return nil, nil, err
	}
	prof.PercentageOfNodesToScore = ptrInt32(100)

	registry := plugins.Registry(run.Deps)
	v := newViews()
	rng := rand.New(rand.NewPCG(run.Seed, 0x5851f42d4c957f2d))
	chooser := choosers[p.chooser]
	switch p.chooser {
	case "random":
		chooser = randomChooser(rng)
	case "fgd":
		chooser = (&fgd{workload: run.Workload}).choose
	}
	if err := registry.Register(GPUDevicesName, newGPUDevices(v, chooser)); err != nil {
		return nil, nil, err
	}
	// Penny's profile chooses devices itself (PennyGPUPack), as it does in
	// penny-scheduler; the other profiles get GPUDevices. It runs first at
	// PreFilter and Filter, so a node without room on its devices fails
	// before NodeResourcesFit's costlier checks (which nodes pass does not
	// depend on the order), and last at Reserve and PreBind.
	if p.Name != "penny" {
		pl := prof.Plugins
		pl.PreFilter.Enabled = append([]config.Plugin{{Name: GPUDevicesName}}, pl.PreFilter.Enabled...)
		pl.Filter.Enabled = append([]config.Plugin{{Name: GPUDevicesName}}, pl.Filter.Enabled...)
		pl.Reserve.Enabled = append(pl.Reserve.Enabled, config.Plugin{Name: GPUDevicesName})
		pl.PreBind.Enabled = append(pl.PreBind.Enabled, config.Plugin{Name: GPUDevicesName})
	}

	if p.Name == SpotFirstPolicy {
		if err := addSpotFirst(prof, registry); err != nil {
			return nil, nil, err
		}
	}
	if p.score == "" {
		return prof, registry, nil
	}
	f := &fgd{workload: run.Workload}
	for name, factory := range map[string]frameworkruntime.PluginFactory{
		DotProductScoreName:    baselineFactory(DotProductScoreName, v, false, dotProductScore),
		GpuClusteringScoreName: baselineFactory(GpuClusteringScoreName, v, false, gpuClusteringScore),
		GpuPackingScoreName:    baselineFactory(GpuPackingScoreName, v, false, gpuPackingScore),
		BestFitScoreName:       baselineFactory(BestFitScoreName, v, true, bestFitScore),
		FGDScoreName:           baselineFactory(FGDScoreName, v, false, f.score),
		FirstFitScoreName:      baselineFactory(FirstFitScoreName, v, false, firstFitScore),
		RandomScoreName:        randomFactory(rng),
	} {
		if name == p.score {
			if err := registry.Register(name, factory); err != nil {
				return nil, nil, err
			}
		}
	}
	// The baseline is the only scorer, as in the paper's runs.
	prof.Plugins.Score = config.PluginSet{
		Enabled:  []config.Plugin{{Name: p.score, Weight: 1}},
		Disabled: []config.Plugin{{Name: "*"}},
	}
	prof.Plugins.PreScore = config.PluginSet{Disabled: []config.Plugin{{Name: "*"}}}
	if p.score == RandomScoreName {
		prof.Plugins.PreScore.Enabled = []config.Plugin{{Name: RandomScoreName}}
	}
	return prof, registry, nil
}

// pennyClassArgs are the SpotRisk args Penny's profile in schedulerConfig (nil:
// the deployed configuration) classifies pods with; nil when the profile
// leaves them out, which spotrisk.ClassOf reads as the defaults. The
// replays read every pod's class with them, whatever the policy, so that a
// wait the simulator times (fallbackAfter) and the classes it reports
// (neverSpotPriority, shortRuntime) are the plugin's own.
func pennyClassArgs(schedulerConfig []byte) (*spotrisk.Args, error) {
	data := schedulerConfig
	if data == nil {
		data = deploy.SchedulerConfig
	}
	prof, err := ProfileFromConfig(data, PennyProfile)
	if err != nil {
		return nil, err
	}
	return spotRiskArgs(prof)
}

// spotRiskArgs are prof's SpotRisk args, defaulted and validated; nil when
// it has none.
func spotRiskArgs(prof *config.KubeSchedulerProfile) (*spotrisk.Args, error) {
	for _, pc := range prof.PluginConfig {
		if pc.Name == spotrisk.Name {
			return pluginargs.Decode[spotrisk.Args](spotrisk.Name, pc.Args)
		}
	}
	return nil, nil
}

// PennyProfile is the profile of the deployed configuration that pods opt
// into with schedulerName.
const PennyProfile = "penny-scheduler"

// DefaultProfile is kube-scheduler's default profile after defaulting.
func DefaultProfile() (*config.KubeSchedulerProfile, error) {
	var versioned configv1.KubeSchedulerConfiguration
	scheme.Scheme.Default(&versioned)
	var cfg config.KubeSchedulerConfiguration
	if err := scheme.Scheme.Convert(&versioned, &cfg, nil); err != nil {
		return nil, err
	}
	if len(cfg.Profiles) != 1 {
		return nil, fmt.Errorf("defaulted configuration has %d profiles, want 1", len(cfg.Profiles))
	}
	return &cfg.Profiles[0], nil
}

// ProfileFromConfig decodes a KubeSchedulerConfiguration the way
// kube-scheduler does (defaults applied, validated) and returns the named
// profile.
func ProfileFromConfig(data []byte, name string) (*config.KubeSchedulerProfile, error) {
	obj, gvk, err := scheme.Codecs.UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("decoding scheduler configuration: %w", err)
	}
	cfg, ok := obj.(*config.KubeSchedulerConfiguration)
	if !ok {
		return nil, fmt.Errorf("scheduler configuration is a %v, want KubeSchedulerConfiguration", gvk)
	}
	if err := validation.ValidateKubeSchedulerConfiguration(cfg); err != nil {
		return nil, fmt.Errorf("invalid scheduler configuration: %w", err)
	}
	var names []string
	for i := range cfg.Profiles {
		if cfg.Profiles[i].SchedulerName == name {
			return &cfg.Profiles[i], nil
		}
		names = append(names, cfg.Profiles[i].SchedulerName)
	}
	sort.Strings(names)
	return nil, fmt.Errorf("scheduler configuration has no profile %q; it has %s", name, strings.Join(names, ", "))
}

func ptrInt32(v int32) *int32 { return &v }

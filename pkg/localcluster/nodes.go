package localcluster

import (
	"fmt"
	"hash/fnv"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/gpu"
)

// Labels and annotations the local cluster puts on its nodes. The capacity
// type label is Karpenter's, which Penny reads like any cloud's.
const (
	LabelPool         = "penny.dev/pool"
	LabelCapacityType = "karpenter.sh/capacity-type"
	// AnnotationHourlyPrice is the node's on-demand-equivalent price in USD/h
	// as the spec gives it, for display; pricing decisions use the catalog.
	AnnotationHourlyPrice = "penny.dev/hourly-price"

	// kwokNodeAnnotation marks nodes the in-process KWOK controller manages.
	kwokNodeAnnotation = "kwok.x-k8s.io/node"
	kwokNodeValue      = "fake"
)

// Nodes builds the Node objects of a spec, named <pool>-<index>.
func (s *Spec) Nodes() []*corev1.Node {
	var nodes []*corev1.Node
	for i := range s.Pools {
		p := &s.Pools[i]
		for n := 0; n < p.Count; n++ {
			nodes = append(nodes, p.node(s.Region, fmt.Sprintf("%s-%d", p.Name, n)))
		}
	}
	return nodes
}

func (p *Pool) node(region, name string) *corev1.Node {
	labels := map[string]string{
		corev1.LabelHostname:           name,
		corev1.LabelOSStable:           "linux",
		corev1.LabelArchStable:         "amd64",
		corev1.LabelInstanceTypeStable: p.InstanceType,
		corev1.LabelTopologyZone:       p.Zone,
		LabelCapacityType:              p.CapacityType,
		LabelPool:                      p.Name,
		"type":                         "kwok",
	}
	if region != "" {
		labels[corev1.LabelTopologyRegion] = region
	}
	for k, v := range p.Labels {
		labels[k] = v
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(p.CPU),
		corev1.ResourceMemory: resource.MustParse(p.Memory),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	if model, ok := gpu.LookupModel(p.GPUModel); ok && p.GPUsPerNode > 0 {
		labels[gpu.LabelProduct] = model.Product
		labels[gpu.LabelCount] = strconv.Itoa(p.GPUsPerNode)
		labels[gpu.LabelMemory] = strconv.Itoa(model.MemoryGB * 1024)
		whole := p.GPUsPerNode
		if p.MIG != nil {
			migGPUs := p.MIG.GPUs
			if migGPUs == 0 {
				migGPUs = p.GPUsPerNode
			}
			labels[gpu.LabelMIGStrategy] = "mixed"
			perProfile := map[string]int64{}
			if p.MIG.OnDemand {
				// The GPUs stay whole until pods ask for instances; each
				// profile is advertised at the most the GPUs could hold, and
				// the scheduler's device view decides what still fits.
				labels[gpu.LabelMIGPartitioning] = gpu.MIGOnDemand
				for _, prof := range model.MIG {
					perProfile[prof.Name] = int64(prof.Max * migGPUs)
				}
			} else {
				whole -= migGPUs
				for _, prof := range p.MIG.Layout {
					perProfile[prof] += int64(migGPUs)
				}
			}
			for prof, n := range perProfile {
				capacity[gpu.MIGResourceName(prof)] = *resource.NewQuantity(n, resource.DecimalSI)
			}
		}
		capacity[gpu.ResourceGPU] = *resource.NewQuantity(int64(whole), resource.DecimalSI)
		capacity[gpu.ResourceGPUMilli] = *resource.NewQuantity(int64(whole*gpu.MilliPerGPU), resource.DecimalSI)
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   name,
			Labels: labels,
			Annotations: map[string]string{
				kwokNodeAnnotation:    kwokNodeValue,
				AnnotationHourlyPrice: strconv.FormatFloat(p.HourlyPrice, 'f', -1, 64),
			},
		},
		Spec: corev1.NodeSpec{ProviderID: p.providerID(name)},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity.DeepCopy(),
			Phase:       corev1.NodeRunning,
		},
	}
	return node
}

// providerID follows each cloud's format so that code choosing a notice
// watcher from it sees what it would see on that cloud.
func (p *Pool) providerID(name string) string {
	switch p.Cloud {
	case "aws":
		return fmt.Sprintf("aws:///%s/i-%017x", p.Zone, hash(name))
	case "gcp":
		return fmt.Sprintf("gce://penny-local/%s/%s", p.Zone, name)
	case "azure":
		return fmt.Sprintf("azure:///subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/penny-local/providers/Microsoft.Compute/virtualMachines/%s", name)
	}
	return "kwok://" + name
}

func hash(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

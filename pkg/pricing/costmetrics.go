package pricing

import (
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"

	"github.com/pennysched/penny/pkg/gpu"
)

// What the cluster costs as it runs, computed when /metrics is scraped from
// the scheduler's node and pod listers and the catalog in force, so nothing
// is kept between scrapes and nothing is lost on a restart.
//
// The node prices follow OpenCost's names and units, so that dashboards and
// queries written for OpenCost read them; of OpenCost's labels they keep
// node, instance_type and region (not instance, which clashes with the label
// Prometheus gives every target, nor provider_id, arch and uid), and add
// capacity_type, which OpenCost reports in a metric of its own.
var (
	nodeCostLabels = []string{"node", "instance_type", "region", "capacity_type"}

	nodeTotalCostDesc = metrics.NewDesc("node_total_hourly_cost",
		"What the node costs per hour, in USD, from SpotRisk's price catalog (OpenCost's name and unit).",
		nodeCostLabels, nil, metrics.ALPHA, "")
	nodeGPUCostDesc = metrics.NewDesc("node_gpu_hourly_cost",
		"The node's price per GPU-hour, in USD: its share of the node's price split by OpenCost's component ratios (0 on a node without GPUs).",
		nodeCostLabels, nil, metrics.ALPHA, "")
	nodeCPUCostDesc = metrics.NewDesc("node_cpu_hourly_cost",
		"The node's price per vCPU-hour, in USD: its share of the node's price split by OpenCost's component ratios.",
		nodeCostLabels, nil, metrics.ALPHA, "")
	nodeRAMCostDesc = metrics.NewDesc("node_ram_hourly_cost",
		"The node's price per GiB-hour of memory, in USD: its share of the node's price split by OpenCost's component ratios.",
		nodeCostLabels, nil, metrics.ALPHA, "")
	namespaceCostDesc = metrics.NewDesc("penny_namespace_cost_usd_per_hour",
		"What the namespace's bound, unfinished pods cost per hour, in USD, by the capacity type of their nodes: each pod's requests (GPUs, vCPUs, memory) times its node's component prices. Reserved capacity is priced at its catalog rate although it is paid for already.",
		[]string{"namespace", "capacity_type"}, nil, metrics.ALPHA, "")
	namespaceGPUsDesc = metrics.NewDesc("penny_namespace_gpus",
		"GPUs the namespace's bound, unfinished pods on priced nodes hold, by capacity type; a share counts as its fraction of a GPU and a MIG slice as a seventh.",
		[]string{"namespace", "capacity_type"}, nil, metrics.ALPHA, "")
	unpricedNodesDesc = metrics.NewDesc("penny_cost_unpriced_nodes",
		"Nodes the price catalog has no price for. They and their pods are left out of node_*_hourly_cost and penny_namespace_cost_usd_per_hour.",
		nil, nil, metrics.ALPHA, "")

	costRegisterOnce sync.Once
	registeredCost   = &costCollector{}
)

// RegisterCostMetrics serves the cost metrics on the registry /metrics
// serves, computed from these listers and prices. Later calls, from other
// profiles or a scheduler restarted in the same process, replace the
// sources and register nothing more: the profiles of one scheduler hand the
// same prices (plugins.Registry refuses profiles that name two catalogs),
// since a pod is priced by its node, whichever profile placed it.
func RegisterCostMetrics(prices PriceBook, pods corelisters.PodLister, nodes corelisters.NodeLister) {
	registeredCost.src.Store(&costSources{prices: prices, pods: pods, nodes: nodes})
	costRegisterOnce.Do(func() {
		legacyregistry.CustomMustRegister(registeredCost)
	})
}

func newCostCollector(prices PriceBook, pods corelisters.PodLister, nodes corelisters.NodeLister) *costCollector {
	c := &costCollector{}
	c.src.Store(&costSources{prices: prices, pods: pods, nodes: nodes})
	return c
}

// costSources are what the metrics are computed from.
type costSources struct {
	prices PriceBook
	pods   corelisters.PodLister
	nodes  corelisters.NodeLister
}

type costCollector struct {
	metrics.BaseStableCollector
	// src is the latest sources given: every scheduler profile builds its
	// own SpotRisk, each of which registers, and a registry takes a
	// collector once.
	src atomic.Pointer[costSources]
}

func (c *costCollector) DescribeWithStability(ch chan<- *metrics.Desc) {
	for _, d := range []*metrics.Desc{nodeTotalCostDesc, nodeGPUCostDesc, nodeCPUCostDesc, nodeRAMCostDesc,
		namespaceCostDesc, namespaceGPUsDesc, unpricedNodesDesc} {
		ch <- d
	}
}

type namespaceCapacity struct {
	namespace string
	capacity  CapacityType
}

type namespaceCost struct {
	hourly   float64
	gpuMilli int64
}

func (c *costCollector) CollectWithStability(ch chan<- metrics.Metric) {
	s := c.src.Load()
	if s == nil {
		return
	}
	nodes, err := s.nodes.List(labels.Everything())
	if err != nil {
		klog.ErrorS(err, "Listing nodes for the cost metrics")
		return
	}
	prices := make(map[string]Price, len(nodes))
	unpriced := 0
	for _, n := range nodes {
		p, ok := s.prices.NodePrice(n)
		if !ok {
			unpriced++
			continue
		}
		prices[n.Name] = p
		values := []string{n.Name, p.InstanceType, n.Labels[corev1.LabelTopologyRegion], string(p.Capacity)}
		ch <- metrics.NewLazyConstMetric(nodeTotalCostDesc, metrics.GaugeValue, p.NodeHourly, values...)
		ch <- metrics.NewLazyConstMetric(nodeGPUCostDesc, metrics.GaugeValue, p.GPUHourly, values...)
		ch <- metrics.NewLazyConstMetric(nodeCPUCostDesc, metrics.GaugeValue, p.CPUCoreHourly, values...)
		ch <- metrics.NewLazyConstMetric(nodeRAMCostDesc, metrics.GaugeValue, p.RAMGiBHourly, values...)
	}
	ch <- metrics.NewLazyConstMetric(unpricedNodesDesc, metrics.GaugeValue, float64(unpriced))

	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		klog.ErrorS(err, "Listing pods for the cost metrics")
		return
	}
	byNamespace := map[namespaceCapacity]*namespaceCost{}
	for _, pod := range pods {
		// A finished pod's containers are gone and hold nothing, though the
		// pod stays bound to its node until it is deleted.
		if pod.Spec.NodeName == "" || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		p, ok := prices[pod.Spec.NodeName]
		if !ok {
			continue
		}
		key := namespaceCapacity{pod.Namespace, p.Capacity}
		sum := byNamespace[key]
		if sum == nil {
			sum = &namespaceCost{}
			byNamespace[key] = sum
		}
		u := PodUsage(pod)
		sum.hourly += p.HourlyFor(u)
		sum.gpuMilli += u.GPUMilli
	}
	for key, sum := range byNamespace {
		ch <- metrics.NewLazyConstMetric(namespaceCostDesc, metrics.GaugeValue, sum.hourly, key.namespace, string(key.capacity))
		ch <- metrics.NewLazyConstMetric(namespaceGPUsDesc, metrics.GaugeValue, float64(sum.gpuMilli)/gpu.MilliPerGPU, key.namespace, string(key.capacity))
	}
}

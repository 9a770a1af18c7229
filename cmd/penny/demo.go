package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins/spotrisk"
)

const (
	demoNamespace = "penny-demo"
	schedulerName = "penny-scheduler"
)

// placedPod is one demo pod and where it landed.
type placedPod struct {
	Name         string  `json:"name"`
	Node         string  `json:"node"`
	Pool         string  `json:"pool"`
	CapacityType string  `json:"capacity_type"`
	GPUs         string  `json:"gpus"`
	HourlyUSD    float64 `json:"hourly_usd"`
}

// demoWorkload is a small, realistic mix: distributed training that takes
// whole nodes, a single-node fine-tune that checkpoints (so SpotRisk sends it
// to Spot), inference on MIG slices and on shares of a GPU (never on Spot),
// and a CPU-only data job. The workload class is an annotation, as SpotRisk
// reads it (docs/spot.md).
func demoWorkload() (jobs []*batchv1.Job, deployments []*appsv1.Deployment, pods []*corev1.Pod) {
	res := func(cpu, mem string, extra corev1.ResourceList) corev1.ResourceRequirements {
		l := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}
		for k, v := range extra {
			l[k] = v
		}
		return corev1.ResourceRequirements{Requests: l, Limits: l}
	}
	spec := func(image string, r corev1.ResourceRequirements, restart corev1.RestartPolicy) corev1.PodSpec {
		return corev1.PodSpec{
			SchedulerName: schedulerName,
			RestartPolicy: restart,
			Containers:    []corev1.Container{{Name: "main", Image: image, Resources: r}},
		}
	}
	job := func(name string, workers int32, r corev1.ResourceRequirements, annotations map[string]string) *batchv1.Job {
		return &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: demoNamespace},
			Spec: batchv1.JobSpec{
				Parallelism:  ptr.To(workers),
				Completions:  ptr.To(workers),
				BackoffLimit: ptr.To[int32](3),
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Annotations: annotations},
					Spec:       spec("ghcr.io/example/trainer:latest", r, corev1.RestartPolicyNever),
				},
			},
		}
	}
	deployment := func(name string, replicas int32, r corev1.ResourceRequirements) *appsv1.Deployment {
		labels := map[string]string{"app": name}
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: demoNamespace},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr.To(replicas),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{spotrisk.AnnotationWorkload: "inference"}},
					Spec:       spec("ghcr.io/example/server:latest", r, corev1.RestartPolicyAlways),
				},
			},
		}
	}
	gpus := func(n int64) corev1.ResourceList {
		return corev1.ResourceList{gpu.ResourceGPU: *resource.NewQuantity(n, resource.DecimalSI)}
	}
	jobs = []*batchv1.Job{
		job("llm-pretrain", 2, res("90", "1000Gi", gpus(8)), map[string]string{spotrisk.AnnotationWorkload: "training"}),
		job("llm-finetune", 1, res("40", "400Gi", gpus(4)), map[string]string{
			spotrisk.AnnotationWorkload: "training", spotrisk.AnnotationCheckpointInterval: "30m"}),
	}
	deployments = []*appsv1.Deployment{
		deployment("chat-inference", 2, res("8", "64Gi", corev1.ResourceList{gpu.MIGResourceName("3g.40gb"): resource.MustParse("1")})),
		deployment("embedder", 3, res("4", "16Gi", corev1.ResourceList{gpu.ResourceGPUMilli: resource.MustParse("250")})),
	}
	pods = []*corev1.Pod{{
		ObjectMeta: metav1.ObjectMeta{Name: "data-prep", Namespace: demoNamespace, Annotations: map[string]string{spotrisk.AnnotationWorkload: "batch"}},
		Spec:       spec("ghcr.io/example/etl:latest", res("8", "32Gi", nil), corev1.RestartPolicyNever),
	}}
	return jobs, deployments, pods
}

// runDemo submits the workload and waits until every pod it creates is
// bound, or timeout (from submission to the last pod placed); it returns
// the pods in a stable order.
func runDemo(ctx context.Context, client kubernetes.Interface, timeout time.Duration) ([]placedPod, error) {
	deadline := time.Now().Add(timeout)
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: demoNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	jobs, deployments, pods := demoWorkload()
	want := 0
	for _, j := range jobs {
		want += int(*j.Spec.Parallelism)
		if _, err := client.BatchV1().Jobs(demoNamespace).Create(ctx, j, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create job %s: %w", j.Name, err)
		}
		// One job at a time, so that the table reads the same on every run:
		// pods that arrive together are placed in whatever order the Job
		// controller creates them, and the first takes the reserved node.
		// A job that does not place in time is reported with the rest.
		waitBound(ctx, client, batchv1.JobNameLabel+"="+j.Name, int(*j.Spec.Parallelism), min(20*time.Second, time.Until(deadline)))
	}
	for _, d := range deployments {
		want += int(*d.Spec.Replicas)
		if _, err := client.AppsV1().Deployments(demoNamespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create deployment %s: %w", d.Name, err)
		}
	}
	for _, p := range pods {
		want++
		// The namespace's default ServiceAccount is created asynchronously.
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := client.CoreV1().Pods(demoNamespace).Create(ctx, p, metav1.CreateOptions{})
			return err == nil, nil
		})
		if err != nil {
			return nil, fmt.Errorf("create pod %s: %w", p.Name, err)
		}
	}

	waitBound(ctx, client, "", want, time.Until(deadline))
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// Listed again, not the poll's last listing: with the deadline passed
	// the poll lists nothing.
	list, err := client.CoreV1().Pods(demoNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list demo pods: %w", err)
	}
	nodes := map[string]*corev1.Node{}
	var out []placedPod
	for i := range list.Items {
		p := &list.Items[i]
		pp := placedPod{Name: p.Name, GPUs: gpuColumn(p)}
		if p.Spec.NodeName != "" {
			n, ok := nodes[p.Spec.NodeName]
			if !ok {
				got, err := client.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
				if err != nil {
					return nil, err
				}
				n, nodes[p.Spec.NodeName] = got, got
			}
			pp.Node, pp.Pool, pp.CapacityType = n.Name, n.Labels[localcluster.LabelPool], n.Labels[localcluster.LabelCapacityType]
			pp.HourlyUSD = podHourlyCost(p, n)
		}
		out = append(out, pp)
	}
	// Pods still missing (never created) count as pending too.
	for i := len(out); i < want; i++ {
		out = append(out, placedPod{Name: "(not created)"})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// waitBound waits up to timeout for at least n demo pods matching selector
// to exist and every one of them to be bound; on timeout the caller reports
// what is pending.
func waitBound(ctx context.Context, client kubernetes.Interface, selector string, n int, timeout time.Duration) {
	if timeout <= 0 {
		return
	}
	_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		l, err := client.CoreV1().Pods(demoNamespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		if len(l.Items) < n {
			return false, nil
		}
		for i := range l.Items {
			if l.Items[i].Spec.NodeName == "" {
				return false, nil
			}
		}
		return true, nil
	})
}

func gpuColumn(p *corev1.Pod) string {
	r, err := gpu.ParsePodRequest(p)
	switch {
	case err != nil:
		return "invalid"
	case r.GPUs > 0:
		return strconv.FormatInt(r.GPUs, 10)
	case r.Milli > 0:
		return strconv.FormatFloat(float64(r.Milli)/gpu.MilliPerGPU, 'f', -1, 64)
	case len(r.MIG) > 0:
		var parts []string
		for name, n := range r.MIG {
			parts = append(parts, fmt.Sprintf("%dx mig-%s", n, name))
		}
		sort.Strings(parts)
		return strings.Join(parts, ",")
	}
	return "-"
}

// podHourlyCost is the pod's share of its node's price: by GPU share on a
// GPU node (a MIG slice counts its compute sevenths), by CPU share otherwise.
func podHourlyCost(p *corev1.Pod, n *corev1.Node) float64 {
	price, err := strconv.ParseFloat(n.Annotations[localcluster.AnnotationHourlyPrice], 64)
	if err != nil || price == 0 {
		return 0
	}
	if r, err := gpu.ParsePodRequest(p); err == nil && !r.IsZero() {
		count, _ := strconv.Atoi(n.Labels[gpu.LabelCount])
		if count > 0 {
			return price * float64(r.TotalMilli()) / float64(count*gpu.MilliPerGPU)
		}
	}
	var cpu int64
	for _, c := range p.Spec.Containers {
		cpu += c.Resources.Requests.Cpu().MilliValue()
	}
	nodeCPU := n.Status.Capacity.Cpu().MilliValue()
	if nodeCPU == 0 {
		return 0
	}
	return price * float64(cpu) / float64(nodeCPU)
}

func printPlacements(w io.Writer, pods []placedPod) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tNODE\tPOOL\tCAPACITY\tGPUS\t$/H")
	var total float64
	for _, p := range pods {
		node, pool, ct, cost := p.Node, p.Pool, p.CapacityType, fmt.Sprintf("%.2f", p.HourlyUSD)
		if node == "" {
			node, pool, ct, cost = "<pending>", "-", "-", "-"
		}
		total += p.HourlyUSD
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, node, pool, ct, p.GPUs, cost)
	}
	fmt.Fprintf(tw, "\t\t\t\tTOTAL\t%.2f\n", total)
	tw.Flush()
}

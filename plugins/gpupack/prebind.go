package gpupack

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/gpu"
)

// PreBindPreFlight says whether PreBind has devices to record.
func (p *GPUPack) PreBindPreFlight(_ context.Context, state fwk.CycleState, _ *corev1.Pod, _ string) (*fwk.PreBindPreFlightResult, *fwk.Status) {
	if s, err := getState(state); err != nil || s.assigned == nil {
		return nil, fwk.NewStatus(fwk.Skip)
	}
	return nil, nil
}

// PreBind records the devices on the pod (penny.dev/gpu-assignment) before
// it is bound, so that the node side can honour the choice and a restarted
// scheduler finds every bound pod's devices. A value the pod arrived with is
// overwritten: only the scheduler decides devices.
func (p *GPUPack) PreBind(ctx context.Context, state fwk.CycleState, pod *corev1.Pod, nodeName string) *fwk.Status {
	s, err := getState(state)
	if err != nil {
		return fwk.AsStatus(err)
	}
	if s.assigned == nil {
		return nil
	}
	if s.node != nodeName {
		return fwk.AsStatus(fmt.Errorf("devices of pod %s/%s were reserved on node %s, but it is being bound to %s", pod.Namespace, pod.Name, s.node, nodeName))
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{gpu.AnnotationAssignment: s.assigned.String()}}})
	if err != nil {
		return fwk.AsStatus(err)
	}
	if _, err := p.h.ClientSet().CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fwk.AsStatus(fmt.Errorf("recording %s=%s on pod %s/%s: %w", gpu.AnnotationAssignment, s.assigned, pod.Namespace, pod.Name, err))
	}
	return nil
}

package deploy

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// jsonFields are the JSON names of a struct type's fields.
func jsonFields(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// The policy that holds penny-agent to its reclaim taint lists what else an
// update may not change on its node, field by field (CEL cannot compare a
// spec less its taints). A field a newer Kubernetes adds to Node is not in
// the list, and an agent could then change it on its node unchecked: as
// spec.podPreemptionPolicy (Kubernetes 1.37), which turns resize preemption
// off on the node. Every field of Node's spec and every metadata field an
// update can change must be compared.
func TestAgentNodePolicyCoversEveryNodeField(t *testing.T) {
	const file = "agent/reclaim.yaml"
	vap := &admissionregistrationv1.ValidatingAdmissionPolicy{}
	decodeKind(t, file, readObjects(t, file), "ValidatingAdmissionPolicy", vap)
	vars := map[string]string{}
	for _, v := range vap.Spec.Variables {
		vars[v.Name] = v.Expression
	}
	compares := func(expr, path string) bool {
		return strings.Contains(expr, "object."+path) && strings.Contains(expr, "oldObject."+path)
	}

	// taints are what otherTaints and the last validation read.
	for _, f := range jsonFields(reflect.TypeFor[corev1.NodeSpec]()) {
		if f == "taints" {
			continue
		}
		if !compares(vars["sameSpec"], "spec."+f) {
			t.Errorf("%s: sameSpec does not hold spec.%s as it was: penny-agent may change it on its node", file, f)
		}
	}
	// Metadata an update cannot change, or that is the API server's own.
	notWritable := []string{"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
		"creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"}
	for _, f := range jsonFields(reflect.TypeFor[metav1.ObjectMeta]()) {
		if slices.Contains(notWritable, f) {
			continue
		}
		if !compares(vars["sameMetadata"], "metadata."+f) {
			t.Errorf("%s: sameMetadata does not hold metadata.%s as it was: penny-agent may change it on its node", file, f)
		}
	}
}

// The NVIDIA container runtime gives a container NVIDIA_MIG_MONITOR_DEVICES
// (or NVIDIA_MIG_CONFIG_DEVICES) only when it holds CAP_SYS_ADMIN, and
// refuses to start any other container that sets it ("cannot set
// MIG_MONITOR_DEVICES in non privileged container"): an agent that asks for
// MIG monitoring with every capability dropped never runs.
func TestAgentHoldsWhatItsMIGMonitoringNeeds(t *testing.T) {
	const file = "agent/penny-agent.yaml"
	ds := &appsv1.DaemonSet{}
	decodeKind(t, file, readObjects(t, file), "DaemonSet", ds)
	for _, c := range ds.Spec.Template.Spec.Containers {
		asks := ""
		for _, e := range c.Env {
			if (e.Name == "NVIDIA_MIG_MONITOR_DEVICES" || e.Name == "NVIDIA_MIG_CONFIG_DEVICES") && e.Value != "" && e.Value != "none" {
				asks = e.Name
			}
		}
		if asks == "" {
			continue
		}
		sc := c.SecurityContext
		privileged := sc != nil && sc.Privileged != nil && *sc.Privileged
		sysAdmin := sc != nil && sc.Capabilities != nil && slices.ContainsFunc(sc.Capabilities.Add, func(c corev1.Capability) bool {
			return strings.TrimPrefix(string(c), "CAP_") == "SYS_ADMIN"
		})
		if !privileged && !sysAdmin {
			t.Errorf("%s: container %s sets %s without CAP_SYS_ADMIN: the NVIDIA container runtime refuses to start it", file, c.Name, asks)
		}
	}
}

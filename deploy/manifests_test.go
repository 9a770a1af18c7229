package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// The ConfigMap `penny up` creates is the one the manifest creates, under
// the name, namespace and key the shipped scheduler config reads.
func TestPricesConfigMapIsWhatTheSchedulerReads(t *testing.T) {
	cm, err := PricesConfigMap()
	if err != nil {
		t.Fatal(err)
	}
	if got := cm.Data["catalog.yaml"]; got != string(PriceCatalog) {
		t.Fatalf("catalog.yaml holds %d bytes, want the shipped catalog's %d", len(got), len(PriceCatalog))
	}
	ref := fmt.Sprintf("configMap: {namespace: %s, name: %s, key: catalog.yaml}", cm.Namespace, cm.Name)
	if !strings.Contains(string(SchedulerConfig), ref) {
		t.Fatalf("the scheduler config does not read %q", ref)
	}
}

// readObjects decodes the YAML documents of a file under deploy/.
func readObjects(t *testing.T, name string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err == io.EOF {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if obj != nil {
			out = append(out, obj)
		}
	}
}

// decodeKind converts the only object of kind in objs into into.
func decodeKind(t *testing.T, name string, objs []map[string]any, kind string, into any) {
	t.Helper()
	found := false
	for _, obj := range objs {
		if obj["kind"] != kind {
			continue
		}
		if found {
			t.Fatalf("%s has more than one %s", name, kind)
		}
		found = true
		b, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, into); err != nil {
			t.Fatalf("%s: %s: %v", name, kind, err)
		}
	}
	if !found {
		t.Fatalf("%s has no %s", name, kind)
	}
}

// The expander's NetworkPolicy selects penny-scheduler's pods, so every
// port it does not allow is closed: with the shipped patches applied, each
// of the scheduler's ports but the expander's must stay open to all, and
// listed on its own as well as in a range (a network plugin without endPort
// support reads a range as its first port only; the agents' evictions
// webhook closed would refuse every agent eviction, as the webhook fails
// closed), and the expander's port must be open only to Cluster Autoscaler.
func TestExpanderNetworkPolicyKeepsTheSchedulersOtherPortsOpen(t *testing.T) {
	objs := readObjects(t, "scheduler/penny-scheduler.yaml")
	var deployment map[string]any
	for _, obj := range objs {
		if obj["kind"] == "Deployment" {
			deployment = obj
		}
	}
	if deployment == nil {
		t.Fatal("scheduler/penny-scheduler.yaml has no Deployment")
	}
	doc, err := json.Marshal(deployment)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"agent/scheduler-telemetry-patch.yaml", "autoscaler/scheduler-expander-patch.yaml"} {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		ops, err := yaml.YAMLToJSON(data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		patch, err := jsonpatch.DecodePatch(ops)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if doc, err = patch.Apply(doc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	d := &appsv1.Deployment{}
	if err := json.Unmarshal(doc, d); err != nil {
		t.Fatal(err)
	}

	const expanderFile = "autoscaler/penny-expander.yaml"
	expander := readObjects(t, expanderFile)
	svc := &corev1.Service{}
	decodeKind(t, expanderFile, expander, "Service", svc)
	np := &networkingv1.NetworkPolicy{}
	decodeKind(t, expanderFile, expander, "NetworkPolicy", np)
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Fatalf("the NetworkPolicy does not select penny-scheduler's pods (%v)", d.Spec.Template.Labels)
	}
	if len(svc.Spec.Ports) != 1 {
		t.Fatalf("the expander Service has %d ports, want 1", len(svc.Spec.Ports))
	}
	target := svc.Spec.Ports[0].TargetPort

	// open says whether container port cp is open to every source, reading
	// ranges with endPort or, as a plugin without endPort support does, as
	// their first port.
	open := func(cp corev1.ContainerPort, endPort bool) bool {
		for _, rule := range np.Spec.Ingress {
			if len(rule.From) > 0 {
				continue
			}
			if len(rule.Ports) == 0 {
				return true
			}
			for _, p := range rule.Ports {
				if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
					continue
				}
				switch {
				case p.Port == nil:
					return true
				case p.Port.Type == intstr.String:
					if p.Port.StrVal == cp.Name {
						return true
					}
				default:
					last := p.Port.IntVal
					if endPort && p.EndPort != nil {
						last = *p.EndPort
					}
					if p.Port.IntVal <= cp.ContainerPort && cp.ContainerPort <= last {
						return true
					}
				}
			}
		}
		return false
	}
	ports := 0
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, cp := range c.Ports {
			ports++
			isExpander := target.Type == intstr.String && cp.Name == target.StrVal || target.Type == intstr.Int && target.IntVal == cp.ContainerPort
			for _, endPort := range []bool{true, false} {
				if got := open(cp, endPort); got == isExpander {
					t.Errorf("port %d (%s) of penny-scheduler, endPort read: %v: open to all %v, want %v",
						cp.ContainerPort, cp.Name, endPort, got, !isExpander)
				}
			}
		}
	}
	if ports < 4 {
		t.Errorf("the patched Deployment has %d ports, want at least https, telemetry, agent-evictions and expander", ports)
	}
}

// serviceMonitor is what the checks read of a monitoring.coreos.com/v1
// ServiceMonitor.
type serviceMonitor struct {
	Metadata metav1.ObjectMeta `json:"metadata"`
	Spec     struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port   string `json:"port"`
			Scheme string `json:"scheme"`
			Path   string `json:"path"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// The metrics Service selects penny-scheduler's pods and sends to the port
// the scheduler serves /metrics on, and the example ServiceMonitor scrapes
// that Service's port: a renamed port or label would leave Prometheus with
// no target and no error.
func TestMetricsServiceReachesTheSchedulersMetricsPort(t *testing.T) {
	const file = "scheduler/penny-scheduler.yaml"
	objs := readObjects(t, file)
	d := &appsv1.Deployment{}
	decodeKind(t, file, objs, "Deployment", d)
	svc := &corev1.Service{}
	decodeKind(t, file, objs, "Service", svc)
	if svc.Namespace != d.Namespace {
		t.Fatalf("Service %s is in namespace %q, the Deployment in %q", svc.Name, svc.Namespace, d.Namespace)
	}
	if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Fatalf("Service %s selects %v, which does not match penny-scheduler's pods (%v)", svc.Name, svc.Spec.Selector, d.Spec.Template.Labels)
	}
	// The probes ask the port that serves /livez, /readyz and /metrics.
	rp := d.Spec.Template.Spec.Containers[0].ReadinessProbe
	if rp == nil || rp.HTTPGet == nil {
		t.Fatal("penny-scheduler's container has no HTTP readiness probe to tell its /metrics port")
	}
	probe := rp.HTTPGet
	if len(svc.Spec.Ports) != 1 {
		t.Fatalf("Service %s has %d ports, want 1 (metrics)", svc.Name, len(svc.Spec.Ports))
	}
	sp := svc.Spec.Ports[0]
	var served *corev1.ContainerPort
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, cp := range c.Ports {
			if sp.TargetPort.Type == intstr.String && cp.Name == sp.TargetPort.StrVal || sp.TargetPort.Type == intstr.Int && cp.ContainerPort == sp.TargetPort.IntVal {
				served = &cp
			}
		}
	}
	if served == nil {
		t.Fatalf("Service %s port %s targets %s, which no container of penny-scheduler exposes", svc.Name, sp.Name, sp.TargetPort.String())
	}
	if probe.Port.IntVal != served.ContainerPort || probe.Scheme != corev1.URISchemeHTTPS {
		t.Fatalf("Service %s targets container port %d (%s); penny-scheduler serves /metrics where its probes ask, %s port %d", svc.Name, served.ContainerPort, served.Name, probe.Scheme, probe.Port.IntVal)
	}

	const monitorFile = "monitoring/servicemonitor.yaml"
	sm := &serviceMonitor{}
	decodeKind(t, monitorFile, readObjects(t, monitorFile), "ServiceMonitor", sm)
	if sm.Metadata.Namespace != svc.Namespace {
		t.Errorf("the ServiceMonitor is in namespace %q; it finds Services only in its own, and %s is in %q", sm.Metadata.Namespace, svc.Name, svc.Namespace)
	}
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Empty() || !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("the ServiceMonitor selects Services by %v, which does not match %s's labels %v", sel, svc.Name, svc.Labels)
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("the ServiceMonitor has %d endpoints, want 1", len(sm.Spec.Endpoints))
	}
	if e := sm.Spec.Endpoints[0]; e.Port != sp.Name || e.Scheme != "https" || e.Path != "/metrics" {
		t.Errorf("the ServiceMonitor scrapes %s://<port %q>%s, want https://<port %q>/metrics", e.Scheme, e.Port, e.Path, sp.Name)
	}
}

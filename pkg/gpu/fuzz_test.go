package gpu

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// A MIG resource name is user input (a pod's limits): one that parses is a
// GPU resource, names its profile as the device plugin spells it (so it
// re-parses to the same profile), and counts 1..7 compute slices; one that
// does not is quoted in the error.
func FuzzParseMIGResource(f *testing.F) {
	for _, s := range []string{
		"nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb", "nvidia.com/mig-7g.80gb", "nvidia.com/mig-1g.5gb",
		"nvidia.com/mig-3x.40gb", "nvidia.com/mig-9g.40gb", "nvidia.com/gpu", "nvidia.com/mig-", "nvidia.com/mig-1g.gb",
		"nvidia.com/mig-01g.10gb", "nvidia.com/mig-1g.+10gb",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := ParseMIGResource(corev1.ResourceName(name))
		if err != nil {
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", name)) {
				t.Fatalf("error %q does not quote %q", err, name)
			}
			return
		}
		if !IsGPUResource(corev1.ResourceName(name)) || MIGResourceName(p.Name) != corev1.ResourceName(name) {
			t.Fatalf("%q parsed as %+v, named %q", name, p, MIGResourceName(p.Name))
		}
		if p.Compute < 1 || p.Compute > ComputeSlices || p.MemoryGB < 1 {
			t.Fatalf("%q parsed as %+v", name, p)
		}
		if want := fmt.Sprintf("%dg.%dgb", p.Compute, p.MemoryGB); p.Name != want {
			t.Fatalf("%q parsed as %+v: the device plugin names that profile %q", name, p, want)
		}
	})
}

// The penny.dev/gpu-assignment annotation can be written by a tenant on its
// own pod: one that parses is written back as a value that parses to the
// same devices, each a whole GPU, a share of 1..999 or a MIG instance at an
// offset 0..7.
func FuzzParseAssignment(f *testing.F) {
	for _, s := range []string{
		"0", "0,1,2,3", "3:460m", "0:3g.40gb@4,1:1g.10gb@0", " 0 , 1 ", "", "x", "0,-1", "0:1000m", "0:460",
		"0:3g.40gb@9", "0:3x.40gb@0", "1,2:0m,3", "0:1g.10gb@-1", "0:1g.10gb@0,0:1g.10gb@0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		a, err := ParseAssignment(v)
		if err != nil {
			if !strings.Contains(err.Error(), AnnotationAssignment) {
				t.Fatalf("error %q does not name the annotation", err)
			}
			return
		}
		if len(a) == 0 {
			t.Fatalf("%q: no devices and no error", v)
		}
		for _, s := range a {
			whole, share, mig := s.Milli == MilliPerGPU && s.MIG.Profile == "", s.Milli > 0 && s.Milli < MilliPerGPU && s.MIG.Profile == "", s.Milli == 0 && s.MIG.Profile != ""
			if s.GPU < 0 || !(whole || share || mig) || s.MIG.Start < 0 || s.MIG.Start >= MemorySlices {
				t.Fatalf("%q: slot %+v", v, s)
			}
		}
		back, err := ParseAssignment(a.String())
		if err != nil || back.String() != a.String() || len(back) != len(a) {
			t.Fatalf("%q parsed as %v, written %q, read back as %v, %v", v, a, a.String(), back, err)
		}
		for i := range a {
			if back[i] != a[i] {
				t.Fatalf("%q: slot %+v read back as %+v", v, a[i], back[i])
			}
		}
	})
}

// A pod's GPU limits are user input: a request that parses asks for one
// kind of GPU, within the bounds every caller sizes by, and one that does
// not names the pod.
func FuzzParsePodRequest(f *testing.F) {
	for _, s := range []struct {
		name, qty, initName, initQty string
		sidecar                      bool
	}{
		{"nvidia.com/gpu", "2", "", "", false},
		{"penny.dev/gpu-milli", "460", "", "", false},
		{"nvidia.com/mig-3g.40gb", "1", "nvidia.com/mig-3g.40gb", "2", true},
		{"nvidia.com/gpu", "1", "penny.dev/gpu-milli", "500", false},
		{"nvidia.com/gpu", "-1", "", "", false},
		{"nvidia.com/gpu", "4097", "", "", false},
		{"penny.dev/gpu-milli", "1000", "", "", false},
		{"nvidia.com/mig-9g.40gb", "1", "", "", false},
		{"nvidia.com/gpu", "1.5", "nvidia.com/gpu", "3", false},
		{"cpu", "1", "nvidia.com/mig-1g.10gb", "0", true},
	} {
		f.Add(s.name, s.qty, s.initName, s.initQty, s.sidecar)
	}
	f.Fuzz(func(t *testing.T, name, qty, initName, initQty string, sidecar bool) {
		// ".E40000000" parses, and making a count of it takes apimachinery
		// seconds of big-number arithmetic (the API server's validation of
		// the pod does the same first): such exponents try apimachinery,
		// not the reading of requests, and stalled a fuzz worker.
		for _, s := range []string{qty, initQty} {
			if i := strings.IndexAny(s, "eE"); i >= 0 && len(s)-i > 4 {
				return
			}
		}
		q, err := resource.ParseQuantity(qty)
		if err != nil {
			return
		}
		pod := podWith(corev1.ResourceList{corev1.ResourceName(name): q})
		if iq, err := resource.ParseQuantity(initQty); err == nil && initName != "" {
			ic := corev1.Container{Name: "init", Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceName(initName): iq}}}
			if sidecar {
				always := corev1.ContainerRestartPolicyAlways
				ic.RestartPolicy = &always
			}
			pod.Spec.InitContainers = append(pod.Spec.InitContainers, ic)
		}
		r, err := ParsePodRequest(pod)
		if err != nil {
			if !strings.Contains(err.Error(), "ns/p") {
				t.Fatalf("error %q does not name the pod", err)
			}
			return
		}
		if k := requestKinds(r); len(k) > 1 {
			t.Fatalf("request %+v of %d kinds", r, len(k))
		}
		if r.GPUs < 0 || r.GPUs > MaxDevicesPerPod || r.Milli < 0 || r.Milli >= MilliPerGPU || countMIG(r) > MaxDevicesPerPod {
			t.Fatalf("request %+v out of bounds", r)
		}
		for n, c := range r.MIG {
			if _, err := ParseProfileName(n); err != nil || c < 1 {
				t.Fatalf("request %+v: %d of %q, %v", r, c, n, err)
			}
		}
		if total := r.TotalMilli(); total < 0 || (total == 0) != r.IsZero() {
			t.Fatalf("request %+v: %d milli", r, total)
		}
	})
}

package gpu

import (
	"strings"
	"testing"
)

func TestLayout(t *testing.T) {
	a100, _ := LookupModel("A100-80GB")
	cases := []struct {
		profiles []string
		fits     bool
	}{
		{[]string{"1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"}, true},
		{[]string{"4g.40gb", "3g.40gb"}, true},
		{[]string{"3g.40gb", "3g.40gb"}, true},
		{[]string{"3g.40gb", "3g.40gb", "1g.10gb"}, false}, // both halves taken, only 6 compute used
		{[]string{"2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb"}, true},
		{[]string{"4g.40gb", "4g.40gb"}, false},
		{[]string{"1g.20gb", "1g.20gb", "1g.20gb", "1g.20gb"}, true},
		{[]string{"1g.20gb", "1g.20gb", "1g.20gb", "1g.20gb", "1g.10gb"}, false},
		{[]string{"7g.80gb"}, true},
		{[]string{"7g.80gb", "1g.10gb"}, false},
	}
	for _, c := range cases {
		_, err := a100.Layout(c.profiles)
		if (err == nil) != c.fits {
			t.Errorf("Layout(%v): fits=%v, want %v (err %v)", c.profiles, err == nil, c.fits, err)
		}
	}
}

// A100-40GB's 1g.10gb (two memory slices, as 1g.20gb on the 80GB card) is in
// the drivers GPU nodes run; without it a node using one had its MIG report
// refused.
func TestA100With40GBHasItsTwoSliceOneComputeProfile(t *testing.T) {
	a100, _ := LookupModel("NVIDIA-A100-SXM4-40GB")
	p, ok := a100.Profile("1g.10gb")
	if !ok {
		t.Fatalf("A100-40GB has no 1g.10gb; profiles %v", a100.ProfileNames())
	}
	if p.Size != 2 || p.Max != 4 {
		t.Errorf("1g.10gb: %d slices, %d at most, want 2 and 4", p.Size, p.Max)
	}
	if _, err := a100.Layout([]string{"1g.10gb", "1g.10gb", "1g.10gb", "1g.5gb"}); err != nil {
		t.Errorf("three 1g.10gb and a 1g.5gb: %v, want a layout (slices 0-5, then 6)", err)
	}
	if _, err := a100.Layout([]string{"1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.5gb"}); err == nil {
		t.Error("four 1g.10gb and a 1g.5gb fit, want refused: the four take all eight memory slices")
	}
}

func TestLayoutUnknownProfileNamesValidOnes(t *testing.T) {
	h100, _ := LookupModel("NVIDIA-H100-80GB-HBM3")
	_, err := h100.Layout([]string{"1g.5gb"})
	if err == nil || !strings.Contains(err.Error(), "1g.10gb") {
		t.Fatalf("want an error listing valid profiles, got %v", err)
	}
}

func TestFreeStartsGeometry(t *testing.T) {
	a100, _ := LookupModel("A100-80GB")
	// A 1g instance at slice 0 blocks the only 4g placement but not a 3g at 4.
	starts, err := a100.FreeStarts([]Placement{{"1g.10gb", 0}}, "4g.40gb")
	if err != nil || len(starts) != 0 {
		t.Fatalf("4g after 1g@0: starts=%v err=%v, want none", starts, err)
	}
	starts, _ = a100.FreeStarts([]Placement{{"1g.10gb", 0}}, "3g.40gb")
	if len(starts) != 1 || starts[0] != 4 {
		t.Fatalf("3g after 1g@0: starts=%v, want [4]", starts)
	}
}

func TestParseMIGResource(t *testing.T) {
	p, err := ParseMIGResource("nvidia.com/mig-3g.40gb")
	if err != nil || p.Compute != 3 || p.MemoryGB != 40 {
		t.Fatalf("got %+v, %v", p, err)
	}
	for _, bad := range []string{"nvidia.com/mig-3x.40gb", "nvidia.com/mig-9g.40gb", "nvidia.com/gpu"} {
		if _, err := ParseMIGResource(corev1ResourceName(bad)); err == nil {
			t.Errorf("%s: want error", bad)
		}
	}
}

// Atoi read "01g.10gb" and "+1g.10gb" as 1g.10gb, and the profile kept the
// spelling: a pod asking for nvidia.com/mig-01g.10gb was accepted and waited
// for a resource the device plugin never advertises. FuzzParseMIGResource
// checks that every profile that parses is named as the device plugin
// names it.
func TestParseProfileNameRefusesNumbersTheDevicePluginDoesNotWrite(t *testing.T) {
	for _, name := range []string{"01g.10gb", "+1g.10gb", "1g.010gb", "1g.+10gb", "3g.040gb"} {
		p, err := ParseProfileName(name)
		if err == nil {
			t.Errorf("%q parsed as %+v; want it refused", name, p)
			continue
		}
		if !strings.Contains(err.Error(), "without signs or leading zeros") {
			t.Errorf("%q: error %q does not say how to write it", name, err)
		}
	}
	if _, err := ParseMIGResource("nvidia.com/mig-01g.10gb"); err == nil || !strings.Contains(err.Error(), "1g.10gb") {
		t.Errorf("nvidia.com/mig-01g.10gb: %v; want it refused, naming 1g.10gb", err)
	}
}

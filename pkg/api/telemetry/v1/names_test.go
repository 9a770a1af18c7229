package telemetryv1

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/validate/content"
)

// FuzzNameChecks holds the fast name checks to apimachinery's verdicts: the
// fast path may only accept what apimachinery accepts.
func FuzzNameChecks(f *testing.F) {
	for _, s := range []string{"gpu-node-1", "a", "-a", "a-", "A", "a.b", "a..b", ".a", "nvidia.com/gpu", "nvidia.com/mig-1g.5gb",
		"NVIDIA-A100-SXM4-40GB", "a_b", "x/", "/x", "a/b/c", strings.Repeat("a", 63), strings.Repeat("a", 64), "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, c := range []struct {
			name       string
			fast, slow func(string) []string
		}{
			{"DNS-1123 label", dns1123LabelErrors, content.IsDNS1123Label},
			{"DNS-1123 subdomain", dns1123SubdomainErrors, content.IsDNS1123Subdomain},
			{"label value", labelValueErrors, content.IsLabelValue},
			{"label key", labelKeyErrors, content.IsLabelKey},
		} {
			if got, want := len(c.fast(s)) == 0, len(c.slow(s)) == 0; got != want {
				t.Errorf("%s %q: fast check accepts=%v, apimachinery accepts=%v", c.name, s, got, want)
			}
		}
	})
}

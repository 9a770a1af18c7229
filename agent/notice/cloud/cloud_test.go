package cloud_test

import (
	"strings"
	"testing"

	"github.com/pennysched/penny/agent/notice/cloud"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/localcluster"
)

func TestChosenFromTheNodesProviderID(t *testing.T) {
	spec, err := localcluster.ParseSpec("t.yaml", []byte(`
pools:
- {name: a, count: 1, instanceType: p4d.24xlarge, cloud: aws, capacityType: spot, zone: us-east-1a, cpu: "8", memory: 64Gi}
- {name: g, count: 1, instanceType: a2-highgpu-8g, cloud: gcp, capacityType: spot, zone: us-central1-a, cpu: "8", memory: 64Gi}
- {name: z, count: 1, instanceType: Standard_ND96asr_v4, cloud: azure, capacityType: spot, zone: eastus-1, cpu: "8", memory: 64Gi}
- {name: k, count: 1, instanceType: kwok, capacityType: on-demand, zone: z, cpu: "8", memory: 64Gi}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]telemetryv1.CloudProvider{
		"a-0": telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS,
		"g-0": telemetryv1.CloudProvider_CLOUD_PROVIDER_GCP,
		"z-0": telemetryv1.CloudProvider_CLOUD_PROVIDER_AZURE,
	}
	for _, n := range spec.Nodes() {
		src, err := cloud.ForProviderID(n.Spec.ProviderID, cloud.Config{})
		if w, ok := want[n.Name]; ok {
			if err != nil || src.Provider() != w {
				t.Errorf("%s (%s): %v, %v; want %v", n.Name, n.Spec.ProviderID, src, err, w)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "--cloud=none") {
			t.Errorf("%s (%s): error %v, want one that says how to turn watching off", n.Name, n.Spec.ProviderID, err)
		}
	}
	if _, err := cloud.FromProviderID(""); err == nil || !strings.Contains(err.Error(), "--cloud") {
		t.Errorf("empty providerID: %v", err)
	}
}

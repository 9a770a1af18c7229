package deploy

import (
	"fmt"
	"strings"
	"testing"
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

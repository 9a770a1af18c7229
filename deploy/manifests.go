package deploy

import (
	"bytes"
	_ "embed"
	"fmt"
	"strings"
	"text/template"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

//go:embed scheduler/templates/penny-scheduler.yaml
var schedulerTemplate string

//go:embed pricing/templates/penny-prices.yaml
var pricesTemplate string

//go:embed agent/templates/reclaim.yaml
var agentReclaimTemplate string

// Manifest is a generated file under deploy/: a template filled with the
// configuration files it carries.
type Manifest struct {
	// Output is the file's path relative to the repository root.
	Output   string
	template string
	config   []byte
}

// Manifests lists every generated manifest.
func Manifests() []Manifest {
	return []Manifest{
		{Output: "deploy/scheduler/penny-scheduler.yaml", template: schedulerTemplate, config: SchedulerConfig},
		pricesManifest(),
		{Output: "deploy/agent/reclaim.yaml", template: agentReclaimTemplate},
	}
}

func pricesManifest() Manifest {
	return Manifest{Output: "deploy/pricing/penny-prices.yaml", template: pricesTemplate, config: PriceCatalog}
}

// PricesConfigMap is the ConfigMap deploy/pricing/penny-prices.yaml creates:
// the shipped catalog under the name the shipped scheduler config reads.
func PricesConfigMap() (*corev1.ConfigMap, error) {
	b, err := pricesManifest().Render()
	if err != nil {
		return nil, err
	}
	cm := &corev1.ConfigMap{}
	if err := yaml.UnmarshalStrict(b, cm); err != nil {
		return nil, fmt.Errorf("deploy/pricing/penny-prices.yaml: %w", err)
	}
	return cm, nil
}

// Render fills the template; the configuration is indented to sit under a
// ConfigMap's `config.yaml: |` key.
func (m Manifest) Render() ([]byte, error) {
	t, err := template.New(m.Output).Parse(m.template)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimRight(string(m.config), "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = "    " + l
		}
	}
	var b bytes.Buffer
	err = t.Execute(&b, struct{ Config string }{strings.Join(lines, "\n")})
	return b.Bytes(), err
}

package deploy

import (
	"bytes"
	_ "embed"
	"strings"
	"text/template"
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
		{Output: "deploy/pricing/penny-prices.yaml", template: pricesTemplate, config: PriceCatalog},
		{Output: "deploy/agent/reclaim.yaml", template: agentReclaimTemplate},
	}
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

// Command manifests renders deploy/*/templates with the configuration files
// beside them, so the ConfigMaps users apply never drift from the files the
// tests and `penny up` use. Run it through `make manifests`.
package main

import (
	"fmt"
	"os"

	"github.com/pennysched/penny/deploy"
)

func main() {
	for _, m := range deploy.Manifests() {
		out, err := m.Render()
		if err != nil {
			fmt.Fprintf(os.Stderr, "manifests: %v\n", err)
			os.Exit(1)
		}
		if err := os.WriteFile(m.Output, out, 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "manifests: %v\n", err)
			os.Exit(1)
		}
		fmt.Println("wrote", m.Output)
	}
}

// Package scenarios carries the reference Spot scenario, built into penny so
// that `penny sim replay` without --scenario or --nodes replays on the same
// fleet as `make bench-spot`, from any folder.
package scenarios

import _ "embed"

// SpotOpenbPath is where the reference scenario lives in the repository.
const SpotOpenbPath = "benchmarks/scenarios/spot-openb.yaml"

// SpotOpenb is spot-openb.yaml. Its catalog, ../../deploy/pricing/catalog.yaml,
// is deploy.PriceCatalog.
//
//go:embed spot-openb.yaml
var SpotOpenb []byte

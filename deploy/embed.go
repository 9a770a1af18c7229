// Package deploy carries the files users apply, embedded so that `penny up`
// runs with exactly what a real cluster gets from this directory.
package deploy

import _ "embed"

// SchedulerConfig is scheduler/config.yaml, penny-scheduler's configuration.
//
//go:embed scheduler/config.yaml
var SchedulerConfig []byte

// ExampleCluster is examples/cluster.yaml, the fleet `penny up` simulates by default.
//
//go:embed examples/cluster.yaml
var ExampleCluster []byte

// PriceCatalog is pricing/catalog.yaml, the price list SpotRisk reads.
//
//go:embed pricing/catalog.yaml
var PriceCatalog []byte

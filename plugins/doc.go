// Package plugins assembles Penny's scheduler plugins (one package each under
// plugins/) into the registry that penny-scheduler, `penny up`, the simulator
// and the benchmarks all use, so every entry point runs the same plugin code.
//
// This package is not a plugin: it is the one place allowed to import them all.
package plugins

// Package telemetryv1 is version 1 of the wire API between penny-agent and
// penny-scheduler: the protobuf messages and gRPC service generated from
// telemetry.proto (run `make generate` after editing it; the output is
// committed), and the validation every message gets on receipt.
//
// docs/telemetry-api.md describes the protocol for people; telemetry.proto
// is the authority on fields.
package telemetryv1

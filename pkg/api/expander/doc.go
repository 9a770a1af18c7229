// Package expander is Cluster Autoscaler's gRPC expander API
// (--expander=grpc), generated from expander.proto (run `make generate`
// after editing it; the output is committed). Cluster Autoscaler owns the
// API; penny-scheduler serves it (plugins/spotrisk.ExpanderServer) so that a
// cluster grows the node groups Penny would place pending pods on.
package expander

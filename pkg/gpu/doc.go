// Package gpu holds the GPU facts every Penny component shares: the resource
// names and labels a GPU node carries, the GPU models Penny knows with their
// MIG geometry, and how a pod's GPU request is read from its spec.
//
// It has no scheduler or agent dependencies so that plugins, the agent, the
// simulator and the local cluster all agree on one reading of a pod.
package gpu

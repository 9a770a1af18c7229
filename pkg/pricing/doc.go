// Package pricing holds what a node costs and how likely it is to be
// reclaimed: the price catalog (instance type x capacity type x region/zone ->
// $/hour, split per GPU the way OpenCost splits a node price), the reading of a
// node's capacity type from the labels clouds and autoscalers set, the
// interruption-risk model per pool, and the cost and gang-risk formulas that
// the spotrisk plugin, the gang plugin and the simulator share.
//
// It has no scheduler dependency so that the plugins, the agent, the
// simulator and the local cluster agree on one reading of a node.
package pricing

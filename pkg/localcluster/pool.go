package localcluster

import corev1 "k8s.io/api/core/v1"

// Node builds one node of the pool, with the labels, capacity and price
// annotation the local cluster gives its nodes. The simulator's elastic
// fleet builds its nodes with it, so that simulated and local nodes agree.
func (p *Pool) Node(region, name string) *corev1.Node {
	return p.node(region, name)
}

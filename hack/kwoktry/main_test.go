package kwoktry
import (
	_ "sigs.k8s.io/kwok/pkg/kwok/controllers"
	_ "go.etcd.io/etcd/server/v3/embed"
)

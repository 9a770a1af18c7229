// Command penny-scheduler is kube-scheduler with Penny's plugins registered.
// Every kube-scheduler flag, leader election, /metrics and /healthz work as
// they do upstream; Penny's behaviour comes from the profile in --config.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"

	"github.com/pennysched/penny/plugins"
)

func main() {
	command := app.NewSchedulerCommand(plugins.Options(plugins.Deps{})...)
	os.Exit(cli.Run(command))
}

// Command penny is the user's CLI: `penny up` runs Penny on a local cluster,
// `penny sim` replays cluster traces through the real scheduler code.
package main

import (
	"os"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
)

func main() {
	root := &cobra.Command{
		Use:          "penny",
		Short:        "Cost-aware GPU scheduling for Kubernetes",
		SilenceUsage: true,
	}
	root.AddCommand(newUpCommand(), newSimCommand())
	os.Exit(cli.Run(root))
}

// Command penny is the user's CLI: `penny up` runs Penny on a local cluster,
// `penny sim` replays cluster traces through the real scheduler code.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "penny",
		Short:         "Cost-aware GPU scheduling for Kubernetes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newUpCommand(), newSimCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "penny: %v\n", err)
		os.Exit(1)
	}
}

// Command penny is the user's CLI: `penny up` runs Penny on a local cluster,
// `penny sim` replays cluster traces through the real scheduler code.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

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
	// Ctrl-C cancels the command's context, so a long replay stops between
	// events and still writes what it must (a CPU profile, say).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "penny: %v\n", err)
		os.Exit(1)
	}
}

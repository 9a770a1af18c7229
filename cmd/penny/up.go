package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newUpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "up",
		Short: "Run a local cluster with simulated GPU nodes and penny-scheduler",
		RunE: func(*cobra.Command, []string) error {
			return fmt.Errorf("not built yet")
		},
	}
}

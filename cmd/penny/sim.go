package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newSimCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "sim",
		Short: "Replay cluster traces through the real scheduler code",
		RunE: func(*cobra.Command, []string) error {
			return fmt.Errorf("not built yet")
		},
	}
}

// Package scheduler holds penny-scheduler's deployed configuration, embedded
// so that tools that must run the same profile (penny sim --policy penny)
// read exactly the file that is deployed.
package scheduler

import _ "embed"

// Config is config.yaml, the KubeSchedulerConfiguration penny-scheduler runs.
//
//go:embed config.yaml
var Config []byte

// ProfileName is the profile in Config that pods opt into.
const ProfileName = "penny-scheduler"

// Package cloud chooses the reclaim notice watcher for a node from its
// providerID (spec.providerID, set by each cloud's cloud-controller-manager).
package cloud

import (
	"fmt"
	"strings"

	"github.com/pennysched/penny/agent/notice"
	"github.com/pennysched/penny/agent/notice/aws"
	"github.com/pennysched/penny/agent/notice/azure"
	"github.com/pennysched/penny/agent/notice/gcp"
)

// Config holds each cloud's options; only the chosen cloud's are used.
type Config struct {
	AWS   aws.Options
	GCP   gcp.Options
	Azure azure.Options
}

// Names of the clouds, as --cloud takes them.
const (
	AWS   = "aws"
	GCP   = "gcp"
	Azure = "azure"
)

// FromProviderID names the cloud of a providerID: aws:///<zone>/<instance>,
// gce://<project>/<zone>/<name>, azure:///subscriptions/...
func FromProviderID(providerID string) (string, error) {
	scheme, _, ok := strings.Cut(providerID, "://")
	if !ok {
		return "", fmt.Errorf("providerID %q is not <cloud>://...: set --cloud (aws, gcp or azure) or run the cloud's cloud-controller-manager", providerID)
	}
	switch scheme {
	case "aws":
		return AWS, nil
	case "gce":
		return GCP, nil
	case "azure":
		return Azure, nil
	}
	return "", fmt.Errorf("providerID %q: cloud %q has no reclaim notices Penny can watch (AWS, GCP and Azure do); set --cloud=none to turn watching off", providerID, scheme)
}

// New returns the watcher source for a cloud name.
func New(name string, c Config) (notice.Source, error) {
	switch name {
	case AWS:
		return aws.New(c.AWS), nil
	case GCP:
		return gcp.New(c.GCP), nil
	case Azure:
		return azure.New(c.Azure), nil
	}
	return nil, fmt.Errorf("cloud %q: want aws, gcp or azure", name)
}

// ForProviderID returns the watcher source for a node's providerID.
func ForProviderID(providerID string, c Config) (notice.Source, error) {
	name, err := FromProviderID(providerID)
	if err != nil {
		return nil, err
	}
	return New(name, c)
}

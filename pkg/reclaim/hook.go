package reclaim

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// HookAnnotation declares a pod's checkpoint hook: an HTTP URL on the pod
// itself with the host left out, "http://:8080/checkpoint". The agent calls
// it (agent/checkpoint), and SpotRisk moves back to Spot only a pod that
// declares one it can call, so both read it with ParseHook.
const HookAnnotation = "penny.dev/checkpoint"

// Hook is a parsed penny.dev/checkpoint annotation.
type Hook struct {
	Port string
	// Path with its query, "/checkpoint".
	Path string
}

// hookForm is how the errors of ParseHook say to write the annotation.
const hookForm = "write it as http://:<port>/<path>, e.g. http://:8080/checkpoint"

// ParseHook reads a penny.dev/checkpoint annotation value.
//
// The host is always the pod's own address. An annotation that names a host
// is refused: any tenant can set the annotation, and the agent must not be
// made to send requests from the node to wherever a tenant points it (the
// cloud's metadata service, the API server, another tenant's pod). Nor is a
// part the agent would drop taken silently, which would call another port or
// path than the one meant.
func ParseHook(value string) (Hook, error) {
	u, err := url.Parse(strings.TrimSpace(value))
	if err != nil {
		return Hook{}, fmt.Errorf("%s=%q is not a URL (%v): %s", HookAnnotation, value, err, hookForm)
	}
	if u.Scheme != "http" {
		return Hook{}, fmt.Errorf("%s=%q: the scheme must be http (the agent calls the pod over the pod network), e.g. http://:8080/checkpoint", HookAnnotation, value)
	}
	if u.Opaque != "" {
		// "http:8080/checkpoint" has neither port nor path, only an
		// opaque part: called, it would be port 80 and path "/".
		return Hook{}, fmt.Errorf("%s=%q has no // after http:, so it names neither port nor path: %s", HookAnnotation, value, hookForm)
	}
	if u.User != nil || u.Hostname() != "" {
		return Hook{}, fmt.Errorf("%s=%q names a host; leave it out (http://:%s%s): the agent only ever calls the pod's own address", HookAnnotation, value, u.Port(), u.EscapedPath())
	}
	if u.Fragment != "" {
		// A fragment never goes to the server.
		return Hook{}, fmt.Errorf("%s=%q: the fragment #%s would not be sent to the hook; leave it out, or put it in the path or query: %s", HookAnnotation, value, u.Fragment, hookForm)
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return Hook{}, fmt.Errorf("%s=%q: port %q must be a number 1..65535: %s", HookAnnotation, value, port, hookForm)
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	return Hook{Port: port, Path: path}, nil
}

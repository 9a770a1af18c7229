package telemetryv1

import (
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"
)

// The Kubernetes name checks in apimachinery match regular expressions,
// which costs more than the rest of a report's validation together. Each
// check here first runs a plain loop that accepts only names the regular
// expression accepts too, and asks apimachinery (for its exact verdict and
// message) only when the loop says no.

func dns1123LabelErrors(s string) []string {
	if len(s) <= 63 && isLabelPart(s, false) {
		return nil
	}
	return content.IsDNS1123Label(s)
}

func dns1123SubdomainErrors(s string) []string {
	if len(s) > 0 && len(s) <= 253 {
		ok := true
		for part := range strings.SplitSeq(s, ".") {
			if !isLabelPart(part, false) {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
	}
	return content.IsDNS1123Subdomain(s)
}

func labelValueErrors(s string) []string {
	if s == "" || len(s) <= 63 && isLabelPart(s, true) {
		return nil
	}
	return content.IsLabelValue(s)
}

func labelKeyErrors(s string) []string {
	prefix, name, hasPrefix := strings.Cut(s, "/")
	if !hasPrefix {
		prefix, name = "", s
	}
	if len(name) > 0 && len(name) <= 63 && isLabelPart(name, true) && (!hasPrefix || dns1123SubdomainErrors(prefix) == nil) {
		return nil
	}
	return content.IsLabelKey(s)
}

// isLabelPart reports whether s is non-empty, starts and ends with a
// lower-case letter or digit (any case when upper) and has only those,
// dashes and (when upper, for label values) underscores and dots between.
func isLabelPart(s string, upper bool) bool {
	if s == "" {
		return false
	}
	alnum := func(c byte) bool {
		return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || upper && 'A' <= c && c <= 'Z'
	}
	if !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		c := s[i]
		if !alnum(c) && c != '-' && !(upper && (c == '_' || c == '.')) {
			return false
		}
	}
	return true
}

// Package statustext renders values a tenant sets (annotation and label
// values, names) for the messages Penny's scheduler plugins return.
//
// kube-scheduler records a failed pod's FailedScheduling event with the
// status message as the format string (schedule_one.go,
// handleSchedulingFailure) and puts the same message verbatim into the pod's
// PodScheduled condition. A percent sign in an echoed value, such as
// penny.dev/max-reclaim-risk: "150%", is read as a verb in the event and
// garbled there, in the very event meant to say what is wrong; written as %%
// it would show doubled in the condition. Quote leaves no percent sign, so
// the message reads the same in both.
package statustext

import (
	"strconv"
	"strings"
)

// Quote is v in Go's double-quoted syntax, as %q writes it, with every
// percent sign written as the escape \x25.
func Quote(v string) string {
	return strings.ReplaceAll(strconv.Quote(v), "%", `\x25`)
}

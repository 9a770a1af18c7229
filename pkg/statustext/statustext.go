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
	"unicode/utf8"
)

// MaxQuoted is how many bytes of a value Quote shows. An annotation value
// may be up to 256 KiB, and the message is written into the pod's condition
// at every attempt and into an event; the start of a value is enough to
// find it.
const MaxQuoted = 256

// Quote is v in Go's double-quoted syntax, as %q writes it, with every
// percent sign written as the escape \x25. A value longer than MaxQuoted
// bytes is cut there (at a character's start) and says how long it is.
func Quote(v string) string {
	if len(v) <= MaxQuoted {
		return strings.ReplaceAll(strconv.Quote(v), "%", `\x25`)
	}
	// Back to the start of a character cut in two; a value that is not
	// UTF-8 is cut where it is.
	cut := MaxQuoted
	for back := 0; back < utf8.UTFMax-1 && !utf8.RuneStart(v[cut]); back++ {
		cut--
	}
	return strings.ReplaceAll(strconv.Quote(v[:cut]), "%", `\x25`) + "... (" + strconv.Itoa(len(v)) + " bytes in all)"
}

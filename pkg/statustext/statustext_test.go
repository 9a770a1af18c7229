package statustext

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// noArgs passes a message as a format with no arguments, as kube-scheduler
// does, without vet objecting to the non-constant format.
var noArgs []any

func TestQuote(t *testing.T) {
	for _, v := range []string{"", "never", "150%", "5 %d", `\%`, "%!s(MISSING)", "tab\there", "50%%"} {
		q := Quote(v)
		// kube-scheduler's FailedScheduling event takes the message as a
		// format with no arguments.
		if got := fmt.Sprintf(q, noArgs...); got != q {
			t.Errorf("Quote(%q) = %s reads %s as a format", v, q, got)
		}
		if strings.Contains(q, "%") {
			t.Errorf("Quote(%q) = %s holds a percent sign", v, q)
		}
		if back, err := strconv.Unquote(q); err != nil || back != v {
			t.Errorf("Quote(%q) = %s unquotes to %q, %v", v, q, back, err)
		}
	}
	if got, want := Quote("never"), `"never"`; got != want {
		t.Errorf("Quote(never) = %s, want %s as %%q writes it", got, want)
	}
}

// A long value is cut, at a character's start, and says how long it was:
// the message goes into the pod's condition at every attempt.
func TestQuoteCutsALongValue(t *testing.T) {
	v := strings.Repeat("%", MaxQuoted-1) + "é" + strings.Repeat("x", 10000)
	q := Quote(v)
	want := `"` + strings.Repeat(`\x25`, MaxQuoted-1) + `"... (` + strconv.Itoa(len(v)) + ` bytes in all)`
	if q != want {
		t.Errorf("Quote of a %d-byte value = %.80s..., want %.80s...", len(v), q, want)
	}
	if got := fmt.Sprintf(q, noArgs...); got != q {
		t.Errorf("Quote of a long value reads as a format: %s", got)
	}
	// Continuation bytes only, no character to go back to the start of.
	if q := Quote(strings.Repeat("\x80", 2*MaxQuoted)); !strings.HasPrefix(q, `"\x80\x80`) {
		t.Errorf("a value that is not UTF-8 was cut to %.40s", q)
	}
	if exact := strings.Repeat("a", MaxQuoted); Quote(exact) != strconv.Quote(exact) {
		t.Errorf("a value of MaxQuoted bytes was cut: %s", Quote(exact))
	}
}

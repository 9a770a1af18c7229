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

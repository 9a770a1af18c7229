package notice_test

import (
	"strings"
	"testing"

	"github.com/pennysched/penny/agent/notice"
)

// encoding/json keeps the last of a repeated member: a document that gives
// one twice must be an error, not read as whichever came last.
func TestParseObjectRefusesARepeatedMember(t *testing.T) {
	for _, body := range []string{
		`{"action":"terminate","time":"2030-01-01T00:00:00Z","action":"stop"}`,
		`{"a":1,"b":{"a":2},"a":1}`,
	} {
		_, err := notice.ParseObject("doc", []byte(body))
		if err == nil {
			t.Errorf("%s: read without an error", body)
			continue
		}
		for _, w := range []string{"doc: ", `"a`, "more than once"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", body, err, w)
			}
		}
	}
	// The same name in a nested object, or in two objects of a list, is no
	// repeat.
	for _, body := range []string{`{"a":{"a":1},"b":[{"c":1},{"c":2}]}`, `{}`} {
		if _, err := notice.ParseObject("doc", []byte(body)); err != nil {
			t.Errorf("%s: %v", body, err)
		}
	}
}

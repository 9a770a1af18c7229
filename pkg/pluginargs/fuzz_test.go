package pluginargs

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// A plugin's args are user input (the scheduler configuration, YAML or
// JSON): whatever they hold, they decode into defaulted args that passed
// Validate and read back the same written out as JSON, or are refused with
// an error that names the plugin.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"timeout":"5s","weight":0}`, "timeout: 5s\nweight: 0\n", "", "{}", "null", `{"timeout":"5s","tiemout":"1m"}`,
		`{"Timeout":"5s"}`, `{"timeout":"5s","timeout":"0s"}`, "timeout: 5s\ntimeout: 0s\n", `{"timeout":5}`,
		`{"timeout":"-1s"}`, "weight: .nan\n", "weight: 1e400\n", "timeout: &t 1h\nweight: *t\n", "- timeout: 5s\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		a, err := decode(string(raw))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "Test plugin args: ") {
				t.Fatalf("%q: error %q does not name the plugin", raw, err)
			}
			return
		}
		if a.Timeout == nil || a.Weight == nil || a.Timeout.Duration < 0 {
			t.Fatalf("%q: args %+v not defaulted or not valid", raw, a)
		}
		if math.IsNaN(*a.Weight) || math.IsInf(*a.Weight, 0) {
			t.Fatalf("%q: weight %g is not a number a configuration can hold", raw, *a.Weight)
		}
		js, err := json.Marshal(a)
		if err != nil {
			t.Fatalf("%q: args %+v: %v", raw, a, err)
		}
		back, err := decode(string(js))
		if err != nil || back.Timeout.Duration != a.Timeout.Duration || *back.Weight != *a.Weight {
			t.Fatalf("%q decoded as %+v, written %s, read back as %+v, %v", raw, a, js, back, err)
		}
	})
}

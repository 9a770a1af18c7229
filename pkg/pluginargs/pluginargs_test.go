package pluginargs

import (
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

type testArgs struct {
	metav1.TypeMeta `json:",inline"`
	Timeout         *metav1.Duration `json:"timeout,omitempty"`
	Weight          *float64         `json:"weight,omitempty"`
}

func (a *testArgs) DeepCopyObject() runtime.Object {
	c := *a
	if a.Timeout != nil {
		d := *a.Timeout
		c.Timeout = &d
	}
	if a.Weight != nil {
		w := *a.Weight
		c.Weight = &w
	}
	return &c
}

func (a *testArgs) SetDefaults() {
	if a.Timeout == nil {
		a.Timeout = &metav1.Duration{Duration: time.Minute}
	}
	if a.Weight == nil {
		w := 1.0
		a.Weight = &w
	}
}

func (a *testArgs) Validate() error {
	if a.Timeout.Duration < 0 {
		return errors.New("timeout: must not be negative")
	}
	return nil
}

func decode(raw string) (*testArgs, error) {
	return Decode[testArgs]("Test", &runtime.Unknown{Raw: []byte(raw)})
}

func TestDecodeReadsWhatIsWritten(t *testing.T) {
	for _, raw := range []string{`{"timeout":"5s","weight":0}`, "timeout: 5s\nweight: 0\n"} {
		a, err := decode(raw)
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		if a.Timeout.Duration != 5*time.Second || *a.Weight != 0 {
			t.Errorf("%q: timeout %v weight %v, want 5s and an explicit 0", raw, a.Timeout.Duration, *a.Weight)
		}
	}
	a, err := Decode[testArgs]("Test", nil)
	if err != nil || a.Timeout.Duration != time.Minute || *a.Weight != 1 {
		t.Errorf("no args: %+v, %v; want the defaults", a, err)
	}
}

// kube-scheduler decodes its own plugins' args case-sensitively and refuses
// a key given twice; Penny's must not quietly read `Timeout` or `timeOut`
// as `timeout`, nor let a second spelling override the first.
func TestDecodeIsStrictAsInTreeArgs(t *testing.T) {
	for raw, want := range map[string]string{
		`{"timeout":"5s","tiemout":"1m"}`: `unknown field "tiemout"`,
		`{"Timeout":"5s"}`:                `unknown field "Timeout"`,
		`{"timeOut":"5s"}`:                `unknown field "timeOut"`,
		`{"timeout":"5s","timeout":"0s"}`: `"timeout" already set`,
		`{"timeout":"5s","Timeout":"0s"}`: `unknown field "Timeout"`,
		"timeout: 5s\ntimeout: 0s\n":      `"timeout" already set`,
		`{"timeout":5}`:                   "timeout",
		`{"timeout":"-1s"}`:               "timeout: must not be negative",
	} {
		a, err := decode(raw)
		if err == nil {
			t.Errorf("%q was accepted as %+v", raw, a)
			continue
		}
		if !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "Test plugin args: ") {
			t.Errorf("%q: error %q, want one naming the plugin and %s", raw, err, want)
		}
	}
}

func TestDecodeCopiesTypedArgs(t *testing.T) {
	in := &testArgs{}
	a, err := Decode[testArgs]("Test", in)
	if err != nil {
		t.Fatal(err)
	}
	if in.Timeout != nil || a.Timeout == nil {
		t.Errorf("typed args were modified (%v) or not defaulted (%v)", in.Timeout, a.Timeout)
	}
	var none *testArgs
	if a, err := Decode[testArgs]("Test", none); err != nil || a == nil || a.Timeout.Duration != time.Minute {
		t.Errorf("nil typed args: %+v, %v; want the defaults, as for no args", a, err)
	}
	if _, err := Decode[testArgs]("Test", &metav1.Status{}); err == nil {
		t.Error("args of another type were accepted")
	}
}

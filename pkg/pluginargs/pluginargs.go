// Package pluginargs decodes the args of Penny's scheduler plugins from a
// KubeSchedulerConfiguration the way users expect of kube-scheduler's own
// plugins: strictly (a misspelt key is an error, not a silently ignored
// field), then defaulted and validated, with errors that name the plugin.
package pluginargs

import (
	"errors"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Args is what a plugin's typed args provide.
type Args interface {
	runtime.Object
	SetDefaults()
	Validate() error
}

// Decode turns obj (nil, the typed args, or the configuration's raw
// runtime.Unknown in YAML or JSON) into defaulted, validated args of type
// PT for the plugin named plugin. Typed args are copied, never modified.
func Decode[T any, PT interface {
	*T
	Args
}](plugin string, obj runtime.Object) (PT, error) {
	args := PT(new(T))
	switch o := obj.(type) {
	case nil:
	case PT:
		if o != nil { // a nil *T is no args, as nil is
			args = o.DeepCopyObject().(PT)
		}
	case *runtime.Unknown:
		if len(o.Raw) > 0 {
			if err := unmarshalStrict(o.Raw, args); err != nil {
				return nil, fmt.Errorf("%s plugin args: %w", plugin, err)
			}
		}
	default:
		return nil, fmt.Errorf("%s plugin args: want runtime.Unknown or %T, got %T", plugin, args, obj)
	}
	args.SetDefaults()
	if err := args.Validate(); err != nil {
		return nil, fmt.Errorf("%s plugin args: %w", plugin, err)
	}
	return args, nil
}

// unmarshalStrict decodes YAML or JSON as kube-scheduler's strict decoder
// does its own plugins' args: keys match field names case-sensitively (Go's
// encoding/json, under sigs.k8s.io/yaml, would read `Timeout` or `timeOut`
// as `timeout`, and of two spellings keep the one that sorts last), and unknown
// or repeated keys are errors.
func unmarshalStrict(data []byte, into any) error {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(js, into, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			msgs[i] = e.Error()
		}
		return errors.New("strict decoding error: " + strings.Join(msgs, ", "))
	}
	return nil
}

// Package yamldoc holds what Penny's YAML inputs (cluster specs, simulator
// scenarios, price catalogs) share about documents: each is one document,
// and a decoder reads only the first, so anything after a "---" would be
// dropped without a word unless it is looked for; and a value the decoder
// refuses is reported by the line alone, so errors place it at its field.
package yamldoc

import (
	"errors"
	"io"

	"go.yaml.in/yaml/v3"
)

// Extra reads what dec has left after the document it decoded and returns
// the line where the first document with content starts, or 0 when none
// has any. Empty documents, such as a trailing "---" or "..." leaves, hold
// nothing to drop and are passed over. The error is a YAML syntax error in
// what follows.
func Extra(dec *yaml.Decoder) (int, error) {
	for {
		var next yaml.Node
		if err := dec.Decode(&next); errors.Is(err, io.EOF) {
			return 0, nil
		} else if err != nil {
			return 0, err
		}
		if len(next.Content) == 0 {
			continue
		}
		if c := next.Content[0]; c.Kind == yaml.ScalarNode && c.Tag == "!!null" && c.Value == "" {
			continue
		}
		return next.Content[0].Line, nil
	}
}

package yamldoc

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestExtra(t *testing.T) {
	for _, c := range []struct {
		name, doc string
		line      int
		bad       bool
	}{
		{"one document", "a: 1\n", 0, false},
		{"a trailing ---", "a: 1\n---\n", 0, false},
		{"an end marker", "a: 1\n...\n", 0, false},
		{"a second document", "a: 1\n---\nb: 2\n", 3, false},
		{"an empty one, then one with content", "a: 1\n---\n---\n\nb: 2\n", 5, false},
		{"a second document of one word", "a: 1\n---\nnull-ish\n", 3, false},
		{"broken YAML after the first", "a: 1\n---\nb: [\n", 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dec := yaml.NewDecoder(strings.NewReader(c.doc))
			var first map[string]int
			if err := dec.Decode(&first); err != nil {
				t.Fatal(err)
			}
			line, err := Extra(dec)
			if (err != nil) != c.bad || line != c.line {
				t.Errorf("Extra: line %d, error %v; want line %d, error %v", line, err, c.line, c.bad)
			}
		})
	}
}

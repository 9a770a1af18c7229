package yamldoc

import (
	"bytes"
	"reflect"
	"testing"

	"go.yaml.in/yaml/v3"
)

type testPool struct {
	Name   string            `yaml:"name"`
	Max    int               `yaml:"max"`
	Price  *float64          `yaml:"price"`
	Labels map[string]string `yaml:"labels"`
	Zones  []string          `yaml:"zones"`
}

type testBase struct {
	Region string `yaml:"region"`
}

type testDoc struct {
	testBase `yaml:",inline"`
	Pools    []testPool         `yaml:"pools"`
	Limits   map[string]float64 `yaml:"limits"`
	Untagged int
}

func TestProblems(t *testing.T) {
	for _, c := range []struct {
		name, doc string
		want      []Problem
	}{
		{"text for a count", "pools:\n- {name: a, max: lots}\n",
			[]Problem{{Line: 2, Path: "pools[0].max", Msg: `want a whole number, not "lots"`}}},
		// The decoder shortens a long value in its message; the field is
		// still found, and the message quotes all of it.
		{"a long value through a pointer", "pools:\n- name: a\n  price: not-a-number-at-all\n",
			[]Problem{{Line: 3, Path: "pools[0].price", Msg: `want a number, not "not-a-number-at-all"`}}},
		{"a list where a map goes, beside another list", "pools:\n- {zones: [a], labels: [b]}\n",
			[]Problem{{Line: 2, Path: "pools[0].labels", Msg: "want a map of key: value, not a list"}}},
		{"a map in a list of strings", "pools:\n- zones: [a, {b: c}]\n",
			[]Problem{{Line: 2, Path: "pools[0].zones[1]", Msg: "want a string, not a map"}}},
		{"a map value", "limits: {gpus: many}\n",
			[]Problem{{Line: 1, Path: "limits.gpus", Msg: `want a number, not "many"`}}},
		{"an inline field", "region: [us]\n",
			[]Problem{{Line: 1, Path: "region", Msg: "want a string, not a list"}}},
		{"a field without a tag", "untagged: x\n",
			[]Problem{{Line: 1, Path: "untagged", Msg: `want a whole number, not "x"`}}},
		{"the same value twice on a line", "pools:\n- {max: x}\n- {max: y}\n- {max: x, name: [n]}\n", []Problem{
			{Line: 2, Path: "pools[0].max", Msg: `want a whole number, not "x"`},
			{Line: 3, Path: "pools[1].max", Msg: `want a whole number, not "y"`},
			{Line: 4, Path: "pools[2].max", Msg: `want a whole number, not "x"`},
			{Line: 4, Path: "pools[2].name", Msg: "want a string, not a list"},
		}},
		{"an unknown field", "pools:\n- {name: a, maxx: 1}\n",
			[]Problem{{Line: 2, Path: "pools[0].maxx", Unknown: "maxx", In: "yamldoc.testPool", Msg: "field maxx not found in type yamldoc.testPool"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var root yaml.Node
			if err := yaml.Unmarshal([]byte(c.doc), &root); err != nil {
				t.Fatal(err)
			}
			dec := yaml.NewDecoder(bytes.NewReader([]byte(c.doc)))
			dec.KnownFields(true)
			var v testDoc
			err := dec.Decode(&v)
			got, ok := Problems(&root, &v, err)
			if !ok || !reflect.DeepEqual(got, c.want) {
				t.Errorf("Problems(%v) = %+v, %v; want %+v", err, got, ok, c.want)
			}
		})
	}
	if _, ok := Problems(&yaml.Node{}, &testDoc{}, yaml.Unmarshal([]byte("a: ["), &testDoc{})); ok {
		t.Error("a syntax error was read as a type error")
	}
}

func TestProblemWhere(t *testing.T) {
	if got := (Problem{Line: 3, Path: "pools[0].max"}).Where("f.yaml"); got != "f.yaml:3: pools[0].max" {
		t.Errorf("with a path: %q", got)
	}
	if got := (Problem{Line: 3}).Where("f.yaml"); got != "f.yaml:3" {
		t.Errorf("without one: %q", got)
	}
}

func TestPathAt(t *testing.T) {
	var root yaml.Node
	if err := yaml.Unmarshal([]byte("region: us\npools:\n- {name: a, max: 4}\n- name: b\n  max: 5\n"), &root); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		line, column int
		want         string
	}{{1, 9, "region"}, {3, 18, "pools[0].max"}, {5, 8, "pools[1].max"}, {4, 3, "pools[1]"}, {3, 1, "pools"}, {2, 1, ""}} {
		if got := PathAt(&root, c.line, c.column); got != c.want {
			t.Errorf("PathAt(%d, %d) = %q, want %q", c.line, c.column, got, c.want)
		}
	}
}

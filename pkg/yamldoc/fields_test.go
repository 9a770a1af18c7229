package yamldoc

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
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
		// The decoder places a value an alias names where the anchor
		// defines it; the field is where the alias uses it.
		{"a value through an alias", "limits: {gpus: &m lots}\npools:\n- {name: a, max: 1}\n- {name: b, max: *m}\n",
			[]Problem{
				{Line: 1, Path: "limits.gpus", Msg: `want a number, not "lots"`},
				{Line: 1, Path: "pools[1].max", Msg: `want a whole number, not "lots"`},
			}},
		{"a list item through an alias", "limits: {gpus: &z [x]}\npools:\n- {name: a, zones: *z}\n- *z\n",
			[]Problem{
				{Line: 1, Path: "limits.gpus", Msg: "want a number, not a list"},
				{Line: 1, Path: "pools[1]", Msg: "want a map of fields, not a list"},
			}},
		// A merge key ("<<") takes the fields of the map it names that the
		// map does not set itself; the decoder places their errors where
		// the named map writes them.
		{"a value through a merge key", "pools:\n- &p {name: a, max: lots, maxx: 1}\n- {<<: *p, name: b}\n- {<<: [*p], max: 2}\n",
			[]Problem{
				{Line: 2, Path: "pools[0].max", Msg: `want a whole number, not "lots"`},
				{Line: 2, Path: "pools[0].maxx", Unknown: "maxx", In: "yamldoc.testPool", Msg: "field maxx not found in type yamldoc.testPool"},
				{Line: 2, Path: "pools[1].max", Msg: `want a whole number, not "lots"`},
				{Line: 2, Path: "pools[1].maxx", Unknown: "maxx", In: "yamldoc.testPool", Msg: "field maxx not found in type yamldoc.testPool"},
				{Line: 2, Path: "pools[2].maxx", Unknown: "maxx", In: "yamldoc.testPool", Msg: "field maxx not found in type yamldoc.testPool"},
			}},
		// A list or a word where the document wants a map of fields used
		// to be reported in the decoder's words, a Go type's name.
		{"a list for the document", "- a\n- b\n", []Problem{{Line: 1, Msg: "want a map of fields, not a list"}}},
		{"a word for the document", "pools\n", []Problem{{Line: 1, Msg: `want a map of fields, not "pools"`}}},
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

func TestValueAtAndLineOf(t *testing.T) {
	var root yaml.Node
	doc := "region: &r us\npools:\n- {name: a, max: 4}\n- name: b\n  zones: [*r]\n"
	if err := yaml.Unmarshal([]byte(doc), &root); err != nil {
		t.Fatal(err)
	}
	if n := ValueAt(&root, "pools[1].name"); n == nil || n.Value != "b" || n.Line != 4 {
		t.Errorf("ValueAt(pools[1].name) = %+v", n)
	}
	// An alias is the value it names.
	if n := ValueAt(&root, "pools[1].zones[0]"); n == nil || n.Value != "us" {
		t.Errorf("ValueAt(pools[1].zones[0]) = %+v", n)
	}
	if n := ValueAt(&root, "pools[1].max"); n != nil {
		t.Errorf("ValueAt of a field left out = %+v, want nil", n)
	}
	for path, want := range map[string]int{
		"pools[0].max": 3, "pools[1].zones": 5,
		// Left out: the nearest field that is there.
		"pools[1].max": 4, "pools[7].max": 3, "limits.gpus": 1, "": 1,
	} {
		if got := LineOf(&root, path); got != want {
			t.Errorf("LineOf(%q) = %d, want %d", path, got, want)
		}
	}
}

// Aliases of aliases stand for exponentially many values; walk, which reads
// documents the decoder refused too, lists a bounded number of them.
func TestWalkBoundsAliases(t *testing.T) {
	doc := "limits:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n"
	prev := "a"
	for _, name := range []string{"b", "c", "d", "e"} {
		doc += "  " + name + ": &" + name + " [" + strings.Repeat("*"+prev+", ", 9) + "*" + prev + "]\n"
		prev = name
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &root); err != nil {
		t.Fatal(err)
	}
	// Unbounded, the 5 lines list more than 10^5 values.
	if n := len(walk(&root, reflect.TypeOf(testDoc{}))); n > maxFields+100 {
		t.Errorf("walk listed %d fields, want at most %d", n, maxFields+100)
	}
}

// A map that merges itself, which the decoder refuses but walk reads, and
// merges of merges of the same maps, are walked once each.
func TestWalkEndsOnMerges(t *testing.T) {
	doc := "limits: &l {a: 1, <<: *l}\npools:\n- &p0 {name: a}\n"
	for i := 1; i < 40; i++ {
		doc += fmt.Sprintf("- &p%d {<<: [*p%d, *p%d, *p%d]}\n", i, i-1, i-1, i-1)
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &root); err != nil {
		t.Fatal(err)
	}
	if n := len(walk(&root, reflect.TypeOf(testDoc{}))); n > 200 {
		t.Errorf("walk listed %d fields, want each of about 80 once", n)
	}
}

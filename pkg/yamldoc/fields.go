package yamldoc

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Problem is one value a decoder refused, placed in the document: yaml.v3
// gives a line and the Go type it wanted, which a user who wrote the file
// cannot act on without the field's name.
type Problem struct {
	// Line is where the value, or the unknown field's key, starts.
	Line int
	// Path is the field's path from the top of the document, such as
	// pools[1].max; "" where no field of the document fits the decoder's
	// message.
	Path string
	// Unknown is a field the Go type In does not have (a decoder with
	// KnownFields); "" for a value of the wrong kind.
	Unknown, In string
	// Msg says what is wrong: for a value of the wrong kind, what the field
	// takes and what it holds; for an unknown field, the decoder's words.
	Msg string
}

// Where is "file:line: path", or "file:line" when the field is not known.
func (p Problem) Where(file string) string {
	if p.Path == "" {
		return fmt.Sprintf("%s:%d", file, p.Line)
	}
	return fmt.Sprintf("%s:%d: %s", file, p.Line, p.Path)
}

var (
	decoderLine    = regexp.MustCompile(`^line (\d+): (.*)$`)
	decoderUnknown = regexp.MustCompile(`^field (.+) not found in type (\S+)$`)
)

// Problems places the errors of decoding root's document into v (the value
// given to Decode) in the document. ok is false when err is not a
// *yaml.TypeError (a syntax error, say), whose message is all there is.
func Problems(root *yaml.Node, v any, err error) (problems []Problem, ok bool) {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return nil, false
	}
	fields := walk(root, reflect.TypeOf(v))
	used := make([]bool, len(fields))
	// match is the first field not yet used that fits; the decoder reports
	// in document order, so two alike values on one line get one each.
	match := func(fits func(f field) bool) *field {
		for i, f := range fields {
			if !used[i] && fits(f) {
				used[i] = true
				return &fields[i]
			}
		}
		return nil
	}
	for _, m := range te.Errors {
		sub := decoderLine.FindStringSubmatch(m)
		if sub == nil {
			problems = append(problems, Problem{Msg: m})
			continue
		}
		line, _ := strconv.Atoi(sub[1])
		p := Problem{Line: line, Msg: sub[2]}
		if u := decoderUnknown.FindStringSubmatch(sub[2]); u != nil {
			p.Unknown, p.In = u[1], u[2]
			if f := match(func(f field) bool {
				return f.t == nil && f.in != nil && f.in.String() == p.In && f.key.Line == line && f.key.Value == p.Unknown
			}); f != nil {
				p.Path = f.path
			}
		} else if f := match(func(f field) bool {
			return f.t != nil && f.value.Line == line && refusal(f.value, f.t) == sub[2]
		}); f != nil {
			p.Path, p.Msg = f.path, fmt.Sprintf("want %s, not %s", wants(f.t), Describe(f.value))
		}
		problems = append(problems, p)
	}
	return problems, true
}

// DecodeError is err, from decoding root's document from file into v, as
// one line per problem: "file:line: path: what is wrong". unknown, when not
// nil, words the message for a field v's type does not have (the
// decoder's says "field x not found in type pkg.T"). An error that is not a
// type error (a syntax error) is "file: err".
func DecodeError(file string, root *yaml.Node, v any, err error, unknown func(Problem) string) error {
	problems, ok := Problems(root, v, err)
	if !ok {
		return fmt.Errorf("%s: %v", file, err)
	}
	msgs := make([]string, len(problems))
	for i, p := range problems {
		msg := p.Msg
		if p.Unknown != "" && unknown != nil {
			msg = unknown(p)
		}
		if p.Line == 0 {
			msgs[i] = file + ": " + msg
			continue
		}
		msgs[i] = p.Where(file) + ": " + msg
	}
	return errors.New(strings.Join(msgs, "\n"))
}

// PathAt is the path (pools[1].scaleDownAfter) of the field whose value
// starts at line and column of the document root; "" if none does. A
// decoder's own error, such as a yaml.Unmarshaler's, sees the value alone.
func PathAt(root *yaml.Node, line, column int) string {
	for _, f := range walk(root, nil) {
		if f.value.Line == line && f.value.Column == column {
			return f.path
		}
	}
	return ""
}

// ValueAt is the value of the field at path (pools[1].max, as Problems
// and PathAt name fields) in the document root; nil if the document has no
// such field. An alias stands for the value it names.
func ValueAt(root *yaml.Node, path string) *yaml.Node {
	for _, f := range walk(root, nil) {
		if f.path == path {
			return f.value
		}
	}
	return nil
}

// LineOf is the line where the field at path starts or, when the document
// leaves it out, its nearest enclosing field: a check that finds a required
// field missing from pools[1] points at pools[1]. 1 when none is there.
func LineOf(root *yaml.Node, path string) int {
	for {
		if n := ValueAt(root, path); n != nil && n.Line > 0 {
			return n.Line
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 1
		}
		path = path[:i]
	}
}

// field is a value in a document, with the Go type a decode into the
// document's type gives it (nil where that is not known), or a key the
// struct type in does not have (t nil).
type field struct {
	path       string
	key, value *yaml.Node
	t, in      reflect.Type
}

// walk lists the document itself (path "") and every field and list item
// of root's document, outside in, with the Go type t (nil: none) decodes
// each into, as yaml.v3 matches keys to struct fields. An alias is walked as
// the value it names, which is where the decoder places its errors.
func walk(root *yaml.Node, t reflect.Type) []field {
	var out []field
	var visit func(n *yaml.Node, t reflect.Type, path string)
	var mapping func(n *yaml.Node, t reflect.Type, path string, set map[string]bool, seen map[*yaml.Node]bool)
	visit = func(n *yaml.Node, t reflect.Type, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				// A list or a word where the document's type wants a
				// map of fields is refused at the top, which has no path.
				c = resolve(c)
				out = append(out, field{value: c, t: t})
				visit(c, t, path)
			}
		case yaml.MappingNode:
			mapping(n, t, path, nil, nil)
		case yaml.SequenceNode:
			var et reflect.Type
			if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
				et = decoded(t.Elem())
			}
			for i, c := range n.Content {
				value := resolve(c)
				p := fmt.Sprintf("%s[%d]", path, i)
				out = append(out, field{path: p, value: value, t: et})
				if value == c || len(out) < maxFields {
					visit(value, et, p)
				}
			}
		}
	}
	mapping = func(n *yaml.Node, t reflect.Type, path string, set map[string]bool, seen map[*yaml.Node]bool) {
		var byName map[string]reflect.Type
		if t != nil && t.Kind() == reflect.Struct {
			byName = structFields(t)
		}
		var merge *yaml.Node
		for k := 0; k+1 < len(n.Content); k += 2 {
			key, value := n.Content[k], resolve(n.Content[k+1])
			if isMerge(key) {
				merge = value
				continue
			}
			if set != nil {
				if set[key.Value] {
					continue
				}
				set[key.Value] = true
			}
			aliased := value != n.Content[k+1]
			p := key.Value
			if path != "" {
				p = path + "." + p
			}
			var ft reflect.Type
			switch {
			case byName != nil:
				var known bool
				if ft, known = byName[key.Value]; !known {
					out = append(out, field{path: p, key: key, value: value, in: t})
					continue
				}
			case t != nil && t.Kind() == reflect.Map:
				ft = t.Elem()
			}
			ft = decoded(ft)
			out = append(out, field{path: p, key: key, value: value, t: ft})
			if !aliased || len(out) < maxFields {
				visit(value, ft, p)
			}
		}
		// A merge key's map gives this one the fields it does not set
		// itself (of a list of maps, the first to set one), after its own,
		// as the decoder reads them; the decoder places their errors where
		// the merged map writes them. A map merged once has given all it
		// can: merging it again (a map that merges itself, in a document
		// the decoder refused) would never end.
		if merge == nil || len(out) >= maxFields {
			return
		}
		if set == nil {
			set, seen = map[string]bool{}, map[*yaml.Node]bool{n: true}
			for k := 0; k+1 < len(n.Content); k += 2 {
				set[n.Content[k].Value] = true
			}
		}
		merged := []*yaml.Node{merge}
		if merge.Kind == yaml.SequenceNode {
			merged = merge.Content
		}
		for _, m := range merged {
			if m = resolve(m); m.Kind == yaml.MappingNode && !seen[m] {
				seen[m] = true
				mapping(m, t, path, set, seen)
			}
		}
	}
	visit(root, decoded(t), "")
	return out
}

// maxFields bounds what walk lists inside aliases: a few lines of aliases
// of aliases stand for more values than memory holds (a "billion laughs"),
// which the decoder refuses, but walk reads documents it has refused.
const maxFields = 1 << 16

// isMerge is whether key is a merge key ("<<"), as the decoder tells.
func isMerge(key *yaml.Node) bool {
	return key.Kind == yaml.ScalarNode && key.Value == "<<" && (key.Tag == "" || key.Tag == "!" || key.ShortTag() == "!!merge")
}

// resolve is the value an alias names; any other node is its own value.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// decoded is the type a value of type t is decoded as: the decoder fills
// what a pointer points to, and an interface takes anything.
func decoded(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && t.Kind() == reflect.Interface {
		return nil
	}
	return t
}

// structFields are the keys of a struct type as yaml.v3 reads them: the
// tag's name, else the field's name in lower case, with ",inline" structs'
// keys as the struct's own.
func structFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.PkgPath != "" && !f.Anonymous {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if strings.Contains(","+opts+",", ",inline,") && f.Type.Kind() == reflect.Struct {
			for k, v := range structFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// refusal is yaml.v3's message for n refused as a t, so a message can be
// traced to its field.
func refusal(n *yaml.Node, t reflect.Type) string {
	tag, value := n.ShortTag(), ""
	if tag != "!!seq" && tag != "!!map" {
		// As the decoder shortens it.
		if len(n.Value) > 10 {
			value = " `" + n.Value[:7] + "...`"
		} else {
			value = " `" + n.Value + "`"
		}
	}
	return fmt.Sprintf("cannot unmarshal %s%s into %s", tag, value, t)
}

// wants says in words what a field of type t takes.
func wants(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map:
		return "a map of key: value"
	case reflect.Struct:
		return "a map of fields"
	}
	return t.String()
}

// Describe says in words what a value is: a list, a map, or its text.
func Describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a map"
	}
	return strconv.Quote(n.Value)
}

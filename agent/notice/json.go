package notice

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// The metadata parsers read JSON through Object rather than into structs:
// encoding/json matches struct fields case-insensitively and converts
// nothing, but Object matches keys exactly and names what is wrong with the
// document in its errors, so a document that is not exactly what the cloud
// sends is an error, never a notice.

// Object is a JSON object whose members are read by exact key.
type Object struct {
	what   string
	fields map[string]json.RawMessage
}

// ParseObject reads body as one JSON object; what names it in errors.
func ParseObject(what string, body []byte) (Object, error) {
	raw, err := one(what, body, '{', "object")
	if err != nil {
		return Object{}, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return Object{}, fmt.Errorf("%s: not a JSON object (%v): %s", what, err, Excerpt(body))
	}
	// encoding/json keeps the last of a repeated member without a word:
	// {"action":"terminate","action":"stop"} would read as a stop, and an
	// Azure event's second "Resources" would hide this VM in the first.
	if key, ok := repeatedKey(raw); ok {
		return Object{}, fmt.Errorf("%s: %q is given more than once, and which one is meant cannot be told: %s", what, key, Excerpt(body))
	}
	return Object{what: what, fields: fields}, nil
}

// repeatedKey returns a member name the JSON object raw gives twice.
func repeatedKey(raw []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return "", false
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return "", false
		}
		key, _ := t.(string)
		if seen[key] {
			return key, true
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return "", false
		}
	}
	return "", false
}

// ParseList reads body as one JSON list.
func ParseList(what string, body []byte) ([]json.RawMessage, error) {
	raw, err := one(what, body, '[', "list")
	if err != nil {
		return nil, err
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("%s: not a JSON list (%v): %s", what, err, Excerpt(body))
	}
	return items, nil
}

// one checks that body holds exactly one JSON value that opens with open.
func one(what string, body []byte, open byte, kind string) ([]byte, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != open {
		return nil, fmt.Errorf("%s: want a JSON %s, got %s", what, kind, Excerpt(body))
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	var v json.RawMessage
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%s: not a JSON document (%v): %s", what, err, Excerpt(body))
	}
	if rest := bytes.TrimSpace(trimmed[dec.InputOffset():]); len(rest) > 0 {
		return nil, fmt.Errorf("%s: data after the JSON document: %s", what, Excerpt(rest))
	}
	return v, nil
}

// Has reports whether key is present (even as null).
func (o Object) Has(key string) bool {
	_, ok := o.fields[key]
	return ok
}

func (o Object) get(key string, required bool) (json.RawMessage, bool, error) {
	raw, ok := o.fields[key]
	if !ok {
		if required {
			return nil, false, fmt.Errorf("%s: %q is missing", o.what, key)
		}
		return nil, false, nil
	}
	return raw, true, nil
}

func (o Object) typeError(key string, raw json.RawMessage, want string) error {
	got := "value"
	switch t := bytes.TrimSpace(raw); {
	case len(t) == 0:
	case t[0] == '"':
		got = "string"
	case t[0] == '{':
		got = "object"
	case t[0] == '[':
		got = "list"
	case t[0] == 't' || t[0] == 'f':
		got = "bool"
	case t[0] == 'n':
		got = "null"
	default:
		got = "number"
	}
	return fmt.Errorf("%s: %q is a JSON %s, want %s", o.what, key, got, want)
}

// String reads a string member.
func (o Object) String(key string, required bool) (string, bool, error) {
	raw, ok, err := o.get(key, required)
	if !ok {
		return "", false, err
	}
	var s string
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false, o.typeError(key, raw, "a string")
	}
	return s, true, nil
}

// Int reads an integer member.
func (o Object) Int(key string, required bool) (int64, bool, error) {
	raw, ok, err := o.get(key, required)
	if !ok {
		return 0, false, err
	}
	var n int64
	// encoding/json takes null for an integer without an error, leaving 0.
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] == '"' || t[0] == 'n' || json.Unmarshal(raw, &n) != nil {
		return 0, false, o.typeError(key, raw, "an integer")
	}
	return n, true, nil
}

// List reads a list member.
func (o Object) List(key string, required bool) ([]json.RawMessage, bool, error) {
	raw, ok, err := o.get(key, required)
	if !ok {
		return nil, false, err
	}
	var items []json.RawMessage
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '[' || json.Unmarshal(raw, &items) != nil {
		return nil, false, o.typeError(key, raw, "a list")
	}
	return items, true, nil
}

// Strings reads a list of strings.
func (o Object) Strings(key string, required bool) ([]string, bool, error) {
	items, ok, err := o.List(key, required)
	if !ok {
		return nil, false, err
	}
	out := make([]string, len(items))
	for i, raw := range items {
		if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '"' || json.Unmarshal(raw, &out[i]) != nil {
			return nil, false, o.typeError(fmt.Sprintf("%s[%d]", key, i), raw, "a string")
		}
	}
	return out, true, nil
}

package reclaim

import (
	"strings"
	"testing"
)

func TestParseHook(t *testing.T) {
	good := map[string]Hook{
		"http://:8080/checkpoint":     {Port: "8080", Path: "/checkpoint"},
		" http://:9000/ckpt?now=1 ":   {Port: "9000", Path: "/ckpt?now=1"},
		"http://:8080":                {Port: "8080", Path: "/"},
		"http:///checkpoint":          {Port: "80", Path: "/checkpoint"},
		"http://:8080/a%20b/../check": {Port: "8080", Path: "/a%20b/../check"},
		"http://:8080/a%2Fb":          {Port: "8080", Path: "/a%2Fb"},
		"http://:8080/checkpoint#":    {Port: "8080", Path: "/checkpoint"},
	}
	for v, want := range good {
		got, err := ParseHook(v)
		if err != nil || got != want {
			t.Errorf("ParseHook(%q) = %+v, %v; want %+v", v, got, err, want)
		}
	}
	bad := map[string]string{
		"http://169.254.169.254/latest/meta-data": "names a host",
		"http://kubernetes.default:443/api":       "names a host",
		"http://10.0.0.1:8080/checkpoint":         "names a host",
		"http://user@:8080/checkpoint":            "names a host",
		"https://:8443/checkpoint":                "scheme must be http",
		":8080/checkpoint":                        "not a URL",
		"/checkpoint":                             "scheme must be http",
		"http://:0/c":                             "1..65535",
		"http://:99999/c":                         "1..65535",
		// Opaque: neither port nor path is read, and the hook was called
		// on port 80 at "/".
		"http:8080/checkpoint":  "no // after http:",
		"http::8080/checkpoint": "no // after http:",
		// A fragment is never sent: the hook was called at "/" or the path
		// before it.
		"http://:8080#x":            "fragment #x",
		"http://:8080/checkpoint#x": "fragment #x",
	}
	for v, want := range bad {
		_, err := ParseHook(v)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), HookAnnotation) {
			t.Errorf("ParseHook(%q) error %v, want one naming %s and saying %q", v, err, HookAnnotation, want)
			continue
		}
		if want != "names a host" && want != "scheme must be http" && !strings.Contains(err.Error(), "http://:8080/checkpoint") {
			t.Errorf("ParseHook(%q) error %v does not say how to write it", v, err)
		}
	}
}

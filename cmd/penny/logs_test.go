package main

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// penny sim keeps the framework's INFO lines off the terminal and lets
// warnings through; everything still reaches the writer klog is given.
func TestRouteKlog(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = w
	var all bytes.Buffer
	err = routeKlog(&all, "WARNING")
	klog.Info("profile detail")
	klog.Warning("something to act on")
	klog.Flush()
	os.Stderr = stderr
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	shown, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(shown); strings.Contains(s, "profile detail") || !strings.Contains(s, "something to act on") {
		t.Errorf("standard error got %q: want the warning only", s)
	}
	if s := all.String(); !strings.Contains(s, "profile detail") || !strings.Contains(s, "something to act on") {
		t.Errorf("klog's writer got %q: want both lines", s)
	}
}

//go:build linux

package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestCheckFlags(t *testing.T) {
	good := options{sizes: []int{1000, 5000}, podsPerNode: 1, bindTimeout: 5 * time.Minute, telemetryPerNode: 6400, logVerbosity: 2}
	if err := checkFlags(good); err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	for _, c := range []struct {
		name string
		edit func(*options)
		want string
	}{
		// NaN got past "<= 0" and became int(NaN) pods.
		{"NaN pods per node", func(o *options) { o.podsPerNode = math.NaN() }, "-pods-per-node NaN: want a number in (0, 110]"},
		{"infinite pods per node", func(o *options) { o.podsPerNode = math.Inf(1) }, "-pods-per-node +Inf: want a number in (0, 110]"},
		{"negative infinite pods per node", func(o *options) { o.podsPerNode = math.Inf(-1) }, "-pods-per-node -Inf"},
		{"no pods per node", func(o *options) { o.podsPerNode = 0 }, "-pods-per-node 0: want a number in (0, 110]"},
		{"more pods than a node holds", func(o *options) { o.podsPerNode = 111 }, "-pods-per-node 111: want a number in (0, 110]"},
		{"no pod at a size", func(o *options) { o.sizes = []int{1000, 1}; o.podsPerNode = 0.01 }, "-pods-per-node 0.01: 1 nodes would get no pod; want at least 0.5"},
		{"no bind timeout", func(o *options) { o.bindTimeout = 0 }, "-bind-timeout 0s: want a positive duration"},
		{"negative telemetry bytes", func(o *options) { o.telemetryPerNode = -1 }, "-telemetry-bytes-per-node -1"},
		{"negative verbosity", func(o *options) { o.logVerbosity = -1 }, "-v -1"},
	} {
		o := good
		o.sizes = append([]int(nil), good.sizes...)
		c.edit(&o)
		if err := checkFlags(o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func TestParseSizes(t *testing.T) {
	if got, err := parseSizes("1000, 5000"); err != nil || len(got) != 2 || got[0] != 1000 || got[1] != 5000 {
		t.Errorf("1000, 5000: %v %v", got, err)
	}
	for _, s := range []string{"", "0", "1000,x", "-5"} {
		if _, err := parseSizes(s); err == nil || !strings.Contains(err.Error(), "-nodes") {
			t.Errorf("%q: %v, want an error naming -nodes", s, err)
		}
	}
}

package gang

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
)

func TestDecodeArgs(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		wantErr string
		check   func(*testing.T, *Args)
	}{
		{
			name: "defaults",
			check: func(t *testing.T, a *Args) {
				if a.PermitTimeout.Duration != DefaultPermitTimeout || a.MaxPermitTimeout.Duration != DefaultMaxPermitTimeout ||
					a.Backoff.Duration != DefaultBackoff || a.MaxBackoff.Duration != DefaultMaxBackoff ||
					!*a.SameZone || !*a.SameCapacityType || a.ZoneLabel != "topology.kubernetes.io/zone" {
					t.Errorf("defaults: %+v", a)
				}
			},
		},
		{
			name: "values",
			raw:  "permitTimeout: 30s\nsameZone: false\nzoneLabel: example.com/rack\n",
			check: func(t *testing.T, a *Args) {
				if a.PermitTimeout.Duration != 30*time.Second || *a.SameZone || !*a.SameCapacityType || a.ZoneLabel != "example.com/rack" {
					t.Errorf("values: %+v", a)
				}
			},
		},
		{name: "misspelt field", raw: "permitTimout: 30s\n", wantErr: `unknown field "permitTimout"`},
		{name: "not a duration", raw: "permitTimeout: soon\n", wantErr: "PennyGang plugin args"},
		{name: "zero timeout", raw: "permitTimeout: 0s\n", wantErr: "permitTimeout: Invalid value: \"0s\": must be a positive duration"},
		{name: "timeout above max", raw: "permitTimeout: 20m\n", wantErr: "must not exceed maxPermitTimeout (10m0s)"},
		{name: "max above the framework's", raw: "maxPermitTimeout: 20m\n", wantErr: "maxPermitTimeout: Invalid value: \"20m0s\": must be at most 15m0s: kube-scheduler ends every wait at Permit after 15m0s"},
		{name: "backoff above max", raw: "backoff: 5m\n", wantErr: "backoff: Invalid value: \"5m0s\": must not exceed maxBackoff (1m0s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var obj runtime.Object
			if tt.raw != "" {
				obj = &runtime.Unknown{Raw: []byte(tt.raw), ContentType: runtime.ContentTypeYAML}
			}
			a, err := DecodeArgs(obj)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, a)
		})
	}
}

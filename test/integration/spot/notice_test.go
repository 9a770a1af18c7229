package spot

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/plugins/spotrisk"
	"github.com/pennysched/penny/test/harness"
)

// A pod kept off the only Spot node by the Spot interruption notice its
// agent reports binds there as soon as the agent's report drops the notice
// (the cloud called it off), not at kube-scheduler's five-minute flush: no
// cluster event says that the notice went.
func TestPodBindsWhenItsNodesReclaimNoticeIsWithdrawn(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, fleet)})
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Hour})
	report := func(seq uint64, notices ...*telemetryv1.ReclaimNotice) {
		r := telemetrytest.Report("spot-0", 0, seq, time.Now())
		r.ReclaimNotices = notices
		store.Update(r, time.Now())
	}
	report(1, &telemetryv1.ReclaimNotice{Id: "i-1", Kind: telemetryv1.ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION,
		Provider: telemetryv1.CloudProvider_CLOUD_PROVIDER_AWS, DetectedAt: timestamppb.Now()})
	harness.StartScheduler(t, c, plugins.Deps{Prices: shippedCatalog(t), Telemetry: store})

	harness.CreatePod(t, c, gpuPod("spot-only", "1", map[string]string{spotrisk.AnnotationSpot: "only"}))
	msg := harness.WaitForEvent(t, c, "default", "spot-only", "FailedScheduling", 20*time.Second)
	if !strings.Contains(msg, "1 node(s) have a pending reclaim notice") {
		t.Fatalf("FailedScheduling %q does not name the notice", msg)
	}
	report(2)
	p := harness.WaitForPod(t, c, "default", "spot-only", 20*time.Second, "bound", harness.Bound)
	if p.Spec.NodeName != "spot-0" {
		t.Fatalf("bound to %s, want spot-0", p.Spec.NodeName)
	}
}

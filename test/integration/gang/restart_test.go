package gang

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/localcluster"
	"github.com/pennysched/penny/plugins"
	"github.com/pennysched/penny/test/harness"
)

// TestGangHeldAtPermitOutlivesASchedulerRestart: two members of a gang of
// three wait in Permit for the third when penny-scheduler restarts (a crash,
// a rolling update, a new leader). A member held in Permit is not bound, so
// nothing of the gang runs: the new scheduler places the gang again, holds
// its members for no longer than its own Permit timeout (they neither bind
// short of the gang nor hold nodes for ever), and binds all three once the
// third can be placed.
func TestGangHeldAtPermitOutlivesASchedulerRestart(t *testing.T) {
	c := harness.StartCluster(t, localcluster.Options{Spec: harness.ParseSpec(t, threeNodes)})
	e := &env{t: t, c: c}
	// Long enough that only the restart can end the first scheduler's hold.
	first := harness.StartScheduler(t, c, plugins.Deps{}, withGangArgs(t, map[string]any{"permitTimeout": "5m", "backoff": "500ms", "maxBackoff": "2s"}))
	for i := range 3 {
		p := member("held", 3, i)
		if i == 2 {
			neverTried(p)
		}
		harness.CreatePod(t, c, p)
	}
	waiting := func(p *corev1.Pod) bool { return p.Status.NominatedNodeName != "" && !harness.Bound(p) }
	for _, name := range names("held", 2) {
		harness.WaitForPod(t, c, "default", name, 60*time.Second, "waiting in Permit", waiting)
	}

	first.Stop()
	// The new scheduler's Permit timeout is short, so that its hold is seen
	// to end: a gang whose wait were lost would hold its nodes for ever.
	harness.StartScheduler(t, c, plugins.Deps{}, withGangArgs(t, map[string]any{"permitTimeout": "3s", "backoff": "500ms", "maxBackoff": "2s"}))
	for _, name := range names("held", 2) {
		msg := harness.WaitForEvent(t, c, "default", name, "GangReleased", 60*time.Second)
		if want := "gang default/held released: not all members were placed within 3s"; !strings.HasPrefix(msg, want) {
			t.Errorf("GangReleased on %s: %q, want it to start %q", name, msg, want)
		}
	}
	e.noneBound(3*time.Second, names("held", 3)...)

	// The member that could not be placed is replaced by one that can: the
	// whole gang binds.
	e.delete("held-2")
	e.waitGone("held-2")
	harness.CreatePod(t, c, member("held", 3, 2))
	e.waitAllBound(60*time.Second, names("held", 3)...)
}

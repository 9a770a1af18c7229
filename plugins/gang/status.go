package gang

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/gang"
)

// membersMissing is the message for a gang that does not yet have all its
// members.
func membersMissing(spec gang.Spec, have int) string {
	return fmt.Sprintf("gang %s: %d/%d members exist, waiting for %d more to be created", spec.Ref, have, spec.MinMember, int(spec.MinMember)-have)
}

// sizeDisagreement reports members that disagree on the gang's size: the
// plugin will not guess which one is right.
func sizeDisagreement(spec gang.Spec, members []*corev1.Pod) string {
	sizes := map[int32][]string{}
	for _, p := range members {
		if s, ok, err := gang.Of(p); ok && err == nil && s.MinMember != spec.MinMember {
			sizes[s.MinMember] = append(sizes[s.MinMember], p.Name)
		}
	}
	if len(sizes) == 0 {
		return ""
	}
	var parts []string
	for size, names := range sizes {
		sort.Strings(names)
		parts = append(parts, fmt.Sprintf("%s say %d", strings.Join(names, ", "), size))
	}
	sort.Strings(parts)
	return fmt.Sprintf("gang %s: members disagree on %s: this pod says %d but %s; give every member the same value",
		spec.Ref, gang.KeySize, spec.MinMember, strings.Join(parts, "; "))
}

// gate records that pod waits for the rest of its gang to be created and
// tells it so, once per distinct message. It reports false if the gang
// completed meanwhile: the count is taken again after recording, so a member
// can never stay gated past the arrival that completed its gang (onPodAdd
// activates every member recorded before that arrival; anyone recording
// later sees it).
func (pl *Gang) gate(pod *corev1.Pod, spec gang.Spec) bool {
	members, err := gang.Members(pl.pods, spec.Ref)
	if err != nil {
		return true
	}
	msg := membersMissing(spec, len(members))
	told := pl.remember(pod, spec.Ref, msg)
	members, err = gang.Members(pl.pods, spec.Ref)
	if err == nil && int32(len(members)) >= spec.MinMember {
		pl.mu.Lock()
		delete(pl.stateOf(spec.Ref).gated, pod.UID)
		pl.mu.Unlock()
		return false
	}
	if !told {
		pl.tell(pod, "GangWaiting", msg)
	}
	return true
}

// remember records pod as held back with msg and reports whether it was
// already told msg. Caller does not hold mu.
func (pl *Gang) remember(pod *corev1.Pod, ref gang.Ref, msg string) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	g := pl.stateOf(ref)
	told := g.gated[pod.UID] == msg
	g.gated[pod.UID] = msg
	return told
}

// tell records an event on pod. PreEnqueue rejections produce no scheduling
// event of their own; without this `kubectl describe` would show nothing.
func (pl *Gang) tell(pod *corev1.Pod, reason, msg string) {
	eventType := corev1.EventTypeNormal
	if reason != "GangWaiting" {
		eventType = corev1.EventTypeWarning
	}
	pl.handle.EventRecorder().Eventf(pod, nil, eventType, reason, "Scheduling", msg)
}

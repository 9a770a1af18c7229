package gang

import (
	"fmt"
	"slices"
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

// memberProblem reports members that keep the gang from being placed: a
// member whose gang keys are malformed (PreEnqueue holds it, yet it counts
// as a member, so the others would claim room and wait for it in vain), or
// members that disagree on the gang's size or placement rules (the plugin
// will not guess which one is right; the rules would otherwise be those of
// whichever member the queue tried first).
func (pl *Gang) memberProblem(spec gang.Spec, members []*corev1.Pod) string {
	own := pl.rulesOf(spec)
	type disagreement struct {
		key  string
		mine string
		// theirs lists member names by the value they say.
		theirs map[string][]string
	}
	disagreements := []*disagreement{
		{key: gang.KeySize, mine: fmt.Sprint(spec.MinMember), theirs: map[string][]string{}},
		{key: gang.KeySameZone, mine: fmt.Sprint(own.sameZone), theirs: map[string][]string{}},
		{key: gang.KeySameCapacityType, mine: fmt.Sprint(own.sameCapType), theirs: map[string][]string{}},
	}
	var malformed []string
	var firstErr error // of the malformed member first by name, for a stable message
	// Any member may set the gang's timeout (timeoutFor); members that set
	// different ones would leave the wait to whichever is read first.
	timeouts := map[string][]string{}
	for _, p := range members {
		s, _, err := gang.Of(p)
		if err != nil {
			if firstErr == nil || p.Name < slices.Min(malformed) {
				firstErr = err
			}
			malformed = append(malformed, p.Name)
			continue
		}
		if s.Timeout > 0 {
			timeouts[s.Timeout.String()] = append(timeouts[s.Timeout.String()], p.Name)
		}
		r := pl.rulesOf(s)
		for i, v := range []string{fmt.Sprint(s.MinMember), fmt.Sprint(r.sameZone), fmt.Sprint(r.sameCapType)} {
			if d := disagreements[i]; v != d.mine {
				d.theirs[v] = append(d.theirs[v], p.Name)
			}
		}
	}
	if len(malformed) > 0 {
		sort.Strings(malformed)
		if len(malformed) == 1 {
			return fmt.Sprintf("gang %s: member %s must be fixed first: %v", spec.Ref, malformed[0], firstErr)
		}
		return fmt.Sprintf("gang %s: %d members must be fixed first (%s): %v", spec.Ref, len(malformed), strings.Join(malformed, ", "), firstErr)
	}
	for _, d := range disagreements {
		if len(d.theirs) == 0 {
			continue
		}
		hint := ""
		if d.key != gang.KeySize {
			hint = " (a member without it says the scheduler's default)"
		}
		return fmt.Sprintf("gang %s: members disagree on %s: this pod says %s but %s%s; give every member the same value",
			spec.Ref, d.key, d.mine, whoSays(d.theirs), hint)
	}
	if len(timeouts) > 1 {
		return fmt.Sprintf("gang %s: members disagree on %s: %s; give every member that sets it the same value",
			spec.Ref, gang.KeyTimeout, whoSays(timeouts))
	}
	return ""
}

// whoSays lists members by the value they give, in a stable order:
// "a, b say 90s; c say 2m0s".
func whoSays(byValue map[string][]string) string {
	var parts []string
	for value, names := range byValue {
		sort.Strings(names)
		parts = append(parts, fmt.Sprintf("%s say %s", strings.Join(names, ", "), value))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
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

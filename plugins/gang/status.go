package gang

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/statustext"
)

// membersMissing is the message for a gang that does not yet have all its
// members.
func membersMissing(spec gang.Spec, have int) string {
	return fmt.Sprintf("gang %s: %d/%d members exist, waiting for %d more to be created", spec.Ref, have, spec.MinMember, int(spec.MinMember)-have)
}

// ungated counts the members the scheduler may try: a member that carries
// spec.schedulingGates (a user's, or Kueue's while it holds the workload)
// cannot be placed until whoever set the gate lifts it. Counted, it let its
// siblings claim the gang's room and wait in Permit for it until their
// timeout, again after every backoff, holding the nodes all along. The
// in-tree pod-group cycle likewise holds a group while any pod is gated.
func ungated(members []*corev1.Pod) (n int, gated []*corev1.Pod) {
	for _, p := range members {
		if len(p.Spec.SchedulingGates) > 0 {
			gated = append(gated, p)
		} else {
			n++
		}
	}
	return n, gated
}

// waitingFor is the message for a gang with too few members the scheduler
// may try: some not created yet, or some gated.
func waitingFor(spec gang.Spec, members []*corev1.Pod) string {
	ready, gated := ungated(members)
	if len(gated) == 0 {
		return membersMissing(spec, len(members))
	}
	slices.SortFunc(gated, func(a, b *corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	const listed = 5
	var who []string
	for _, p := range gated[:min(len(gated), listed)] {
		var gates []string
		for _, g := range p.Spec.SchedulingGates {
			gates = append(gates, g.Name)
		}
		who = append(who, p.Name+": "+strings.Join(gates, ", "))
	}
	if len(gated) > listed {
		who = append(who, fmt.Sprintf("and %d more", len(gated)-listed))
	}
	verb := "has"
	if len(gated) > 1 {
		verb = "have"
	}
	need := int(spec.MinMember) - ready
	wait := fmt.Sprintf("%d to be ungated", min(need, len(gated)))
	if created := need - len(gated); created > 0 {
		wait += fmt.Sprintf(" and %d more to be created", created)
	}
	return fmt.Sprintf("gang %s: %d/%d members may be scheduled; %d %s scheduling gates (%s); waiting for %s",
		spec.Ref, ready, spec.MinMember, len(gated), verb, strings.Join(who, "; "), wait)
}

// memberProblem reports members that keep the gang from being placed: a
// member whose gang keys are malformed (PreEnqueue holds it, yet it counts
// as a member, so the others would claim room and wait for it in vain), or
// members that disagree on the gang's size or placement rules (the plugin
// will not guess which one is right; the rules would otherwise be those of
// whichever member the queue tried first), or members that name different
// schedulers: each profile has its own PennyGang and tries only its own
// pods, so members placed by one would wait in Permit for members it never
// places.
func (pl *Gang) memberProblem(pod *corev1.Pod, spec gang.Spec, members []*corev1.Pod) string {
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
	schedulers := map[string][]string{}
	for _, p := range members {
		// A bound member runs, whoever placed it.
		if p.Spec.NodeName == "" && p.Spec.SchedulerName != pod.Spec.SchedulerName {
			// The API server does not validate schedulerName: quoted, a
			// percent sign in it cannot garble the event.
			name := statustext.Quote(p.Spec.SchedulerName)
			schedulers[name] = append(schedulers[name], p.Name)
		}
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
	if len(schedulers) > 0 {
		return fmt.Sprintf("gang %s: members disagree on spec.schedulerName: this pod says %s but %s; give every member the same schedulerName (recreate the odd ones: a pod's schedulerName cannot be changed)",
			spec.Ref, statustext.Quote(pod.Spec.SchedulerName), whoSays(schedulers))
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

// gate records that pod waits for the rest of its gang to be created or
// ungated and tells it so, once per distinct message, which it returns. It
// returns "" if the gang completed meanwhile: the count is taken again after
// recording, so a member can never stay gated past the arrival or ungating
// that completed its gang (onPodAdd and onPodUpdate activate every member
// recorded before it; anyone recording later sees it). A count that changed
// without completing the gang is recorded and told again: a member that
// arrived gated woke the held ones before this one was recorded, and this
// one would otherwise keep saying members are missing.
func (pl *Gang) gate(pod *corev1.Pod, spec gang.Spec) string {
	members, err := gang.Members(pl.pods, spec.Ref)
	if err != nil {
		return err.Error()
	}
	for {
		msg := waitingFor(spec, members)
		told := pl.remember(pod, spec.Ref, msg)
		now, err := gang.Members(pl.pods, spec.Ref)
		if err != nil {
			now = members
		}
		if n, _ := ungated(now); int32(n) >= spec.MinMember {
			pl.mu.Lock()
			delete(pl.stateOf(spec.Ref).gated, pod.UID)
			pl.mu.Unlock()
			return ""
		}
		if waitingFor(spec, now) == msg {
			if !told {
				// Its own reason: the event recorder folds a second event of
				// one reason on one pod into the first, note and all, so a
				// member first told members were missing would never learn
				// it now waits for a gate.
				reason := "GangWaiting"
				if _, gated := ungated(now); len(gated) > 0 {
					reason = "GangGated"
				}
				pl.tell(pod, reason, msg)
			}
			return msg
		}
		members = now
	}
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
	if reason != "GangWaiting" && reason != "GangGated" {
		eventType = corev1.EventTypeWarning
	}
	pl.handle.EventRecorder().Eventf(pod, nil, eventType, reason, "Scheduling", "%s", msg)
}

// Package checkpoint asks pods to checkpoint before their node goes away.
//
// A pod declares its hook with the annotation penny.dev/checkpoint, an HTTP
// URL on the pod itself with the host left out: "http://:8080/checkpoint".
// The agent POSTs to that port and path on the pod's IP with the time by
// which the checkpoint must be written, and waits for the answer until then.
// A 2xx answer means the checkpoint is written.
//
// The host is always the pod's own address; reclaim.ParseHook says which
// annotations are refused and why.
package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/reclaim"
)

// Annotation declares a pod's checkpoint hook (reclaim.HookAnnotation).
const Annotation = reclaim.HookAnnotation

// DeadlineHeader carries the deadline as well as the body, for hooks that do
// not read bodies.
const DeadlineHeader = "Penny-Checkpoint-Deadline"

// Hook is a parsed penny.dev/checkpoint annotation.
type Hook = reclaim.Hook

// HookOf returns a pod's hook; ok is false when the pod declares none.
func HookOf(pod *corev1.Pod) (h Hook, ok bool, err error) {
	v, found := pod.Annotations[Annotation]
	if !found {
		return Hook{}, false, nil
	}
	h, err = reclaim.ParseHook(v)
	if err != nil {
		return Hook{}, true, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return h, true, nil
}

// Resolver returns host:port where a pod's port is reached.
type Resolver func(pod *corev1.Pod, port string) (string, error)

// PodIP reaches a pod at its IP, which is how the agent reaches it on a real
// node. Tests, whose simulated pods have no reachable IP, inject their own.
func PodIP(pod *corev1.Pod, port string) (string, error) {
	if pod.Status.PodIP == "" {
		return "", fmt.Errorf("pod %s/%s has no IP yet", pod.Namespace, pod.Name)
	}
	return net.JoinHostPort(pod.Status.PodIP, port), nil
}

// Request is what the hook receives, as JSON.
type Request struct {
	// Deadline is when the checkpoint must be written: the agent stops
	// waiting then and moves on to eviction.
	Deadline time.Time `json:"deadline"`
	// Reason says why, in words.
	Reason string `json:"reason"`
	// Notice is the reclaim notice's id, when one caused the request.
	Notice string `json:"notice,omitempty"`
	// Node is the node being reclaimed, which may be another member's.
	Node string `json:"node,omitempty"`
}

// Answer is what a hook may answer (all optional).
type Answer struct {
	// Step is the training step the checkpoint holds.
	Step int64 `json:"step,omitempty"`
	// Location is where it was written.
	Location string `json:"location,omitempty"`
}

// Result is the outcome of one checkpoint request.
type Result struct {
	State telemetryv1.CheckpointStatus_State
	// Message says what happened, for events and the scheduler.
	Message string
	Answer  Answer
	// Requested and Finished bound the request.
	Requested, Finished time.Time
}

// Done reports whether the checkpoint was written.
func (r Result) Done() bool { return r.State == telemetryv1.CheckpointStatus_STATE_DONE }

// Client calls checkpoint hooks.
type Client struct {
	http    *http.Client
	resolve Resolver
}

// NewClient returns a client that reaches pods through resolve (PodIP when
// nil).
func NewClient(resolve Resolver) *Client {
	if resolve == nil {
		resolve = PodIP
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{
		http: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("the checkpoint hook redirected; redirects are not followed")
		}},
		resolve: resolve,
	}
}

// maxAnswerBytes bounds what a hook's answer may hold.
const maxAnswerBytes = 64 << 10

// maxAnswerWait bounds how long the body of an answer is read: the status
// code has said whether the checkpoint is written, and the body is only news
// for the event.
const maxAnswerWait = time.Second

// Checkpoint asks pod to checkpoint by req.Deadline and waits for the answer
// until then. A pod without a hook gets STATE_NO_HOOK.
func (c *Client) Checkpoint(ctx context.Context, pod *corev1.Pod, req Request) Result {
	res := Result{Requested: time.Now()}
	finish := func(state telemetryv1.CheckpointStatus_State, format string, args ...any) Result {
		res.State, res.Message, res.Finished = state, fmt.Sprintf(format, args...), time.Now()
		return res
	}
	hook, ok, err := HookOf(pod)
	if !ok {
		return finish(telemetryv1.CheckpointStatus_STATE_NO_HOOK, "pod declares no %s hook", Annotation)
	}
	if err != nil {
		return finish(telemetryv1.CheckpointStatus_STATE_FAILED, "%v", err)
	}
	if !time.Now().Before(req.Deadline) {
		return finish(telemetryv1.CheckpointStatus_STATE_FAILED, "no time left: the checkpoint deadline %s has passed", req.Deadline.Format(time.RFC3339))
	}
	addr, err := c.resolve(pod, hook.Port)
	if err != nil {
		return finish(telemetryv1.CheckpointStatus_STATE_FAILED, "cannot reach the checkpoint hook: %v", err)
	}
	body, _ := json.Marshal(req)
	ctx, cancel := context.WithDeadline(ctx, req.Deadline)
	defer cancel()
	u := "http://" + addr + hook.Path
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(string(body)))
	if err != nil {
		return finish(telemetryv1.CheckpointStatus_STATE_FAILED, "checkpoint hook %s: %v", u, err)
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set(DeadlineHeader, req.Deadline.UTC().Format(time.RFC3339Nano))
	resp, err := c.http.Do(hr)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return finish(telemetryv1.CheckpointStatus_STATE_FAILED, "the checkpoint hook did not answer within %v, by the deadline", req.Deadline.Sub(res.Requested).Round(time.Millisecond))
		}
		return finish(telemetryv1.CheckpointStatus_STATE_FAILED, "checkpoint hook %s: %v", u, err)
	}
	defer resp.Body.Close()
	// The status code is the answer. A body that breaks off or does not end
	// must not hold the eviction until the deadline, whatever the code.
	stop := time.AfterFunc(maxAnswerWait, cancel)
	defer stop.Stop()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// What it says of why, as far as it can be read.
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
		msg := strings.TrimSpace(string(data))
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		return finish(telemetryv1.CheckpointStatus_STATE_FAILED, "the checkpoint hook answered %d: %q", resp.StatusCode, msg)
	}
	// A 2xx says the checkpoint is written (the hook's contract). A body
	// that breaks off, or does not end, does not make the checkpoint failed,
	// which would have the pod evicted as one whose work is lost.
	written := time.Now()
	data, readErr := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if len(data) > 0 {
		// A hook that answers 2xx with something else still wrote its
		// checkpoint.
		_ = json.Unmarshal(data, &res.Answer)
	}
	msg := fmt.Sprintf("checkpoint written in %v", written.Sub(res.Requested).Round(time.Millisecond))
	if res.Answer.Step > 0 {
		msg += fmt.Sprintf(" at step %d", res.Answer.Step)
	}
	if res.Answer.Location != "" {
		// The location is the tenant's text and goes into the status sent to
		// the scheduler: control characters there get the status refused, and
		// a cut inside a character fails the whole stream's encoding.
		loc := telemetryv1.StatusText(res.Answer.Location)
		if len(loc) > 200 {
			cut := 200
			for cut > 0 && !utf8.RuneStart(loc[cut]) {
				cut--
			}
			loc = loc[:cut] + "..."
		}
		msg += " to " + loc
	}
	if readErr != nil {
		msg += fmt.Sprintf(" (the rest of the hook's answer could not be read: %v)", readErr)
	}
	return finish(telemetryv1.CheckpointStatus_STATE_DONE, "%s", msg)
}

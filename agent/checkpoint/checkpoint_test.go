package checkpoint_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/agent/checkpoint"
	"github.com/pennysched/penny/agent/checkpoint/trainer"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

func pod(annotation string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "trainer-0"}}
	if annotation != "" {
		p.Annotations = map[string]string{checkpoint.Annotation: annotation}
	}
	return p
}

// to reaches every pod at addr, as tests' simulated pods have no IP.
func to(addr string) checkpoint.Resolver {
	return func(*corev1.Pod, string) (string, error) { return addr, nil }
}

func TestCheckpointWithATrainer(t *testing.T) {
	store := trainer.NewStore()
	tr, err := trainer.Start("job/0", store, trainer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // a few steps
	c := checkpoint.NewClient(to(tr.Addr()))
	deadline := time.Now().Add(5 * time.Second)
	res := c.Checkpoint(context.Background(), pod("http://:8080/checkpoint"), checkpoint.Request{Deadline: deadline, Reason: "test", Notice: "n1", Node: "a"})
	if !res.Done() {
		t.Fatalf("result %+v, want DONE", res)
	}
	saved, ok := store.Load("job/0")
	if !ok || saved.Step != res.Answer.Step || saved.Step == 0 {
		t.Fatalf("store has %+v (ok=%v), answer %+v: the checkpoint must hold the step reached", saved, ok, res.Answer)
	}
	got := tr.Received()
	if len(got) != 1 || !got[0].Request.Deadline.Equal(deadline) || got[0].Request.Notice != "n1" {
		t.Fatalf("the trainer received %+v, want the deadline and the notice", got)
	}
	if !strings.Contains(res.Message, "at step") {
		t.Errorf("message %q does not say the step", res.Message)
	}
	tr.Stop()

	// A new trainer with the same key resumes from the checkpoint.
	tr2, err := trainer.Start("job/0", store, trainer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr2.Stop()
	if tr2.ResumedFrom() != saved.Step {
		t.Fatalf("resumed from %d, want the checkpoint's step %d", tr2.ResumedFrom(), saved.Step)
	}
}

func TestCheckpointStopsWaitingAtTheDeadline(t *testing.T) {
	store := trainer.NewStore()
	tr, err := trainer.Start("slow", store, trainer.Options{CheckpointTakes: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Stop()
	c := checkpoint.NewClient(to(tr.Addr()))
	start := time.Now()
	res := c.Checkpoint(context.Background(), pod("http://:1/checkpoint"), checkpoint.Request{Deadline: start.Add(300 * time.Millisecond)})
	// The trainer needs 250ms of a 300ms window: it finishes.
	if !res.Done() {
		t.Fatalf("%+v, want DONE", res)
	}
	start = time.Now()
	hanging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // the server notices the client leave only once the body is read
		<-r.Context().Done()
	}))
	defer hanging.Close()
	c = checkpoint.NewClient(to(strings.TrimPrefix(hanging.URL, "http://")))
	res = c.Checkpoint(context.Background(), pod("http://:1/checkpoint"), checkpoint.Request{Deadline: start.Add(200 * time.Millisecond)})
	took := time.Since(start)
	if res.State != telemetryv1.CheckpointStatus_STATE_FAILED || !strings.Contains(res.Message, "did not answer") {
		t.Fatalf("%+v, want FAILED for no answer by the deadline", res)
	}
	if took < 190*time.Millisecond || took > time.Second {
		t.Errorf("gave up after %v, want at the deadline (200ms)", took)
	}
}

func TestCheckpointFailures(t *testing.T) {
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "disk full", http.StatusInternalServerError)
	}))
	defer refusing.Close()
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
	}))
	defer redirecting.Close()
	addr := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }
	soon := time.Now().Add(5 * time.Second)
	cases := []struct {
		name    string
		pod     *corev1.Pod
		resolve checkpoint.Resolver
		req     checkpoint.Request
		state   telemetryv1.CheckpointStatus_State
		want    string
	}{
		{"no hook", pod(""), to("x"), checkpoint.Request{Deadline: soon}, telemetryv1.CheckpointStatus_STATE_NO_HOOK, "declares no"},
		{"bad hook", pod("http://evil.example/x"), to("x"), checkpoint.Request{Deadline: soon}, telemetryv1.CheckpointStatus_STATE_FAILED, "names a host"},
		{"no IP", pod("http://:8080/c"), nil, checkpoint.Request{Deadline: soon}, telemetryv1.CheckpointStatus_STATE_FAILED, "has no IP"},
		{"deadline passed", pod("http://:8080/c"), to("x"), checkpoint.Request{Deadline: time.Now().Add(-time.Second)}, telemetryv1.CheckpointStatus_STATE_FAILED, "has passed"},
		{"hook fails", pod("http://:8080/c"), to(addr(refusing)), checkpoint.Request{Deadline: soon}, telemetryv1.CheckpointStatus_STATE_FAILED, "answered 500: \"disk full\""},
		{"redirect", pod("http://:8080/c"), to(addr(redirecting)), checkpoint.Request{Deadline: soon}, telemetryv1.CheckpointStatus_STATE_FAILED, "redirects are not followed"},
		{"nothing listening", pod("http://:8080/c"), to("127.0.0.1:1"), checkpoint.Request{Deadline: soon}, telemetryv1.CheckpointStatus_STATE_FAILED, "connection refused"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := checkpoint.NewClient(c.resolve).Checkpoint(context.Background(), c.pod, c.req)
			if res.State != c.state || !strings.Contains(res.Message, c.want) {
				t.Errorf("%+v, want %v saying %q", res, c.state, c.want)
			}
		})
	}
}

// What a hook answers is the tenant's text and goes into the status the agent
// sends the scheduler: it must validate there and encode on the wire whatever
// the hook put in it.
func TestCheckpointAnswerBecomesAValidStatus(t *testing.T) {
	// 190 ASCII bytes, then two-byte characters: a cut at byte 200 lands
	// inside one.
	location := "s3://bucket/run\n\x1b[31mred\x07/" + strings.Repeat("a", 190-len("s3://bucket/run\n\x1b[31mred\x07/")+1) + strings.Repeat("é", 50)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"step": 7, "location": location})
	}))
	defer hook.Close()
	c := checkpoint.NewClient(to(strings.TrimPrefix(hook.URL, "http://")))
	res := c.Checkpoint(context.Background(), pod("http://:8080/checkpoint"), checkpoint.Request{Deadline: time.Now().Add(5 * time.Second)})
	if !res.Done() || !strings.Contains(res.Message, "s3://bucket/run") {
		t.Fatalf("result %+v, want DONE naming the location", res)
	}
	st := &telemetryv1.CheckpointStatus{CommandId: "notice-1", Pod: &telemetryv1.PodRef{Namespace: "ml", Name: "trainer-0"},
		State: res.State, Message: res.Message, UpdatedAt: timestamppb.Now()}
	if err := telemetryv1.ValidateCheckpointStatus(st); err != nil {
		t.Errorf("the status the scheduler gets is refused: %v", err)
	}
	if !utf8.ValidString(res.Message) {
		t.Errorf("message %q is not UTF-8", res.Message)
	}
	if _, err := proto.Marshal(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_CheckpointStatus{CheckpointStatus: st}}); err != nil {
		t.Errorf("the status does not encode: %v", err)
	}
}

// askHook asks a hook served by handler for a checkpoint due in, and says
// how long the answer took.
func askHook(handler http.Handler, in time.Duration) (checkpoint.Result, time.Duration) {
	hook := httptest.NewServer(handler)
	defer hook.Close()
	start := time.Now()
	res := checkpoint.NewClient(to(strings.TrimPrefix(hook.URL, "http://"))).Checkpoint(context.Background(),
		pod("http://:8080/checkpoint"), checkpoint.Request{Deadline: start.Add(in)})
	return res, time.Since(start)
}

// A 2xx says the checkpoint is written, as docs/reclaim.md tells hooks to
// answer: a body that breaks off or does not end is the optional answer
// lost, not the checkpoint, which counted FAILED would have the pod evicted
// as one whose work is lost. Nor is the body waited for until the deadline.
func TestA2xxAnswerIsDoneWhateverItsBody(t *testing.T) {
	for _, c := range []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"cut short", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusOK)
			w.Write([]byte(`{"step": 12`))
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // the connection closes mid-body
		}},
		{"never ends", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			w.Write([]byte(`{"step": 12`))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}},
		{"not JSON", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("saved!"))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, took := askHook(c.handler, 10*time.Second)
			if !res.Done() || !strings.Contains(res.Message, "checkpoint written") {
				t.Errorf("%+v, want DONE: the hook answered 2xx", res)
			}
			if took > 5*time.Second {
				t.Errorf("took %v, want the body read for a moment, not until the deadline", took)
			}
		})
	}
}

// A hook that refuses and then dribbles, or never ends, its error body is
// failed at once: its status code said so, and reading the body until the
// deadline held the pod's eviction that long.
func TestARefusalIsFailedWithoutWaitingForItsBody(t *testing.T) {
	for _, c := range []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"dribbles", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			for {
				if _, err := w.Write([]byte("disk ")); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}},
		{"never ends", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("disk full"))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, took := askHook(c.handler, 8*time.Second)
			if res.State != telemetryv1.CheckpointStatus_STATE_FAILED || !strings.Contains(res.Message, "answered 5") || !strings.Contains(res.Message, "disk") {
				t.Errorf("%+v, want FAILED with the code and what of the body came", res)
			}
			if took > 4*time.Second {
				t.Errorf("took %v, want the body read for about a second, not until the deadline (8s)", took)
			}
		})
	}
}

// A hook annotation with a part the agent would drop is refused, naming the
// annotation and how to write it: taken, it called another port or path
// than the one meant.
func TestHookOfRefusesWhatItCouldNotCall(t *testing.T) {
	for _, v := range []string{"http:8080/checkpoint", "http://:8080/checkpoint#now"} {
		_, ok, err := checkpoint.HookOf(pod(v))
		if !ok || err == nil || !strings.Contains(err.Error(), checkpoint.Annotation) || !strings.Contains(err.Error(), "http://:8080/checkpoint") {
			t.Errorf("HookOf(%q): ok %v, error %v; want one naming %s and how to write it", v, ok, err, checkpoint.Annotation)
		}
	}
}

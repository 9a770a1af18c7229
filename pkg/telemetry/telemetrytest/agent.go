package telemetrytest

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Agent is a raw agent stream, for tests that need to send exactly what
// they choose (a report about another node, a broken report).
type Agent struct {
	env    *Env
	stream grpc.BidiStreamingClient[telemetryv1.AgentMessage, telemetryv1.SchedulerMessage]
	msgs   chan received
	cancel context.CancelFunc
}

type received struct {
	msg *telemetryv1.SchedulerMessage
	err error
}

// Dial opens a stream to env with token ("" sends none).
func Dial(t testing.TB, env *Env, token string) *Agent {
	t.Helper()
	conn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(env.ClientTLS)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	st, err := telemetryv1.NewTelemetryClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{env: env, stream: st, msgs: make(chan received, 16), cancel: cancel}
	go func() {
		for {
			msg, err := st.Recv()
			a.msgs <- received{msg, err}
			if err != nil {
				return
			}
		}
	}()
	return a
}

// Report sends r and returns the scheduler's verdict: an error when the
// stream ended, its ReportAck when it refused r, or an accepted ack once
// the store holds r (accepted reports are not answered on the wire).
func (a *Agent) Report(t testing.TB, r *telemetryv1.NodeReport) (*telemetryv1.ReportAck, error) {
	t.Helper()
	if err := a.stream.Send(&telemetryv1.AgentMessage{Message: &telemetryv1.AgentMessage_Report{Report: r}}); err != nil {
		for m := range a.msgs {
			if m.err != nil {
				return nil, m.err
			}
		}
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-a.msgs:
			if m.err != nil {
				return nil, m.err
			}
			if ack := m.msg.GetAck(); ack != nil && ack.GetSequence() == r.GetSequence() {
				return ack, nil
			}
			t.Fatalf("unexpected message while waiting for a verdict: %v", m.msg)
		case <-time.After(5 * time.Millisecond):
			if st, _ := a.env.Store.Lookup(r.GetNodeName()); st != nil && st.AgentID == r.GetAgentId() && st.Sequence >= r.GetSequence() {
				return &telemetryv1.ReportAck{Sequence: r.GetSequence(), Accepted: true}, nil
			}
		case <-deadline:
			t.Fatalf("no verdict on report %d of %s within 10s", r.GetSequence(), r.GetNodeName())
		}
	}
}

// Next returns the next message from the scheduler, or the error that ended
// the stream.
func (a *Agent) Next(t testing.TB) (*telemetryv1.SchedulerMessage, error) {
	t.Helper()
	select {
	case m := <-a.msgs:
		return m.msg, m.err
	case <-time.After(10 * time.Second):
		t.Fatal("no message from the scheduler within 10s")
		return nil, nil
	}
}

// Send sends a message as is.
func (a *Agent) Send(msg *telemetryv1.AgentMessage) error { return a.stream.Send(msg) }

// Close ends the stream, as an agent that goes away does.
func (a *Agent) Close() { a.cancel() }

package queue

import (
	"context"
	"testing"
	"time"

	"courier/wire"
)

func TestAttention(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	enqueue := func(ct string) string {
		m, _, err := q.Enqueue(ctx, testRecipient, []byte(ct))
		if err != nil {
			t.Fatal(err)
		}
		return m.ID
	}
	failed, queued, sending, done := enqueue("failed"), enqueue("queued"), enqueue("sending"), enqueue("done")
	if _, err := q.RouteOffline(ctx, failed, "relay down"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Fail(ctx, failed, "OFFLINE endpoint: 500 five times"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.MarkSending(ctx, sending); err != nil {
		t.Fatal(err)
	}
	if _, err := q.MarkSending(ctx, done); err != nil {
		t.Fatal(err)
	}
	if _, err := q.MarkDelivered(ctx, done); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	in := map[string]string{} // name → ID
	for _, m := range []struct {
		name string
		age  time.Duration
	}{{"old", 2 * time.Minute}, {"new", 0}, {"refused", 3 * time.Minute}, {"delivered", 5 * time.Minute}} {
		ct := []byte("ct " + m.name)
		in[m.name] = wire.MessageID(ct)
		if _, err := q.AddInbound(ctx, in[m.name], ct, now.Add(-m.age)); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.MarkInboundRefused(ctx, in["refused"], "422: cannot open it"); err != nil {
		t.Fatal(err)
	}
	if err := q.MarkInboundDelivered(ctx, in["delivered"]); err != nil {
		t.Fatal(err)
	}

	ids := func(ms []Outbound) []string {
		var out []string
		for _, m := range ms {
			if m.Ciphertext != nil && len(m.Ciphertext) > 0 {
				t.Errorf("%s listed with its ciphertext", m.ID)
			}
			out = append(out, m.ID)
		}
		return out
	}
	inIDs := func(ms []Inbound) []string {
		var out []string
		for _, m := range ms {
			if len(m.Ciphertext) > 0 {
				t.Errorf("%s listed with its ciphertext", m.ID)
			}
			out = append(out, m.ID)
		}
		return out
	}
	eq := func(what string, got, want []string) {
		t.Helper()
		if len(got) != len(want) {
			t.Errorf("%s = %v, want %v", what, got, want)
			return
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s = %v, want %v", what, got, want)
				return
			}
		}
	}

	// Cut-off a minute ago: the outbound messages are all younger.
	a, err := q.Attention(ctx, now.Add(-time.Minute), 10)
	if err != nil {
		t.Fatal(err)
	}
	eq("failed", ids(a.Failed), []string{failed})
	eq("waiting", ids(a.Waiting), nil)
	eq("refused", inIDs(a.Refused), []string{in["refused"]})
	eq("waiting inbound", inIDs(a.WaitingInbound), []string{in["old"]})
	if a.Failed[0].LastError != "OFFLINE endpoint: 500 five times" || a.Refused[0].LastError != "422: cannot open it" {
		t.Errorf("reasons: %q, %q", a.Failed[0].LastError, a.Refused[0].LastError)
	}

	// Cut-off in the future: everything not final is waiting, oldest first.
	a, err = q.Attention(ctx, now.Add(time.Hour), 10)
	if err != nil {
		t.Fatal(err)
	}
	eq("waiting", ids(a.Waiting), []string{queued, sending})
	eq("waiting inbound", inIDs(a.WaitingInbound), []string{in["old"], in["new"]})

	// The limit holds for each list.
	if a, err = q.Attention(ctx, now.Add(time.Hour), 1); err != nil || len(a.Waiting) != 1 || len(a.WaitingInbound) != 1 {
		t.Errorf("limit 1: %+v, %v", a, err)
	}
	if _, err := q.Attention(ctx, now, 0); err == nil {
		t.Error("limit 0: no error")
	}
}

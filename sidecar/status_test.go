package sidecar_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// A message still queued after AttentionWait is listed as needing
// attention, with how long it has waited and why; before that it is not.
func TestAttentionWaiting(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	n := st.NewNode(t, "A")
	cfg := st.Config(n, r.URL(), t.TempDir())
	cfg.Delivery.RelayGrace = time.Hour // a relay that is away: messages wait for it
	s := st.StartSidecar(t, n, cfg, st.Options())
	s.WaitRelay(sidecar.RelayConnected)
	r.Stop()
	st.Eventually(t, "the relay to be seen gone", func() bool { return s.E.RelayStatus().State != sidecar.RelayConnected })
	id := s.Submit(st.NewNode(t, "B"), []byte("waits for the relay"))
	if m := s.Message(id); m.State != queue.Queued {
		t.Fatalf("message is %s, want queued", m.State)
	}

	ctx := context.Background()
	now, err := s.E.AttentionAt(ctx, time.Now())
	if err != nil || len(now) != 0 {
		t.Errorf("attention at once = %+v, %v; want nothing", now, err)
	}
	later, err := s.E.AttentionAt(ctx, time.Now().Add(sidecar.AttentionWait+time.Minute))
	if err != nil || len(later) != 1 {
		t.Fatalf("attention two minutes later = %+v, %v; want the queued message", later, err)
	}
	if a := later[0]; a.ID != id || a.Direction != "outbound" || a.State != "queued" || !strings.HasPrefix(a.Reason, "waiting for 2m") {
		t.Errorf("attention = %+v", a)
	}
}

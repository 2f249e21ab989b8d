package relay

import (
	"strings"
	"testing"
	"time"

	"courier/wire"
)

// TestWaitersAckBeforeWait: with several instances the recipient's ack can
// reach the publisher's instance (over the Bus) before that instance has
// heard its own put's outcome and registered the wait. The ack is kept for
// a while, and a wait registered meanwhile is answered delivered at once,
// exactly once; an ack older than that is forgotten.
func TestWaitersAckBeforeWait(t *testing.T) {
	srv := &Server{metrics: newMetrics()}
	c := &conn{srv: srv, q: newSendQueue(16, 1<<20)}
	results := func() []string {
		frames, _ := c.q.take(nil)
		var out []string
		for _, f := range frames {
			out = append(out, string(f.b))
		}
		return out
	}
	ws := newWaiters()
	t0 := time.Now()
	id := strings.Repeat("a", 64)
	ws.resolveRemote(id, t0, 3*time.Second)
	w := ws.add(c, id, "r1", time.Hour, false, nil)
	ws.committed(w, nil)
	got := results()
	if len(got) != 1 || !strings.Contains(got[0], `"`+wire.StatusDelivered+`"`) || !strings.Contains(got[0], "r1") {
		t.Fatalf("wait registered after the ack: answers %v, want one delivered", got)
	}
	if ws.remove(w) {
		t.Error("the answered wait was still registered")
	}

	// An ack older than keep is forgotten: the wait then waits.
	old := strings.Repeat("b", 64)
	ws.resolveRemote(old, t0, 3*time.Second)
	ws.resolveRemote(strings.Repeat("c", 64), t0.Add(4*time.Second), 3*time.Second)
	w2 := ws.add(c, old, "r2", time.Hour, false, nil)
	if got := results(); len(got) != 0 {
		t.Fatalf("wait after a forgotten ack answered %v at once", got)
	}
	if !ws.remove(w2) {
		t.Error("the wait was not registered")
	}
	ws.close()
}

package sidecar_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
	"courier/upstream"
	"courier/wire"
)

// Only 400 and 422 from the node's inbound endpoint are its final refusal
// of a message: kept as refused (status, metrics, RefusedInbox), never
// offered again. Any other failure is the endpoint failing: the message is
// offered again until the node takes it.
func TestInboundNodeAnswers(t *testing.T) {
	for _, tc := range []struct {
		status  int
		refused bool
	}{
		{http.StatusBadRequest, true},
		{http.StatusUnprocessableEntity, true},
		{http.StatusUnauthorized, false},
		{http.StatusForbidden, false},
		{http.StatusNotFound, false},
		{http.StatusMethodNotAllowed, false},
		{http.StatusRequestTimeout, false},
		{http.StatusTooManyRequests, false},
		{http.StatusInternalServerError, false},
		{http.StatusServiceUnavailable, false},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			p := startPair(t, nil, nil)
			p.b.Node.Inbound.FailNext(1, tc.status)
			var ids []string
			for i := range 3 {
				ids = append(ids, p.a.Submit(p.b.Node, st.Ciphertext("answer", i, 100)))
			}
			if !tc.refused {
				// Retried until the node takes it: all three arrive.
				st.Eventually(t, "B's node to take all three", func() bool { return len(p.b.Node.Inbound.AcceptedIDs()) == 3 })
				st.Eventually(t, "nothing pending at B", func() bool {
					stat, err := p.b.E.Status(context.Background(), 0)
					return err == nil && stat.Inbox.Pending == 0 && stat.Inbox.Delivered == 3
				})
				stat, _ := p.b.E.Status(context.Background(), 0)
				if stat.Inbox.Refused != 0 || counterValue(t, p.b.E, "courier_inbound_refused_total") != 0 {
					t.Errorf("a %d counted as a refusal: inbox %+v", tc.status, stat.Inbox)
				}
				if reqs := p.b.Node.Inbound.Requests(); len(reqs) != 4 || reqs[0].ID != ids[0] || reqs[0].Status != tc.status {
					t.Errorf("node saw %d requests, want 4: the failed one once more", len(reqs))
				}
				return
			}
			st.Eventually(t, "B's node to take the other two", func() bool { return len(p.b.Node.Inbound.AcceptedIDs()) == 2 })
			st.Eventually(t, "the refused one recorded", func() bool {
				stat, err := p.b.E.Status(context.Background(), 0)
				return err == nil && stat.Inbox.Pending == 0 && stat.Inbox.Refused == 1
			})
			refused, err := p.b.E.RefusedInbox(context.Background(), 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(refused) != 1 || refused[0].ID != ids[0] || refused[0].State != queue.InboxRefused ||
				!strings.Contains(refused[0].LastError, fmt.Sprint(tc.status)) || refused[0].DeliveredAt.IsZero() {
				t.Errorf("RefusedInbox = %+v, want %.8s refused with the node's %d", refused, ids[0], tc.status)
			}
			if att, err := p.b.E.Attention(context.Background(), time.Hour, 10); err != nil || len(att.Refused) != 1 || att.Refused[0].ID != ids[0] {
				t.Errorf("Attention = %+v, %v; want the refused message", att, err)
			}
			if n := counterValue(t, p.b.E, "courier_inbound_refused_total"); n != 1 {
				t.Errorf("courier_inbound_refused_total = %v, want 1", n)
			}
			if n := gaugeValue(t, p.b.E, "courier_inbox_messages", "refused"); n != 1 {
				t.Errorf(`courier_inbox_messages{state="refused"} = %v, want 1`, n)
			}
			if n := len(p.b.Node.Inbound.Requests()); n != 3 {
				t.Errorf("node saw %d requests, want 3: a refusal is not retried", n)
			}
			if err := p.b.E.Ready(context.Background()); err != nil {
				t.Errorf("a refusal is not an endpoint failure, yet Ready = %v", err)
			}
			// A polling node may take it after all.
			if err := p.b.E.AckInbox(context.Background(), ids[0]); err != nil {
				t.Fatal(err)
			}
			if stat, _ := p.b.E.Status(context.Background(), 0); stat.Inbox.Refused != 0 || stat.Inbox.Delivered != 3 {
				t.Errorf("after the ack: inbox %+v", stat.Inbox)
			}
		})
	}
}

// An inbound endpoint that answers 404, 401 or 403 to everything (a wrong
// inbound_url, missing credentials) loses nothing: /readyz-level Ready
// reports it, the messages wait, and arrive once it is fixed.
func TestInboundEndpointMisconfigured(t *testing.T) {
	for _, status := range []int{http.StatusNotFound, http.StatusUnauthorized, http.StatusForbidden} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			p := startPair(t, nil, nil)
			p.b.Node.Inbound.FailAlways(status)
			var ids []string
			for i := range 3 {
				id := p.a.Submit(p.b.Node, st.Ciphertext("misconfigured", i, 100))
				ids = append(ids, id)
				p.a.WaitMessage(id, queue.Delivered) // B's sidecar has it
			}
			st.Eventually(t, "B not ready, naming the inbound endpoint", func() bool {
				err := p.b.E.Ready(context.Background())
				return err != nil && strings.Contains(err.Error(), "inbound") && strings.Contains(err.Error(), fmt.Sprint(status))
			})
			if h := p.b.E.NodeHealth()["inbound"]; h.ConsecutiveFailures < 3 {
				t.Errorf("inbound health = %+v", h)
			}
			stat, err := p.b.E.Status(context.Background(), 0)
			if err != nil {
				t.Fatal(err)
			}
			if stat.Inbox.Pending != 3 || stat.Inbox.Refused != 0 {
				t.Errorf("inbox = %+v, want 3 pending, none refused", stat.Inbox)
			}
			att, err := p.b.E.Attention(context.Background(), 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(att.WaitingInbound) != 3 || att.WaitingInbound[0].ID != ids[0] || att.WaitingInbound[0].Ciphertext != nil || !strings.Contains(att.WaitingInbound[0].LastError, fmt.Sprint(status)) {
				t.Errorf("Attention stuck = %+v, want the 3 with the node's %d", att.WaitingInbound, status)
			}
			p.b.Node.Inbound.Recover()
			st.Eventually(t, "B's node to get all three", func() bool { return len(p.b.Node.Inbound.AcceptedIDs()) == 3 })
			got := p.b.Node.Inbound.Accepted()
			for i, r := range got {
				if r.ID != ids[i] {
					t.Errorf("inbound #%d is %.8s, want %.8s: the order is kept through an outage", i, r.ID, ids[i])
				}
			}
			st.Eventually(t, "B ready again", func() bool { return p.b.E.Ready(context.Background()) == nil })
			// Once the inbox has caught up, new messages go to the node
			// directly again, before their commit.
			before := counterValue(t, p.b.E, "courier_inbound_pushed_direct_total")
			st.Eventually(t, "a new message pushed directly", func() bool {
				waitInbound(t, p.b.Node, p.a.Submit(p.b.Node, st.Ciphertext("after recovery", int(time.Now().UnixNano()), 100)))
				return counterValue(t, p.b.E, "courier_inbound_pushed_direct_total") > before
			})
		})
	}
}

// An endpoint that comes back between two pushes of a pass keeps the order:
// a 401 (403, 404, 405) is the endpoint's answer, not the message's, so the
// pusher does not try the next message to tell the two apart (which, taken
// by the endpoint just back, would go ahead of the failed one).
func TestInboundEndpointBackMidPass(t *testing.T) {
	p := startPair(t, nil, nil)
	p.b.Node.Inbound.FailAlways(http.StatusUnauthorized)
	var ids []string
	for i := range 3 {
		id := p.a.Submit(p.b.Node, st.Ciphertext("back mid-pass", i, 100))
		ids = append(ids, id)
		p.a.WaitMessage(id, queue.Delivered) // B's sidecar has it
	}
	st.Eventually(t, "B not ready", func() bool { return p.b.E.Ready(context.Background()) != nil })
	// Hold the next push (the pusher's retry of the first message), and
	// make the endpoint answer that one 401 and the rest 200: it comes
	// back right after.
	arrived, release := p.b.Node.Inbound.Hold()
	t.Cleanup(release)
	select {
	case <-arrived:
	case <-time.After(st.WaitTimeout):
		t.Fatal("the pusher did not try again")
	}
	p.b.Node.Inbound.Recover()
	p.b.Node.Inbound.FailNext(1, http.StatusUnauthorized)
	release()
	st.Eventually(t, "B's node to get all three", func() bool { return len(p.b.Node.Inbound.AcceptedIDs()) == 3 })
	for i, r := range p.b.Node.Inbound.Accepted() {
		if r.ID != ids[i] {
			t.Errorf("inbound #%d is %.8s, want %.8s: the order is kept when the endpoint comes back", i, r.ID, ids[i])
		}
	}
}

// A batch from the relay may hold one message twice: the relay replays it
// to a recipient that is back, and pushes it again when its sender
// republishes it (a publish whose result was lost); both copies can wait
// in the same batch. The node gets it once.
func TestInboundBatchWithRepeats(t *testing.T) {
	p := startPair(t, nil, nil)
	x, y := st.Ciphertext("twice in a batch", 1, 100), st.Ciphertext("twice in a batch", 2, 100)
	batch := []upstream.Inbound{
		{ID: wire.MessageID(x), Ciphertext: x},
		{ID: wire.MessageID(y), Ciphertext: y},
		{ID: wire.MessageID(x), Ciphertext: x},
	}
	if err := p.b.E.TakeInbound(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	st.Eventually(t, "B's node to get both", func() bool { return len(p.b.Node.Inbound.AcceptedIDs()) == 2 })
	st.Eventually(t, "both delivered at B", func() bool {
		stat, err := p.b.E.Status(context.Background(), 0)
		return err == nil && stat.Inbox.Delivered == 2 && stat.Inbox.Pending == 0
	})
	if reqs := p.b.Node.Inbound.Requests(); len(reqs) != 2 || reqs[0].ID != batch[0].ID || reqs[1].ID != batch[1].ID {
		var got []string
		for _, r := range reqs {
			got = append(got, r.ID[:8])
		}
		t.Errorf("B's node got %v, want %.8s and %.8s once each", got, batch[0].ID, batch[1].ID)
	}
}

// A message the node keeps failing (500 for that ID, forever) does not hold
// up the others: they arrive, and it stays pending, retried with backoff.
func TestInboundPoisonMessage(t *testing.T) {
	p := startPair(t, nil, nil)
	poison := st.Ciphertext("poison", 0, 100)
	poisonID := p.a.Submit(p.b.Node, poison)
	p.b.Node.Inbound.FailID(poisonID, http.StatusInternalServerError)
	p.a.WaitMessage(poisonID, queue.Delivered)
	var ids []string
	for i := 1; i <= 20; i++ {
		ids = append(ids, p.a.Submit(p.b.Node, st.Ciphertext("after poison", i, 100)))
	}
	st.Eventually(t, "B's node to take the 20 behind the poison", func() bool {
		got := p.b.Node.Inbound.AcceptedIDs()
		for _, id := range ids {
			if got[id] != 1 {
				return false
			}
		}
		return true
	})
	// Later ones too: the pusher is not stuck behind it.
	late := p.a.Submit(p.b.Node, st.Ciphertext("late", 99, 100))
	waitInbound(t, p.b.Node, late)
	// The node may have a message a moment before it is marked delivered.
	var stat sidecar.Status
	st.Eventually(t, "B's inbox to hold the poison alone, pending", func() bool {
		var err error
		stat, err = p.b.E.Status(context.Background(), 0)
		return err == nil && stat.Inbox.Pending == 1 && stat.Inbox.Delivered == 21
	})
	if stat.Inbox.Refused != 0 {
		t.Errorf("inbox = %+v, want the poison pending, not refused", stat.Inbox)
	}
	tries := 0
	for _, r := range p.b.Node.Inbound.Requests() {
		if r.ID == poisonID {
			tries++
		}
	}
	if tries < 2 {
		t.Errorf("the poison message was tried %d times, want it retried", tries)
	}
	// The node recovers: the poison message arrives too.
	p.b.Node.Inbound.Recover()
	waitInbound(t, p.b.Node, poisonID)
}

// gaugeValue reads the gauge name whose one label has value label.
func gaugeValue(t *testing.T, e *sidecar.Engine, name, label string) float64 {
	t.Helper()
	v, _, ok := labelled(t, e, name, label)
	if !ok {
		t.Fatalf("no metric %s{%s}", name, label)
	}
	return v
}

// labelledCounter reads the counter name whose one label has value label
// (0 if it was never counted).
func labelledCounter(t *testing.T, e *sidecar.Engine, name, label string) float64 {
	t.Helper()
	_, v, _ := labelled(t, e, name, label)
	return v
}

// labelled reads the sample of metric name whose one label has value
// label, as a gauge and as a counter (whichever it is); ok is false when
// there is none.
func labelled(t *testing.T, e *sidecar.Engine, name, label string) (gauge, counter float64, ok bool) {
	t.Helper()
	mfs, err := e.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label {
				return m.GetGauge().GetValue(), m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, 0, false
}

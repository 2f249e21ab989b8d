package relay

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"courier/wire"
)

// TestSubscribeKeepsNewerGeneration: two connections of one peer on one
// instance, their generations taken from the Bus in one order (c1 then
// c2) and their subscribes reaching the hub in the other. The newer one
// (c2) stays and the older one is the one replaced, as the Bus's order
// says; before, the later subscribe won, so the newer connection was
// closed with 4409 and the older one kept, until its presence refresh
// found the newer generation and closed it too.
func TestSubscribeKeepsNewerGeneration(t *testing.T) {
	h := newHub()
	peer := "QmPeer"
	c1 := &conn{sub: Subscriber{Peer: true, ID: peer}, gen: 1}
	c2 := &conn{sub: Subscriber{Peer: true, ID: peer}, gen: 2}
	var firsts int
	first := func() { firsts++ }
	if old := h.subscribe(c2, first); old != nil {
		t.Fatalf("first subscribe replaced %p", old)
	}
	if old := h.subscribe(c1, first); old != c1 {
		t.Fatalf("subscribe of the older generation after the newer: replaced %p, want the older connection itself (%p); newer is %p", old, c1, c2)
	}
	if h.byPeer[peer] != c2 {
		t.Fatalf("the hub holds generation %d, want 2", h.byPeer[peer].gen)
	}
	if firsts != 2 {
		t.Errorf("first called %d times, want 2 (the older connection's subscribe answer is queued before its 4409)", firsts)
	}
	// The other order, and equal generations (no Bus: both 0): the later
	// subscribe replaces the earlier.
	c3 := &conn{sub: Subscriber{Peer: true, ID: peer}, gen: 3}
	if old := h.subscribe(c3, first); old != c2 {
		t.Fatalf("newer generation: replaced %p, want c2 %p", old, c2)
	}
	a, b := &conn{sub: Subscriber{Peer: true, ID: "QmOther"}}, &conn{sub: Subscriber{Peer: true, ID: "QmOther"}}
	h.subscribe(a, first)
	if old := h.subscribe(b, first); old != a {
		t.Fatalf("without generations: replaced %p, want the earlier %p", old, a)
	}
}

// TestSubscribeWithFullQueue: the subscribe answer is queued under the
// hub's lock; into a full queue it closes the connection as a slow
// consumer, and that close must not need the hub (whose lock the
// subscribe holds): the subscribe returns and the hub serves on.
func TestSubscribeWithFullQueue(t *testing.T) {
	srv := &Server{metrics: newMetrics(), hub: newHub()}
	h := srv.hub
	c := &conn{srv: srv, log: slog.New(slog.DiscardHandler), q: newSendQueue(1, 1<<20), sub: Subscriber{ID: "flooder"}, key: "k"}
	if err := c.q.push(outFrame{b: []byte("an answer the client never read")}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.subscribe(c, func() { c.send(wire.SubscribeOK) })
		h.unsubscribe(c)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("subscribe with a full send queue did not return: the hub is stuck")
	}
	if !c.q.closing() {
		t.Error("the connection is not closing after its subscribe answer found the queue full")
	}
}

// TestSubscribeAfterNewerAnnounced: another instance announces a newer
// connection of a peer (generation 2) while this instance's connection
// of it (generation 1, taken before) is between its generation and its
// subscribe. Its subscribe finds the announcement and is the one
// replaced; before, it joined the hub and stayed next to the newer one
// until its presence refresh (a third of the presence TTL) noticed.
func TestSubscribeAfterNewerAnnounced(t *testing.T) {
	h := newHub()
	peer := "QmPeer"
	h.replaceOlder(peer, 2) // no connection of the peer here yet
	c1 := &conn{sub: Subscriber{Peer: true, ID: peer}, gen: 1}
	if old := h.subscribe(c1, func() {}); old != c1 {
		t.Fatalf("subscribe of generation 1 after 2 was announced: replaced %p, want the connection itself %p", old, c1)
	}
	if h.byPeer[peer] != nil {
		t.Fatal("the older connection joined the hub")
	}
	// A connection newer than the announcement joins; the announcement
	// is used once.
	c3 := &conn{sub: Subscriber{Peer: true, ID: peer}, gen: 3}
	if old := h.subscribe(c3, func() {}); old != nil || h.byPeer[peer] != c3 {
		t.Fatalf("generation 3: replaced %p, hub holds %p; want it joined", old, h.byPeer[peer])
	}
	// Bounded: a flood of announcements keeps at most newerMax.
	now := time.Now()
	for i := range newerMax + 10 {
		h.rememberNewer(fmt.Sprintf("Qm%d", i), 1, now)
	}
	if len(h.newer) > newerMax {
		t.Fatalf("%d announcements remembered, want at most %d", len(h.newer), newerMax)
	}
}

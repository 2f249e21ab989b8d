package relay_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"courier/relay"
	"courier/wire"
)

// gatedStore is the real SQLite store whose Put results are held back
// until the test opens the gate: the relay sees every commit as still
// running, and Pending does not show the held messages (as a reader does
// not see a commit that has not finished), while the store works as
// usual underneath.
type gatedStore struct {
	relay.Store
	mu   sync.Mutex
	gate chan struct{}  // what Puts wait for now
	held map[int64]bool // Seqs whose result is held
}

// release lets the held results go, and the results of Puts from now on.
func (g *gatedStore) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.gate:
	default:
		close(g.gate)
	}
}

// hold holds the results of Puts from now on.
func (g *gatedStore) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate = make(chan struct{})
}

func (g *gatedStore) Put(m relay.Message, early func(relay.PutResult)) <-chan relay.PutResult {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	in := g.Store.Put(m, func(r relay.PutResult) {
		g.mu.Lock()
		g.held[r.Message.Seq] = true
		g.mu.Unlock()
		early(r)
	})
	out := make(chan relay.PutResult, 1)
	go func() {
		r := <-in
		<-gate
		g.mu.Lock()
		delete(g.held, r.Message.Seq)
		g.mu.Unlock()
		out <- r
	}()
	return out
}

func (g *gatedStore) Pending(ctx context.Context, sub relay.Subscriber, key string, after int64, limit int) ([]relay.Message, error) {
	ms, err := g.Store.Pending(ctx, sub, key, after, limit)
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, m := range ms {
		if g.held[m.Seq] { // and everything after it: commits are in Seq order
			return ms[:i], err
		}
	}
	return ms, err
}

// newGatedEnv serves a relay on a gated store, holding.
func newGatedEnv(t *testing.T, mutate func(*relay.Config)) (*env, *gatedStore) {
	t.Helper()
	base := newEnv(t, mutate) // its store, under a second relay of our own
	g := &gatedStore{Store: base.store, gate: make(chan struct{}), held: make(map[int64]bool)}
	srv, err := relay.New(base.cfg, g, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		g.release() // so that the server can stop
		srv.Close()
		hs.Close()
	})
	return &env{t: t, cfg: base.cfg, srv: srv, store: base.store, hs: hs,
		url: "ws" + strings.TrimPrefix(hs.URL, "http"), http: hs.URL}, g
}

// noFrame checks that c gets nothing for a while (a check that can only
// pass wrongly on a very slow machine, never fail wrongly).
func noFrame(t *testing.T, c *client, d time.Duration) {
	t.Helper()
	select {
	case b := <-c.frames:
		t.Fatalf("got %s before the commit", b)
	case <-time.After(d):
	}
}

// TestPushBeforeCommit: the relay pushes a message to its subscribers
// while its commit runs, answers delivered as soon as the recipient has
// acked, and queued only after the commit (PROTOCOL: Durability).
func TestPushBeforeCommit(t *testing.T) {
	t.Run("delivered before the commit", func(t *testing.T) {
		e, gate := newGatedEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = time.Minute })
		bob := newIdentity(t, 1)
		b := e.dial()
		b.auth2(bob, 0)
		anon := e.dial()
		anon.subscribe1("light", bob.Key())
		pub := level2Publisher(t, e, 100)
		ct := ciphertext(100, "before the commit")
		pub.publish(ct, bob.ID(), "1")
		if d := anon.expectDelivery(); d.ID != wire.MessageID(ct) {
			t.Fatalf("anonymous got %s", d.ID)
		}
		d := b.expectDelivery()
		b.ack(d.ID)
		if r := pub.expectResult(wire.StatusDelivered); r.Ref != "1" || r.ID != d.ID {
			t.Fatalf("result %+v", r)
		}
		gate.release()
		pub.barrier() // nothing more for this publish
	})
	t.Run("queued only after the commit", func(t *testing.T) {
		e, gate := newGatedEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = 100 * time.Millisecond })
		bob, carol := newIdentity(t, 1), newIdentity(t, 3)
		b := e.dial()
		b.auth2(bob, 0)
		pub := level2Publisher(t, e, 100)
		pub.publish(ciphertext(10, "never acked"), bob.ID(), "connected")
		b.expectDelivery()                                        // bob does not ack: the wait expires
		pub.publish(ciphertext(10, "nobody"), carol.ID(), "away") // carol is not connected
		noFrame(t, pub, time.Second)
		gate.release()
		got := map[string]bool{}
		for range 2 {
			got[pub.expectResult(wire.StatusQueued).Ref] = true
		}
		if !got["connected"] || !got["away"] {
			t.Fatalf("queued results %v", got)
		}
	})
}

// TestSubscribeWhileCommitRuns: a subscriber whose replay cannot see a
// message yet (its commit has not finished) gets it when it goes live,
// once, after what the replay read; and nothing twice once it commits.
func TestSubscribeWhileCommitRuns(t *testing.T) {
	e, gate := newGatedEnv(t, nil)
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	stored := ciphertext(10, "committed")
	pub.publish(stored, bob.ID(), "0")
	gate.release()
	pub.expectResult(wire.StatusQueued)
	gate.hold()

	ct := ciphertext(10, "in flight")
	pub.publish(ct, bob.ID(), "1")
	eventually(t, "the put committed underneath", func() bool {
		st, err := e.store.Stats(t.Context())
		return err == nil && st.Messages == 2
	})
	anon := e.dial()
	anon.subscribe1("late", bob.Key())
	b := e.dial()
	b.auth(bob, bob.qm)
	for _, c := range []*client{anon, b} {
		if d := c.expectDelivery(); d.ID != wire.MessageID(stored) {
			t.Fatalf("replayed %s first, want the committed message", d.ID)
		}
	}
	if d := anon.expectDelivery(); d.ID != wire.MessageID(ct) {
		t.Fatalf("anonymous got %s, want the message in flight", d.ID)
	}
	// A message that comes live during the replay may come before or
	// after Drained, and is not counted.
	drained, live := false, false
	for !drained || !live {
		switch f := b.next(); {
		case f.Kind == wire.KindDrained && !drained && f.Drained.Count == 1:
			drained = true
		case f.Kind == wire.KindDelivery && !live && f.Delivery.ID == wire.MessageID(ct):
			live = true
		default:
			t.Fatalf("bob got %+v; want Drained 1 and the message in flight, once each", f)
		}
	}
	gate.release()
	pub.expectResult(wire.StatusQueued)
	anon.barrier()
	b.barrier()
}

package relay_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"courier/relay"
	"courier/relay/redisstore"
	"courier/relay/redisstore/redistest"
	"courier/wire"
)

var redisNamespaces atomic.Int64

// newRedisEnv serves a relay on a Redis store in namespace ns of rs
// (instances with the same ns are one relay).
func newRedisEnv(t testing.TB, rs *redistest.Server, ns string, mutate func(*relay.Config)) (*env, *redisstore.Store) {
	t.Helper()
	cfg := testConfig(t)
	cfg.Store = relay.StoreConfig{Driver: "redis", URL: rs.URL(), Namespace: ns}
	if mutate != nil {
		mutate(&cfg)
	}
	rdb, err := redisstore.NewClient(cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	st, err := redisstore.Open(context.Background(), rdb, redisstore.Options{
		Quota: cfg.Limits.Quota(), Namespace: ns, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.New(cfg, st, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	e := &env{t: t, cfg: cfg, srv: srv, hs: hs, url: "ws" + strings.TrimPrefix(hs.URL, "http"), http: hs.URL}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("server close: %v", err)
		}
		hs.Close()
		st.Close()
	})
	return e, st
}

func newNamespace() string { return fmt.Sprintf("rt%d", redisNamespaces.Add(1)) }

func readyz(t testing.TB, e *env) int {
	t.Helper()
	resp, err := http.Get(e.http + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestRedisReadyz: /readyz is 503 while Redis is unreachable, 200 again
// once it is back.
func TestRedisReadyz(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	e, _ := newRedisEnv(t, rs, newNamespace(), nil)
	if code := readyz(t, e); code != 200 {
		t.Fatalf("readyz with Redis up: %d", code)
	}
	rs.Stop()
	if code := readyz(t, e); code != 503 {
		t.Fatalf("readyz with Redis down: %d, want 503", code)
	}
	rs.Restart()
	eventually(t, "readyz 200 after Redis is back", func() bool { return readyz(t, e) == 200 })
}

// TestRedisRelayOneInstance: the relay's basics on the Redis store: a
// level-2 publish to a connected recipient is delivered, one to an absent
// recipient is queued and replayed when it connects.
func TestRedisRelayOneInstance(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	e, _ := newRedisEnv(t, rs, newNamespace(), nil)
	alice, bob := newIdentity(t, 1), newIdentity(t, 2)
	pub := e.dial()
	pub.auth2(alice, 0)

	pub.publish(ciphertext(100, "queued for bob"), bob.ID(), "q")
	r := pub.expectResult("queued")
	rcv := e.dial()
	got := rcv.auth2(bob, 1)
	if got[0].ID != r.ID {
		t.Fatalf("replayed %s, want %s", got[0].ID, r.ID)
	}
	rcv.ack(r.ID)
	rcv.barrier()
	for i := range 5 {
		pub.publish(ciphertext(100, fmt.Sprintf("live %d", i)), bob.ID(), fmt.Sprint(i))
		d := rcv.expectDelivery()
		rcv.ack(d.ID)
		pub.expectResult("delivered")
	}
}

// instances starts n relay instances on one Redis, as one relay.
func instances(t *testing.T, n int, mutate func(*relay.Config)) []*env {
	es, _ := instancesOn(t, n, mutate)
	return es
}

func instancesOn(t testing.TB, n int, mutate func(*relay.Config)) ([]*env, *redistest.Server) {
	rs := redistest.Start(t, redistest.Options{})
	ns := newNamespace()
	var es []*env
	for range n {
		e, _ := newRedisEnv(t, rs, ns, mutate)
		es = append(es, e)
	}
	return es, rs
}

// TestCrossInstanceDelivered: a publisher on one instance and its
// recipient on another: every message reaches the recipient in publish
// order, and each publish is answered delivered once the recipient acked
// it on its own instance. An anonymous subscriber of the key on a third
// instance gets them too, in order.
func TestCrossInstanceDelivered(t *testing.T) {
	es := instances(t, 3, func(c *relay.Config) { c.Limits.DeliveryWait = 10 * time.Second })
	alice, bob := newIdentity(t, 1), newIdentity(t, 2)
	rcv := es[1].dial()
	rcv.auth2(bob, 0)
	anon := es[2].dial()
	anon.subscribe1("watcher", bob.Key())
	pub := es[0].dial()
	pub.auth2(alice, 0)

	const n = 30
	var ids []string
	for i := range n {
		ct := ciphertext(200, fmt.Sprintf("cross %d", i))
		pub.publish(ct, bob.ID(), fmt.Sprint(i))
		ids = append(ids, wire.MessageID(ct))
	}
	for i := range n {
		d := rcv.expectDelivery()
		if d.ID != ids[i] {
			t.Fatalf("recipient got %s as message %d, want %s", d.ID, i, ids[i])
		}
		rcv.ack(d.ID)
		if a := anon.expectDelivery(); a.ID != ids[i] {
			t.Fatalf("anonymous subscriber got %s as message %d, want %s", a.ID, i, ids[i])
		}
	}
	for i := range n {
		r := pub.expectResult(wire.StatusDelivered)
		if r.Ref != fmt.Sprint(i) || r.ID != ids[i] {
			t.Fatalf("result %d: %+v, want delivered for ref %d", i, r, i)
		}
	}
}

// TestCrossInstanceReplace: a newer connection of a peer on one instance
// replaces (4409) its older one on another; the newer one then gets what
// is published to the peer from a third.
func TestCrossInstanceReplace(t *testing.T) {
	es := instances(t, 3, nil)
	alice, bob := newIdentity(t, 1), newIdentity(t, 2)
	old := es[0].dial()
	old.auth2(bob, 0)
	newer := es[1].dial()
	newer.auth2(bob, 0)
	old.expectClose(wire.CloseReplaced)

	pub := es[2].dial()
	pub.auth2(alice, 0)
	ct := ciphertext(50, "to the newer connection")
	pub.publish(ct, bob.ID(), "r")
	if d := newer.expectDelivery(); d.ID != wire.MessageID(ct) {
		t.Fatalf("newer connection got %s", d.ID)
	}
	newer.ack(wire.MessageID(ct))
	pub.expectResult(wire.StatusDelivered)
}

// TestCrossInstanceQueuedThenReplayed: published on one instance while the
// recipient is away, replayed to it on another; a republish on a third
// after its ack is answered delivered at once.
func TestCrossInstanceQueuedThenReplayed(t *testing.T) {
	es := instances(t, 3, nil)
	alice, bob := newIdentity(t, 1), newIdentity(t, 2)
	pub := es[0].dial()
	pub.auth2(alice, 0)
	ct := ciphertext(80, "while bob is away")
	pub.publish(ct, bob.ID(), "away")
	pub.expectResult(wire.StatusQueued)

	rcv := es[1].dial()
	got := rcv.auth2(bob, 1)
	if got[0].ID != wire.MessageID(ct) {
		t.Fatalf("replayed %s", got[0].ID)
	}
	rcv.ack(got[0].ID)
	rcv.barrier()
	pub2 := es[2].dial()
	pub2.auth2(alice, 0)
	eventually(t, "republish answered delivered", func() bool {
		pub2.publish(ct, bob.ID(), "again")
		return pub2.next().PublishResult.Status == wire.StatusDelivered
	})
}

// TestRedisRestartResyncs: when Redis restarts, the instances' link to
// each other breaks and events may be lost, so every subscriber is closed
// with 1012; after reconnecting, the relay works across instances again
// and what was stored before the restart is replayed.
func TestRedisRestartResyncs(t *testing.T) {
	es, rs := instancesOn(t, 2, nil)
	alice, bob := newIdentity(t, 1), newIdentity(t, 2)
	pub := es[0].dial()
	pub.auth2(alice, 0)
	ct := ciphertext(64, "stored before the restart")
	pub.publish(ct, bob.ID(), "before")
	pub.expectResult(wire.StatusQueued)
	rcv := es[1].dial()
	rcv.auth2(bob, 1)
	rs.Restart()
	rcv.expectClose(wire.CloseServiceRestart)

	// Reconnect (as clients do after 1012) until the relay takes it again:
	// the message stored before the restart is replayed.
	eventually(t, "the stored message replayed after the restart", func() bool {
		c, err := es[1].tryDial()
		if err != nil {
			return false
		}
		defer c.ws.CloseNow()
		c.sendFrame(wire.TypeAuthRequest, wire.AuthRequest{PeerID: bob.ID()})
		b, ok := tryNext(c, 5*time.Second)
		f, err := wire.ParseServerFrame(b)
		if !ok || err != nil || f.Kind != wire.KindAuthChallenge {
			return false
		}
		c.sendFrame(wire.TypeSubscribe, bob.signedSubscribe(testHost, f.AuthChallenge.Nonce, bob.qm))
		if b, ok := tryNext(c, 5*time.Second); !ok || string(b) != string(wire.SubscribeOK) {
			return false
		}
		b, ok = tryNext(c, 5*time.Second)
		return ok && strings.Contains(string(b), wire.MessageID(ct))
	})
	// The link is back: a publish on one instance reaches a subscriber on
	// the other live. The instances' re-subscription to the bus closes
	// (resyncs) what connected before it, so each attempt connects anew.
	attempt := 0
	eventually(t, "a live cross-instance delivery after the restart", func() bool {
		attempt++
		rcv, err := es[1].tryDial()
		if err != nil {
			return false
		}
		defer rcv.ws.CloseNow()
		pub, err := es[0].tryDial()
		if err != nil {
			return false
		}
		defer pub.ws.CloseNow()
		rcv.sendFrame(wire.TypeSubscribe, wire.Subscribe{UserID: "u", SubscriptionKey: bob.Key()})
		if f, ok := tryNext(rcv, 5*time.Second); !ok || string(f) != string(wire.SubscribeOK) {
			return false
		}
		ct := ciphertext(64, fmt.Sprintf("after the restart %d", attempt))
		pub.publish(ct, bob.ID(), "")
		for {
			f, ok := tryNext(rcv, 5*time.Second)
			if !ok {
				return false
			}
			if strings.Contains(string(f), wire.MessageID(ct)) {
				return true
			}
		}
	})
}

// tryNext returns c's next frame, or false if none comes within d or the
// connection ends.
func tryNext(c *client, d time.Duration) ([]byte, bool) {
	select {
	case b := <-c.frames:
		return b, true
	case <-c.done:
		return nil, false
	case <-time.After(d):
		return nil, false
	}
}

// TestRedisBridgeInstances: with three instances on one Redis and the
// OFFLINE bridge on in each, every message is handed off by exactly one of
// them, wherever it was published; a fallback publish is answered offline
// whichever instance made the hand-off.
func TestRedisBridgeInstances(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	node := newTestNode(t)
	ns := newNamespace()
	bridge := withBridge(node, func(o *relay.OfflineConfig) { o.Timeout = 2 * time.Second })
	var es []*env
	for range 3 {
		e, _ := newRedisEnv(t, rs, ns, bridge)
		es = append(es, e)
	}
	bob := newIdentity(t, 1)
	const n = 30
	var ids []string
	for i := range n {
		ct := ciphertext(100, fmt.Sprintf("from instance %d, message %d", i%3, i))
		ids = append(ids, wire.MessageID(ct))
		es[i%3].dial().publish(ct, bob.ID(), "")
	}
	pub := level2Publisher(t, es[0], 100)
	fb := ciphertext(100, "fallback on instance 0")
	pub.publishFallback(fb, bob.ID(), "fb", wire.FallbackRelay)
	pub.expectResult(wire.StatusOffline)
	ids = append(ids, wire.MessageID(fb))
	for _, id := range ids {
		node.waitHandedOff(id)
	}
	var total float64
	for _, e := range es {
		total += e.handoffs("handed_off")
	}
	eventually(t, "every hand-off counted", func() bool {
		total = 0
		for _, e := range es {
			total += e.handoffs("handed_off")
		}
		return total >= float64(len(ids))
	})
	for _, id := range ids {
		if _, ok := node.attempts(id); ok != 1 {
			t.Errorf("%s handed off %d times, want exactly once", id[:12], ok)
		}
	}
	if total != float64(len(ids)) {
		t.Errorf("the instances counted %v hand-offs, want %d", total, len(ids))
	}
}

// TestRedisBridgeTakesOverDeadInstance: a hand-off claimed by an instance
// that died is made by another once the claim's lease has run out, not
// before, and once.
func TestRedisBridgeTakesOverDeadInstance(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	node := newTestNode(t)
	ns := newNamespace()
	// The dead instance: its store claimed the hand-off, then nothing.
	cfg := testConfig(t)
	cfg.Store = relay.StoreConfig{Driver: "redis", URL: rs.URL(), Namespace: ns}
	rdb, err := redisstore.NewClient(cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := redisstore.Open(context.Background(), rdb, redisstore.Options{Namespace: ns, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	bob := newIdentity(t, 1)
	ct := ciphertext(100, "claimed by an instance that died")
	m := relay.Message{ID: wire.MessageID(ct), Key: bob.Key(), Recipient: bob.ID(), Ciphertext: ct}
	if r := <-dead.PutHandoff(m, time.Now(), nil); r.Err != nil || r.Handoff != relay.HandoffPending {
		t.Fatalf("PutHandoff: %+v", r)
	}
	const lease = 1500 * time.Millisecond
	claimed := time.Now()
	if hs, err := dead.ClaimHandoffs(context.Background(), "dead-instance", claimed, lease, 10); err != nil || len(hs) != 1 {
		t.Fatalf("claim: %d, %v", len(hs), err)
	}
	dead.Close()

	e, _ := newRedisEnv(t, rs, ns, withBridge(node, nil))
	r := node.waitHandedOff(m.ID)
	if waited := r.At.Sub(claimed); waited < lease {
		t.Errorf("taken over %v after the claim, within its lease (%v)", waited, lease)
	}
	eventually(t, "handed_off counted", func() bool { return e.handoffs("handed_off") == 1 })
	if _, ok := node.attempts(m.ID); ok != 1 {
		t.Errorf("handed off %d times", ok)
	}
}

package relay_test

import (
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"crypto/ed25519"

	"github.com/coder/websocket"

	"courier/relay"
	"courier/wire"
)

func TestPublishDelivered(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = time.Minute })
	bob := newIdentity(t, 1)
	b := e.dial()
	b.auth2(bob, 0)
	pub := level2Publisher(t, e, 100)

	ct := ciphertext(100, "for bob")
	pub.publish(ct, bob.ID(), "ref-1")
	d := b.expectDelivery()
	if d.ID != wire.MessageID(ct) {
		t.Fatalf("bob got %s", d.ID)
	}
	b.ack(d.ID)
	r := pub.expectResult(wire.StatusDelivered)
	if r.ID != d.ID || r.Ref != "ref-1" {
		t.Fatalf("result %+v", r)
	}
}

func TestPublishQueued(t *testing.T) {
	// A minute of delivery wait: a result within the test's timeout came at once.
	e := newEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = time.Minute })
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)

	t.Run("recipient not connected", func(t *testing.T) {
		pub := pub.in(t)
		pub.publish(ciphertext(10, "offline"), bob.ID(), "a")
		if r := pub.expectResult(wire.StatusQueued); r.Ref != "a" || r.ID != wire.MessageID(ciphertext(10, "offline")) {
			t.Fatalf("result %+v", r)
		}
	})
	t.Run("only anonymous subscribers", func(t *testing.T) {
		e := e.in(t)
		pub := pub.in(t)
		anon := e.dial()
		anon.subscribe1(bob.ID(), bob.Key()) // an anonymous userID that equals bob's peer ID is still anonymous
		anon.expectDelivery()
		pub.publish(ciphertext(10, "anon"), bob.ID(), "b")
		d := anon.expectDelivery()
		anon.ack(d.ID)
		pub.expectResult(wire.StatusQueued)
	})
}

func TestDeliveryWaitTimesOutQueued(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = 300 * time.Millisecond })
	bob := newIdentity(t, 1)
	b := e.dial()
	b.auth2(bob, 0)
	pub := level2Publisher(t, e, 100)
	pub.publish(ciphertext(10, "unacked"), bob.ID(), "w")
	b.expectDelivery() // and bob never acks
	start := time.Now()
	pub.expectResult(wire.StatusQueued)
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("queued after %v", el)
	}
	// A late ack resolves nothing and breaks nothing.
	b.ack(wire.MessageID(ciphertext(10, "unacked")))
	b.barrier()
}

// TestAnonymousAckIsNotDelivery: the recipient is connected and
// authenticated but does not ack; an anonymous subscriber of the same key
// (its userID even equal to the recipient's peer ID) acks. The publish is
// queued after delivery_wait, never delivered.
func TestAnonymousAckIsNotDelivery(t *testing.T) {
	const wait = 2 * time.Second
	e := newEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = wait })
	bob := newIdentity(t, 1)
	b := e.dial()
	b.auth2(bob, 0)
	anon := e.dial()
	anon.subscribe1(bob.ID(), bob.Key())
	pub := level2Publisher(t, e, 100)

	ct := ciphertext(10, "seen by both")
	start := time.Now()
	pub.publish(ct, bob.ID(), "a")
	if d := b.expectDelivery(); d.ID != wire.MessageID(ct) {
		t.Fatalf("bob got %s", d.ID)
	}
	anon.ack(anon.expectDelivery().ID)
	// The anonymous ack has committed; bob's never comes.
	eventually(t, "the anonymous ack committed", func() bool { return e.metric("courier_relay_messages_acked_total") == 1 })
	if time.Since(start) >= wait {
		t.Skipf("the ack took longer than delivery_wait (%v) to commit: the machine is too slow for this check", wait)
	}
	r := pub.expectResult(wire.StatusQueued)
	if r.Ref != "a" {
		t.Fatalf("result %+v", r)
	}
	if el := time.Since(start); el < wait {
		t.Errorf("queued after %v, before delivery_wait %v: the recipient was connected", el, wait)
	}
}

// TestDeliveryWaitIsHonoured: a 200 ms delivery_wait answers queued well
// before the 3 s default would.
func TestDeliveryWaitIsHonoured(t *testing.T) {
	const wait = 200 * time.Millisecond
	e := newEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = wait })
	bob := newIdentity(t, 1)
	b := e.dial()
	b.auth2(bob, 0)
	pub := level2Publisher(t, e, 100)
	start := time.Now()
	pub.publish(ciphertext(10, "never acked"), bob.ID(), "w")
	b.expectDelivery()
	pub.expectResult(wire.StatusQueued)
	el := time.Since(start)
	if el < wait {
		t.Errorf("queued after %v, before delivery_wait %v", el, wait)
	}
	if el > 2*time.Second {
		t.Errorf("queued after %v with a delivery_wait of %v", el, wait)
	}
}

// TestRepublishIsNotPushedToAnonymous: an anonymous subscriber gets a
// message once; republishing it pushes it to nobody but the recipient's
// authenticated connection (light clients would see duplicates).
func TestRepublishIsNotPushedToAnonymous(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	anon := e.dial()
	anon.subscribe1("light", bob.Key())
	pub := level2Publisher(t, e, 100)
	ct := ciphertext(10, "once for light clients")
	pub.publish(ct, bob.ID(), "1")
	if d := anon.expectDelivery(); d.ID != wire.MessageID(ct) {
		t.Fatalf("anonymous got %s", d.ID)
	}
	pub.expectResult(wire.StatusQueued)
	pub.publish(ct, bob.ID(), "2")
	pub.expectResult(wire.StatusQueued)
	// A push comes before the publisher's result: by now it would be queued.
	anon.barrier()
}

func TestPublishRejected(t *testing.T) {
	const max = 1000
	e := newEnv(t, func(c *relay.Config) {
		c.Limits.MaxMessageBytes = max
		c.Limits.MaxMessagesPerKey = 2
	})
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	tests := []struct {
		name, frame, prefix string
	}{
		{"bad recipient", `{"Type":"EncryptedMessage","Data":{"encryptedMessage":"aGk=","recipient":"nope","ref":"x"}}`, wire.ReasonInvalid},
		{"bad base64", fmt.Sprintf(`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"!!","recipient":%q,"ref":"x"}}`, bob.ID()), wire.ReasonInvalid},
		{"too large", string(wire.ClientFrameBytes(wire.TypePublish, wire.Publish{EncryptedMessage: strings.Repeat("AAAA", max/3+1), Recipient: bob.ID(), Ref: "x"})), wire.ReasonTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := pub.in(t)
			pub.send([]byte(tt.frame))
			r := pub.expectResult(wire.StatusRejected)
			if !strings.HasPrefix(r.Reason, tt.prefix) || r.Ref != "x" {
				t.Fatalf("result %+v, want reason prefix %q", r, tt.prefix)
			}
		})
	}
	t.Run("over quota", func(t *testing.T) {
		e := e.in(t)
		pub := pub.in(t)
		pub.publish(ciphertext(10, "q1"), bob.ID(), "1")
		pub.expectResult(wire.StatusQueued)
		pub.publish(ciphertext(10, "q2"), bob.ID(), "2")
		pub.expectResult(wire.StatusQueued)
		pub.publish(ciphertext(10, "q3"), bob.ID(), "3")
		r := pub.expectResult(wire.StatusRejected)
		if !strings.HasPrefix(r.Reason, wire.ReasonOverQuota) || r.Ref != "3" || r.ID != wire.MessageID(ciphertext(10, "q3")) {
			t.Fatalf("result %+v", r)
		}
		// Level 1 hears it as an error frame.
		l1 := e.dial()
		l1.publish(ciphertext(10, "q4"), bob.ID(), "")
		l1.expectError(wire.ReasonOverQuota)
		// Once bob has acked, there is room again.
		b := e.dial()
		for _, d := range b.auth2(bob, 2) {
			b.ack(d.ID)
		}
		b.barrier()
		eventually(t, "acks committed", func() bool { return e.metric("courier_relay_messages_acked_total") >= 2 })
		pub.publish(ciphertext(10, "q5"), bob.ID(), "5")
		b.ack(b.expectDelivery().ID)
		pub.expectResult(wire.StatusDelivered)
	})
	if got := e.metric(`courier_relay_publish_results_total{status="rejected"}`); got != 4 {
		t.Errorf("rejected results = %v, want 4", got)
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) {
		c.Limits.PublishRate = 0.001 // no refill within the test
		c.Limits.PublishBurst = 3
	})
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	for i := range 3 {
		pub.publish(ciphertext(10, fmt.Sprint("r", i)), bob.ID(), fmt.Sprint(i))
	}
	pub.publish(ciphertext(10, "r3"), bob.ID(), "3")
	// The rejection is answered by the reader, before the stored ones' results.
	var statuses []string
	for range 4 {
		r := pub.expect(wire.KindPublishResult).PublishResult
		if r.Status == wire.StatusRejected {
			if r.Ref != "3" || !strings.HasPrefix(r.Reason, wire.ReasonRateLimited) {
				t.Fatalf("rejected %+v", r)
			}
		}
		statuses = append(statuses, r.Status)
	}
	if strings.Count(strings.Join(statuses, ","), wire.StatusRejected) != 1 {
		t.Fatalf("statuses %v, want exactly one rejected", statuses)
	}
	// Level 1: an error frame; the limit is per connection.
	l1 := e.dial()
	for i := range 3 {
		l1.publish(ciphertext(10, fmt.Sprint("l1-", i)), bob.ID(), "")
	}
	l1.publish(ciphertext(10, "l1-3"), bob.ID(), "")
	l1.expectError(wire.ReasonRateLimited)
}

func TestRepublishIsIdempotent(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = time.Minute })
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	ct := ciphertext(50, "again")
	id := wire.MessageID(ct)

	pub.publish(ct, bob.ID(), "1")
	pub.expectResult(wire.StatusQueued)
	pub.publish(ct, bob.ID(), "2") // not acked: handled like a fresh publish
	if r := pub.expectResult(wire.StatusQueued); r.Ref != "2" || r.ID != id {
		t.Fatalf("result %+v", r)
	}
	other := publishStored(t, e, pub, ciphertext(50, "other"), bob.ID())

	b := e.dial()
	got := b.auth2(bob, 2) // stored once, in its original position
	if got[0].ID != id || got[1].ID != other {
		t.Fatalf("replay %s %s", got[0].ID, got[1].ID)
	}
	// Republished while bob is connected and has not acked: pushed again,
	// and delivered once he acks.
	pub.publish(ct, bob.ID(), "3")
	if d := b.expectDelivery(); d.ID != id {
		t.Fatalf("push of republish: %s", d.ID)
	}
	b.ack(id)
	if r := pub.expectResult(wire.StatusDelivered); r.Ref != "3" {
		t.Fatalf("result %+v", r)
	}
	// Acked: delivered at once, with no push.
	pub.publish(ct, bob.ID(), "4")
	if r := pub.expectResult(wire.StatusDelivered); r.Ref != "4" {
		t.Fatalf("result %+v", r)
	}
	b.barrier()
	if got := e.metric("courier_relay_messages_stored_total"); got != 2 {
		t.Errorf("stored = %v, want 2", got)
	}
}

// TestRepublishForAnotherRecipientRejected: the ciphertext of a stored
// message published again for another recipient is refused (level 2:
// rejected, invalid; level 1: an error frame), is not pushed to the other
// recipient, and never turns "delivered" through the first recipient's ack.
func TestRepublishForAnotherRecipientRejected(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = time.Minute })
	bob, carol := newIdentity(t, 1), newIdentity(t, 3)
	b := e.dial()
	b.auth2(bob, 0)
	c := e.dial()
	c.auth2(carol, 0)
	pub := level2Publisher(t, e, 100)
	ct := ciphertext(40, "bob's only")
	id := wire.MessageID(ct)

	pub.publish(ct, bob.ID(), "1")
	b.ack(b.expectDelivery().ID)
	pub.expectResult(wire.StatusDelivered)

	pub.publish(ct, carol.ID(), "2")
	r := pub.expectResult(wire.StatusRejected)
	if !strings.HasPrefix(r.Reason, wire.ReasonInvalid) || r.Ref != "2" || r.ID != id {
		t.Fatalf("result %+v, want rejected, %q", r, wire.ReasonInvalid)
	}
	l1 := e.dial()
	l1.publish(ct, carol.ID(), "")
	l1.expectError(wire.ReasonInvalid)
	l1.barrier()
	c.barrier() // nothing was pushed to carol
	b.barrier()
	if got := e.metric("courier_relay_messages_stored_total"); got != 1 {
		t.Errorf("stored = %v, want 1", got)
	}
}

func TestDrainedCountsOnlyOwnMessages(t *testing.T) {
	e := newEnv(t, nil)
	bob, carol := identitiesSharingKey(t)
	pub := level2Publisher(t, e, 100)
	var bobs []string
	for i := range 3 {
		bobs = append(bobs, publishStored(t, e, pub, ciphertext(10, fmt.Sprint("bob", i)), bob.ID()))
		publishStored(t, e, pub, ciphertext(10, fmt.Sprint("carol", i)), carol.ID())
	}
	b := e.dial()
	got := b.auth2(bob, 3)
	for i, d := range got {
		if d.ID != bobs[i] {
			t.Fatalf("replay %d = %s, want %s", i, d.ID, bobs[i])
		}
	}
	// Live: carol's messages do not reach bob's authenticated connection,
	// but do reach an anonymous subscriber of the shared key.
	anon := e.dial()
	anon.subscribe1("anon", bob.Key())
	for range 6 {
		anon.expectDelivery()
	}
	pub.publish(ciphertext(10, "carol live"), carol.ID(), "")
	pub.expectResult(wire.StatusQueued)
	anon.expectDelivery()
	pub.publish(ciphertext(10, "bob live"), bob.ID(), "")
	if d := b.expectDelivery(); d.ID != wire.MessageID(ciphertext(10, "bob live")) {
		t.Fatalf("bob got %s", d.ID)
	}
}

func TestNewerConnectionReplacesOlder(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = time.Minute })
	bob := newIdentity(t, 1)
	old := e.dial()
	old.auth2(bob, 0)
	cur := e.dial()
	cur.auth(bob, bob.ident) // the other form of the same peer
	cur.expect(wire.KindDrained)
	old.expectClose(wire.CloseReplaced)

	pub := level2Publisher(t, e, 100)
	pub.publish(ciphertext(10, "x"), bob.ID(), "")
	cur.ack(cur.expectDelivery().ID)
	pub.expectResult(wire.StatusDelivered)
}

func TestNamespacesAreSeparate(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	m1 := publishStored(t, e, pub, ciphertext(10, "m1"), bob.ID())

	// An anonymous subscriber whose userID is bob's peer ID acks m1 ...
	anon := e.dial()
	anon.subscribe1(bob.ID(), bob.Key())
	anon.ack(anon.expectDelivery().ID)
	anon.barrier()
	eventually(t, "anonymous ack committed", func() bool { return e.metric("courier_relay_messages_acked_total") >= 1 })
	anon.ws.Close(websocket.StatusNormalClosure, "")

	// ... which changes nothing for bob.
	b := e.dial()
	if got := b.auth2(bob, 1); got[0].ID != m1 {
		t.Fatalf("bob replay %s", got[0].ID)
	}
	// And the other way round: bob acks m2; the anonymous bob-named
	// userID still gets it.
	pub.publish(ciphertext(10, "m2"), bob.ID(), "")
	m2 := b.expectDelivery().ID
	b.ack(m1)
	b.ack(m2)
	pub.expectResult(wire.StatusDelivered)
	eventually(t, "bob's acks committed", func() bool { return e.metric("courier_relay_messages_acked_total") >= 3 })
	anon2 := e.dial()
	anon2.subscribe1(bob.ID(), bob.Key())
	if d := anon2.expectDelivery(); d.ID != m2 {
		t.Fatalf("anonymous replay %s, want m2", d.ID)
	}
	anon2.barrier()
	b.ws.Close(websocket.StatusNormalClosure, "")
	b2 := e.dial()
	b2.auth2(bob, 0)
}

func TestPeerIDFormsAreOnePeer(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Limits.DeliveryWait = time.Minute })
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	// Stored for the 12D3Koo form, replayed to bob authenticated as Qm.
	stored := publishStored(t, e, pub, ciphertext(10, "to ident"), bob.ident.String())
	b := e.dial()
	if got := b.auth2(bob, 1); got[0].ID != stored {
		t.Fatalf("replay %s", got[0].ID)
	}
	b.ack(stored)
	b.barrier()
	eventually(t, "ack committed", func() bool { return e.metric("courier_relay_messages_acked_total") >= 1 })
	// Live, with bob authenticated as 12D3Koo and the publisher using Qm.
	b.ws.Close(websocket.StatusNormalClosure, "")
	b2 := e.dial()
	b2.auth(bob, bob.ident)
	b2.expect(wire.KindDrained)
	pub.publish(ciphertext(10, "to qm"), bob.qm.String(), "q")
	b2.ack(b2.expectDelivery().ID)
	pub.expectResult(wire.StatusDelivered)
	// And the reverse.
	pub.publish(ciphertext(10, "to ident live"), bob.ident.String(), "i")
	b2.ack(b2.expectDelivery().ID)
	pub.expectResult(wire.StatusDelivered)
}

func TestAuthRejects(t *testing.T) {
	now := time.Now()
	var offset atomic.Int64 // the clock runs when the test says so
	e := newEnv(t, func(c *relay.Config) { c.Limits.NonceTTL = time.Minute })
	relay.SetClock(e.srv, func() time.Time { return now.Add(time.Duration(offset.Load())) })
	bob := newIdentity(t, 1)
	carol := newIdentity(t, 2)
	signWith := func(priv ed25519.PrivateKey, payload string) string {
		return hex.EncodeToString(ed25519.Sign(priv, []byte(payload)))
	}

	tests := []struct {
		name   string
		peer   string // AuthRequest
		answer func(nonce string) wire.Subscribe
		want   string
	}{
		{"forged signature", bob.ID(), func(n string) wire.Subscribe {
			s := bob.signedSubscribe(testHost, n, bob.qm)
			s.Signature = signWith(carol.priv, wire.AuthPayload(testHost, n))
			return s
		}, "signature does not verify"},
		{"signature over another nonce", bob.ID(), func(n string) wire.Subscribe {
			return bob.signedSubscribe(testHost, "b3RoZXI=", bob.qm)
		}, "signature does not verify"},
		{"signature for another host", bob.ID(), func(n string) wire.Subscribe {
			return bob.signedSubscribe("evil.example", n, bob.qm)
		}, "signature does not verify"},
		{"pubkey of another peer", bob.ID(), func(n string) wire.Subscribe {
			s := bob.signedSubscribe(testHost, n, bob.qm)
			s.PubKey = hex.EncodeToString(carol.pub)
			return s
		}, "does not hash to peer ID"},
		{"subscription key of another peer", bob.ID(), func(n string) wire.Subscribe {
			s := bob.signedSubscribe(testHost, n, bob.qm)
			s.SubscriptionKey = carol.Key()
			return s
		}, "subscription key is not the key"},
		{"challenge issued for another peer", carol.ID(), func(n string) wire.Subscribe {
			return bob.signedSubscribe(testHost, n, bob.qm)
		}, "issued for another peer"},
		{"expired nonce", bob.ID(), func(n string) wire.Subscribe {
			offset.Add(int64(2 * time.Minute))
			return bob.signedSubscribe(testHost, n, bob.qm)
		}, "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := e.in(t)
			c := e.dial()
			nonce := c.challenge(tt.peer)
			c.sendFrame(wire.TypeSubscribe, tt.answer(nonce))
			c.expectError(tt.want)
			c.expectClose(websocket.StatusPolicyViolation)
		})
	}

	t.Run("nonce of another connection", func(t *testing.T) {
		e := e.in(t)
		first := e.dial()
		stolen := first.challenge(bob.ID())
		c := e.dial()
		c.challenge(bob.ID())
		c.sendFrame(wire.TypeSubscribe, bob.signedSubscribe(testHost, stolen, bob.qm))
		c.expectError("signature does not verify")
		c.expectClose(websocket.StatusPolicyViolation)
	})
	t.Run("reused nonce", func(t *testing.T) {
		e := e.in(t)
		c := e.dial()
		nonce := c.challenge(bob.ID())
		good := bob.signedSubscribe(testHost, nonce, bob.qm)
		c.sendFrame(wire.TypeSubscribe, good)
		c.expect(wire.KindSubscribed)
		c.expect(wire.KindDrained)
		c.ws.Close(websocket.StatusNormalClosure, "")
		// The same signed answer on a new connection: its nonce is not the new one.
		c2 := e.dial()
		c2.challenge(bob.ID())
		c2.sendFrame(wire.TypeSubscribe, good)
		c2.expectError("signature does not verify")
		c2.expectClose(websocket.StatusPolicyViolation)
		// Nor without a challenge at all.
		c3 := e.dial()
		c3.sendFrame(wire.TypeSubscribe, good)
		c3.expectError("AuthRequest first")
		c3.expectClose(websocket.StatusPolicyViolation)
	})
	if got := e.metric(`courier_relay_rejected_frames_total{reason="auth"}`); got < float64(len(tests)+3) {
		t.Errorf("auth rejections = %v", got)
	}
}

func TestLevel2PerFrameErrorsDoNotClose(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	b := e.dial()
	b.auth2(bob, 0)
	b.send([]byte(`{"Type":`))
	f := b.expect(wire.KindLevel2Error)
	if !strings.HasPrefix(f.Error, wire.ReasonInvalid) {
		t.Fatalf("error %q", f.Error)
	}
	b.sendFrame(wire.TypeAuthRequest, wire.AuthRequest{PeerID: bob.ID()})
	b.expect(wire.KindLevel2Error)
	b.ack("nope")
	b.expect(wire.KindLevel2Error)
	pub := level2Publisher(t, e, 100)
	pub.publish(ciphertext(10, "still"), bob.ID(), "")
	b.expectDelivery()
}

// identitiesSharingKey returns two identities whose subscription keys are
// equal.
func identitiesSharingKey(t *testing.T) (identity, identity) {
	t.Helper()
	seen := make(map[string]identity)
	for n := 10000; n < 20000; n++ {
		id := newIdentity(t, n)
		if other, ok := seen[id.Key()]; ok {
			return other, id
		}
		seen[id.Key()] = id
	}
	t.Fatal("no two identities share a key")
	return identity{}, identity{}
}

// TestSubscribedMeansKnown: once a client has read {"subscribe": true},
// the relay knows it is connected, so a publish made after that is pushed
// to it (not answered queued as if it were away). The answer used to be
// queued before the connection joined the hub; a client quick enough (or
// a relay slow enough, under load) saw the gap. Many rounds, since the gap
// was a few instructions wide, and with other processes keeping the
// processors busy, which widens it as a loaded machine does: with them the
// old order failed within 40 rounds in each of 3 runs, and the new passed 9.
func TestSubscribedMeansKnown(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Limits.SubscribeRate = 0 })
	startSpinners(t, 2*runtime.NumCPU())
	for i := range 300 {
		bob := newIdentity(t, 1+i%2)
		c := e.dial()
		c.auth(bob, bob.qm)
		if !relay.PeerConnected(e.srv, bob.qm.Canonical()) {
			t.Fatalf("round %d: the client read the subscribe answer before the relay counted it connected", i)
		}
		anon := e.dial()
		anon.subscribe1(fmt.Sprintf("anon-%d", i), bob.Key())
		if !relay.AnySubscriber(e.srv, bob.Key()) {
			t.Fatalf("round %d: a level-1 client read the subscribe answer before it was subscribed", i)
		}
		c.ws.CloseNow()
		anon.ws.CloseNow()
	}
}

// spinEnv makes the test binary a process that only burns CPU, for the
// given duration at most (it is killed sooner).
const spinEnv = "COURIER_RELAY_TEST_SPIN"

func runSpinChild(d string) error {
	limit, err := time.ParseDuration(d)
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
	}
	return nil
}

// startSpinners starts n processes that keep the processors busy until
// the test ends.
func startSpinners(t *testing.T, n int) {
	t.Helper()
	for range n {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), spinEnv+"=60s")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
}

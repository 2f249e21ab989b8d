package relay_test

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"courier/relay"
	"courier/wire"
)

func TestSubscribeAnswersExactBytes(t *testing.T) {
	e := newEnv(t, nil)
	for _, tt := range []struct{ name, frame string }{
		{"wrapped", `{"Type":"SubscribeMessage","Data":{"userID":"wrapped","subscriptionKey":%q}}`},
		{"bare", `{"userID":"bare","subscriptionKey":%q}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := e.in(t)
			bob := newIdentity(t, len(tt.name)) // a key of its own
			tt.frame = fmt.Sprintf(tt.frame, bob.Key())
			c := e.dial()
			c.send([]byte(tt.frame))
			if b := c.nextRaw(); string(b) != `{"subscribe": true}` {
				t.Fatalf("answer %q, want exactly {\"subscribe\": true}", b)
			}
			// Subscribed for real: a message for bob arrives.
			p := e.dial()
			p.publish(ciphertext(10, tt.name), bob.ID(), "")
			if d := c.expectDelivery(); d.ID != wire.MessageID(ciphertext(10, tt.name)) {
				t.Fatalf("delivery %+v", d)
			}
		})
	}
}

func TestSubscribeFailuresAnswerErrorAndClose(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	tests := []struct {
		name, frame, want string
	}{
		{"key not a multihash", `{"Type":"SubscribeMessage","Data":{"userID":"u","subscriptionKey":"nope"}}`, "invalid subscription key"},
		{"key is a peer ID of identity form", fmt.Sprintf(`{"userID":"u","subscriptionKey":%q}`, bob.ident.String()), "invalid subscription key"},
		{"empty userID", fmt.Sprintf(`{"userID":"","subscriptionKey":%q}`, bob.Key()), "userID is empty"},
		{"huge userID", fmt.Sprintf(`{"userID":%q,"subscriptionKey":%q}`, strings.Repeat("x", 1000), bob.Key()), "userID is longer"},
		{"unknown protocol", fmt.Sprintf(`{"userID":"u","subscriptionKey":%q,"protocol":3}`, bob.Key()), "unknown protocol 3"},
		{"protocol 2 without AuthRequest", fmt.Sprintf(`{"userID":%q,"subscriptionKey":%q,"protocol":2}`, bob.ID(), bob.Key()), "send AuthRequest first"},
		{"AuthRequest with a bad peer ID", `{"Type":"AuthRequest","Data":{"peerID":"QmNope"}}`, "invalid peer ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := e.in(t)
			c := e.dial()
			c.send([]byte(tt.frame))
			c.expectError(tt.want)
			c.expectClose(websocket.StatusPolicyViolation)
		})
	}
}

func TestSubscribeDeadline(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Limits.SubscribeTimeout = time.Second })
	bob := newIdentity(t, 1)

	t.Run("silent", func(t *testing.T) {
		e := e.in(t)
		c := e.dial()
		c.expectError("no SubscribeMessage within 1s")
		c.expectClose(websocket.StatusPolicyViolation)
	})
	t.Run("send-only publisher", func(t *testing.T) {
		e := e.in(t)
		c := e.dial()
		c.publish(ciphertext(10, "send-only"), bob.ID(), "")
		c.expectError("no SubscribeMessage")
		c.expectClose(websocket.StatusPolicyViolation)
		// What it published was stored.
		s := e.dial()
		s.subscribe1("u", bob.Key())
		if d := s.expectDelivery(); d.ID != wire.MessageID(ciphertext(10, "send-only")) {
			t.Fatalf("delivery %+v", d)
		}
	})
	t.Run("subscribed in time", func(t *testing.T) {
		e := e.in(t)
		c := e.dial()
		silent := e.dial() // connected at the same time, never subscribes
		c.subscribe1("u2", bob.Key())
		c.expectDelivery() // the send-only message
		// Once the silent one has been closed, the deadline has passed: the
		// subscribed one is still served.
		silent.expectError("no SubscribeMessage")
		silent.expectClose(websocket.StatusPolicyViolation)
		e.dial().publish(ciphertext(10, "later"), bob.ID(), "")
		if d := c.expectDelivery(); d.ID != wire.MessageID(ciphertext(10, "later")) {
			t.Fatalf("delivery %+v", d)
		}
	})
}

// publishStored publishes through a level-2 connection and waits for the
// result, so the message is committed when it returns.
func publishStored(t *testing.T, e *env, pub *client, ct []byte, recipient string) string {
	t.Helper()
	pub.publish(ct, recipient, "r")
	f := pub.next()
	if f.Kind != wire.KindPublishResult || f.PublishResult.Status == wire.StatusRejected {
		t.Fatalf("publish: %+v", f)
	}
	return f.PublishResult.ID
}

// level2Publisher connects an authenticated publisher with nothing stored.
func level2Publisher(t *testing.T, e *env, n int) *client {
	t.Helper()
	p := e.dial()
	p.auth2(newIdentity(t, n), 0)
	return p
}

func TestReplayOldestFirstThenLive(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	const n = 600 // more than two replay pages
	var ids []string
	for i := range n {
		ids = append(ids, publishStored(t, e, pub, ciphertext(64, fmt.Sprint("m", i)), bob.ID()))
	}
	c := e.dial()
	c.subscribe1("anon", bob.Key())
	for i := range n {
		if d := c.expectDelivery(); d.ID != ids[i] {
			t.Fatalf("replay %d: got %s, want %s", i, d.ID, ids[i])
		}
	}
	// Then live.
	id := publishStored(t, e, pub, ciphertext(64, "live"), bob.ID())
	if d := c.expectDelivery(); d.ID != id {
		t.Fatalf("live: got %s, want %s", d.ID, id)
	}
	got, err := base64.StdEncoding.DecodeString(c2s(t, e, bob, id))
	if err != nil || string(got[:4]) != "live" {
		t.Fatalf("ciphertext round trip: %q %v", got, err)
	}
}

// c2s fetches the ciphertext of id as a fresh anonymous subscriber of bob's key.
func c2s(t *testing.T, e *env, bob identity, id string) string {
	t.Helper()
	c := e.dial()
	c.subscribe1(fmt.Sprint("fetch-", time.Now().UnixNano()), bob.Key())
	for {
		d := c.expectDelivery()
		if d.ID == id {
			return d.EncryptedMessage
		}
	}
}

func TestLevel1PublisherGetsNoAnswer(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	sub := e.dial()
	sub.subscribe1("s", bob.Key())
	pub := e.dial()
	pub.publish(ciphertext(10, "x"), bob.ID(), "ref-ignored")
	sub.expectDelivery() // the publish has been handled completely
	pub.barrier()        // and the publisher's first frame is the barrier's answer
}

func TestAcksArePerUserID(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	m1 := publishStored(t, e, pub, ciphertext(10, "one"), bob.ID())
	m2 := publishStored(t, e, pub, ciphertext(10, "two"), bob.ID())

	a := e.dial()
	a.subscribe1("alice-device", bob.Key())
	a.expectDelivery()
	a.expectDelivery()
	a.ack(m1)
	a.barrier()
	// The ack commits asynchronously: wait for it through the metric.
	eventually(t, "ack committed", func() bool { return e.metric("courier_relay_messages_acked_total") >= 1 })
	a.ws.Close(websocket.StatusNormalClosure, "")

	a2 := e.dial()
	a2.subscribe1("alice-device", bob.Key())
	if d := a2.expectDelivery(); d.ID != m2 {
		t.Fatalf("after ack of m1, replay starts with %s, want m2 %s", d.ID, m2)
	}
	b := e.dial()
	b.subscribe1("other-device", bob.Key())
	if d := b.expectDelivery(); d.ID != m1 {
		t.Fatalf("another userID gets %s first, want m1", d.ID)
	}
	b.expectDelivery()
}

func TestTooLargeMessage(t *testing.T) {
	const max = 1000
	e := newEnv(t, func(c *relay.Config) { c.Limits.MaxMessageBytes = max })
	bob := newIdentity(t, 1)
	sub := e.dial()
	sub.subscribe1("s", bob.Key())

	pub := e.dial()
	pub.publish(ciphertext(max+1, "big"), bob.ID(), "")
	pub.expectError("too_large: ")
	// The connection stays; a message at the limit goes through, and the
	// large one was never stored.
	pub.publish(ciphertext(max, "fits"), bob.ID(), "")
	if d := sub.expectDelivery(); d.ID != wire.MessageID(ciphertext(max, "fits")) {
		t.Fatalf("got %s", d.ID)
	}
	late := e.dial()
	late.subscribe1("late", bob.Key())
	if d := late.expectDelivery(); d.ID != wire.MessageID(ciphertext(max, "fits")) {
		t.Fatalf("replay has %s", d.ID)
	}
	late.barrier()
}

func TestOversizedFrameCloses1009(t *testing.T) {
	const max = 1000
	e := newEnv(t, func(c *relay.Config) { c.Limits.MaxMessageBytes = max })
	c := e.dial()
	c.send([]byte(strings.Repeat(" ", int(wire.MaxFrameBytes(max))+1)))
	c.expectClose(websocket.StatusMessageTooBig)

	// A frame of exactly the limit is read (and refused as JSON).
	c = e.dial()
	c.send([]byte(strings.Repeat(" ", int(wire.MaxFrameBytes(max)))))
	c.expectError("invalid: ")
}

func TestMalformedFramesKeepTheConnection(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	b64 := base64.StdEncoding.EncodeToString([]byte("hello"))
	tests := []struct{ name, frame, want string }{
		{"invalid JSON", `{"Type":`, "invalid JSON"},
		{"not an object", `[1,2,3]`, "JSON object"},
		{"null", `null`, "missing"},
		{"no Type", `{"Data":{}}`, `missing "Type"`},
		{"unknown Type", `{"Type":"Hello","Data":{}}`, `unknown Type "Hello"`},
		{"server frame type", `{"Type":"PublishResult","Data":{}}`, `unknown Type`},
		{"no Data", `{"Type":"EncryptedMessage"}`, `without "Data"`},
		{"Data wrong type", `{"Type":"EncryptedMessage","Data":"x"}`, "JSON object"},
		{"field wrong type", `{"Type":"EncryptedMessage","Data":{"encryptedMessage":5,"recipient":"x"}}`, `"encryptedMessage"`},
		{"bad base64", fmt.Sprintf(`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"not base64!","recipient":%q}}`, bob.ID()), "base64"},
		{"unpadded base64", fmt.Sprintf(`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"aGVsbG8","recipient":%q}}`, bob.ID()), "base64"},
		{"empty ciphertext", fmt.Sprintf(`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"","recipient":%q}}`, bob.ID()), "empty"},
		{"bad recipient", fmt.Sprintf(`{"Type":"EncryptedMessage","Data":{"encryptedMessage":%q,"recipient":"QmNope"}}`, b64), "recipient"},
		{"recipient is a subscription key of sha1", fmt.Sprintf(`{"Type":"EncryptedMessage","Data":{"encryptedMessage":%q,"recipient":"5dqvXR93VnV1Grn96DBGdqEQAbJe1e"}}`, b64), "recipient"},
		{"ack before subscribe", `{"Type":"AckMessage","Data":{"messageID":"` + wire.MessageID(nil) + `"}}`, "before SubscribeMessage"},
		{"binary garbage", "\x00\xff\xfe", "invalid JSON"},
	}
	c := e.dial()
	for _, tt := range tests {
		c.send([]byte(tt.frame))
		if got := c.expectError(tt.want); !strings.HasPrefix(got, "invalid: ") {
			t.Errorf("%s: error %q lacks the invalid: prefix", tt.name, got)
		}
	}
	// Still usable.
	c.subscribe1("u", bob.Key())
	c.send([]byte(`{"Type":"AckMessage","Data":{"messageID":"xyz"}}`))
	c.expectError("not a message ID")
	c.sendFrame(wire.TypeSubscribe, wire.Subscribe{UserID: "u", SubscriptionKey: bob.Key()})
	c.expectError("already subscribed")
	c.publish(ciphertext(5, "ok"), bob.ID(), "")
	c.expectDelivery()
	if got := e.metric(`courier_relay_rejected_frames_total{reason="malformed"}`); got < 9 {
		t.Errorf("rejected malformed = %v", got)
	}
}

// TestFloodOfGarbage: a client that sends garbage as fast as it can and
// never reads is cut off; nobody else notices.
func TestFloodOfGarbage(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Limits.SendQueue = 16; c.Limits.WriteTimeout = time.Second })
	bob := newIdentity(t, 1)
	sub := e.dial()
	sub.subscribe1("s", bob.Key())

	flood := e.dialSilent()
	frame := []byte(strings.Repeat("x", 1000))
	ctx := t.Context()
	floodErr := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(waitTimeout)
		for time.Now().Before(deadline) {
			if err := flood.Write(ctx, websocket.MessageText, frame); err != nil {
				floodErr <- err
				return
			}
		}
		floodErr <- nil
	}()
	// Others are served meanwhile.
	pub := e.dial()
	for i := range 20 {
		pub.publish(ciphertext(10, fmt.Sprint("during flood ", i)), bob.ID(), "")
		sub.expectDelivery()
	}
	if err := <-floodErr; err == nil {
		t.Fatalf("the server read garbage for %v from a client that never read its answers", waitTimeout)
	}
	if got := e.metric(`courier_relay_disconnects_total{reason="slow_consumer"}`); got < 1 {
		t.Errorf("slow_consumer disconnects = %v", got)
	}
}

// TestLiveAndReplayRace publishes while subscribers connect: each gets
// every message exactly once.
func TestLiveAndReplayRace(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	const total = 400
	want := make(map[string]bool)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			pub.publish(ciphertext(100, fmt.Sprint("race ", i)), bob.ID(), "")
		}
	}()
	var subs []*client
	for i := range 4 {
		c := e.dial()
		c.subscribe1(fmt.Sprint("racer", i), bob.Key())
		subs = append(subs, c)
	}
	<-done
	for range total {
		r := pub.expect(wire.KindPublishResult).PublishResult
		want[r.ID] = true
	}
	for i, c := range subs {
		seen := make(map[string]bool)
		for len(seen) < total {
			d := c.expectDelivery()
			if seen[d.ID] {
				t.Fatalf("subscriber %d got %s twice", i, d.ID)
			}
			if !want[d.ID] {
				t.Fatalf("subscriber %d got unknown %s", i, d.ID)
			}
			seen[d.ID] = true
		}
		c.barrier()
	}
}

// FuzzClientFrames sends arbitrary frames to a live relay: it answers or
// closes, and keeps serving.
func FuzzClientFrames(f *testing.F) {
	bob := newIdentity(f, 1)
	for _, s := range []string{
		`{"Type":"SubscribeMessage","Data":{"userID":"u","subscriptionKey":"` + bob.Key() + `"}}`,
		`{"userID":"u","subscriptionKey":"` + bob.Key() + `"}`,
		`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"aGk=","recipient":"` + bob.ID() + `","ref":"1"}}`,
		`{"Type":"AckMessage","Data":{"messageID":"` + wire.MessageID(nil) + `"}}`,
		`{"Type":"AuthRequest","Data":{"peerID":"` + bob.ID() + `"}}`,
		`{"Type":"SubscribeMessage","Data":{"userID":"` + bob.ID() + `","subscriptionKey":"` + bob.Key() + `","protocol":2,"pubkey":"00","signature":"00"}}`,
		`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"","recipient":""}}`,
		`{}`, `[]`, `null`, `"`, `{"Type":null,"Data":null}`, "\xff",
	} {
		f.Add([]byte(s))
	}
	e := newEnv(f, func(c *relay.Config) {
		c.Limits.MaxMessageBytes = 1 << 10
		// Every input is a new connection from 127.0.0.1.
		c.Limits.MaxConnectionsPerIP = 0
		c.Limits.SubscribeRate = 0
	})
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) == 0 {
			return // coder/websocket sends no empty text frame we could read
		}
		et := *e
		et.t = t
		c := et.dial()
		if err := c.ws.Write(t.Context(), websocket.MessageText, frame); err != nil {
			t.Fatal(err)
		}
		_ = c.ws.Write(t.Context(), websocket.MessageText, []byte(`{"Type":"Barrier","Data":{}}`))
		for {
			select {
			case b := <-c.frames:
				if _, err := wire.ParseServerFrame(b); err != nil {
					t.Fatalf("server sent %q: %v", b, err)
				}
				if strings.Contains(string(b), `unknown Type \"Barrier\"`) {
					return
				}
			case <-c.done:
				if code := websocket.CloseStatus(c.err); code != websocket.StatusPolicyViolation && code != websocket.StatusMessageTooBig {
					t.Fatalf("closed with %v", c.err)
				}
				return
			case <-time.After(waitTimeout):
				t.Fatal("no answer")
			}
		}
	})
}

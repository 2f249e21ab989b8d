package relay_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"courier/relay"
	"courier/wire"
)

// The attacks of issue 7, tried as an attacker would, so that they stay
// closed. Each test names the hole it guards.

// hugeField is 1 MB of base58 digits: decoding it as base58 took about 6 s
// of CPU on the connection's reader before hole 1 was closed.
var hugeField = strings.Repeat("z", 1<<20)

// maxAnswerBytes bounds an error answer: it may quote a few dozen
// characters of the client's input, never the input.
const maxAnswerBytes = 512

// TestHugeFieldsAreRefusedCheaply (hole 1): a 1 MB recipient, peerID,
// userID or subscriptionKey is refused at once, with a short error.
func TestHugeFieldsAreRefusedCheaply(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	tests := []struct {
		name  string
		frame string
		want  string
		close bool // a refused subscribe closes
		auth  bool // authenticate first (a level-2 publish)
		chal  bool // ask for a challenge first (a level-2 subscribe)
	}{
		{name: "level-1 recipient", frame: fmt.Sprintf(`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"aGk=","recipient":%q}}`, hugeField), want: "recipient"},
		{name: "level-2 recipient", frame: fmt.Sprintf(`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"aGk=","recipient":%q,"ref":"r"}}`, hugeField), want: "recipient", auth: true},
		{name: "AuthRequest peerID", frame: fmt.Sprintf(`{"Type":"AuthRequest","Data":{"peerID":%q}}`, hugeField), want: "invalid peer ID", close: true},
		{name: "subscriptionKey", frame: fmt.Sprintf(`{"Type":"SubscribeMessage","Data":{"userID":"u","subscriptionKey":%q}}`, hugeField), want: "invalid subscription key", close: true},
		{name: "userID", frame: fmt.Sprintf(`{"userID":%q,"subscriptionKey":%q}`, hugeField, bob.Key()), want: "userID is longer", close: true},
		{name: "userID with a huge key", frame: fmt.Sprintf(`{"userID":%q,"subscriptionKey":%q}`, hugeField, hugeField), want: "userID is longer", close: true},
		{name: "level-2 userID", frame: fmt.Sprintf(`{"userID":%q,"subscriptionKey":%q,"protocol":2,"pubkey":"00","signature":"00"}`, hugeField, bob.Key()), want: "invalid peer ID", close: true, chal: true},
		{name: "unknown Type", frame: fmt.Sprintf(`{"Type":%q,"Data":{}}`, hugeField), want: "unknown Type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := e.in(t)
			c := e.dial()
			if tt.auth {
				c.auth2(newIdentity(t, 50), 0)
			}
			if tt.chal {
				c.challenge(bob.ID())
			}
			start := time.Now()
			c.send([]byte(tt.frame))
			b := c.nextRaw()
			el := time.Since(start)
			f, err := wire.ParseServerFrame(b)
			if err != nil {
				t.Fatalf("answer %.300s: %v", b, err)
			}
			reason := f.Error
			if f.Kind == wire.KindPublishResult {
				reason = f.PublishResult.Reason
			}
			if !strings.Contains(reason, tt.want) {
				t.Fatalf("answer %.300s does not contain %q", b, tt.want)
			}
			if len(b) > maxAnswerBytes {
				t.Errorf("answer is %d bytes: %.300s…", len(b), b)
			}
			// Decoding took seconds; parsing 1 MB of JSON takes milliseconds,
			// even under -race on a loaded machine.
			if el > 2*time.Second {
				t.Errorf("answered after %v", el)
			}
			if tt.close {
				c.expectClose(websocket.StatusPolicyViolation)
			} else {
				c.barrier() // still served
			}
		})
	}
}

// TestSubscribeWithWrongTypesCloses (hole 8): a level-1 subscribe whose
// fields are not strings is refused like any other bad subscribe: an
// {"error": …} answer, then the connection is closed with 1008.
func TestSubscribeWithWrongTypesCloses(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	for _, tt := range []struct{ name, frame string }{
		{"key is a number", `{"Type":"SubscribeMessage","Data":{"userID":"u","subscriptionKey":42}}`},
		{"key is an object", `{"Type":"SubscribeMessage","Data":{"userID":"u","subscriptionKey":{"k":1}}}`},
		{"key is null", `{"Type":"SubscribeMessage","Data":{"userID":"u","subscriptionKey":null}}`},
		{"userID is a number", fmt.Sprintf(`{"Type":"SubscribeMessage","Data":{"userID":7,"subscriptionKey":%q}}`, bob.Key())},
		{"bare, key is a number", `{"userID":"u","subscriptionKey":42}`},
		{"bare, userID is an array", fmt.Sprintf(`{"userID":[],"subscriptionKey":%q}`, bob.Key())},
		{"Data is a string", `{"Type":"SubscribeMessage","Data":"x"}`},
		{"protocol is a string", fmt.Sprintf(`{"Type":"SubscribeMessage","Data":{"userID":"u","subscriptionKey":%q,"protocol":"2"}}`, bob.Key())},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := e.in(t)
			c := e.dial()
			c.send([]byte(tt.frame))
			c.expect(wire.KindError)
			c.expectClose(websocket.StatusPolicyViolation)
		})
	}
	// Other malformed frames before subscribing still leave it open.
	c := e.dial()
	c.send([]byte(`{"Type":"AckMessage","Data":{"messageID":42}}`))
	c.expect(wire.KindError)
	c.subscribe1("u", bob.Key())
}

// TestReplayLeavesRoomForResults (hole 3): a replay used to fill the send
// queue while the client paused, and the client's own PublishResult then
// found it full and closed the connection with 1013 (seen: 6,000 x 8 KB
// backlog, a 2.5 s pause, one publish: closed after 450 deliveries, no
// result). The replay now stops at a low-water mark: the result comes,
// the connection stays, and every message arrives.
func TestReplayLeavesRoomForResults(t *testing.T) {
	const backlog, size = 6000, 8 << 10
	// Messages up to 32 KiB: replay pages of 256, as a relay for small
	// messages would run.
	e := newEnv(t, func(c *relay.Config) { c.Limits.MaxMessageBytes = 32 << 10 })
	start := time.Now()
	bob := newIdentity(t, 1)
	carol := newIdentity(t, 2)
	storeBacklog(t, e, bob, backlog, size)
	t.Logf("backlog stored in %v", time.Since(start))

	// Bob reads by hand: the handshake, then nothing for 2.5 s.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, e.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	ws.SetReadLimit(-1)
	read := func() wire.ServerFrame {
		t.Helper()
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		f, err := wire.ParseServerFrame(b)
		if err != nil {
			t.Fatalf("frame %.200s: %v", b, err)
		}
		return f
	}
	write := func(typ string, data any) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, wire.ClientFrameBytes(typ, data)); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	write(wire.TypeAuthRequest, wire.AuthRequest{PeerID: bob.ID()})
	f := read()
	if f.Kind != wire.KindAuthChallenge {
		t.Fatalf("got %+v", f)
	}
	write(wire.TypeSubscribe, bob.signedSubscribe(testHost, f.AuthChallenge.Nonce, bob.qm))
	if f := read(); f.Kind != wire.KindSubscribed {
		t.Fatalf("got %+v", f)
	}
	time.Sleep(2500 * time.Millisecond) // the client's pause: the scenario, not a wait for a condition
	start = time.Now()
	write(wire.TypePublish, wire.Publish{EncryptedMessage: base64.StdEncoding.EncodeToString(ciphertext(10, "bob to carol")), Recipient: carol.ID(), Ref: "mine"})

	got := make(map[string]bool)
	var result *wire.PublishResult
	drained := false
	for !drained || result == nil {
		f := read()
		switch f.Kind {
		case wire.KindDelivery:
			got[f.Delivery.ID] = true
		case wire.KindPublishResult:
			result = f.PublishResult
		case wire.KindDrained:
			drained = true
			if f.Drained.Count != backlog {
				t.Errorf("Drained %d, want %d", f.Drained.Count, backlog)
			}
		default:
			t.Fatalf("unexpected %+v", f)
		}
	}
	t.Logf("replayed in %v", time.Since(start))
	if result.Ref != "mine" || result.Status != wire.StatusQueued {
		t.Errorf("result %+v", *result)
	}
	if len(got) != backlog {
		t.Errorf("%d of %d replayed", len(got), backlog)
	}
	// Still open and served.
	write(wire.TypeAck, wire.Ack{MessageID: "xyz"})
	if f := read(); f.Kind != wire.KindLevel2Error {
		t.Fatalf("got %+v", f)
	}
}

// storeBacklog puts n messages of size bytes for id straight into the
// relay's store (faster than publishing them, the same rows).
func storeBacklog(t *testing.T, e *env, id identity, n, size int) []string {
	t.Helper()
	ids := make([]string, n)
	results := make([]<-chan relay.PutResult, n)
	for i := range n {
		ct := ciphertext(size, fmt.Sprintf("backlog %s %06d", id.ID(), i))
		ids[i] = wire.MessageID(ct)
		results[i] = e.store.Put(relay.Message{ID: ids[i], Key: id.Key(), Recipient: id.ID(), Ciphertext: ct}, nil)
	}
	for _, ch := range results {
		if r := <-ch; r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	return ids
}

package relay_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

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

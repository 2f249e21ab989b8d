package wire

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseClientFrame(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		check func(t *testing.T, f ClientFrame)
	}{
		{"wrapped subscribe", `{"Type":"SubscribeMessage","Data":{"userID":"u1","subscriptionKey":"k"}}`, func(t *testing.T, f ClientFrame) {
			if f.Subscribe == nil || f.Subscribe.UserID != "u1" || f.Subscribe.SubscriptionKey != "k" || f.Subscribe.Protocol != 0 {
				t.Errorf("got %+v", f.Subscribe)
			}
		}},
		{"bare subscribe", `{"userID":"u1","subscriptionKey":"k"}`, func(t *testing.T, f ClientFrame) {
			if f.Type != TypeSubscribe || f.Subscribe.UserID != "u1" {
				t.Errorf("got %+v", f)
			}
		}},
		{"level-2 subscribe", `{"Type":"SubscribeMessage","Data":{"userID":"u","subscriptionKey":"k","protocol":2,"pubkey":"ab","signature":"cd"}}`, func(t *testing.T, f ClientFrame) {
			if f.Subscribe.Protocol != 2 || f.Subscribe.PubKey != "ab" || f.Subscribe.Signature != "cd" {
				t.Errorf("got %+v", f.Subscribe)
			}
		}},
		{"ack", `{"Type":"AckMessage","Data":{"messageID":"m"}}`, func(t *testing.T, f ClientFrame) {
			if f.Ack == nil || f.Ack.MessageID != "m" {
				t.Errorf("got %+v", f)
			}
		}},
		{"publish with ref and extra field", `{"Type":"EncryptedMessage","Data":{"encryptedMessage":"eA==","recipient":"r","ref":"7","x":1}}`, func(t *testing.T, f ClientFrame) {
			if f.Publish == nil || f.Publish.Ref != "7" || f.Publish.Recipient != "r" {
				t.Errorf("got %+v", f.Publish)
			}
		}},
		{"publish with fallback", `{"Type":"EncryptedMessage","Data":{"encryptedMessage":"eA==","recipient":"r","fallback":"relay"}}`, func(t *testing.T, f ClientFrame) {
			if f.Publish == nil || f.Publish.Fallback != FallbackRelay {
				t.Errorf("got %+v", f.Publish)
			}
		}},
		{"auth request", `{"Type":"AuthRequest","Data":{"peerID":"p"}}`, func(t *testing.T, f ClientFrame) {
			if f.AuthRequest == nil || f.AuthRequest.PeerID != "p" {
				t.Errorf("got %+v", f)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseClientFrame([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, f)
		})
	}
}

func TestParseClientFrameRejects(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"not JSON", `{"Type":`, "invalid JSON"},
		{"array", `[1,2]`, "JSON object"},
		{"no type", `{"Data":{}}`, `missing "Type"`},
		{"unknown type", `{"Type":"Nope","Data":{}}`, `unknown Type "Nope"`},
		{"no data", `{"Type":"AckMessage"}`, `without "Data"`},
		{"null data", `{"Type":"AckMessage","Data":null}`, `without "Data"`},
		{"wrong field type", `{"Type":"EncryptedMessage","Data":{"encryptedMessage":5,"recipient":"r"}}`, `"encryptedMessage"`},
		{"type not string", `{"Type":5,"Data":{}}`, "Type"},
		{"bare with wrong type", `{"userID":1,"subscriptionKey":"k"}`, `"userID"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseClientFrame([]byte(tt.in))
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseClientFrame(%s) = %v, want ErrMalformed mentioning %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestServerFramesRoundTrip(t *testing.T) {
	if string(SubscribeOK) != `{"subscribe": true}` {
		t.Fatalf("SubscribeOK = %s", SubscribeOK)
	}
	if got := string(ErrorFrame(`bad "key"`)); got != `{"error": "bad \"key\""}` {
		t.Errorf("ErrorFrame = %s", got)
	}
	ct := []byte("ciphertext\x00\xff")
	id := MessageID(ct)
	frames := []struct {
		b    []byte
		kind ServerKind
	}{
		{SubscribeOK, KindSubscribed},
		{ErrorFrame("x"), KindError},
		{DeliveryFrame(id, ct), KindDelivery},
		{ChallengeFrame(AuthChallenge{Nonce: "n", Host: "h"}), KindAuthChallenge},
		{PublishResultFrame(PublishResult{ID: id, Ref: "r", Status: StatusQueued}), KindPublishResult},
		{DrainedFrame(3), KindDrained},
		{Level2ErrorFrame("why"), KindLevel2Error},
	}
	for _, fr := range frames {
		f, err := ParseServerFrame(fr.b)
		if err != nil || f.Kind != fr.kind {
			t.Errorf("ParseServerFrame(%s) = %+v, %v; want kind %d", fr.b, f, err, fr.kind)
		}
	}
	f, _ := ParseServerFrame(DeliveryFrame(id, ct))
	got, err := base64.StdEncoding.DecodeString(f.Delivery.EncryptedMessage)
	if err != nil || !bytes.Equal(got, ct) || f.Delivery.ID != id {
		t.Errorf("delivery round trip: %+v %v", f.Delivery, err)
	}
}

func TestDecodeCiphertext(t *testing.T) {
	ok := base64.StdEncoding.EncodeToString(make([]byte, 100))
	if b, err := DecodeCiphertext(ok, 100); err != nil || len(b) != 100 {
		t.Fatalf("100 bytes at limit 100: %v", err)
	}
	if _, err := DecodeCiphertext(ok, 99); !errors.Is(err, ErrTooLarge) {
		t.Errorf("100 bytes at limit 99: %v, want ErrTooLarge", err)
	}
	huge := strings.Repeat("A", 1<<20)
	if _, err := DecodeCiphertext(huge, 1000); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge: %v, want ErrTooLarge before decoding", err)
	}
	for _, bad := range []string{"", "not base64!", "eA", "eA=", "-_-_"} {
		if _, err := DecodeCiphertext(bad, 1000); err == nil || errors.Is(err, ErrTooLarge) {
			t.Errorf("DecodeCiphertext(%q) = %v, want a base64 error", bad, err)
		}
	}
}

// describe prints a parsed frame with its Data, for failure messages.
func describe(f ClientFrame) string {
	return fmt.Sprintf("%s %+v %+v %+v %+v", f.Type, f.Subscribe, f.Ack, f.Publish, f.AuthRequest)
}

// TestParseFastTakesOrdinaryFrames: the frames clients send in the
// ordinary way take the one-pass path (else every publish would pay for
// encoding/json again), and read the same as through encoding/json.
func TestParseFastTakesOrdinaryFrames(t *testing.T) {
	ct := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xfb, 0x01}, 512))
	frames := [][]byte{
		ClientFrameBytes(TypePublish, Publish{EncryptedMessage: ct, Recipient: "QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUzSg", Ref: "ref-1"}),
		ClientFrameBytes(TypePublish, Publish{EncryptedMessage: ct, Recipient: "QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUzSg"}),
		ClientFrameBytes(TypePublish, Publish{EncryptedMessage: ct, Recipient: "QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUzSg", Ref: "r", Fallback: FallbackRelay}),
		ClientFrameBytes(TypeAck, Ack{MessageID: MessageID([]byte("x"))}),
		ClientFrameBytes(TypeSubscribe, Subscribe{UserID: "u", SubscriptionKey: "k"}),
		ClientFrameBytes(TypeSubscribe, Subscribe{UserID: "u", SubscriptionKey: "k", Protocol: 2, PubKey: "ab", Signature: "cd"}),
		ClientFrameBytes(TypeAuthRequest, AuthRequest{PeerID: "p"}),
		[]byte(`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"eA==","recipient":"r","ref":"é"}}`),
	}
	for _, b := range frames {
		fast, ok := parseFast(b)
		if !ok {
			t.Errorf("parseFast refused %.80s", b)
			continue
		}
		slow, err := parseSlow(b)
		if err != nil || !reflect.DeepEqual(fast, slow) {
			t.Errorf("%.80s: parseFast read %s, encoding/json %s (%v)", b, describe(fast), describe(slow), err)
		}
	}
}

// FuzzPublishResultFrame: the hand-built PublishResult frame is exactly
// what encoding/json makes.
func FuzzPublishResultFrame(f *testing.F) {
	f.Add(MessageID([]byte("x")), "ref-1", StatusQueued, "")
	f.Add(MessageID([]byte("x")), "", StatusRejected, ReasonInvalid+"recipient: not a peer ID")
	f.Add("id", "<&>", "s", "\"quoted\" \\ é \x00")
	f.Fuzz(func(t *testing.T, id, ref, status, reason string) {
		r := PublishResult{ID: id, Ref: ref, Status: status, Reason: reason}
		if got, want := PublishResultFrame(r), typedFrame(TypePublishResult, r); !bytes.Equal(got, want) {
			t.Fatalf("PublishResultFrame(%+v) = %s, encoding/json makes %s", r, got, want)
		}
	})
}

func BenchmarkParseClientFrame(b *testing.B) {
	frame := ClientFrameBytes(TypePublish, Publish{
		EncryptedMessage: base64.StdEncoding.EncodeToString(make([]byte, 1024)),
		Recipient:        "QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUzSg",
		Ref:              "r",
	})
	b.Run("one-pass", func(b *testing.B) {
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			if _, err := ParseClientFrame(frame); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			if _, err := parseSlow(frame); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzParseClientFrame: no input panics, and whatever parses re-encodes and
// parses to the same type.
func FuzzParseClientFrame(f *testing.F) {
	for _, s := range []string{
		`{"Type":"SubscribeMessage","Data":{"userID":"u1","subscriptionKey":"k"}}`,
		`{"userID":"u1","subscriptionKey":"k"}`,
		`{"Type":"AckMessage","Data":{"messageID":"m"}}`,
		`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"eA==","recipient":"r","ref":"1"}}`,
		`{"Type":"AuthRequest","Data":{"peerID":"p"}}`,
		`{"Type":"X"}`, `[]`, `null`, `"`, `{"Type":"AckMessage","Data":[]}`,
	} {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		` { "Type" : "AckMessage" , "Data" : { "messageID" : "m" } } `,
		`{"Data":{"protocol":2,"userID":"u","subscriptionKey":"k","pubkey":"","signature":"s"},"Type":"SubscribeMessage"}`,
		`{"Type":"SubscribeMessage","Data":{"protocol":02}}`,
		`{"Type":"SubscribeMessage","Data":{"protocol":2.0}}`,
		`{"Type":"SubscribeMessage","Data":{"protocol":1e1}}`,
		`{"Type":"SubscribeMessage","Data":{"protocol":9999999999}}`,
		`{"Type":"AckMessage","Data":{"messageID":"m","messageID":"n"}}`,
		`{"Type":"AckMessage","Data":{"MessageID":"m"}}`,
		`{"Type":"AckMessage","Data":{"messageID":"m\u0041"}}`,
		"{\"Type\":\"AckMessage\",\"Data\":{\"messageID\":\"\xff\"}}",
		"{\"Type\":\"AckMessage\",\"Data\":{\"messageID\":\"\xc3\xa9\"}}",
		`{"Type":"AckMessage","Data":{"recipient":"r"}}`,
		`{"Type":"AckMessage","Data":{}}`,
		`{"Type":"AckMessage","Data":{"messageID":"m"}}x`,
		`{"Type":"AckMessage","Type":"AuthRequest","Data":{}}`,
		`{"Type":"EncryptedMessage","Data":{"encryptedMessage":"eA==","recipient":"r"},"userID":"u"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// The one-pass reader agrees with encoding/json wherever it answers.
		if fast, ok := parseFast(b); ok {
			slow, err := parseSlow(b)
			if err != nil {
				t.Fatalf("parseFast accepted %q, encoding/json refuses it: %v", b, err)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("%q: parseFast read %s, encoding/json %s", b, describe(fast), describe(slow))
			}
		}
		fr, err := ParseClientFrame(b)
		if err != nil {
			return
		}
		var data any
		switch fr.Type {
		case TypeSubscribe:
			data = fr.Subscribe
		case TypeAck:
			data = fr.Ack
		case TypePublish:
			data = fr.Publish
		case TypeAuthRequest:
			data = fr.AuthRequest
		default:
			t.Fatalf("parsed unknown type %q", fr.Type)
		}
		again, err := ParseClientFrame(ClientFrameBytes(fr.Type, data))
		if err != nil || again.Type != fr.Type {
			t.Fatalf("re-encoded %s does not parse back: %v", fr.Type, err)
		}
	})
}

// FuzzParseServerFrame: what a client reads from a relay never panics it.
func FuzzParseServerFrame(f *testing.F) {
	f.Add([]byte(`{"subscribe": true}`))
	f.Add(DeliveryFrame(MessageID(nil), nil))
	f.Add(PublishResultFrame(PublishResult{ID: "i", Status: StatusDelivered}))
	f.Add([]byte(`{"Type":"Drained","Data":{"count":"x"}}`))
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = ParseServerFrame(b) })
}

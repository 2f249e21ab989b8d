package devnode

import (
	"bytes"
	"encoding/hex"
	"reflect"
	"testing"
	"time"
)

// Golden serializations made by google.golang.org/protobuf from
// openbazaar-go's pb/protos/message.proto (MarshalOptions{Deterministic:
// true}, which emits golang/protobuf's field order, the library
// openbazaar-go signs with). Signatures cover these bytes, so ours must match
// exactly.
func TestMarshalGolden(t *testing.T) {
	ts := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{
			"chat message",
			encodeMessage(Message{Type: TypeChat, Chat: NewChat("hi", "subj", ts)}),
			"080112630a18747970652e676f6f676c65617069732e636f6d2f4368617412470a2e516d55613262366a74426b52506a4b707277395856704438505259444d7a617a59624b6d6a4c4c7066703745416b12047375626a1a026869220b08d983e2b106108094ef3a",
		},
		{
			"unicode chat",
			encodeMessage(Message{Type: TypeChat, Chat: NewChat("héllo wörld ✓", "subj", ts)}),
			"080112720a18747970652e676f6f676c65617069732e636f6d2f4368617412560a2e516d55366f326d75777a6648554352786b664c4c6748324a444e31613468754e75453147716f744b73315861694b12047375626a1a1168c3a96c6c6f2077c3b6726c6420e29c93220b08d983e2b106108094ef3a",
		},
		{
			"negative requestId, isResponse, empty text",
			encodeMessage(Message{Type: TypeChat, Chat: NewChat("", "", time.Unix(1700000000, 0)), RequestID: -5, IsResponse: true}),
			"080112540a18747970652e676f6f676c65617069732e636f6d2f4368617412380a2e516d567846614439546d52784a526659704b4659467266334374754633416733327a69654e664a31676736676e7322060880e2cfaa0618fbffffffffffffffff012001",
		},
		{
			"chat with a zero (epoch) timestamp",
			Chat{MessageID: "QmX", Message: "from pb", Timestamp: time.Unix(0, 0), Flag: FlagRead}.marshal(),
			"0a03516d581a0766726f6d20706222002802",
		},
		{"PING without payload", encodeMessage(Message{}), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hex.EncodeToString(tt.got); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestUnmarshalRejects(t *testing.T) {
	tests := []struct {
		name string
		b    string
		fn   func([]byte) error
	}{
		{"envelope: truncated length", "0a05", envErr},
		{"envelope: no message", "1204aabbccdd", envErr},
		{"envelope: two messages", "0a00" + "0a00", envErr},
		{"envelope: message as varint", "0801", envErr},
		{"envelope: group wire type", "0b", envErr},
		{"envelope: field number 0", "0200", envErr},
		{"message: type as bytes", "0a00", msgErr},
		{"message: truncated varint", "08ff", msgErr},
		{"message: payload type URL not UTF-8", "1203" + "0a01ff", msgErr},
		{"chat: message not UTF-8", "1a01ff", chatErr},
		{"chat: timestamp nanos out of range", "2206" + "108094ebdc03", chatErr},
		{"chat: timestamp seconds out of range", "2207" + "088083d1ffaf07", chatErr},
		{"chat: flag as bytes", "2a00", chatErr},
		{"fixed64 truncated", "0901", msgErr},
		{"fixed32 truncated", "0d01", msgErr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.fn(mustHex(t, tt.b)); err == nil {
				t.Errorf("%s decoded without error", tt.b)
			}
		})
	}
}

func envErr(b []byte) error  { _, err := unmarshalEnvelope(b); return err }
func msgErr(b []byte) error  { _, err := unmarshalMessage(b); return err }
func chatErr(b []byte) error { _, err := unmarshalChat(b); return err }

func TestUnmarshalSkipsUnknownFields(t *testing.T) {
	// Message{type CHAT} plus field 9 varint, field 10 fixed64, field 11
	// bytes and field 12 fixed32, none of which Message has.
	b := mustHex(t, "0801"+"4801"+"510102030405060708"+"5a0161"+"6501020304")
	m, err := unmarshalMessage(b)
	if err != nil || m.Type != TypeChat {
		t.Fatalf("unmarshalMessage = %+v, %v", m, err)
	}
}

func FuzzUnmarshalMessage(f *testing.F) {
	f.Add(encodeMessage(Message{Type: TypeChat, Chat: NewChat("hi", "s", time.Unix(5, 6))}))
	f.Add(encodeMessage(Message{Type: TypeOrder, TypeURL: "u", Payload: []byte{1}, RequestID: -1, IsResponse: true}))
	f.Add([]byte{0x08, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalMessage(b)
		if err != nil {
			return
		}
		again, err := unmarshalMessage(m.marshal())
		if err != nil || !reflect.DeepEqual(normalize(again), normalize(m)) {
			t.Fatalf("re-encoded message decodes to %+v (%v), want %+v", again, err, m)
		}
	})
}

// normalize makes empty and nil payloads compare equal.
func normalize(m pbMessage) pbMessage {
	if len(m.Payload) == 0 {
		m.Payload = nil
	}
	return m
}

func FuzzUnmarshalChat(f *testing.F) {
	f.Add(NewChat("hi", "subj", time.Unix(1700000000, 5)).marshal())
	f.Add(mustHex(f, "0a03516d581a0766726f6d20706222002802"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := unmarshalChat(b)
		if err != nil {
			return
		}
		again, err := unmarshalChat(c.marshal())
		if err != nil || again.MessageID != c.MessageID || again.Message != c.Message || again.Subject != c.Subject ||
			again.Flag != c.Flag || !again.Timestamp.Equal(c.Timestamp) {
			t.Fatalf("re-encoded chat decodes to %+v (%v), want %+v", again, err, c)
		}
	})
}

func FuzzUnmarshalEnvelope(f *testing.F) {
	f.Add(mustHex(f, protobufEnvelopeHex))
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := unmarshalEnvelope(b)
		if err != nil {
			return
		}
		again, err := unmarshalEnvelope(e.marshal())
		if err != nil || !bytes.Equal(again.Message, e.Message) || !bytes.Equal(again.PubKey, e.PubKey) || !bytes.Equal(again.Signature, e.Signature) {
			t.Fatalf("re-encoded envelope decodes to %+v (%v), want %+v", again, err, e)
		}
	})
}

// FuzzOpen puts arbitrary plaintext in a valid box: Open must refuse it or
// return a message signed by the key the envelope names, never panic.
func FuzzOpen(f *testing.F) {
	bob := testKey("bob")
	f.Add(mustHex(f, protobufEnvelopeHex))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, plaintext []byte) {
		ct, err := Encrypt(pubOf(bob), plaintext)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Open(ct, bob)
		if err == nil && (m.SenderPeerID == "" || len(m.SenderPubKey) != 32) {
			t.Fatalf("opened a message without a sender: %+v", m)
		}
	})
}

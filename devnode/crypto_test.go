package devnode

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mr-tron/base58"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"

	"courier/wire"
)

// testKey returns a deterministic Ed25519 key for name.
func testKey(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte(name))
	return ed25519.NewKeyFromSeed(seed[:])
}

func pubOf(priv ed25519.PrivateKey) ed25519.PublicKey { return priv.Public().(ed25519.PublicKey) }

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The vector of libsodium's test/default/ed25519_convert.c (its .exp file):
// crypto_sign_ed25519_pk_to_curve25519 and _sk_to_curve25519 of the key
// pair from this seed.
func TestX25519LibsodiumVector(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(mustHex(t, "421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee"))
	pk, err := X25519PublicKey(pubOf(priv))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(pk[:]), "f1814f0e8ff1043d8a44d25babff3cedcae6c22c3edaa48f857ae70de2baae50"; got != want {
		t.Errorf("X25519PublicKey = %s, want %s", got, want)
	}
	if got, want := hex.EncodeToString(X25519PrivateKey(priv)[:]), "8052030376d47112be7f73ed7a019293dd12ad910b654455798b4667d73de166"; got != want {
		t.Errorf("X25519PrivateKey = %s, want %s", got, want)
	}
}

// Both conversions must describe one X25519 key pair, so that box keys
// computed from either side agree.
func TestX25519ConversionsAgree(t *testing.T) {
	for i := range 16 {
		priv := testKey("agree" + string(rune('a'+i)))
		pub, err := X25519PublicKey(pubOf(priv))
		if err != nil {
			t.Fatal(err)
		}
		sk := X25519PrivateKey(priv)
		derived, err := curve25519.X25519(sk[:], curve25519.Basepoint)
		if err != nil || !bytes.Equal(derived, pub[:]) {
			t.Fatalf("key %d: X25519(converted private) = %x, converted public = %x (%v)", i, derived, pub, err)
		}
		ephPub, ephPriv, err := box.GenerateKey(strings.NewReader(strings.Repeat(string(rune('a'+i)), 32)))
		if err != nil {
			t.Fatal(err)
		}
		var sender, recipient [32]byte
		box.Precompute(&sender, pub, ephPriv)
		box.Precompute(&recipient, ephPub, sk)
		if sender != recipient {
			t.Fatalf("key %d: shared keys differ", i)
		}
	}
}

func TestX25519PublicKeyRejects(t *testing.T) {
	smallOrder := make([]byte, 32) // y = -1: the point of order 2
	copy(smallOrder, mustHex(t, "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"))
	identity := make([]byte, 32)
	identity[0] = 1
	notOnCurve := mustHex(t, "0200000000000000000000000000000000000000000000000000000000000000") // y = 2 has no x
	tests := []struct {
		name string
		key  []byte
	}{
		{"short", make([]byte, 31)},
		{"long", make([]byte, 33)},
		{"identity", identity},
		{"order 2", smallOrder},
		{"order 4 (y = 0)", make([]byte, 32)},
		{"not on the curve", notOnCurve},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := X25519PublicKey(tt.key); !errors.Is(err, ErrBadKey) {
				t.Errorf("X25519PublicKey(%x) = %v, want ErrBadKey", tt.key, err)
			}
			if _, err := Encrypt(tt.key, []byte("x")); !errors.Is(err, ErrBadKey) {
				t.Errorf("Encrypt to %x = %v, want ErrBadKey", tt.key, err)
			}
		})
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	alice, bob := testKey("alice"), testKey("bob")
	tests := []struct{ name, text string }{
		{"short", "hi"},
		{"empty", ""},
		{"unicode", "héllo wörld ✓ 🛒"},
		{"max chat length", strings.Repeat("x", 20000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now().Add(-time.Second)
			ct, err := Seal(pubOf(bob), alice, tt.text)
			if err != nil {
				t.Fatal(err)
			}
			if len(ct) < MinCiphertextSize+len(tt.text) {
				t.Fatalf("ciphertext is %d bytes, too short for the text", len(ct))
			}
			m, err := Open(ct, bob)
			if err != nil {
				t.Fatal(err)
			}
			wantSender := wire.PeerIDFromPublicKey(wire.MarshalPublicKey(pubOf(alice))).String()
			if m.SenderPeerID != wantSender || !bytes.Equal(m.SenderPubKey, pubOf(alice)) {
				t.Errorf("sender = %s, want %s", m.SenderPeerID, wantSender)
			}
			if m.Type != TypeChat || m.Text != tt.text || m.Chat == nil || m.Chat.Message != tt.text || m.TypeURL != ChatTypeURL {
				t.Errorf("opened %+v", m)
			}
			c := m.Chat
			if c.Flag != FlagMessage || c.Timestamp.Before(before) || c.MessageID != ChatMessageID(tt.text, "", c.Timestamp) {
				t.Errorf("chat = %+v", c)
			}
		})
	}
}

func TestSealIsRandomized(t *testing.T) {
	alice, bob := testKey("alice"), testKey("bob")
	m := Message{Type: TypeChat, Chat: NewChat("same", "", time.Unix(1, 0))}
	a, _ := SealMessage(pubOf(bob), alice, m)
	b, _ := SealMessage(pubOf(bob), alice, m)
	if bytes.Equal(a[:NonceSize+EphemeralKeySize], b[:NonceSize+EphemeralKeySize]) {
		t.Error("two seals share nonce and ephemeral key")
	}
}

// sealEnvelope encrypts a hand-made envelope, for the failure cases.
func sealEnvelope(t *testing.T, to ed25519.PublicKey, env pbEnvelope) []byte {
	t.Helper()
	ct, err := Encrypt(to, env.marshal())
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func TestOpenRejects(t *testing.T) {
	alice, bob, eve := testKey("alice"), testKey("bob"), testKey("eve")
	good, err := Seal(pubOf(bob), alice, "hi")
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x01
		return b
	}
	chatMsg := encodeMessage(Message{Type: TypeChat, Chat: NewChat("pay me", "", time.Now())})
	forged := signEnvelope(eve, chatMsg)
	forged.PubKey = wire.MarshalPublicKey(pubOf(alice)) // Eve claims to be Alice
	altered := signEnvelope(alice, chatMsg)
	altered.Message = encodeMessage(Message{Type: TypeChat, Chat: NewChat("pay eve", "", time.Now())})
	noSig := signEnvelope(alice, chatMsg)
	noSig.Signature = nil
	rsaKey := signEnvelope(alice, chatMsg)
	rsaKey.PubKey = append([]byte{0x08, 0x00, 0x12, 0x20}, pubOf(alice)...)
	wrongURL := signEnvelope(alice, encodeMessage(Message{Type: TypeChat, TypeURL: "type.googleapis.com/Order", Payload: []byte{0x0a, 0x01, 'x'}}))
	badChat := signEnvelope(alice, encodeMessage(Message{Type: TypeChat, TypeURL: ChatTypeURL, Payload: []byte{0x1a, 0x05, 'x'}}))

	tests := []struct {
		name string
		ct   []byte
		priv ed25519.PrivateKey
		want error
	}{
		{"sealed to someone else", good, eve, ErrDecrypt},
		{"nonce altered", flip(0), bob, ErrDecrypt},
		{"ephemeral key altered", flip(NonceSize + 3), bob, ErrDecrypt},
		{"tag altered", flip(NonceSize + EphemeralKeySize), bob, ErrDecrypt},
		{"body altered", flip(len(good) - 1), bob, ErrDecrypt},
		{"truncated", good[:len(good)-1], bob, ErrDecrypt},
		{"shorter than a box", good[:MinCiphertextSize-1], bob, ErrDecrypt},
		{"empty", nil, bob, ErrDecrypt},
		{"forged sender signature", sealEnvelope(t, pubOf(bob), forged), bob, ErrSignature},
		{"message altered after signing", sealEnvelope(t, pubOf(bob), altered), bob, ErrSignature},
		{"no signature", sealEnvelope(t, pubOf(bob), noSig), bob, ErrSignature},
		{"not an envelope", mustEncrypt(t, pubOf(bob), []byte("plain text")), bob, ErrMalformed},
		{"empty envelope", mustEncrypt(t, pubOf(bob), nil), bob, ErrMalformed},
		{"sender key not Ed25519", sealEnvelope(t, pubOf(bob), rsaKey), bob, ErrMalformed},
		{"CHAT with another payload type", sealEnvelope(t, pubOf(bob), wrongURL), bob, ErrMalformed},
		{"CHAT payload not a Chat", sealEnvelope(t, pubOf(bob), badChat), bob, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if m, err := Open(tt.ct, tt.priv); !errors.Is(err, tt.want) {
				t.Errorf("Open = %+v, %v; want %v", m, err, tt.want)
			}
		})
	}
}

func mustEncrypt(t *testing.T, to ed25519.PublicKey, plaintext []byte) []byte {
	t.Helper()
	ct, err := Encrypt(to, plaintext)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func TestOpenOtherMessageTypes(t *testing.T) {
	alice, bob := testKey("alice"), testKey("bob")
	sent := Message{Type: TypeOrder, TypeURL: "type.googleapis.com/RicardianContract", Payload: []byte{1, 2, 3}, RequestID: 7, IsResponse: true}
	ct, err := SealMessage(pubOf(bob), alice, sent)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Open(ct, bob)
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != TypeOrder || m.Type.String() != "ORDER" || m.TypeURL != sent.TypeURL || !bytes.Equal(m.Payload, sent.Payload) ||
		m.RequestID != 7 || !m.IsResponse || m.Chat != nil || m.Text != "" {
		t.Errorf("opened %+v", m)
	}
	// A message without payload, such as OFFLINE_ACK.
	ct, _ = SealMessage(pubOf(bob), alice, Message{Type: TypeOfflineAck})
	if m, err := Open(ct, bob); err != nil || m.Type != TypeOfflineAck || m.Payload != nil {
		t.Errorf("OFFLINE_ACK: %+v, %v", m, err)
	}
}

// An Envelope built by google.golang.org/protobuf from openbazaar-go's
// message.proto (Deterministic, which is golang/protobuf's field order), for
// a CHAT from testKey("alice") with requestId -1, a READ flag and a zero
// timestamp: what openbazaar-go's SendOfflineMessage puts inside the box.
const protobufEnvelopeHex = "0a3d0801122e0a18747970652e676f6f676c65617069732e636f6d2f4368617412120a03516d581a0766726f6d2070622200280218ffffffffffffffffff01" +
	"122408011220d5bf4a3fcce717b0388bcc2749ebc148ad9969b23f45ee1b605fd58778576ac4" +
	"1a40dde640ba94ac753988672ae53a52b1c4e60d393470b6729e1d1dc0ecb33f655204644864b42f4caadefac94efb9905463f0ac58cc63680d7724c8c7b0c7ae10e"

func TestOpenProtobufEnvelope(t *testing.T) {
	alice, bob := testKey("alice"), testKey("bob")
	ct := mustEncrypt(t, pubOf(bob), mustHex(t, protobufEnvelopeHex))
	m, err := Open(ct, bob)
	if err != nil {
		t.Fatal(err)
	}
	want := Chat{MessageID: "QmX", Message: "from pb", Timestamp: time.Unix(0, 0).UTC(), Flag: FlagRead}
	if m.SenderPeerID != PeerID(alice) || m.RequestID != -1 || m.Chat == nil || *m.Chat != want {
		t.Errorf("opened %+v, chat %+v", m, m.Chat)
	}
	// And the same envelope comes out of our encoder byte for byte.
	mine := signEnvelope(alice, encodeMessage(Message{Type: TypeChat, Chat: &want, RequestID: -1})).marshal()
	if got := hex.EncodeToString(mine); got != protobufEnvelopeHex {
		t.Errorf("our envelope:\n%s\nprotobuf's:\n%s", got, protobufEnvelopeHex)
	}
}

func TestChatMessageID(t *testing.T) {
	// The same instant in another zone: ptypes.TimestampString formats it in
	// UTC, RFC 3339, trailing zeros of the fraction dropped.
	ts := time.Date(2024, 5, 6, 8, 8, 9, 123456000, time.FixedZone("CET", 3600))
	sum := sha256.Sum256([]byte("hi" + "subj" + "2024-05-06T07:08:09.123456Z"))
	want := base58.Encode(append([]byte{0x12, 0x20}, sum[:]...))
	if got := ChatMessageID("hi", "subj", ts); got != want || want != "QmUa2b6jtBkRPjKprw9XVpD8PRYDMzazYbKmjLLpfp7EAk" {
		t.Errorf("ChatMessageID = %s, want %s", got, want)
	}
}

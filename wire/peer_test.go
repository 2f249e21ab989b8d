package wire

import (
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
)

func TestSubscriptionKeyVectors(t *testing.T) {
	tests := []struct {
		peer string
		bits uint
		want string
	}{
		{"QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUzSg", 16, "QmaGLQjHHdeZ3wKtKqHS9etMwSUDnckHnAYS6eqvAgp2Hf"},
		{"QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUzSg", 14, "QmPZ9uGyBAJXjE7GXRHE9NG8CcuKei2z5PczmmuQnStaMu"},
	}
	for _, tt := range tests {
		p, err := ParsePeerID(tt.peer)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.SubscriptionKey(tt.bits); got != tt.want {
			t.Errorf("SubscriptionKey(%s, %d) = %s, want %s", tt.peer, tt.bits, got, tt.want)
		}
		if err := ValidSubscriptionKey(tt.want); err != nil {
			t.Errorf("ValidSubscriptionKey(%s): %v", tt.want, err)
		}
	}
}

func testKey(t testing.TB, seed byte) (ed25519.PrivateKey, []byte) {
	t.Helper()
	priv := ed25519.NewKeyFromSeed([]byte(strings.Repeat(string(rune('a'+seed%26)), 32)))
	return priv, MarshalPublicKey(priv.Public().(ed25519.PublicKey))
}

func TestBothPeerIDFormsAreOnePeer(t *testing.T) {
	_, pub := testKey(t, 1)
	qm := PeerIDFromPublicKey(pub)
	id, err := IdentityPeerID(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(qm.String(), "Qm") || !strings.HasPrefix(id.String(), "12D3Koo") {
		t.Fatalf("forms: %s, %s", qm, id)
	}
	if qm.Canonical() != id.Canonical() || qm.Canonical() != qm.String() {
		t.Errorf("canonical: %s vs %s", qm.Canonical(), id.Canonical())
	}
	if qm.SubscriptionKey(16) != id.SubscriptionKey(16) {
		t.Errorf("subscription keys differ: %s vs %s", qm.SubscriptionKey(16), id.SubscriptionKey(16))
	}
	if got, ok := id.PublicKey(); !ok || string(MarshalPublicKey(got)) != string(pub) {
		t.Errorf("identity ID's PublicKey() = %x, %v; want the embedded key", got, ok)
	}
	if _, ok := qm.PublicKey(); ok {
		t.Error("a Qm… ID claims to embed a key")
	}
	reparsed, err := ParsePeerID(id.String())
	if err != nil || reparsed.Canonical() != qm.String() {
		t.Errorf("reparse identity ID: %v %v", reparsed, err)
	}
}

func TestParsePeerIDRejects(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"not base58", "Qm0OIl"},
		{"too short", "1"},
		{"length mismatch", "QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUz"},
		{"subscription-key-like but sha1", "5dqvXR93VnV1Grn96DBGdqEQAbJe1e"},
		{"identity of a non-ed25519 key", "1111111111111111111111111111111111111111"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParsePeerID(tt.in); !errors.Is(err, ErrInvalidPeerID) {
				t.Errorf("ParsePeerID(%q) = %v, want ErrInvalidPeerID", tt.in, err)
			}
		})
	}
}

func TestValidSubscriptionKeyRejects(t *testing.T) {
	for _, s := range []string{"", "hello", "1111", "12D3KooWRBhwfeP2Y7TCx1SM6s2PtT6mdLSVscS5dJ91Po3tdoHa"} {
		if err := ValidSubscriptionKey(s); err == nil {
			t.Errorf("ValidSubscriptionKey(%q) accepted", s)
		}
	}
}

func TestMessageID(t *testing.T) {
	// sha256("") is a well-known constant.
	if got := MessageID(nil); got != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Errorf("MessageID(nil) = %s", got)
	}
	if !ValidMessageID(MessageID([]byte("x"))) {
		t.Error("own message ID not valid")
	}
	for _, s := range []string{"", "abc", strings.Repeat("G", 64), strings.Repeat("A", 64)} {
		if ValidMessageID(s) {
			t.Errorf("ValidMessageID(%q) = true", s)
		}
	}
}

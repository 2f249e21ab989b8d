package wire

import (
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"
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

// TestHugeInputIsRefusedCheaply: base58 decoding is quadratic, so a 1 MB
// peer ID or subscription key would cost seconds of CPU (it did: about
// 6 s). Over-long input is refused before decoding, and the error quotes
// only a few dozen characters of it.
func TestHugeInputIsRefusedCheaply(t *testing.T) {
	huge := strings.Repeat("z", 1<<20)
	for _, tt := range []struct {
		name  string
		check func(string) error
	}{
		{"ParsePeerID", func(s string) error { _, err := ParsePeerID(s); return err }},
		{"ValidSubscriptionKey", ValidSubscriptionKey},
	} {
		start := time.Now()
		err := tt.check(huge)
		el := time.Since(start)
		if err == nil {
			t.Fatalf("%s accepted 1 MB", tt.name)
		}
		// A generous bound for a loaded machine; decoding takes seconds.
		if el > 100*time.Millisecond {
			t.Errorf("%s took %v on 1 MB of input", tt.name, el)
		}
		if len(err.Error()) > 200 {
			t.Errorf("%s error is %d bytes long: %.200s", tt.name, len(err.Error()), err)
		}
		if !strings.Contains(err.Error(), "longer than") {
			t.Errorf("%s error %q does not say what is wrong", tt.name, err)
		}
	}
	// The longest real forms still parse.
	_, pub := testKey(t, 3)
	ident, err := IdentityPeerID(pub)
	if err != nil || len(ident.String()) > MaxPeerIDChars {
		t.Fatalf("identity peer ID %q (%d chars): %v", ident, len(ident.String()), err)
	}
	if _, err := ParsePeerID(ident.String()); err != nil {
		t.Fatal(err)
	}
}

func TestExcerpt(t *testing.T) {
	if got := Excerpt("short"); got != `"short"` {
		t.Errorf("Excerpt(short) = %s", got)
	}
	got := Excerpt(strings.Repeat("é", 100))
	if len(got) > 100 || !strings.Contains(got, "…") || !strings.Contains(got, "(200 bytes)") {
		t.Errorf("Excerpt of 200 bytes = %s", got)
	}
}

// FuzzParsePeerID: no input panics; over-long input is refused whatever it
// holds; whatever parses has a canonical form that parses to the same
// subscription key; errors quote a bounded part of the input.
func FuzzParsePeerID(f *testing.F) {
	_, pub := testKey(f, 1)
	ident, _ := IdentityPeerID(pub)
	for _, s := range []string{
		"QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUzSg", ident.String(),
		"QmaGLQjHHdeZ3wKtKqHS9etMwSUDnckHnAYS6eqvAgp2Hf", "", "1", "0OIl",
		strings.Repeat("z", MaxPeerIDChars+1), strings.Repeat("1", 4000),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePeerID(s)
		if keyErr := ValidSubscriptionKey(s); keyErr != nil && len(keyErr.Error()) > 300 {
			t.Fatalf("subscription key error of %d bytes", len(keyErr.Error()))
		}
		if err != nil {
			if len(err.Error()) > 300 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if len(s) > MaxPeerIDChars {
			t.Fatalf("parsed %d characters", len(s))
		}
		c, err := ParsePeerID(p.Canonical())
		if err != nil || c.SubscriptionKey(RelayPrefixBits) != p.SubscriptionKey(RelayPrefixBits) {
			t.Fatalf("canonical %q of %q: %v", p.Canonical(), s, err)
		}
	})
}

package wire

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"testing"
)

func signedSubscribe(t testing.TB, priv ed25519.PrivateKey, pub []byte, peer PeerID, host, nonce string) Subscribe {
	t.Helper()
	return Subscribe{
		UserID:          peer.String(),
		SubscriptionKey: peer.SubscriptionKey(RelayPrefixBits),
		Protocol:        ProtocolLevel2,
		PubKey:          hex.EncodeToString(pub),
		Signature:       hex.EncodeToString(ed25519.Sign(priv, []byte(AuthPayload(host, nonce)))),
	}
}

func TestVerifyAuth(t *testing.T) {
	priv, pub := testKey(t, 1)
	_, otherPub := testKey(t, 2)
	otherPriv, _ := testKey(t, 2)
	qm := PeerIDFromPublicKey(pub)
	ident, _ := IdentityPeerID(pub)
	const host, nonce = "relay.example.org", "bm9uY2U="

	good := signedSubscribe(t, priv, pub, qm, host, nonce)
	if p, err := VerifyAuth(good, host, nonce); err != nil || p.Canonical() != qm.String() {
		t.Fatalf("good Qm subscribe: %v", err)
	}
	if _, err := VerifyAuth(signedSubscribe(t, priv, pub, ident, host, nonce), host, nonce); err != nil {
		t.Fatalf("good 12D3Koo subscribe: %v", err)
	}

	tests := []struct {
		name   string
		mutate func(s *Subscribe)
		host   string
		nonce  string
	}{
		{"other host", func(*Subscribe) {}, "evil.example.org", nonce},
		{"other nonce", func(*Subscribe) {}, host, "b3RoZXI="},
		{"forged signature", func(s *Subscribe) {
			s.Signature = hex.EncodeToString(ed25519.Sign(otherPriv, []byte(AuthPayload(host, nonce))))
		}, host, nonce},
		{"signature not hex", func(s *Subscribe) { s.Signature = "zz" }, host, nonce},
		{"short signature", func(s *Subscribe) { s.Signature = "abcd" }, host, nonce},
		{"pubkey of another peer", func(s *Subscribe) { s.PubKey = hex.EncodeToString(otherPub) }, host, nonce},
		{"pubkey not hex", func(s *Subscribe) { s.PubKey = "xyz" }, host, nonce},
		{"pubkey not ed25519", func(s *Subscribe) { s.PubKey = "0802" + s.PubKey[4:] }, host, nonce},
		{"wrong subscription key", func(s *Subscribe) { s.SubscriptionKey = "QmaGLQjHHdeZ3wKtKqHS9etMwSUDnckHnAYS6eqvAgp2Hf" }, host, nonce},
		{"bad userID", func(s *Subscribe) { s.UserID = "nope" }, host, nonce},
		{"userID of another peer", func(s *Subscribe) { s.UserID = PeerIDFromPublicKey(otherPub).String() }, host, nonce},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			tt.mutate(&s)
			if _, err := VerifyAuth(s, tt.host, tt.nonce); !errors.Is(err, ErrAuth) {
				t.Errorf("VerifyAuth = %v, want ErrAuth", err)
			}
		})
	}
}

// FuzzVerifyAuth checks that no input makes the auth check panic, and that
// nothing but the genuine signature passes.
func FuzzVerifyAuth(f *testing.F) {
	priv, pub := testKey(f, 1)
	qm := PeerIDFromPublicKey(pub)
	const host, nonce = "relay.example.org", "bm9uY2U="
	good := signedSubscribe(f, priv, pub, qm, host, nonce)
	f.Add(good.UserID, good.SubscriptionKey, good.PubKey, good.Signature)
	f.Add("", "", "", "")
	f.Add("12D3KooWRBhwfeP2Y7TCx1SM6s2PtT6mdLSVscS5dJ91Po3tdoHa", good.SubscriptionKey, good.PubKey, good.Signature)
	f.Fuzz(func(t *testing.T, userID, key, pubkey, sig string) {
		s := Subscribe{UserID: userID, SubscriptionKey: key, Protocol: 2, PubKey: pubkey, Signature: sig}
		p, err := VerifyAuth(s, host, nonce)
		if err == nil && p.Canonical() != qm.String() {
			t.Fatalf("accepted a subscribe for %s that the test key did not sign", userID)
		}
	})
}

package wire

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
)

// ErrAuth is wrapped by every failed level-2 authentication check.
var ErrAuth = errors.New("authentication failed")

// AuthPayload is the text a client signs to answer an AuthChallenge: the
// nonce exactly as the server sent it, still base64.
func AuthPayload(host, nonce string) string {
	return "courier-auth:v1:" + host + ":" + nonce
}

// VerifyAuth checks a level-2 SubscribeMessage against the challenge the
// server issued: the public key hashes to the claimed peer ID (either form),
// the signature over AuthPayload(host, nonce) verifies, and the subscription
// key and userID belong to that peer. Checking that the nonce was issued on
// this connection and is fresh is the server's job.
func VerifyAuth(sub Subscribe, host, nonce string) (PeerID, error) {
	peer, err := ParsePeerID(sub.UserID)
	if err != nil {
		return PeerID{}, fmt.Errorf("%w: userID: %v", ErrAuth, err)
	}
	keyBytes, err := hex.DecodeString(sub.PubKey)
	if err != nil {
		return PeerID{}, fmt.Errorf("%w: pubkey is not hex", ErrAuth)
	}
	pub, err := UnmarshalPublicKey(keyBytes)
	if err != nil {
		return PeerID{}, fmt.Errorf("%w: pubkey: %v", ErrAuth, err)
	}
	if PeerIDFromPublicKey(keyBytes).Canonical() != peer.Canonical() {
		return PeerID{}, fmt.Errorf("%w: pubkey does not hash to peer ID %s", ErrAuth, sub.UserID)
	}
	sig, err := hex.DecodeString(sub.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return PeerID{}, fmt.Errorf("%w: signature is not %d hex-encoded bytes", ErrAuth, ed25519.SignatureSize)
	}
	if !ed25519.Verify(pub, []byte(AuthPayload(host, nonce)), sig) {
		return PeerID{}, fmt.Errorf("%w: signature does not verify for %s", ErrAuth, sub.UserID)
	}
	if sub.SubscriptionKey != peer.SubscriptionKey(RelayPrefixBits) {
		return PeerID{}, fmt.Errorf("%w: subscription key is not the key of peer %s", ErrAuth, sub.UserID)
	}
	return peer, nil
}

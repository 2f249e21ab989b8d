package wire

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/mr-tron/base58"
)

// Multihash codes and lengths a peer ID may use.
const (
	mhIdentity = 0x00
	mhSHA256   = 0x12
	sha256Len  = 32
)

// RelayPrefixBits is the prefix length the relay protocol uses for
// subscription keys. OpenBazaar's DHT pointers use 14.
const RelayPrefixBits = 16

// marshalledEd25519Prefix is the protobuf header of a marshalled libp2p
// Ed25519 public key: field 1 KeyType=Ed25519(1), field 2 bytes of length 32.
var marshalledEd25519Prefix = []byte{0x08, 0x01, 0x12, 0x20}

// MaxPeerIDChars bounds the text of a peer ID or subscription key, checked
// before any base58 decoding (which costs quadratic time in the input's
// length). A sha2-256 ID ("Qm…") is 46 characters and an Ed25519 identity
// ID ("12D3Koo…") 52; 128 leaves room for any multihash either form could
// grow into without letting a hostile client buy seconds of CPU.
const MaxPeerIDChars = 128

// excerptChars bounds how much of a client's input an error message
// quotes: the quoted text (escapes included) is at most this long.
const excerptChars = 64

// Excerpt quotes s for an error message, cut to a few dozen characters
// with an ellipsis and the input's length when longer, so an error never
// echoes a large input.
func Excerpt(s string) string {
	if len(s) <= excerptChars {
		if q := strconv.Quote(s); len(q) <= excerptChars+2 {
			return q
		}
	}
	cut := min(len(s), excerptChars)
	for {
		for cut > 0 && cut < len(s) && !utf8.RuneStart(s[cut]) {
			cut--
		}
		if q := strconv.Quote(s[:cut]); len(q) <= excerptChars+2 || cut == 0 {
			return fmt.Sprintf("%s… (%d bytes)", q, len(s))
		}
		cut -= 4
		if cut < 0 {
			cut = 0
		}
	}
}

// ErrInvalidPeerID is wrapped by every peer ID parse error.
var ErrInvalidPeerID = errors.New("invalid peer ID")

// PeerID is a parsed libp2p peer ID: a sha2-256 multihash of the marshalled
// public key ("Qm…") or an identity multihash that embeds it ("12D3Koo…").
// The zero value is not a valid peer ID.
type PeerID struct {
	text   string
	digest []byte // sha256 of the marshalled public key, whichever form
	pubkey []byte // marshalled public key; only for identity-multihash IDs
}

// ParsePeerID parses a base58 peer ID in either form. Only Ed25519 keys are
// accepted in the identity form, as OpenBazaar identities are Ed25519.
func ParsePeerID(s string) (PeerID, error) {
	if s == "" {
		return PeerID{}, fmt.Errorf("%w: empty", ErrInvalidPeerID)
	}
	if len(s) > MaxPeerIDChars {
		return PeerID{}, fmt.Errorf("%w: %s is longer than a peer ID can be (%d characters)", ErrInvalidPeerID, Excerpt(s), MaxPeerIDChars)
	}
	raw, err := base58.Decode(s)
	if err != nil {
		return PeerID{}, fmt.Errorf("%w: %s is not base58", ErrInvalidPeerID, Excerpt(s))
	}
	if len(raw) < 2 {
		return PeerID{}, fmt.Errorf("%w: %s is too short", ErrInvalidPeerID, Excerpt(s))
	}
	code, length, body := raw[0], int(raw[1]), raw[2:]
	if len(body) != length {
		return PeerID{}, fmt.Errorf("%w: %s has a multihash length that does not match its digest", ErrInvalidPeerID, Excerpt(s))
	}
	switch {
	case code == mhSHA256 && length == sha256Len:
		return PeerID{text: s, digest: body}, nil
	case code == mhIdentity && length == len(marshalledEd25519Prefix)+ed25519.PublicKeySize:
		if _, err := UnmarshalPublicKey(body); err != nil {
			return PeerID{}, fmt.Errorf("%w: %s: %v", ErrInvalidPeerID, Excerpt(s), err)
		}
		sum := sha256.Sum256(body)
		return PeerID{text: s, digest: sum[:], pubkey: body}, nil
	default:
		return PeerID{}, fmt.Errorf("%w: %s is neither a sha2-256 (Qm…) nor an Ed25519 identity (12D3Koo…) multihash", ErrInvalidPeerID, s)
	}
}

// String returns the peer ID as it was written.
func (p PeerID) String() string { return p.text }

// PublicKey returns the Ed25519 key an identity-multihash (12D3Koo…) peer
// ID embeds. A Qm… peer ID is a hash of the key, so it has none: ok is
// false.
func (p PeerID) PublicKey() (pub ed25519.PublicKey, ok bool) {
	if p.pubkey == nil {
		return nil, false
	}
	pub, err := UnmarshalPublicKey(p.pubkey)
	return pub, err == nil // ParsePeerID checked it already
}

// IsZero reports whether p is the zero value.
func (p PeerID) IsZero() bool { return p.text == "" }

// Canonical returns the peer's ID in its sha2-256 ("Qm…") form. Both forms of
// the same public key have the same canonical ID: it is what "the same peer"
// means everywhere in Courier.
func (p PeerID) Canonical() string {
	if p.pubkey == nil {
		return p.text
	}
	return encodeSHA256Multihash(p.digest)
}

// SubscriptionKey returns the key under which the relay stores messages for
// this peer, as PROTOCOL.md defines it. For an identity-multihash peer ID the
// digest is the sha256 of the embedded key, which is exactly the digest of
// the same peer's Qm… ID, so both forms of one peer share one key.
func (p PeerID) SubscriptionKey(prefixBits uint) string {
	return subscriptionKey(p.digest, prefixBits)
}

func subscriptionKey(digest []byte, prefixBits uint) string {
	prefix := binary.BigEndian.Uint64(digest[:8])
	if prefixBits < 64 {
		prefix >>= 64 - prefixBits
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], prefix)
	sum := sha256.Sum256(b[:])
	return encodeSHA256Multihash(sum[:])
}

func encodeSHA256Multihash(digest []byte) string {
	mh := make([]byte, 0, 2+len(digest))
	mh = append(mh, mhSHA256, byte(len(digest)))
	mh = append(mh, digest...)
	return base58.Encode(mh)
}

// ValidSubscriptionKey checks that s is a base58 sha2-256 multihash (34 bytes
// starting 12 20), the only form a subscription key takes.
// Input longer than MaxPeerIDChars is refused before decoding.
func ValidSubscriptionKey(s string) error {
	if len(s) > MaxPeerIDChars {
		return fmt.Errorf("invalid subscription key %s: longer than a key can be (%d characters); want a base58 sha2-256 multihash (Qm…)", Excerpt(s), MaxPeerIDChars)
	}
	raw, err := base58.Decode(s)
	if err != nil || len(raw) != 2+sha256Len || raw[0] != mhSHA256 || raw[1] != sha256Len {
		return fmt.Errorf("invalid subscription key %s: want a base58 sha2-256 multihash (Qm…)", Excerpt(s))
	}
	return nil
}

// MarshalPublicKey returns the libp2p protobuf form of an Ed25519 public key.
func MarshalPublicKey(pub ed25519.PublicKey) []byte {
	return append(append([]byte(nil), marshalledEd25519Prefix...), pub...)
}

// UnmarshalPublicKey parses a marshalled libp2p Ed25519 public key.
func UnmarshalPublicKey(b []byte) (ed25519.PublicKey, error) {
	if len(b) != len(marshalledEd25519Prefix)+ed25519.PublicKeySize ||
		string(b[:len(marshalledEd25519Prefix)]) != string(marshalledEd25519Prefix) {
		return nil, errors.New("not a marshalled Ed25519 public key (want 08 01 12 20 followed by 32 bytes)")
	}
	return ed25519.PublicKey(b[len(marshalledEd25519Prefix):]), nil
}

// PeerIDFromPublicKey returns the Qm… peer ID of a marshalled public key, as
// OpenBazaar derives it (sha2-256 multihash).
func PeerIDFromPublicKey(marshalled []byte) PeerID {
	sum := sha256.Sum256(marshalled)
	return PeerID{text: encodeSHA256Multihash(sum[:]), digest: sum[:]}
}

// IdentityPeerID returns the 12D3Koo… (identity multihash) peer ID of a
// marshalled Ed25519 public key.
func IdentityPeerID(marshalled []byte) (PeerID, error) {
	mh := append([]byte{mhIdentity, byte(len(marshalled))}, marshalled...)
	return ParsePeerID(base58.Encode(mh))
}

// MessageID is the lowercase hex sha256 of the raw ciphertext bytes.
func MessageID(ciphertext []byte) string {
	sum := sha256.Sum256(ciphertext)
	return hex.EncodeToString(sum[:])
}

// ValidMessageID reports whether s has the shape of a message ID.
func ValidMessageID(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

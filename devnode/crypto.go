package devnode

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"time"

	"filippo.io/edwards25519"
	"github.com/mr-tron/base58"
	"golang.org/x/crypto/nacl/box"

	"courier/wire"
)

// Sizes of the parts of a ciphertext: nonce(24) | ephemeral X25519 public
// key(32) | nacl box (16 bytes of Poly1305 tag, then the sealed bytes).
const (
	NonceSize        = 24
	EphemeralKeySize = 32
	// MinCiphertextSize is the size of a ciphertext around an empty plaintext.
	MinCiphertextSize = NonceSize + EphemeralKeySize + box.Overhead
)

// Errors that Open and Decrypt wrap; callers branch on them with errors.Is.
var (
	// ErrDecrypt: the box does not open with this key. The message was sealed
	// to someone else, or it was altered on the way.
	ErrDecrypt = errors.New("ciphertext does not open with this key")
	// ErrMalformed: the box opened but what is inside is not an openbazaar-go
	// Envelope this package understands.
	ErrMalformed = errors.New("malformed envelope")
	// ErrSignature: the Envelope's signature does not verify with the public
	// key it carries.
	ErrSignature = errors.New("envelope signature does not verify")
	// ErrBadKey: a public key is not a usable Ed25519 point.
	ErrBadKey = errors.New("unusable Ed25519 public key")
)

// X25519PublicKey converts an Ed25519 public key to the X25519 (Montgomery)
// public key of the same secret, as libsodium's
// crypto_sign_ed25519_pk_to_curve25519 and openbazaar-go's extra25519 do.
// Keys that are not a point on the curve, or of small order, are refused.
func X25519PublicKey(pub ed25519.PublicKey) (*[32]byte, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrBadKey, len(pub), ed25519.PublicKeySize)
	}
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: not a point on the curve", ErrBadKey)
	}
	if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 {
		return nil, fmt.Errorf("%w: small-order point", ErrBadKey)
	}
	var out [32]byte
	copy(out[:], p.BytesMontgomery())
	return &out, nil
}

// X25519PrivateKey converts an Ed25519 private key to the X25519 private key
// of the same secret: the first 32 bytes of sha512(seed), clamped, as
// libsodium's crypto_sign_ed25519_sk_to_curve25519 and openbazaar-go's
// extra25519 do.
func X25519PrivateKey(priv ed25519.PrivateKey) *[32]byte {
	h := sha512.Sum512(priv.Seed())
	var out [32]byte
	copy(out[:], h[:32])
	out[0] &= 248
	out[31] &= 127
	out[31] |= 64
	clear(h[:])
	return &out
}

// Encrypt seals plaintext to an Ed25519 public key the way openbazaar-go's
// net.Encrypt does for Ed25519 keys: a fresh ephemeral X25519 key pair and a
// random nonce, nacl box to the recipient's key converted to X25519, laid out
// as nonce(24) | ephemeral public key(32) | box.
func Encrypt(recipient ed25519.PublicKey, plaintext []byte) ([]byte, error) {
	peerKey, err := X25519PublicKey(recipient)
	if err != nil {
		return nil, err
	}
	ephPub, ephPriv, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ephemeral key: %w", err)
	}
	defer clear(ephPriv[:])
	var nonce [NonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("generate nonce: %w", err)
	}
	out := make([]byte, 0, MinCiphertextSize+len(plaintext))
	out = append(out, nonce[:]...)
	out = append(out, ephPub[:]...)
	return box.Seal(out, plaintext, &nonce, peerKey, ephPriv), nil
}

// Decrypt opens a ciphertext made by Encrypt (or by openbazaar-go's
// net.Encrypt) with the recipient's Ed25519 private key.
func Decrypt(recipient ed25519.PrivateKey, ciphertext []byte) ([]byte, error) {
	if len(ciphertext) < MinCiphertextSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than the %d of an empty box", ErrDecrypt, len(ciphertext), MinCiphertextSize)
	}
	var nonce [NonceSize]byte
	var ephPub [EphemeralKeySize]byte
	copy(nonce[:], ciphertext[:NonceSize])
	copy(ephPub[:], ciphertext[NonceSize:NonceSize+EphemeralKeySize])
	key := X25519PrivateKey(recipient)
	defer clear(key[:])
	plaintext, ok := box.Open(nil, ciphertext[NonceSize+EphemeralKeySize:], &nonce, &ephPub, key)
	if !ok {
		return nil, ErrDecrypt
	}
	return plaintext, nil
}

// Message is one openbazaar-go pb.Message, with the sender that signed its
// Envelope once opened.
type Message struct {
	// Set by Open from the Envelope; ignored by SealMessage.
	SenderPeerID string            // Qm… form
	SenderPubKey ed25519.PublicKey // raw 32 bytes

	Type MessageType
	// Chat is the decoded payload of a CHAT message. When sealing, a non-nil
	// Chat becomes the payload (TypeURL and Payload are then ignored).
	Chat *Chat
	// Text is Chat.Message, or "" for other types; ignored by SealMessage.
	Text string
	// TypeURL and Payload are the google.protobuf.Any payload as sent.
	TypeURL    string
	Payload    []byte
	RequestID  int32
	IsResponse bool
}

// ChatMessageID returns the ID openbazaar-go's chat API gives a chat message:
// the base58 sha2-256 multihash of sha256(message + subject + timestamp),
// the timestamp formatted as ptypes.TimestampString does (RFC 3339, UTC,
// nanoseconds without trailing zeros).
func ChatMessageID(message, subject string, ts time.Time) string {
	sum := sha256.Sum256([]byte(message + subject + ts.UTC().Format(time.RFC3339Nano)))
	return base58.Encode(append([]byte{0x12, 0x20}, sum[:]...))
}

// NewChat returns a chat message as openbazaar-go's POST /ob/chat builds
// one, stamped with now (truncated to what a protobuf Timestamp holds).
func NewChat(text, subject string, now time.Time) *Chat {
	ts := time.Unix(now.Unix(), int64(now.Nanosecond())).UTC()
	return &Chat{
		MessageID: ChatMessageID(text, subject, ts),
		Subject:   subject,
		Message:   text,
		Timestamp: ts,
		Flag:      FlagMessage,
	}
}

// Seal builds a CHAT message with text from the holder of senderPriv, signs
// it into an Envelope and encrypts that to recipientPub: the ciphertext
// openbazaar-go would hand to its OFFLINE path or a relay.
func Seal(recipientPub ed25519.PublicKey, senderPriv ed25519.PrivateKey, text string) ([]byte, error) {
	return SealMessage(recipientPub, senderPriv, Message{Type: TypeChat, Chat: NewChat(text, "", time.Now())})
}

// SealMessage signs m into an Envelope with senderPriv and encrypts it to
// recipientPub, as openbazaar-go's SendOfflineMessage does.
func SealMessage(recipientPub ed25519.PublicKey, senderPriv ed25519.PrivateKey, m Message) ([]byte, error) {
	if len(senderPriv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("sender private key is %d bytes, want %d", len(senderPriv), ed25519.PrivateKeySize)
	}
	plaintext := signEnvelope(senderPriv, encodeMessage(m)).marshal()
	return Encrypt(recipientPub, plaintext)
}

func encodeMessage(m Message) []byte {
	pm := pbMessage{
		Type:       m.Type,
		HasPayload: m.Chat != nil || m.TypeURL != "" || len(m.Payload) > 0,
		TypeURL:    m.TypeURL,
		Payload:    m.Payload,
		RequestID:  m.RequestID,
		IsResponse: m.IsResponse,
	}
	if m.Chat != nil {
		pm.TypeURL, pm.Payload = ChatTypeURL, m.Chat.marshal()
	}
	return pm.marshal()
}

func signEnvelope(priv ed25519.PrivateKey, message []byte) pbEnvelope {
	return pbEnvelope{
		Message:   message,
		PubKey:    wire.MarshalPublicKey(priv.Public().(ed25519.PublicKey)),
		Signature: ed25519.Sign(priv, message),
	}
}

// Open decrypts a ciphertext with the recipient's private key, checks the
// Envelope's signature against the sender key it carries and returns the
// message. The signature is checked over the Message bytes exactly as they
// appear in the Envelope; openbazaar-go re-serializes the decoded Message
// instead, which gives the same bytes for anything proto.Marshal produced.
func Open(ciphertext []byte, recipientPriv ed25519.PrivateKey) (Message, error) {
	plaintext, err := Decrypt(recipientPriv, ciphertext)
	if err != nil {
		return Message{}, err
	}
	env, err := unmarshalEnvelope(plaintext)
	if err != nil {
		return Message{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	pub, err := wire.UnmarshalPublicKey(env.PubKey)
	if err != nil {
		return Message{}, fmt.Errorf("%w: sender key: %w", ErrMalformed, err)
	}
	if !ed25519.Verify(pub, env.Message, env.Signature) {
		return Message{}, ErrSignature
	}
	pm, err := unmarshalMessage(env.Message)
	if err != nil {
		return Message{}, fmt.Errorf("%w: message: %w", ErrMalformed, err)
	}
	m := Message{
		SenderPeerID: wire.PeerIDFromPublicKey(env.PubKey).String(),
		SenderPubKey: pub,
		Type:         pm.Type,
		TypeURL:      pm.TypeURL,
		Payload:      pm.Payload,
		RequestID:    pm.RequestID,
		IsResponse:   pm.IsResponse,
	}
	if m.Type == TypeChat {
		if pm.TypeURL != ChatTypeURL {
			return Message{}, fmt.Errorf("%w: CHAT payload has type URL %q, want %q", ErrMalformed, pm.TypeURL, ChatTypeURL)
		}
		chat, err := unmarshalChat(pm.Payload)
		if err != nil {
			return Message{}, fmt.Errorf("%w: chat: %w", ErrMalformed, err)
		}
		m.Chat, m.Text = &chat, chat.Message
	}
	return m, nil
}

// SignedEnvelope returns the plaintext SealMessage encrypts: m signed into
// a pb.Envelope with senderPriv, serialized. Ed25519 signatures are
// deterministic, so it is the same bytes for the same key and message: what
// the browser client's byte-for-byte test compares against.
func SignedEnvelope(senderPriv ed25519.PrivateKey, m Message) []byte {
	return signEnvelope(senderPriv, encodeMessage(m)).marshal()
}

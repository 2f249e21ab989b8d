package devnode

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"courier/wire"
)

// marshalledEd25519PrivPrefix is the libp2p protobuf header of a marshalled
// Ed25519 private key: field 1 KeyType=Ed25519(1), field 2 bytes of length 64
// (seed followed by public key).
var marshalledEd25519PrivPrefix = []byte{0x08, 0x01, 0x12, 0x40}

// MarshalPrivateKey returns the libp2p protobuf form of an Ed25519 private
// key (08 01 12 40, then the 64-byte seed and public key), the form go-ipfs
// and openbazaar-go keep in their config's Identity.PrivKey (base64).
func MarshalPrivateKey(priv ed25519.PrivateKey) []byte {
	return append(append([]byte(nil), marshalledEd25519PrivPrefix...), priv...)
}

// UnmarshalPrivateKey parses MarshalPrivateKey's form. The older 96-byte
// variant (the public key repeated at the end) is accepted as well.
func UnmarshalPrivateKey(b []byte) (ed25519.PrivateKey, error) {
	if len(b) < 4 || b[0] != 0x08 || b[1] != 0x01 || b[2] != 0x12 {
		return nil, errors.New("not a marshalled Ed25519 private key (want 08 01 12 40 followed by 64 bytes)")
	}
	key := b[4:]
	switch {
	case b[3] == 64 && len(key) == 64:
	case b[3] == 96 && len(key) == 96 && bytes.Equal(key[32:64], key[64:]):
		key = key[:64]
	default:
		return nil, errors.New("marshalled Ed25519 private key has the wrong length")
	}
	priv := ed25519.NewKeyFromSeed(key[:32])
	if !bytes.Equal(priv[32:], key[32:]) {
		return nil, errors.New("marshalled Ed25519 private key: public half does not match the seed")
	}
	return priv, nil
}

// identityFile is the JSON shape of an identity file: the Identity section of
// a go-ipfs / openbazaar-go config.
type identityFile struct {
	PeerID  string `json:"PeerID"`
	PrivKey string `json:"PrivKey"` // base64 of MarshalPrivateKey
}

// LoadIdentity reads an identity file written by SaveIdentity (or the
// Identity section of a go-ipfs config). A PeerID in the file must match the
// key.
func LoadIdentity(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f identityFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	raw, err := base64.StdEncoding.DecodeString(f.PrivKey)
	if err != nil {
		return nil, fmt.Errorf("identity file %s: PrivKey is not base64: %w", path, err)
	}
	priv, err := UnmarshalPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("identity file %s: PrivKey: %w", path, err)
	}
	if f.PeerID != "" {
		want := PeerID(priv)
		got, err := wire.ParsePeerID(f.PeerID)
		if err != nil || got.Canonical() != want {
			return nil, fmt.Errorf("identity file %s: PeerID %q is not the peer ID of its key (%s)", path, f.PeerID, want)
		}
	}
	return priv, nil
}

// SaveIdentity writes priv to path (mode 0600) atomically, replacing any file
// there.
func SaveIdentity(path string, priv ed25519.PrivateKey) error {
	b, err := json.MarshalIndent(identityFile{
		PeerID:  PeerID(priv),
		PrivKey: base64.StdEncoding.EncodeToString(MarshalPrivateKey(priv)),
	}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".identity-*")
	if err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("save identity: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save identity: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	return nil
}

// LoadOrCreateIdentity loads the identity at path, or generates one and saves
// it there if no file exists. created reports which.
func LoadOrCreateIdentity(path string) (priv ed25519.PrivateKey, created bool, err error) {
	priv, err = LoadIdentity(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return priv, false, err
	}
	_, priv, err = ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, err
	}
	if err := SaveIdentity(path, priv); err != nil {
		return nil, false, err
	}
	return priv, true, nil
}

// PeerID returns the Qm… peer ID of a private key's public half.
func PeerID(priv ed25519.PrivateKey) string {
	return wire.PeerIDFromPublicKey(wire.MarshalPublicKey(priv.Public().(ed25519.PublicKey))).String()
}

// Recipient is a peer a message can be sealed to: its peer ID and the
// Ed25519 public key behind it.
type Recipient struct {
	PeerID string // as given; the Qm… form when only the key was given
	PubKey ed25519.PublicKey
}

// ParseRecipient resolves a recipient from a peer ID, a public key in hex,
// or both. A Qm… peer ID is a hash, so it needs the key alongside; a
// 12D3Koo… peer ID embeds the key and needs nothing else. The key may be
// given raw (64 hex digits) or marshalled (72, starting 08011220). When both
// are given, the key must belong to the peer ID.
func ParseRecipient(peerID, pubkeyHex string) (Recipient, error) {
	var r Recipient
	var peer wire.PeerID
	if peerID != "" {
		p, err := wire.ParsePeerID(peerID)
		if err != nil {
			return Recipient{}, err
		}
		peer, r.PeerID = p, peerID
		r.PubKey, _ = p.PublicKey() // only a 12D3Koo… ID embeds one
	}
	if pubkeyHex != "" {
		raw, err := hex.DecodeString(strings.TrimSpace(pubkeyHex))
		if err != nil {
			return Recipient{}, fmt.Errorf("public key is not hex: %w", err)
		}
		var pub ed25519.PublicKey
		switch len(raw) {
		case ed25519.PublicKeySize:
			pub = raw
		default:
			if pub, err = wire.UnmarshalPublicKey(raw); err != nil {
				return Recipient{}, fmt.Errorf("public key: want 32 raw bytes or a marshalled key: %w", err)
			}
		}
		if r.PubKey != nil && !bytes.Equal(r.PubKey, pub) {
			return Recipient{}, fmt.Errorf("public key is not the key embedded in peer ID %s", peerID)
		}
		r.PubKey = pub
	}
	switch {
	case r.PubKey == nil && peerID == "":
		return Recipient{}, errors.New("no recipient: give a peer ID, a public key or both")
	case r.PubKey == nil:
		return Recipient{}, fmt.Errorf("peer ID %s is a hash of the key: give the recipient's public key too", peerID)
	}
	own := wire.PeerIDFromPublicKey(wire.MarshalPublicKey(r.PubKey))
	if peerID == "" {
		r.PeerID = own.String()
	} else if own.Canonical() != peer.Canonical() {
		return Recipient{}, fmt.Errorf("public key belongs to %s, not to peer ID %s", own, peerID)
	}
	return r, nil
}

package devnode

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"courier/wire"
)

func TestIdentityPersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.json")
	a, err := New(Options{IdentityFile: path})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("identity file mode %v, want 0600", fi.Mode().Perm())
	}
	b, err := New(Options{IdentityFile: path})
	if err != nil {
		t.Fatal(err)
	}
	if a.PeerID() != b.PeerID() || !strings.HasPrefix(a.PeerID(), "Qm") {
		t.Errorf("reloaded peer ID %s, first %s", b.PeerID(), a.PeerID())
	}
	want := wire.PeerIDFromPublicKey(wire.MarshalPublicKey(a.PublicKey())).String()
	if a.PeerID() != want {
		t.Errorf("PeerID = %s, want %s", a.PeerID(), want)
	}
	// What one sealed, the reloaded one opens.
	ct, err := Seal(a.PublicKey(), testKey("alice"), "still me")
	if err != nil {
		t.Fatal(err)
	}
	if m, err := b.Open(ct); err != nil || m.Text != "still me" {
		t.Errorf("reloaded identity opens: %+v, %v", m, err)
	}
}

func TestPrivateKeyRoundTrip(t *testing.T) {
	priv := testKey("alice")
	m := MarshalPrivateKey(priv)
	if !bytes.Equal(m[:4], []byte{0x08, 0x01, 0x12, 0x40}) || len(m) != 68 {
		t.Fatalf("MarshalPrivateKey = %x", m)
	}
	got, err := UnmarshalPrivateKey(m)
	if err != nil || !bytes.Equal(got, priv) {
		t.Fatalf("UnmarshalPrivateKey = %x, %v", got, err)
	}
	legacy := append([]byte{0x08, 0x01, 0x12, 0x60}, priv...)
	legacy = append(legacy, priv[32:]...)
	if got, err := UnmarshalPrivateKey(legacy); err != nil || !bytes.Equal(got, priv) {
		t.Errorf("96-byte form: %x, %v", got, err)
	}
}

func TestLoadIdentityRejects(t *testing.T) {
	priv := testKey("alice")
	good := base64.StdEncoding.EncodeToString(MarshalPrivateKey(priv))
	badHalf := MarshalPrivateKey(priv)
	badHalf[len(badHalf)-1] ^= 1
	tests := []struct{ name, content, want string }{
		{"not JSON", "{", "identity file"},
		{"unknown key", `{"PrivKey":"` + good + `","Extra":1}`, "unknown field"},
		{"not base64", `{"PrivKey":"***"}`, "not base64"},
		{"RSA key", `{"PrivKey":"` + base64.StdEncoding.EncodeToString([]byte{0x08, 0x00, 0x12, 0x01, 0x00}) + `"}`, "not a marshalled Ed25519"},
		{"public half does not match", `{"PrivKey":"` + base64.StdEncoding.EncodeToString(badHalf) + `"}`, "does not match"},
		{"another peer's ID", `{"PeerID":"` + PeerID(testKey("bob")) + `","PrivKey":"` + good + `"}`, "not the peer ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "id.json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadIdentity(path); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LoadIdentity = %v, want an error with %q", err, tt.want)
			}
			if _, err := New(Options{IdentityFile: path}); err == nil {
				t.Error("New accepted the file")
			}
		})
	}
	// The file as go-ipfs writes its Identity section loads.
	path := filepath.Join(t.TempDir(), "id.json")
	os.WriteFile(path, []byte(`{"PeerID":"`+PeerID(priv)+`","PrivKey":"`+good+`"}`), 0o600)
	if got, err := LoadIdentity(path); err != nil || !bytes.Equal(got, priv) {
		t.Errorf("LoadIdentity(go-ipfs shape) = %v", err)
	}
}

func TestParseRecipient(t *testing.T) {
	bob, eve := testKey("bob"), testKey("eve")
	raw := hex.EncodeToString(pubOf(bob))
	marshalled := hex.EncodeToString(wire.MarshalPublicKey(pubOf(bob)))
	qm := PeerID(bob)
	ident, _ := wire.IdentityPeerID(wire.MarshalPublicKey(pubOf(bob)))
	tests := []struct {
		name, peer, key string
		wantPeer        string // "" means an error is expected
	}{
		{"Qm and raw key", qm, raw, qm},
		{"Qm and marshalled key", qm, marshalled, qm},
		{"key only", "", raw, qm},
		{"12D3Koo only", ident.String(), "", ident.String()},
		{"12D3Koo and its key", ident.String(), marshalled, ident.String()},
		{"Qm only", qm, "", ""},
		{"nothing", "", "", ""},
		{"key of another peer", qm, hex.EncodeToString(pubOf(eve)), ""},
		{"12D3Koo with another key", ident.String(), hex.EncodeToString(pubOf(eve)), ""},
		{"key not hex", qm, "zz", ""},
		{"key wrong length", qm, raw[:62], ""},
		{"bad peer ID", "Qmnope", raw, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRecipient(tt.peer, tt.key)
			if tt.wantPeer == "" {
				if err == nil {
					t.Errorf("ParseRecipient = %+v, want an error", r)
				}
				return
			}
			if err != nil || r.PeerID != tt.wantPeer || !bytes.Equal(r.PubKey, pubOf(bob)) {
				t.Errorf("ParseRecipient = %+v, %v; want peer %s with bob's key", r, err, tt.wantPeer)
			}
		})
	}
}

func FuzzParseRecipient(f *testing.F) {
	bob := pubOf(testKey("bob"))
	ident, _ := wire.IdentityPeerID(wire.MarshalPublicKey(bob))
	f.Add(PeerID(testKey("bob")), hex.EncodeToString(bob))
	f.Add(ident.String(), "")
	f.Add("", hex.EncodeToString(wire.MarshalPublicKey(bob)))
	f.Add("Qm", "zz")
	f.Fuzz(func(t *testing.T, peer, key string) {
		r, err := ParseRecipient(peer, key)
		if err != nil {
			return
		}
		p, err := wire.ParsePeerID(r.PeerID)
		if err != nil || p.Canonical() != wire.PeerIDFromPublicKey(wire.MarshalPublicKey(r.PubKey)).String() {
			t.Fatalf("ParseRecipient(%q, %q) = %+v: the key is not the peer's", peer, key, r)
		}
	})
}

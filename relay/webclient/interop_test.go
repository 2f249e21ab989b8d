package webclient_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"courier/devnode"
	"courier/internal/browsertest"
	"courier/wire"
)

// testOpenBazaarInterop checks ob.js, run by Chromium, against devnode's Go
// implementation of openbazaar-go's messages: identities, the signed
// Envelope byte for byte, and sealed messages both ways.
func testOpenBazaarInterop(t *testing.T, ctx context.Context) {
	seed := make([]byte, 32)
	rand.Read(seed)
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	seedHex := hex.EncodeToString(seed)
	id := fmt.Sprintf("courier.ob.identityFromSeed(courier.ob.hex.decode(%q))", seedHex)

	t.Run("identity", func(t *testing.T) {
		type ident struct{ PeerID, IdentityPeerID, PublicKeyHex string }
		got := browsertest.Eval[ident](t, ctx, fmt.Sprintf(`(() => { const i = %s; return {PeerID: i.peerID, IdentityPeerID: i.identityPeerID, PublicKeyHex: i.publicKeyHex}; })()`, id))
		m := wire.MarshalPublicKey(pub)
		ip, _ := wire.IdentityPeerID(m)
		if got.PeerID != devnode.PeerID(priv) || got.IdentityPeerID != ip.String() || got.PublicKeyHex != hex.EncodeToString(m) {
			t.Errorf("browser identity %+v, want %s %s %x", got, devnode.PeerID(priv), ip, m)
		}
	})

	t.Run("mnemonic as openbazaar-go restores it", func(t *testing.T) {
		type gen struct{ Mnemonic, PeerID string }
		fixed := "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
		got := browsertest.Eval[[]gen](t, ctx, fmt.Sprintf(`[courier.ob.generateIdentity(), courier.ob.generateIdentity(), courier.ob.importIdentity(%q)]
			.map((i) => ({Mnemonic: i.mnemonic, PeerID: i.peerID}))`, "  "+strings.ToUpper(fixed)+"\n"))
		if got[0].Mnemonic == got[1].Mnemonic || len(strings.Fields(got[0].Mnemonic)) != 12 {
			t.Errorf("generated mnemonics %q and %q", got[0].Mnemonic, got[1].Mnemonic)
		}
		got[2].Mnemonic = fixed
		for _, g := range got {
			if want := devnode.PeerID(devnode.IdentityFromMnemonic(g.Mnemonic)); g.PeerID != want {
				t.Errorf("mnemonic %q: browser %s, Go %s", g.Mnemonic, g.PeerID, want)
			}
		}
		bad := browsertest.Eval[string](t, ctx, `(() => { try { courier.ob.importIdentity("abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon"); return "accepted"; } catch (e) { return e.message; } })()`)
		if !strings.Contains(bad, "not a valid BIP39") {
			t.Errorf("a mnemonic with a bad checksum: %q", bad)
		}
	})

	t.Run("export and import", func(t *testing.T) {
		file := browsertest.Eval[string](t, ctx, fmt.Sprintf(`JSON.stringify(courier.ob.exportIdentity(%s))`, id))
		p := filepath.Join(t.TempDir(), "identity.json")
		if err := os.WriteFile(p, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		loaded, err := devnode.LoadIdentity(p)
		if err != nil || !bytes.Equal(loaded, priv) {
			t.Fatalf("devnode cannot load the browser's export %s: %v", file, err)
		}
		goFile := fmt.Sprintf(`{"PeerID":%q,"PrivKey":%q}`, devnode.PeerID(priv), base64.StdEncoding.EncodeToString(devnode.MarshalPrivateKey(priv)))
		got := browsertest.Eval[[]string](t, ctx, fmt.Sprintf(`[%q, %q, %q].map((s) => courier.ob.importIdentity(s).peerID)`,
			goFile, base64.StdEncoding.EncodeToString(devnode.MarshalPrivateKey(priv)), seedHex))
		for i, g := range got {
			if g != devnode.PeerID(priv) {
				t.Errorf("import form %d gives %s, want %s", i, g, devnode.PeerID(priv))
			}
		}
	})

	t.Run("envelope byte for byte", func(t *testing.T) {
		cases := []struct {
			text, subject string
			ts            time.Time
		}{
			{"hello", "", time.Unix(1700000000, 123000000)},
			{"ünïcødé ✓ 🙂", "a subject", time.Unix(1796092545, 0)},
			{strings.Repeat("long ", 100), "", time.Unix(1234567890, 999000000)},
		}
		for _, c := range cases {
			chat := devnode.NewChat(c.text, c.subject, c.ts)
			want := devnode.SignedEnvelope(priv, devnode.Message{Type: devnode.TypeChat, Chat: chat})
			type res struct{ Envelope, ChatID string }
			got := browsertest.Eval[res](t, ctx, fmt.Sprintf(`(() => {
				const c = courier.ob.newChat(%q, %q, new Date(%d));
				return {Envelope: courier.ob.hex.encode(courier.ob.chatEnvelope(%s, c)), ChatID: c.messageID};
			})()`, c.text, c.subject, c.ts.UnixMilli(), id))
			if got.Envelope != hex.EncodeToString(want) {
				t.Errorf("%q: browser envelope\n%s\nGo\n%x", c.text, got.Envelope, want)
			}
			if got.ChatID != chat.MessageID {
				t.Errorf("%q: chat ID %s, Go %s", c.text, got.ChatID, chat.MessageID)
			}
		}
	})

	t.Run("recipients", func(t *testing.T) {
		m := wire.MarshalPublicKey(pub)
		ip, _ := wire.IdentityPeerID(m)
		_, strangerPriv, _ := ed25519.GenerateKey(rand.Reader)
		stranger := hex.EncodeToString(wire.MarshalPublicKey(strangerPriv.Public().(ed25519.PublicKey)))
		cases := []struct{ peer, key, want string }{
			{ip.String(), "", devnode.PeerID(priv)},                               // 12D3Koo… embeds the key
			{devnode.PeerID(priv), hex.EncodeToString(m), devnode.PeerID(priv)},   // Qm… with the marshalled key
			{devnode.PeerID(priv), hex.EncodeToString(pub), devnode.PeerID(priv)}, // Qm… with the raw key
			{devnode.PeerID(priv), "", "error: give the recipient's public key"},
			{devnode.PeerID(priv), stranger, "error: that public key belongs to"},
			{ip.String(), stranger, "error: the public key is not the one embedded"},
			{"QmNotAPeer", "", "error: "},
		}
		for _, c := range cases {
			got := browsertest.Eval[string](t, ctx, fmt.Sprintf(`(() => { try { return courier.ob.parseRecipient(%q, %q).canonical; } catch (e) { return "error: " + e.message; } })()`, c.peer, c.key))
			if !strings.HasPrefix(got, c.want) && !(strings.HasPrefix(c.want, "error: ") && strings.Contains(got, strings.TrimPrefix(c.want, "error: "))) {
				t.Errorf("parseRecipient(%s, %.16s…) = %q, want %q", c.peer, c.key, got, c.want)
			}
			if _, err := devnode.ParseRecipient(c.peer, c.key); (err != nil) != strings.HasPrefix(c.want, "error: ") {
				t.Errorf("devnode.ParseRecipient(%s, %.16s…) disagrees: %v", c.peer, c.key, err)
			}
		}
	})

	// The other side: devnode's identity.
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	otherPub := otherPriv.Public().(ed25519.PublicKey)

	t.Run("browser seals, devnode opens", func(t *testing.T) {
		b64 := browsertest.Eval[string](t, ctx, fmt.Sprintf(`courier.ob.base64.encode(courier.ob.sealChat(%s, courier.ob.hex.decode(%q), "from the browser ✓").ciphertext)`,
			id, hex.EncodeToString(otherPub)))
		ct, _ := base64.StdEncoding.DecodeString(b64)
		m, err := devnode.Open(ct, otherPriv)
		if err != nil || m.Text != "from the browser ✓" || m.SenderPeerID != devnode.PeerID(priv) || m.Chat.MessageID == "" {
			t.Errorf("devnode opens the browser's message to %+v, %v", m, err)
		}
	})

	t.Run("devnode seals, browser opens and checks", func(t *testing.T) {
		good, _ := devnode.Seal(pub, otherPriv, "from devnode ✓")
		env := devnode.SignedEnvelope(otherPriv, devnode.Message{Type: devnode.TypeChat, Chat: devnode.NewChat("forged", "", time.Now())})
		env[len(env)-1] ^= 1 // the signature is the Envelope's last field
		forged, _ := devnode.Encrypt(pub, env)
		notForUs, _ := devnode.Seal(otherPub, otherPriv, "not for the browser")
		type res struct{ Sender, Text, Err string }
		got := browsertest.Eval[[]res](t, ctx, fmt.Sprintf(`[%q, %q, %q].map((b) => {
			try {
				const m = courier.ob.openMessage(%s, courier.ob.base64.decode(b));
				return {Sender: m.sender, Text: m.text, Err: ""};
			} catch (e) { return {Sender: "", Text: "", Err: e.message}; }
		})`, base64.StdEncoding.EncodeToString(good), base64.StdEncoding.EncodeToString(forged), base64.StdEncoding.EncodeToString(notForUs), id))
		if got[0].Err != "" || got[0].Text != "from devnode ✓" || got[0].Sender != devnode.PeerID(otherPriv) {
			t.Errorf("devnode's message opens in the browser to %+v", got[0])
		}
		if !strings.Contains(got[1].Err, "signature does not verify") {
			t.Errorf("a forged signature: %+v, want refused", got[1])
		}
		if !strings.Contains(got[2].Err, "does not open") {
			t.Errorf("a message for someone else: %+v, want refused", got[2])
		}
	})
}

package systest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"testing"

	"github.com/chromedp/chromedp"

	"courier/devnode"
	"courier/internal/browsertest"
	"courier/wire"
)

// 6. Light client ↔ desktop: the browser client, served by the relay,
// speaks the relay protocol itself. Messages go sidecar → browser and
// browser → sidecar, as real ciphertext that the other end opens.
func TestLightClientAndDesktop(t *testing.T) {
	ctx := browsertest.New(t, scenarioTimeout)
	w := newWorld(t, options{})

	// The light client's identity. A real light client seals and signs with
	// its own crypto library; the page here carries bytes, so Go does the
	// sealing for it and the page publishes exactly those bytes.
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	browserPeer := wire.PeerIDFromPublicKey(wire.MarshalPublicKey(pub))

	browsertest.OpenClient(t, ctx, w.relay.HTTPURL())
	err = chromedp.Do(ctx,
		chromedp.SetValue(chromedp.ID("peer-id"), browserPeer.String()),
		chromedp.Click(chromedp.ID("subscribe")),
		browsertest.Poll(`courier.client.state === "subscribed"`),
	)
	if err != nil {
		t.Fatalf("subscribe in the page: %v", err)
	}

	t.Log("desktop → browser: node A sends through sidecar A; the page shows it and acks it")
	sent, err := w.nodeA.SendTo(w.ctx, browserPeer.String(), hex.EncodeToString(wire.MarshalPublicKey(pub)), "hello, light client")
	if err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, browsertest.Poll(fmt.Sprintf(`courier.received.some((m) => m.id === %q && m.acked)`, sent.ID))); err != nil {
		t.Fatalf("page never showed and acked %s: %v", sent.ID, err)
	}
	b64 := browsertest.Eval[string](t, ctx, fmt.Sprintf(`courier.received.find((m) => m.id === %q).encryptedMessage`, sent.ID))
	ct, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	opened, err := devnode.Open(ct, priv)
	if err != nil || opened.Text != "hello, light client" || opened.SenderPeerID != w.nodeA.PeerID {
		t.Errorf("the browser's copy opens to %+v, %v; want node A's text", opened, err)
	}
	// Only an anonymous (level-1) subscriber had it, which the relay does
	// not count as delivery: sidecar A answers that NACK with OFFLINE too.
	m := w.waitFinal(w.sideA, []string{sent.ID})[sent.ID]
	if m.State != "handed_off" {
		t.Errorf("sidecar A: %s %s (%s), want handed_off: a level-1 subscriber is not a confirmed delivery", m.State, m.Path, m.LastError)
	}

	t.Log("browser → desktop: the page publishes to node B; sidecar B takes it, node B opens it")
	sealed, err := devnode.Seal(w.nodeBPub(t), priv, "hello from the browser")
	if err != nil {
		t.Fatal(err)
	}
	id := browsertest.Eval[string](t, ctx, fmt.Sprintf(`courier.client.publish(%q, courier.lib.base64ToBytes(%q))`,
		w.nodeB.PeerID, base64.StdEncoding.EncodeToString(sealed)))
	if id != wire.MessageID(sealed) {
		t.Errorf("page published %s, want %s", id, wire.MessageID(sealed))
	}
	got := w.waitReceived(w.nodeB, []string{id})[id]
	if got.Text != "hello from the browser" || got.Sender != browserPeer.String() || got.Path != "INDIRECT" {
		t.Errorf("node B received %+v", got)
	}
	w.checkExactlyOnce(w.nodeB, []string{id})
	if errs := browsertest.Eval[[]string](t, ctx, `courier.errors`); len(errs) > 0 {
		t.Errorf("page showed errors: %q", errs)
	}
}

// nodeBPub is node B's Ed25519 public key.
func (w *world) nodeBPub(t *testing.T) ed25519.PublicKey {
	t.Helper()
	b, err := hex.DecodeString(w.nodeB.PubKey)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := wire.UnmarshalPublicKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

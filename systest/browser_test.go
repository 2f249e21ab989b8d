package systest

import (
	"encoding/hex"
	"fmt"
	"testing"

	"github.com/chromedp/chromedp"

	"courier/internal/browsertest"
	"courier/wire"
)

// 6. Light client ↔ desktop: the browser client, served by the relay, with
// an identity made in the page, signed in at level 2. Node A writes to it
// through sidecar A; it writes to node B, which gets the message through
// sidecar B and opens it (signature checked); the relay restarts and the
// page comes back by itself.
func TestLightClientAndDesktop(t *testing.T) {
	ctx := browsertest.New(t, scenarioTimeout)
	w := newWorld(t, options{})

	browsertest.OpenClient(t, ctx, w.relay.HTTPURL())
	err := chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("create")),
		browsertest.Poll(`courier.client && courier.client.state === "subscribed" && courier.client.level === 2`),
	)
	if err != nil {
		t.Fatalf("create an identity and sign in: %v (page errors %q)", err, browsertest.Eval[[]string](t, ctx, `courier.errors`))
	}
	type ident struct{ PeerID, PubKey string }
	me := browsertest.Eval[ident](t, ctx, `({PeerID: courier.identity.peerID, PubKey: courier.identity.publicKeyHex})`)
	if key, _ := hex.DecodeString(me.PubKey); wire.PeerIDFromPublicKey(key).String() != me.PeerID {
		t.Fatalf("page identity %+v: key and peer ID do not match", me)
	}

	t.Log("desktop → browser: node A sends through sidecar A; the page opens it, shows it with its sender, acks it")
	sent, err := w.nodeA.SendTo(w.ctx, me.PeerID, me.PubKey, "hello, light client")
	if err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx, browsertest.Poll(fmt.Sprintf(`courier.messages.some((m) => m.id === %q && m.acked)`, sent.ID)))
	if err != nil {
		t.Fatalf("page never showed and acked %s: %v", sent.ID, err)
	}
	type shown struct{ Peer, Text, Error string }
	got := browsertest.Eval[shown](t, ctx, fmt.Sprintf(`(() => { const m = courier.messages.find((m) => m.id === %q); return {Peer: m.peer, Text: m.text || "", Error: m.error || ""}; })()`, sent.ID))
	if got.Peer != w.nodeA.PeerID || got.Text != "hello, light client" || got.Error != "" {
		t.Errorf("page shows %+v, want node A's text", got)
	}
	// The page signed in as the recipient and acked: a confirmed delivery.
	if m := w.waitFinal(w.sideA, []string{sent.ID})[sent.ID]; m.State != "delivered" || m.Path != "INDIRECT" {
		t.Errorf("sidecar A: %s %s (%s), want delivered INDIRECT", m.State, m.Path, m.LastError)
	}

	t.Log("browser → desktop: typed in the page to node B; sidecar B takes it, node B opens it")
	err = chromedp.Do(ctx,
		chromedp.SetValue(chromedp.ID("to-peer"), w.nodeB.PeerID),
		chromedp.SetValue(chromedp.ID("to-pubkey"), w.nodeB.PubKey),
		chromedp.SetValue(chromedp.ID("text"), "hello from the browser"),
		chromedp.Click(chromedp.ID("send")),
		browsertest.Poll(`courier.messages.some((m) => m.dir === "out" && m.id)`),
	)
	if err != nil {
		t.Fatal(err)
	}
	id := browsertest.Eval[string](t, ctx, `courier.messages.find((m) => m.dir === "out").id`)
	rec := w.waitReceived(w.nodeB, []string{id})[id]
	if rec.Text != "hello from the browser" || rec.Sender != me.PeerID || rec.Path != "INDIRECT" {
		t.Errorf("node B received %+v", rec)
	}
	if err := chromedp.Do(ctx, browsertest.Poll(fmt.Sprintf(`courier.messages.some((m) => m.id === %q && m.status === "delivered")`, id))); err != nil {
		t.Errorf("the page never showed its message delivered: %v", err)
	}
	w.checkExactlyOnce(w.nodeB, []string{id})

	t.Log("the relay restarts: the page reconnects by itself and gets node A's next message")
	if err := w.relay.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, browsertest.Poll(`courier.client.state !== "subscribed"`)); err != nil {
		t.Fatalf("the page did not notice the relay going: %v", err)
	}
	if err := w.relay.Restart(w.ctx); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, browsertest.Poll(`courier.client.state === "subscribed"`)); err != nil {
		t.Fatalf("the page did not reconnect: %v", err)
	}
	w.waitConnected(w.sideA)
	again, err := w.nodeA.SendTo(w.ctx, me.PeerID, me.PubKey, "after the restart")
	if err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, browsertest.Poll(fmt.Sprintf(`courier.messages.some((m) => m.id === %q && m.text === "after the restart" && m.acked)`, again.ID))); err != nil {
		t.Errorf("page never showed %s after the restart: %v", again.ID, err)
	}
	if errs := browsertest.Eval[[]string](t, ctx, `courier.errors`); len(errs) > 0 {
		t.Errorf("page showed errors: %q", errs)
	}
}

package systest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"courier/internal/browsertest"
	"courier/internal/cluster"
	"courier/wire"
)

// page is the browser light client (/client/) in one tab, signed in to the
// relay with its own identity.
type page struct {
	t      *testing.T
	ctx    context.Context
	name   string
	PeerID string
	PubKey string // hex, marshalled
}

// openPage loads the client from the relay in the tab ctx, creates an
// identity in the page and waits until it is signed in at level 2.
func openPage(t *testing.T, ctx context.Context, name string, relay *cluster.Relay) *page {
	t.Helper()
	browsertest.OpenClient(t, ctx, relay.HTTPURL())
	p := &page{t: t, ctx: ctx, name: name}
	p.do("create an identity and sign in", chromedp.Click(chromedp.ID("create")))
	p.signedIn()
	return p
}

// importPage loads the client and imports the identity of an Ed25519 seed
// (the 64-digit hex form the page takes), then waits until it is signed in.
func importPage(t *testing.T, ctx context.Context, name string, relay *cluster.Relay, seed []byte) *page {
	t.Helper()
	browsertest.OpenClient(t, ctx, relay.HTTPURL())
	p := &page{t: t, ctx: ctx, name: name}
	p.do("import an identity",
		chromedp.Click(chromedp.CSS("#import-box summary")),
		chromedp.SetValue(chromedp.ID("import-text"), hex.EncodeToString(seed)),
		chromedp.Click(chromedp.ID("import")),
	)
	p.signedIn()
	return p
}

// signedIn waits for a level-2 subscription and reads the page's identity,
// checking that its key and peer ID belong together.
func (p *page) signedIn() {
	p.t.Helper()
	p.do("sign in at level 2", browsertest.Poll(`courier.client && courier.client.state === "subscribed" && courier.client.level === 2`))
	type ident struct{ PeerID, PubKey string }
	me := browsertest.Eval[ident](p.t, p.ctx, `({PeerID: courier.identity.peerID, PubKey: courier.identity.publicKeyHex})`)
	if key, _ := hex.DecodeString(me.PubKey); wire.PeerIDFromPublicKey(key).String() != me.PeerID {
		p.t.Fatalf("%s: page identity %+v: key and peer ID do not match", p.name, me)
	}
	p.PeerID, p.PubKey = me.PeerID, me.PubKey
}

// do runs actions in the page; a failure names the step and shows the
// page's errors.
func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, actions...); err != nil {
		p.t.Fatalf("%s: %s: %v (page errors %q)", p.name, what, err, p.errors())
	}
}

func (p *page) errors() []string {
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[[]string](`courier.errors`))
	if err != nil {
		return []string{"(cannot read: " + err.Error() + ")"}
	}
	return v
}

// send types text to a peer in the compose form, as a person does, and
// returns the message ID the page published it under.
func (p *page) send(toPeer, toPubKey, text string) string {
	p.t.Helper()
	out := fmt.Sprintf(`courier.messages.find((m) => m.dir === "out" && m.text === %s && m.id)`, browsertest.JS(p.t, text))
	p.do("send "+text,
		chromedp.SetValue(chromedp.ID("to-peer"), toPeer),
		chromedp.SetValue(chromedp.ID("to-pubkey"), toPubKey),
		chromedp.SetValue(chromedp.ID("text"), text),
		chromedp.Click(chromedp.ID("send")),
		browsertest.Poll(out),
	)
	return browsertest.Eval[string](p.t, p.ctx, out+`.id`)
}

// waitStatus waits until the page shows status on its outgoing message id
// (in the message's list item, where a person reads it).
func (p *page) waitStatus(id, status string) {
	p.t.Helper()
	expr := fmt.Sprintf(`(() => { const li = document.querySelector('li.msg.out[data-id=%s]'); return li && li.dataset.status === %s && li.querySelector('.state').textContent !== ""; })()`,
		browsertest.JS(p.t, id), browsertest.JS(p.t, status))
	if err := chromedp.Do(p.ctx, browsertest.Poll(expr)); err != nil {
		now := browsertest.Eval[string](p.t, p.ctx, fmt.Sprintf(`(courier.messages.find((m) => m.id === %s) || {}).status || "none"`, browsertest.JS(p.t, id)))
		p.t.Fatalf("%s never showed %s on its message %s (status %s): %v (page errors %q)", p.name, status, id[:12], now, err, p.errors())
	}
}

// shown is an incoming message as the page shows it.
type shown struct {
	Items  int    // list items with its ID
	Kept   int    // entries with its ID in courier.messages
	Sender string // the full peer ID the item names
	Text   string
	Acked  bool
}

// incoming reads what the page shows of incoming message id.
func (p *page) incoming(id string) shown {
	p.t.Helper()
	return browsertest.Eval[shown](p.t, p.ctx, fmt.Sprintf(`(() => {
		const id = %s;
		const items = document.querySelectorAll('li.msg.in[data-id="' + id + '"]');
		const kept = courier.messages.filter((m) => m.id === id);
		const li = items[0];
		return {
			Items: items.length, Kept: kept.length,
			Sender: li ? li.querySelector('.who').title : "",
			Text: li ? li.querySelector('.text').textContent : "",
			Acked: kept.length > 0 && kept[0].acked === true,
		};
	})()`, browsertest.JS(p.t, id)))
}

// waitIncoming waits until the page shows and has acked message id, and
// returns what it shows.
func (p *page) waitIncoming(id string) shown {
	p.t.Helper()
	p.do("show and ack "+id[:12], browsertest.Poll(fmt.Sprintf(`courier.messages.some((m) => m.id === %s && m.acked)`, browsertest.JS(p.t, id))))
	return p.incoming(id)
}

// reconnect closes the page's relay connection and opens a new one (the
// "Reconnect now" button), waits for the replay that follows the sign-in
// to end and returns how many stored messages the relay replayed
// (Drained's count): what it still holds for this identity.
func (p *page) reconnect() int {
	p.t.Helper()
	p.do("hook Drained", chromedp.Evaluate[chromedp.Void](`(() => {
		window.drainedCounts = [];
		courier.client.onDrained = (n) => window.drainedCounts.push(n);
	})()`))
	p.do("reconnect",
		chromedp.Click(chromedp.ID("connect")),
		browsertest.Poll(`window.drainedCounts.length > 0 && courier.client.state === "subscribed"`),
	)
	return browsertest.Eval[int](p.t, p.ctx, `window.drainedCounts[0]`)
}

// checkNoErrors fails for anything the page showed a person as an error.
func (p *page) checkNoErrors() {
	p.t.Helper()
	if errs := p.errors(); len(errs) > 0 {
		p.t.Errorf("%s showed errors: %q", p.name, errs)
	}
}

// 8. Light client ↔ light client: two pages in one browser, each with its
// own identity made in the page, signed in at level 2. Each writes to the
// other; each opens the other's message (signature checked in the page)
// and shows it with the right sender; each sender sees "delivered".
func TestLightClientToLightClient(t *testing.T) {
	ctx := browsertest.New(t, scenarioTimeout)
	// "delivered" needs the other page's ack within delivery_wait: a
	// generous one, so that a loaded machine does not turn it into queued.
	w := newWorld(t, options{relayOnly: true, relayExtra: "[limits]\ndelivery_wait = \"15s\"\n"})
	alice := openPage(t, ctx, "page A", w.relay)
	bob := openPage(t, browsertest.NewTab(t, ctx), "page B", w.relay)
	if alice.PeerID == bob.PeerID {
		t.Fatalf("both pages made identity %s", alice.PeerID)
	}

	for _, d := range []struct{ from, to *page }{{alice, bob}, {bob, alice}} {
		text := fmt.Sprintf("hello %s, this is %s", d.to.name, d.from.name)
		start := time.Now()
		id := d.from.send(d.to.PeerID, d.to.PubKey, text)
		got := d.to.waitIncoming(id)
		d.from.waitStatus(id, "delivered")
		t.Logf("%s → %s: shown and delivered in %s", d.from.name, d.to.name, time.Since(start).Round(time.Millisecond))
		if got.Items != 1 || got.Kept != 1 || got.Sender != d.from.PeerID || got.Text != text {
			t.Errorf("%s shows %+v, want %q once from %s", d.to.name, got, text, d.from.PeerID)
		}
	}
	alice.checkNoErrors()
	bob.checkNoErrors()
}

// 9. Light client → a node that does not run Courier: node C has no
// sidecar and lives on the simulated OFFLINE network. The page publishes
// with "fallback":"relay"; nobody takes it at the relay, so the relay's
// bridge hands it to its operator's node, which publishes it OFFLINE, and
// the page shows "offline". Node C finds it at its next poll, opens it and
// checks the signature.
func TestLightClientToNodeWithoutCourier(t *testing.T) {
	const (
		poll  = 500 * time.Millisecond
		after = 300 * time.Millisecond
	)
	ctx := browsertest.New(t, scenarioTimeout)
	w := newWorld(t, options{relayOnly: true, bridge: true, bridgeAfter: after})
	nodeC, err := w.c.StartDevNodeWith(w.ctx, "nodeC", cluster.DevNodeOptions{Offline: true, OfflinePoll: poll})
	if err != nil {
		t.Fatal(err)
	}
	p := openPage(t, ctx, "page", w.relay)

	text := "to a node without Courier, from a browser"
	start := time.Now()
	id := p.send(nodeC.PeerID, nodeC.PubKey, text)
	p.waitStatus(id, "offline")
	handedOff := time.Since(start)

	got := w.waitReceived(nodeC, []string{id})[id]
	if got.Text != text || got.Sender != p.PeerID || got.Path != "OFFLINE" || got.OfflineCount != 1 || got.Count != 0 {
		t.Errorf("node C received %+v, want %q from the page, once, OFFLINE", got, text)
	}
	offlineDelay := got.FirstSeen.Sub(got.PublishedAt)
	t.Logf("light client → node without Courier: relay's bridge handed it OFFLINE %s after the send (offline.after %s); node C found it %s after it was published (polls every %s)",
		handedOff.Round(time.Millisecond), after, offlineDelay.Round(time.Millisecond), poll)
	if offlineDelay < 0 || offlineDelay > poll+10*time.Second {
		t.Errorf("OFFLINE delay %s: want within a poll interval (%s), allowing for a loaded machine", offlineDelay, poll)
	}
	// The operator's node published it on the page's behalf, to node C.
	off, err := w.operator.Offline(w.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(off) != 1 || off[0]["id"] != id || off[0]["recipient"] != nodeC.PeerID {
		t.Errorf("the operator's OFFLINE endpoint got %v, want %s for node C", off, id[:12])
	}
	p.checkNoErrors()
}

// 10. Desktop → a light client that is offline at the time: sidecar A's
// publish is answered "queued" (nobody is signed in as the recipient), so
// it hands the message OFFLINE too (handed_off). The relay keeps it: when
// the light client's identity is imported into a page later and signs in,
// the relay pushes it, and the page shows it once, also after a reconnect.
func TestDesktopToOfflineLightClient(t *testing.T) {
	ctx := browsertest.New(t, scenarioTimeout)
	w := newWorld(t, options{noSidecarB: true})
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	marshalled := wire.MarshalPublicKey(pub)
	peerID := wire.PeerIDFromPublicKey(marshalled).String()

	text := "for a light client that is not connected"
	sent, err := w.nodeA.SendTo(w.ctx, peerID, hex.EncodeToString(marshalled), text)
	if err != nil {
		t.Fatal(err)
	}
	id := sent.ID
	m := w.waitFinal(w.sideA, []string{id})[id]
	if m.State != "handed_off" || m.Path != "OFFLINE" || !strings.Contains(m.LastError, "queued") {
		t.Fatalf("sidecar A: %s %s (%s), want handed_off OFFLINE after the relay answered queued", m.State, m.Path, m.LastError)
	}
	off, err := w.nodeA.Offline(w.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(off) != 1 || off[0]["id"] != id || off[0]["recipient"] != peerID {
		t.Errorf("node A's OFFLINE endpoint got %v, want %s for the light client", off, id[:12])
	}

	t.Log("the light client comes online: its identity imported into a page, signed in")
	p := importPage(t, ctx, "page", w.relay, priv.Seed())
	if p.PeerID != peerID {
		t.Fatalf("the page imported %s, want %s", p.PeerID, peerID)
	}
	got := p.waitIncoming(id)
	if got.Items != 1 || got.Kept != 1 || got.Sender != w.nodeA.PeerID || got.Text != text {
		t.Errorf("page shows %+v, want %q once from node A", got, text)
	}
	replayed := p.reconnect()
	if got := p.incoming(id); got.Items != 1 || got.Kept != 1 {
		t.Errorf("after a reconnect (relay replayed %d) the page shows the message %d times (%d kept), want once", replayed, got.Items, got.Kept)
	}
	t.Logf("after the page's ack and a reconnect, the relay replayed %d message(s)", replayed)
	p.checkNoErrors()
}

// 11. A sidecar opted out (no relay_url) → a light client: the message
// goes OFFLINE only, which a light client cannot read. Sidecar A says so
// (handed_off, path OFFLINE, no relay configured); the page, signed in all
// along, never shows it, and the relay has nothing for it.
func TestOptedOutSidecarToLightClient(t *testing.T) {
	ctx := browsertest.New(t, scenarioTimeout)
	w := newWorld(t, options{noRelayA: true, noSidecarB: true})
	p := openPage(t, ctx, "page", w.relay)

	sent, err := w.nodeA.SendTo(w.ctx, p.PeerID, p.PubKey, "from a node that opted out")
	if err != nil {
		t.Fatal(err)
	}
	m := w.waitFinal(w.sideA, []string{sent.ID})[sent.ID]
	if m.State != "handed_off" || m.Path != "OFFLINE" || !strings.Contains(m.LastError, "no relay configured") {
		t.Errorf("sidecar A: %s %s (%s), want handed_off OFFLINE, no relay configured", m.State, m.Path, m.LastError)
	}
	off, err := w.nodeA.Offline(w.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(off) != 1 || off[0]["id"] != sent.ID || off[0]["recipient"] != p.PeerID {
		t.Errorf("node A's OFFLINE endpoint got %v, want %s for the light client", off, sent.ID[:12])
	}
	// The message is final at the sender: it went OFFLINE and nowhere
	// else. The relay holds nothing for the page, so it will never show it.
	if n := p.reconnect(); n != 0 {
		t.Errorf("the relay replayed %d messages to the page, want none", n)
	}
	if got := p.incoming(sent.ID); got.Items != 0 || got.Kept != 0 {
		t.Errorf("the page shows the opted-out node's message: %+v", got)
	}
	if n := browsertest.Eval[int](t, ctx, `courier.messages.length`); n != 0 {
		t.Errorf("the page has %d messages, want none", n)
	}
	p.checkNoErrors()
}

package webclient_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"courier/devnode"
	"courier/internal/browsertest"
	"courier/relay"
	"courier/relay/relaytest"
	"courier/relay/webclient"
	"courier/wire"
)

// startRelay runs the real relay (SQLite in t.TempDir()) that serves the
// client at /client/ as courier-relay does, with 127.0.0.1 as its public
// host: the name the page signs for when it is opened there.
func startRelay(t *testing.T) *relaytest.Relay {
	t.Helper()
	return relaytest.Start(t, func(c *relay.Config) {
		c.Client = webclient.FS()
		c.PublicHost = "127.0.0.1"
	}, nil)
}

// peer is a Go level-2 client of the relay, signed in as a devnode's
// identity: the other side of the page's conversation.
type peer struct {
	t    *testing.T
	node *devnode.Node
	ws   *websocket.Conn
	// replayed are the deliveries the relay replayed before Drained.
	replayed []*wire.Delivery
}

func connectPeer(t *testing.T, wsURL string, node *devnode.Node) *peer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", wsURL, err)
	}
	ws.SetReadLimit(1 << 24)
	t.Cleanup(func() { ws.CloseNow() })
	p := &peer{t: t, node: node, ws: ws}
	p.write(wire.ClientFrameBytes(wire.TypeAuthRequest, wire.AuthRequest{PeerID: node.PeerID()}))
	f := p.read()
	if f.Kind != wire.KindAuthChallenge {
		t.Fatalf("want a challenge, got %+v", f)
	}
	pid, _ := wire.ParsePeerID(node.PeerID())
	p.write(wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{
		UserID: node.PeerID(), SubscriptionKey: pid.SubscriptionKey(wire.RelayPrefixBits), Protocol: 2,
		PubKey:    node.PubKeyHex(),
		Signature: hex.EncodeToString(node.Sign([]byte(wire.AuthPayload(f.AuthChallenge.Host, f.AuthChallenge.Nonce)))),
	}))
	if f := p.read(); f.Kind != wire.KindSubscribed {
		t.Fatalf("subscribe: %+v", f)
	}
	for {
		f := p.read()
		if f.Kind == wire.KindDrained {
			return p
		}
		if f.Kind != wire.KindDelivery {
			t.Fatalf("want a replayed delivery or Drained, got %+v", f)
		}
		p.replayed = append(p.replayed, f.Delivery)
	}
}

func (p *peer) write(b []byte) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.ws.Write(ctx, websocket.MessageText, b); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

func (p *peer) read() wire.ServerFrame {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, b, err := p.ws.Read(ctx)
	if err != nil {
		p.t.Fatalf("read: %v", err)
	}
	f, err := wire.ParseServerFrame(b)
	if err != nil {
		p.t.Fatalf("frame %s: %v", b, err)
	}
	return f
}

// send seals text to the browser's key and publishes it; it returns the
// message ID and the relay's publish result.
func (p *peer) send(to string, toPub ed25519.PublicKey, text string) (string, wire.PublishResult) {
	p.t.Helper()
	ct, err := p.node.Seal(toPub, text)
	if err != nil {
		p.t.Fatal(err)
	}
	p.write(wire.ClientFrameBytes(wire.TypePublish, wire.Publish{
		EncryptedMessage: base64.StdEncoding.EncodeToString(ct), Recipient: to, Ref: "r1",
	}))
	f := p.read()
	if f.Kind != wire.KindPublishResult {
		p.t.Fatalf("want a publish result, got %+v", f)
	}
	return wire.MessageID(ct), *f.PublishResult
}

// browserIdentity reads the page's identity: peer ID and raw public key.
func browserIdentity(t *testing.T, ctx context.Context) (string, ed25519.PublicKey) {
	t.Helper()
	type ident struct{ PeerID, PubKey string }
	id := browsertest.Eval[ident](t, ctx, `({PeerID: courier.identity.peerID, PubKey: courier.identity.publicKeyHex})`)
	b, _ := hex.DecodeString(id.PubKey)
	pub, err := wire.UnmarshalPublicKey(b)
	if err != nil {
		t.Fatalf("page's public key %q: %v", id.PubKey, err)
	}
	if wire.PeerIDFromPublicKey(b).String() != id.PeerID {
		t.Fatalf("page's peer ID %s is not its key's", id.PeerID)
	}
	return id.PeerID, pub
}

// TestEndToEnd drives the page in Chromium as a person would, against the
// real relay, with a devnode identity on the other side: identity created
// in the page, level 2 sign-in, a chat each way (opened and checked at each
// end, acked once shown, "delivered" shown to the sender), a person's
// mistake explained, a level-1 relay, and a reconnect after the relay
// restarts.
func TestEndToEnd(t *testing.T) {
	ctx := browsertest.New(t, 90*time.Second)
	r := startRelay(t)
	base := "http://" + r.Addr
	wsURL := r.URL()

	browsertest.OpenClient(t, ctx, base)
	if got, err := chromedp.Run(ctx, chromedp.Value(chromedp.ID("relay-url"))); err != nil || got != wsURL {
		t.Errorf("default relay URL = %q (%v), want %q", got, err, wsURL)
	}
	screenshot(t, ctx, "webclient-start.png")
	err := chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("create")), // "remember" left unticked
		browsertest.Poll(`courier.client && courier.client.state === "subscribed" && courier.client.level === 2`),
	)
	if err != nil {
		t.Fatalf("create an identity and connect: %v (errors %v)", err, browsertest.Eval[[]string](t, ctx, `courier.errors`))
	}
	browserPeer, browserPub := browserIdentity(t, ctx)
	if shown, _ := chromedp.Run(ctx, chromedp.TextContent(chromedp.ID("my-peer-id"))); shown != browserPeer {
		t.Errorf("page shows peer ID %q, identity is %s", shown, browserPeer)
	}
	if n := browsertest.Eval[int](t, ctx, `localStorage.length`); n != 0 {
		t.Errorf("without consent the page stored %d items", n)
	}

	node, err := devnode.New(devnode.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other := connectPeer(t, wsURL, node)

	t.Log("devnode → browser: shown with its sender, acked once shown, so the sender hears delivered")
	id, res := other.send(browserPeer, browserPub, "hello, light client ✓")
	if res.Status != "delivered" {
		t.Errorf("publish to the page: %+v, want delivered (the page acks what it shows)", res)
	}
	type shown struct{ Dir, ID, Peer, Text, Error string }
	got := browsertest.Eval[[]shown](t, ctx, `courier.messages.map((m) => ({Dir: m.dir, ID: m.id, Peer: m.peer, Text: m.text || "", Error: m.error || ""}))`)
	if len(got) != 1 || got[0].ID != id || got[0].Peer != node.PeerID() || got[0].Text != "hello, light client ✓" || got[0].Dir != "in" {
		t.Fatalf("page shows %+v", got)
	}
	text, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(fmt.Sprintf(`li[data-id="%s"] .text`, id))))
	if err != nil || text != "hello, light client ✓" {
		t.Errorf("message text on the page = %q (%v)", text, err)
	}

	t.Log("browser → devnode: Reply fills in the sender and its key; sealed and signed in the page, opened by devnode")
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`li[data-id="%s"] button.reply`, id))),
		chromedp.SetValue(chromedp.ID("text"), "hello from the browser ✓"),
		chromedp.Click(chromedp.ID("send")),
	)
	if err != nil {
		t.Fatal(err)
	}
	f := other.read()
	if f.Kind != wire.KindDelivery {
		t.Fatalf("devnode side got %+v, want the page's message", f)
	}
	ct, _ := base64.StdEncoding.DecodeString(f.Delivery.EncryptedMessage)
	m, err := node.Open(ct)
	if err != nil || m.Text != "hello from the browser ✓" || m.SenderPeerID != browserPeer {
		t.Fatalf("devnode opens %+v, %v", m, err)
	}
	other.write(wire.ClientFrameBytes(wire.TypeAck, wire.Ack{MessageID: f.Delivery.ID}))
	if err := chromedp.Do(ctx, browsertest.Poll(fmt.Sprintf(`courier.messages.some((m) => m.id === %q && m.status === "delivered")`, f.Delivery.ID))); err != nil {
		t.Errorf("the page never showed its message delivered: %v", err)
	}
	status, _ := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(fmt.Sprintf(`li[data-id="%s"] .state`, f.Delivery.ID))))
	if !strings.HasPrefix(status, "Delivered") {
		t.Errorf("status line %q", status)
	}

	t.Log("a Qm… recipient without its key: the page says what is missing")
	browsertest.Eval[bool](t, ctx, `(document.getElementById("to-pubkey").value = "") === ""`)
	err = chromedp.Do(ctx,
		chromedp.SetValue(chromedp.ID("text"), "no key"),
		chromedp.Click(chromedp.ID("send")),
		browsertest.Poll(`!document.getElementById("alert").hidden`),
	)
	if alert, _ := chromedp.Run(ctx, chromedp.TextContent(chromedp.ID("alert"))); err != nil || !strings.Contains(alert, "give the recipient's public key") {
		t.Errorf("alert %q (%v)", alert, err)
	}

	t.Log("a relay that offers only level 1: the client subscribes at level 1")
	level1 := level1Front(t, r.Addr)
	state := browsertest.Eval[string](t, ctx, fmt.Sprintf(`new Promise((resolve) => {
		const c = new courier.lib.RelayClient({identity: courier.identity, url: %q});
		c.onStatus = (s) => { if (s === "subscribed") { const l = c.level; c.stop(); resolve("subscribed at level " + l); } };
		c.onError = (e) => { c.stop(); resolve("error: " + e); };
		c.start();
	})`, level1))
	if state != "subscribed at level 1" {
		t.Errorf("against a level-1 relay: %s", state)
	}

	t.Log("the relay restarts: the page reconnects by itself and gets the next message")
	r.Stop()
	if err := chromedp.Do(ctx, browsertest.Poll(`courier.client.state === "waiting"`)); err != nil {
		t.Fatalf("the page did not notice the relay going: %v", err)
	}
	t.Log("written while the relay is away: held in the page, sent when it is back")
	err = chromedp.Do(ctx,
		chromedp.SetValue(chromedp.ID("to-pubkey"), node.PubKeyHex()),
		chromedp.SetValue(chromedp.ID("text"), "written while away"),
		chromedp.Click(chromedp.ID("send")),
		browsertest.Poll(`courier.messages.some((m) => m.text === "written while away" && m.status === "waiting")`),
	)
	if err != nil {
		t.Fatalf("a message written while the relay is down: %v", err)
	}
	r.Restart()
	if err := chromedp.Do(ctx, browsertest.Poll(`courier.client.state === "subscribed" && courier.client.level === 2`)); err != nil {
		t.Fatalf("the page did not reconnect: %v", err)
	}
	// The devnode side is not connected yet: the relay keeps it (queued).
	if err := chromedp.Do(ctx, browsertest.Poll(`courier.messages.some((m) => m.text === "written while away" && m.status === "queued")`)); err != nil {
		t.Errorf("the held message was not sent after the reconnect: %v", err)
	}
	other = connectPeer(t, wsURL, node)
	if len(other.replayed) != 1 {
		t.Fatalf("devnode side got %d replayed messages, want the one written while away", len(other.replayed))
	}
	ct, _ = base64.StdEncoding.DecodeString(other.replayed[0].EncryptedMessage)
	if m, err := node.Open(ct); err != nil || m.Text != "written while away" {
		t.Errorf("replayed message opens to %+v, %v", m, err)
	}
	other.write(wire.ClientFrameBytes(wire.TypeAck, wire.Ack{MessageID: other.replayed[0].ID}))
	id2, res := other.send(browserPeer, browserPub, "after the restart")
	if res.Status != "delivered" {
		t.Errorf("publish after the restart: %+v", res)
	}
	if err := chromedp.Do(ctx, browsertest.Poll(fmt.Sprintf(`courier.messages.some((m) => m.id === %q && m.text === "after the restart")`, id2))); err != nil {
		t.Errorf("page did not show the message after the restart: %v", err)
	}

	// The page's own errors: only the one the person caused above.
	if errs := browsertest.Eval[[]string](t, ctx, `courier.errors`); len(errs) != 1 {
		t.Errorf("page errors: %q", errs)
	}
	screenshot(t, ctx, "webclient.png")

	t.Log("a relay whose challenge names another host: not signed, and the person is told")
	elsewhere := relaytest.Start(t, nil, nil) // public_host "relay.test"
	state = browsertest.Eval[string](t, ctx, fmt.Sprintf(`new Promise((resolve) => {
		const c = new courier.lib.RelayClient({identity: courier.identity, url: %q});
		c.onStatus = (s) => { if (s === "subscribed") { c.stop(); resolve("subscribed"); } };
		c.onError = (e) => resolve(c.state + ": " + e);
		c.start();
	})`, elsewhere.URL()))
	if !strings.HasPrefix(state, `stopped: the relay asked to sign in to "relay.test"`) {
		t.Errorf("a challenge for another host: %s", state)
	}

	t.Log("with consent, the identity and the messages survive a reload; forgetting wipes them")
	browsertest.Eval[bool](t, ctx, `(window.confirm = () => true) && true`)
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("forget")),
		browsertest.Poll(`courier.identity === null && localStorage.length === 0 && courier.messages.length === 0`),
	)
	if err != nil {
		t.Fatalf("forget: %v", err)
	}
	keyFile := filepath.Join(t.TempDir(), "identity.json")
	if err := devnode.SaveIdentity(keyFile, devnode.IdentityFromMnemonic("abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about")); err != nil {
		t.Fatal(err)
	}
	fileText, _ := os.ReadFile(keyFile)
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("remember")),
		chromedp.Click(chromedp.CSS("#import-box summary")),
		chromedp.SetValue(chromedp.ID("import-text"), string(fileText)),
		chromedp.Click(chromedp.ID("import")),
		browsertest.Poll(`courier.client && courier.client.state === "subscribed"`),
	)
	if err != nil {
		t.Fatalf("import with consent: %v (%v)", err, browsertest.Eval[[]string](t, ctx, `courier.errors`))
	}
	importedPeer, importedPub := browserIdentity(t, ctx)
	if want := devnode.PeerID(devnode.IdentityFromMnemonic("abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about")); importedPeer != want {
		t.Errorf("imported identity %s, want %s", importedPeer, want)
	}
	id3, res := other.send(importedPeer, importedPub, "kept across a reload")
	if res.Status != "delivered" {
		t.Errorf("publish to the imported identity: %+v", res)
	}
	browsertest.OpenClient(t, ctx, base) // a reload
	err = chromedp.Do(ctx, browsertest.Poll(fmt.Sprintf(`courier.identity && courier.identity.peerID === %q &&
		courier.messages.some((m) => m.id === %q) && courier.client && courier.client.state === "subscribed"`, importedPeer, id3)))
	if err != nil {
		t.Errorf("after a reload with consent: %v", err)
	}
	screenshot(t, ctx, "webclient-reloaded.png")
}

// level1Front is a front for the relay that describes it as offering
// level 1 only (GET /), passing WebSocket upgrades to the real relay: the
// page must then not try level 2.
func level1Front(t *testing.T, relayAddr string) string {
	t.Helper()
	target, _ := url.Parse("http://" + relayAddr + "/")
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Access-Control-Allow-Origin", "*")
			fmt.Fprint(w, `{"name":"courier-relay","protocol_levels":[1]}`)
			return
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/"
}

// screenshot saves the page as a PNG named name, in the test's temporary
// directory or in the directory $COURIER_WEBCLIENT_SCREENSHOTS, for a person
// to look at.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("COURIER_WEBCLIENT_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"courier/devnode"
	"courier/internal/browsertest"
	"courier/internal/cluster"
	"courier/wire"
)

// lightClient is the demo's light client: the relay's browser client in
// headless Chromium where there is one, else a scripted level-2 client in
// Go that does what the page does (its own identity, the challenge signed
// by itself, an openbazaar-go Envelope sealed and signed, published with
// "fallback":"relay").
type lightClient interface {
	// What says what the client is, for a person.
	What() string
	PeerID() string
	// Send seals text to the peer (hex marshalled key), publishes it and
	// waits for the relay's answer: its message ID and status (delivered,
	// offline, queued or rejected).
	Send(ctx context.Context, toPeer, toPubKey, text string) (id, status string, err error)
	// Close stops the client and waits for what it started.
	Close()
}

// startLightClient starts the light client of kind "browser" (the browser
// client in headless Chromium), "scripted" (the level-2 client in Go), or
// "auto" (the browser where Chromium is installed, else the scripted one).
// profileDir is the browser's profile, removed by the caller after Close.
func startLightClient(ctx context.Context, kind string, relay *cluster.Relay, profileDir string) (lightClient, error) {
	exe := browsertest.FindChromium()
	switch {
	case kind == "scripted" || kind == "auto" && exe == "":
		return startScriptedClient(ctx, relay)
	case exe == "":
		return nil, errors.New("-light-client browser: no chromium on PATH (apt-get install chromium)")
	}
	return startBrowserClient(ctx, exe, relay, profileDir)
}

// ---- the real page in headless Chromium ----------------------------------

type browserClient struct {
	tab    context.Context
	stop   func()
	peerID string
	url    string
}

func startBrowserClient(ctx context.Context, exe string, relay *cluster.Relay, profileDir string) (*browserClient, error) {
	tab, stop := browsertest.Launch(ctx, exe, profileDir)
	b := &browserClient{tab: tab, stop: stop, url: relay.HTTPURL() + "/client/"}
	err := chromedp.Do(tab,
		chromedp.Navigate(b.url),
		browsertest.Poll(`window.courier && window.courier.ready`),
		chromedp.Click(chromedp.ID("create")),
		browsertest.Poll(`courier.client && courier.client.state === "subscribed" && courier.client.level === 2`),
	)
	if err == nil {
		b.peerID, err = chromedp.Run(tab, chromedp.Evaluate[string](`courier.identity.peerID`))
	}
	if err != nil {
		stop()
		return nil, fmt.Errorf("the browser client at %s: %w", b.url, err)
	}
	return b, nil
}

func (b *browserClient) What() string {
	return fmt.Sprintf("the browser client %s in headless Chromium, identity made in the page", b.url)
}

func (b *browserClient) PeerID() string { return b.peerID }

func (b *browserClient) Send(ctx context.Context, toPeer, toPubKey, text string) (string, string, error) {
	textJS := jsString(text)
	out := `courier.messages.find((m) => m.dir === "out" && m.text === ` + textJS + ` && m.id)`
	err := chromedp.Do(b.tab,
		chromedp.SetValue(chromedp.ID("to-peer"), toPeer),
		chromedp.SetValue(chromedp.ID("to-pubkey"), toPubKey),
		chromedp.SetValue(chromedp.ID("text"), text),
		chromedp.Click(chromedp.ID("send")),
		browsertest.Poll(out+` && ["delivered", "offline", "queued", "rejected"].includes(`+out+`.status)`),
	)
	if err != nil {
		errs, _ := chromedp.Run(b.tab, chromedp.Evaluate[[]string](`courier.errors`))
		return "", "", fmt.Errorf("the page's send: %w (page errors %q)", err, errs)
	}
	type sent struct{ ID, Status string }
	s, err := chromedp.Run(b.tab, chromedp.Evaluate[sent](`(() => { const m = `+out+`; return {ID: m.id, Status: m.status}; })()`))
	return s.ID, s.Status, err
}

func (b *browserClient) Close() { b.stop() }

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			sb.WriteByte('\\')
			sb.WriteRune(r)
		case r < 0x20 || r == 0x2028 || r == 0x2029:
			fmt.Fprintf(&sb, `\u%04x`, r)
		default:
			sb.WriteRune(r)
		}
	}
	sb.WriteByte('"')
	return sb.String()
}

// ---- the scripted level-2 client -----------------------------------------

type scriptedClient struct {
	priv   ed25519.PrivateKey
	peerID string
	ws     *websocket.Conn
	refs   int
}

func startScriptedClient(ctx context.Context, relay *cluster.Relay) (*scriptedClient, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	s := &scriptedClient{priv: priv, peerID: devnode.PeerID(priv)}
	ws, _, err := websocket.Dial(ctx, relay.URL(), nil)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", relay.URL(), err)
	}
	ws.SetReadLimit(1 << 24)
	s.ws = ws
	if err := s.signIn(ctx, relay.URL()); err != nil {
		ws.CloseNow()
		return nil, err
	}
	return s, nil
}

// signIn does the level-2 handshake and waits for the replay's end.
func (s *scriptedClient) signIn(ctx context.Context, relayURL string) error {
	if err := s.write(ctx, wire.ClientFrameBytes(wire.TypeAuthRequest, wire.AuthRequest{PeerID: s.peerID})); err != nil {
		return err
	}
	f, err := s.read(ctx)
	if err != nil {
		return err
	}
	if f.Kind != wire.KindAuthChallenge {
		return fmt.Errorf("the relay answered the AuthRequest with %s, not a challenge", describe(f))
	}
	u, err := url.Parse(relayURL)
	if err != nil {
		return err
	}
	if !strings.EqualFold(f.AuthChallenge.Host, u.Hostname()) {
		// Signing it would let this relay sign in elsewhere as us.
		return fmt.Errorf("the relay asks to sign in to %q, not %q: not signed", f.AuthChallenge.Host, u.Hostname())
	}
	pub := s.priv.Public().(ed25519.PublicKey)
	pid, err := wire.ParsePeerID(s.peerID)
	if err != nil {
		return err
	}
	err = s.write(ctx, wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{
		UserID: s.peerID, SubscriptionKey: pid.SubscriptionKey(wire.RelayPrefixBits), Protocol: 2,
		PubKey:    hex.EncodeToString(wire.MarshalPublicKey(pub)),
		Signature: hex.EncodeToString(ed25519.Sign(s.priv, []byte(wire.AuthPayload(f.AuthChallenge.Host, f.AuthChallenge.Nonce)))),
	}))
	if err != nil {
		return err
	}
	if f, err = s.read(ctx); err != nil {
		return err
	}
	if f.Kind != wire.KindSubscribed {
		return fmt.Errorf("the relay refused the subscription: %s", describe(f))
	}
	for f.Kind != wire.KindDrained {
		if f, err = s.read(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (s *scriptedClient) What() string {
	return "a scripted level-2 client in Go (no Chromium here), identity made by the demo"
}

func (s *scriptedClient) PeerID() string { return s.peerID }

func (s *scriptedClient) Send(ctx context.Context, toPeer, toPubKey, text string) (string, string, error) {
	to, err := devnode.ParseRecipient(toPeer, toPubKey)
	if err != nil {
		return "", "", err
	}
	ct, err := devnode.Seal(to.PubKey, s.priv, text)
	if err != nil {
		return "", "", err
	}
	s.refs++
	ref := fmt.Sprintf("demo-%d", s.refs)
	err = s.write(ctx, wire.ClientFrameBytes(wire.TypePublish, wire.Publish{
		EncryptedMessage: base64.StdEncoding.EncodeToString(ct), Recipient: toPeer, Ref: ref, Fallback: wire.FallbackRelay,
	}))
	if err != nil {
		return "", "", err
	}
	for {
		f, err := s.read(ctx)
		if err != nil {
			return "", "", err
		}
		if f.Kind == wire.KindPublishResult && f.PublishResult.Ref == ref {
			return f.PublishResult.ID, f.PublishResult.Status, nil
		}
	}
}

func (s *scriptedClient) write(ctx context.Context, b []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.ws.Write(ctx, websocket.MessageText, b)
}

func (s *scriptedClient) read(ctx context.Context) (wire.ServerFrame, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, b, err := s.ws.Read(ctx)
	if err != nil {
		return wire.ServerFrame{}, fmt.Errorf("read from the relay: %w", err)
	}
	f, err := wire.ParseServerFrame(b)
	if err != nil {
		return wire.ServerFrame{}, errors.Join(fmt.Errorf("the relay sent %.80q", b), err)
	}
	return f, nil
}

func (s *scriptedClient) Close() {
	_ = s.ws.Close(websocket.StatusNormalClosure, "demo over")
}

// describe names a frame the client did not expect, for the error.
func describe(f wire.ServerFrame) string {
	if f.Error != "" {
		return fmt.Sprintf("an error (%s)", f.Error)
	}
	return fmt.Sprintf("a frame of kind %d", f.Kind)
}

// profileDir makes the browser's profile directory under dir.
func profileDir(dir string) (string, error) {
	p := dir + string(os.PathSeparator) + "chromium-profile"
	return p, os.MkdirAll(p, 0o700)
}

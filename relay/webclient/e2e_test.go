package webclient_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"courier/internal/browsertest"
	"courier/relay"
	"courier/relay/sqlitestore"
	"courier/relay/webclient"
	"courier/wire"
)

// startRelay runs a real relay, SQLite in t.TempDir(), that serves the
// client at /client/ as courier-relay does. It returns the relay's base URL.
func startRelay(t *testing.T) string {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	store, err := sqlitestore.Open(filepath.Join(t.TempDir(), "relay.db"), sqlitestore.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	cfg := relay.DefaultConfig()
	cfg.Client = webclient.FS()
	srv, err := relay.New(cfg, store, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shut down relay: %v", err)
		}
	})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return hs.URL
}

// goClient is a Go WebSocket client of the relay, speaking level 1.
type goClient struct {
	t  *testing.T
	ws *websocket.Conn
}

func dial(t *testing.T, url string) *goClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	return &goClient{t: t, ws: ws}
}

func (c *goClient) write(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *goClient) read() []byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := c.ws.Read(ctx)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return b
}

func (c *goClient) subscribe(userID, key string) {
	c.t.Helper()
	c.write(wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{UserID: userID, SubscriptionKey: key}))
	if b := c.read(); !bytes.Equal(b, wire.SubscribeOK) {
		c.t.Fatalf("subscribe %s: answer %s, want %s", userID, b, wire.SubscribeOK)
	}
}

func (c *goClient) publish(recipient string, msg []byte) {
	c.t.Helper()
	c.write(wire.ClientFrameBytes(wire.TypePublish, wire.Publish{
		EncryptedMessage: base64.StdEncoding.EncodeToString(msg),
		Recipient:        recipient,
	}))
}

// next reads the next delivery and returns its ID and decoded bytes.
func (c *goClient) next() (string, []byte) {
	c.t.Helper()
	b := c.read()
	f, err := wire.ParseServerFrame(b)
	if err != nil || f.Kind != wire.KindDelivery {
		c.t.Fatalf("got %s (%v), want a delivery frame", b, err)
	}
	msg, err := base64.StdEncoding.DecodeString(f.Delivery.EncryptedMessage)
	if err != nil {
		c.t.Fatalf("delivery %s: %v", f.Delivery.ID, err)
	}
	return f.Delivery.ID, msg
}

// TestEndToEnd drives the page in Chromium against a real relay, with Go
// clients on the other side: receive and ack, publish, and no replay after
// the ack.
func TestEndToEnd(t *testing.T) {
	ctx := browsertest.New(t, testTimeout)
	base := startRelay(t)
	wsURL := "ws" + strings.TrimPrefix(base, "http") + "/"

	browserPeer, _ := newPeer(t) // the page uses the Qm… form
	_, goPeer := newPeer(t)      // the Go subscriber the 12D3Koo… form
	browserKey := browserPeer.SubscriptionKey(wire.RelayPrefixBits)

	goSub := dial(t, wsURL)
	goSub.subscribe("go-subscriber", goPeer.SubscriptionKey(wire.RelayPrefixBits))
	publisher := dial(t, wsURL) // send-only

	// The relay serves the page; its default relay URL is the same host.
	browsertest.OpenClient(t, ctx, base)
	if got, err := chromedp.Run(ctx, chromedp.Value(chromedp.ID("relay-url"))); err != nil || got != wsURL {
		t.Errorf("default relay URL = %q (%v), want %q", got, err, wsURL)
	}
	err := chromedp.Do(ctx,
		chromedp.SetValue(chromedp.ID("peer-id"), browserPeer.String()),
		chromedp.Click(chromedp.ID("subscribe")),
		browsertest.Poll(`courier.client.state === "subscribed"`),
	)
	if err != nil {
		t.Fatalf("subscribe in the page: %v", err)
	}
	if got, _ := chromedp.Run(ctx, chromedp.TextContent(chromedp.ID("sub-key"))); got != browserKey {
		t.Errorf("page shows subscription key %q, want %q", got, browserKey)
	}

	t.Log("Go → browser: a text and a binary message arrive and are acked")
	text := []byte("hello from Go ✓")
	binary := []byte{0xff, 0xfe, 0x00, 0x80, 0x01}
	publisher.publish(browserPeer.String(), text)
	publisher.publish(browserPeer.String(), binary)
	if err := chromedp.Do(ctx, browsertest.Poll(`courier.received.length >= 2 && courier.received.every((m) => m.acked)`)); err != nil {
		t.Fatalf("waiting for 2 acked messages in the page: %v", err)
	}
	type shown struct {
		ID    string
		Size  int
		Text  *string
		Acked bool
	}
	got := browsertest.Eval[[]shown](t, ctx, `courier.received.map((m) => ({ID: m.id, Size: m.size, Text: m.text, Acked: m.acked}))`)
	if len(got) != 2 {
		t.Fatalf("page shows %d messages, want 2: %+v", len(got), got)
	}
	if got[0].ID != wire.MessageID(text) || got[0].Size != len(text) || got[0].Text == nil || *got[0].Text != string(text) {
		t.Errorf("first message in the page = %+v, want ID %s, %d bytes, text %q", got[0], wire.MessageID(text), len(text), text)
	}
	if got[1].ID != wire.MessageID(binary) || got[1].Size != len(binary) || got[1].Text != nil {
		t.Errorf("second message in the page = %+v, want ID %s, %d bytes, no text", got[1], wire.MessageID(binary), len(binary))
	}
	cell := fmt.Sprintf(`tr[data-id="%s"] td.text`, wire.MessageID(text))
	if s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(cell))); err != nil || s != string(text) {
		t.Errorf("text cell = %q (%v), want %q", s, err, text)
	}

	t.Log("browser → Go: the page publishes, the Go subscriber gets the exact bytes")
	const fromBrowser = "hello from the browser ✓"
	err = chromedp.Do(ctx,
		chromedp.SetValue(chromedp.ID("recipient"), goPeer.String()),
		chromedp.SetValue(chromedp.ID("text"), fromBrowser),
		chromedp.Click(chromedp.ID("publish")),
	)
	if err != nil {
		t.Fatalf("publish in the page: %v", err)
	}
	id, msg := goSub.next()
	if string(msg) != fromBrowser || id != wire.MessageID(msg) {
		t.Errorf("Go subscriber got %s %q, want %s %q", id, msg, wire.MessageID([]byte(fromBrowser)), fromBrowser)
	}
	if err := chromedp.Do(ctx, browsertest.Poll(fmt.Sprintf(`courier.published.some((p) => p.id === %q)`, id))); err != nil {
		t.Errorf("page did not record its publish %s: %v", id, err)
	}

	// The page sent its acks before that publish on the same connection;
	// the relay hands frames to the store in order and the store commits in
	// call order, so the acks are durable now that the publish arrived.
	t.Log("acks: another userID gets a replay, the page's userID does not")
	// The sentinel below must reach the second connection of the page's
	// userID live: if it were published while that connection's replay
	// still ran, the page could ack it first and the replay would rightly
	// skip it. So wait for both replays started here to finish.
	replays := metric(t, base, "courier_relay_replays_finished_total")
	other := dial(t, wsURL)
	other.subscribe("someone-else", browserKey)
	for _, want := range [][]byte{text, binary} {
		if id, msg := other.next(); !bytes.Equal(msg, want) {
			t.Errorf("replay to another userID: %s %x, want %x", id, msg, want)
		}
	}
	same := dial(t, wsURL)
	same.subscribe(browserPeer.String(), browserKey) // the page's userID defaults to its peer ID
	deadline := time.Now().Add(30 * time.Second)
	for metric(t, base, "courier_relay_replays_finished_total") < replays+2 {
		if time.Now().After(deadline) {
			t.Fatal("the replays of the two new subscriptions did not finish")
		}
		time.Sleep(10 * time.Millisecond)
	}
	sentinel := []byte("sentinel after reconnect")
	publisher.publish(browserPeer.String(), sentinel)
	if id, msg := same.next(); !bytes.Equal(msg, sentinel) {
		t.Errorf("reconnect with the page's userID: first delivery %s %q, want the new %q (acked messages replayed?)", id, msg, sentinel)
	}
	if err := chromedp.Do(ctx, browsertest.Poll(`courier.received.length === 3 && courier.received[2].acked`)); err != nil {
		t.Errorf("page did not show and ack the third message: %v", err)
	}

	t.Log("a refused subscribe rejects with the relay's reason")
	refused := browsertest.Eval[string](t, ctx, fmt.Sprintf(`(async () => {
		const c = new courier.lib.RelayClient();
		await c.connect(%q);
		try {
			await c.subscribe("someone", "not-a-key");
			return "accepted";
		} catch (err) {
			return err.message;
		} finally {
			c.close();
		}
	})()`, wsURL))
	if !strings.HasPrefix(refused, "relay refused the subscription: ") {
		t.Errorf("subscribe with a bad key: %q, want a refusal", refused)
	}

	if errs := browsertest.Eval[[]string](t, ctx, `courier.errors`); len(errs) > 0 {
		t.Errorf("page showed errors: %q", errs)
	}

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.TempDir(), "webclient.png")
	if p := os.Getenv("COURIER_WEBCLIENT_SCREENSHOT"); p != "" {
		path = p // to keep it for a person to look at
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// metric reads one unlabelled sample of the relay's /metrics.
func metric(t *testing.T, base, name string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

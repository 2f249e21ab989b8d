package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/coder/websocket"

	"courier/relay"
	"courier/wire"
)

func TestSlowConsumerIsClosedWithoutStallingOthers(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) {
		c.Limits.SendQueue = 8
		c.Limits.SendQueueBytes = 1 << 20
		c.Limits.WriteTimeout = time.Second
		c.Limits.DeliveryWait = time.Minute
	})
	bob := newIdentity(t, 1)

	slow := e.dialSilent() // subscribes, then never reads
	ctx := t.Context()
	if err := slow.Write(ctx, websocket.MessageText, wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{UserID: "slow", SubscriptionKey: bob.Key()})); err != nil {
		t.Fatal(err)
	}
	fast := e.dial()
	fast.subscribe1("fast", bob.Key())
	b := e.dial()
	b.auth2(bob, 0)
	pub := level2Publisher(t, e, 100)

	// 8 MiB at a pace the others keep up with; the slow one's socket
	// buffers (about 4 MiB on loopback) fill, then its queue.
	const n = 40
	var ids []string
	for i := range n {
		ct := ciphertext(200<<10, fmt.Sprint("slow ", i))
		ids = append(ids, wire.MessageID(ct))
		pub.publish(ct, bob.ID(), "")
		if d := fast.expectDelivery(); d.ID != ids[i] {
			t.Fatalf("fast subscriber got %s at %d", d.ID, i)
		}
		if d := b.expectDelivery(); d.ID != ids[i] {
			t.Fatalf("level-2 subscriber got %s at %d", d.ID, i)
		}
		b.ack(ids[i])
		pub.expectResult(wire.StatusDelivered)
	}
	deadline := time.Now().Add(waitTimeout)
	for e.metric(`courier_relay_disconnects_total{reason="slow_consumer"}`)+
		e.metric(`courier_relay_disconnects_total{reason="write_timeout"}`) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the slow consumer was not dropped:\n%s\n%s", e.metrics("courier_relay_disconnects"), e.metrics("courier_relay_subscriptions"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Its messages stayed stored: a reconnect replays all of them.
	again := e.dial()
	again.subscribe1("slow", bob.Key())
	for i := range n {
		if d := again.expectDelivery(); d.ID != ids[i] {
			t.Fatalf("replay after slow close: %s at %d", d.ID, i)
		}
	}
}

func TestKeepaliveDropsSilentPeer(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) {
		c.Keepalive.PingInterval = 100 * time.Millisecond
		c.Keepalive.PingTimeout = time.Second
	})
	bob := newIdentity(t, 1)
	active := e.dial() // its reader answers pings
	active.subscribe1("active", bob.Key())
	silent := e.dialSilent()
	if err := silent.Write(t.Context(), websocket.MessageText, wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{UserID: "silent", SubscriptionKey: bob.Key()})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the silent peer dropped", func() bool {
		return e.metric(`courier_relay_disconnects_total{reason="ping_timeout"}`) >= 1
	})
	eventually(t, "one subscription left", func() bool {
		return e.metric(`courier_relay_subscriptions{level="1"}`) == 1
	})
	e.dial().publish(ciphertext(10, "alive"), bob.ID(), "")
	active.expectDelivery()
	if got := e.metric(`courier_relay_disconnects_total{reason="ping_timeout"}`); got != 1 {
		t.Errorf("ping timeouts = %v, want 1 (the active client answers pings)", got)
	}
}

func TestShutdownClosesWith1012(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	l1 := e.dial()
	l1.subscribe1("u", bob.Key())
	l2 := e.dial()
	l2.auth2(bob, 0)
	idle := e.dial()
	pub := level2Publisher(t, e, 100)
	pub.publish(ciphertext(10, "in flight"), bob.ID(), "")
	l2.expectDelivery()
	l1.expectDelivery()

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// pub waited for bob's ack: no result, the close says it is not confirmed.
	for _, c := range []*client{l1, l2, idle, pub} {
		c.expectClose(wire.CloseServiceRestart)
	}
	// Closed for good: readyz says so, upgrades are refused.
	resp, err := http.Get(e.hs.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("readyz after shutdown: %d", resp.StatusCode)
	}
	if _, err := e.tryDial(); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("dial after shutdown: %v", err)
	}
	if err := e.srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Errorf("third close: %v", err)
	}
}

func TestShutdownDeadlineDropsClients(t *testing.T) {
	e := newEnv(t, nil)
	bob := newIdentity(t, 1)
	silent := e.dialSilent() // will never answer the close frame
	if err := silent.Write(t.Context(), websocket.MessageText, wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{UserID: "s", SubscriptionKey: bob.Key()})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "subscribed", func() bool { return e.metric(`courier_relay_subscriptions{level="1"}`) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the deadline", err)
	}
	// Close waits for what is left, which the deadline cut short.
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if got := e.metric("courier_relay_connections"); got != 0 {
		t.Errorf("connections after Close: %v", got)
	}
}

func TestMaxConnections(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Limits.MaxConnections = 2 })
	a := e.dial()
	e.dial()
	_, err := e.tryDial()
	if err == nil || !strings.Contains(err.Error(), "HTTP 503") || !strings.Contains(err.Error(), `{"error":"too many connections`) {
		t.Fatalf("third connection: %v", err)
	}
	a.ws.Close(websocket.StatusNormalClosure, "")
	eventually(t, "a slot free", func() bool { return e.metric("courier_relay_connections") == 1 })
	e.dial()
	if got := e.metric(`courier_relay_connections_refused_total{reason="max_connections"}`); got != 1 {
		t.Errorf("refused = %v", got)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	client := fstest.MapFS{"index.html": {Data: []byte("<h1>courier</h1>")}}
	e := newEnv(t, func(c *relay.Config) {
		c.Client = client
		c.Version = "1.2.3"
		c.Limits.MaxMessageBytes = 12345
	})
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(e.hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	code, body := get("/")
	var d relay.Description
	if err := json.Unmarshal([]byte(body), &d); err != nil || code != 200 {
		t.Fatalf("GET / = %d %s", code, body)
	}
	if d.Name != "courier-relay" || d.Version != "1.2.3" || fmt.Sprint(d.ProtocolLevels) != "[1 2]" ||
		d.Limits.MaxMessageBytes != 12345 || d.Limits.MaxFrameBytes != wire.MaxFrameBytes(12345) || d.PublicHost != testHost {
		t.Errorf("description %+v", d)
	}
	if code, body := get("/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Errorf("healthz %d %s", code, body)
	}
	if code, body := get("/readyz"); code != 200 || !strings.Contains(body, "ready") {
		t.Errorf("readyz %d %s", code, body)
	}
	if code, body := get("/client/"); code != 200 || !strings.Contains(body, "courier") {
		t.Errorf("client %d %s", code, body)
	}
	if code, body := get("/nope"); code != 404 || !strings.Contains(body, `"error"`) {
		t.Errorf("unknown path %d %s", code, body)
	}
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	publishStored(t, e, pub, ciphertext(10, "m"), bob.ID())
	_, metrics := get("/metrics")
	for _, want := range []string{
		"courier_relay_connections 1",
		`courier_relay_subscriptions{level="2"} 1`,
		"courier_relay_messages_stored_total 1",
		`courier_relay_publish_results_total{status="queued"} 1`,
		"courier_relay_store_commit_seconds_count",
		"courier_relay_messages_expired_total",
		"go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if e.metric("courier_relay_store_commit_seconds_count") < 1 {
		t.Error("no commit observed")
	}
	// A store that fails makes the relay unready.
	e.store.Close()
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "store") {
		t.Errorf("readyz with a closed store: %d %s", code, body)
	}
}

func TestTTLSweep(t *testing.T) {
	var offset atomic.Int64
	now := time.Now()
	e := newEnv(t, func(c *relay.Config) {
		c.SweepInterval = 20 * time.Millisecond
		c.Limits.MessageTTL = time.Hour
	})
	relay.SetClock(e.srv, func() time.Time { return now.Add(time.Duration(offset.Load())) })
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	publishStored(t, e, pub, ciphertext(10, "old1"), bob.ID())
	publishStored(t, e, pub, ciphertext(10, "old2"), bob.ID())
	offset.Store(int64(2 * time.Hour))
	eventually(t, "swept", func() bool { return e.metric("courier_relay_messages_expired_total") == 2 })
	offset.Store(0) // the store stamps messages with the real time
	fresh := publishStored(t, e, pub, ciphertext(10, "fresh"), bob.ID())
	c := e.dial()
	c.subscribe1("u", bob.Key())
	if d := c.expectDelivery(); d.ID != fresh {
		t.Fatalf("got %s, want only the fresh message", d.ID)
	}
	c.barrier()
}

func TestNewValidates(t *testing.T) {
	cfg := relay.DefaultConfig()
	cfg.Limits.DeliveryWait = 0
	if _, err := relay.New(cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "limits.delivery_wait") {
		t.Fatalf("New with a bad config: %v", err)
	}
}

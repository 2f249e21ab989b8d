package relay_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"courier/relay"
	"courier/relay/sqlitestore"
	"courier/wire"
)

// waitTimeout bounds every wait for a frame or a condition.
const waitTimeout = 15 * time.Second

// identity is an Ed25519 test identity.
type identity struct {
	priv  ed25519.PrivateKey
	pub   []byte      // marshalled libp2p public key
	qm    wire.PeerID // sha2-256 form
	ident wire.PeerID // identity (12D3Koo…) form
}

func newIdentity(t testing.TB, n int) identity {
	t.Helper()
	seed := sha256.Sum256([]byte("courier relay test identity " + strconv.Itoa(n)))
	priv := ed25519.NewKeyFromSeed(seed[:])
	pub := wire.MarshalPublicKey(priv.Public().(ed25519.PublicKey))
	ident, err := wire.IdentityPeerID(pub)
	if err != nil {
		t.Fatal(err)
	}
	return identity{priv: priv, pub: pub, qm: wire.PeerIDFromPublicKey(pub), ident: ident}
}

func (id identity) ID() string  { return id.qm.String() }
func (id identity) Key() string { return id.qm.SubscriptionKey(wire.RelayPrefixBits) }

// signedSubscribe answers a challenge as a level-2 client does.
func (id identity) signedSubscribe(host, nonce string, as wire.PeerID) wire.Subscribe {
	return wire.Subscribe{
		UserID:          as.String(),
		SubscriptionKey: as.SubscriptionKey(wire.RelayPrefixBits),
		Protocol:        wire.ProtocolLevel2,
		PubKey:          hex.EncodeToString(id.pub),
		Signature:       hex.EncodeToString(ed25519.Sign(id.priv, []byte(wire.AuthPayload(host, nonce)))),
	}
}

// env is a relay on a real SQLite store behind an httptest server.
type env struct {
	t     testing.TB
	cfg   relay.Config
	srv   *relay.Server
	store *sqlitestore.Store
	hs    *httptest.Server
	url   string // ws://…/
	http  string // http://…
}

const testHost = "relay.test"

func testConfig(t testing.TB) relay.Config {
	cfg := relay.DefaultConfig()
	cfg.PublicHost = testHost
	cfg.Store.Path = filepath.Join(t.TempDir(), "relay.db")
	cfg.Store.Synchronous = "normal" // a crash of the process still loses nothing
	cfg.Limits.PublishRate = 0
	return cfg
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("RELAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newEnv(t testing.TB, mutate func(*relay.Config)) *env {
	t.Helper()
	cfg := testConfig(t)
	if mutate != nil {
		mutate(&cfg)
	}
	var srv atomic.Pointer[relay.Server]
	st, err := sqlitestore.Open(cfg.Store.Path, sqlitestore.Options{
		Quota:       cfg.Limits.Quota(),
		Synchronous: cfg.Store.Synchronous,
		Logger:      testLogger(t),
		OnCommit: func(batch int, d time.Duration) {
			if s := srv.Load(); s != nil {
				s.ObserveCommit(batch, d)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvOn(t, cfg, st)
	srv.Store(e.srv)
	t.Cleanup(func() { st.Close() })
	return e
}

// newEnvOn serves a relay on an open store; the caller closes the store.
func newEnvOn(t testing.TB, cfg relay.Config, st *sqlitestore.Store) *env {
	t.Helper()
	return newEnvLogged(t, cfg, st, testLogger(t))
}

// newEnvLogged is newEnvOn with the server's logger given.
func newEnvLogged(t testing.TB, cfg relay.Config, st *sqlitestore.Store, logger *slog.Logger) *env {
	t.Helper()
	srv, err := relay.New(cfg, st, logger)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	e := &env{t: t, cfg: cfg, srv: srv, store: st, hs: hs, url: "ws" + strings.TrimPrefix(hs.URL, "http"), http: hs.URL}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("server close: %v", err)
		}
		hs.Close()
	})
	return e
}

// in returns a copy of e whose clients and failures belong to t: a
// subtest uses it, so that one failing subtest does not stop the others.
// The server stays the parent's.
func (e *env) in(t testing.TB) *env {
	c := *e
	c.t = t
	return &c
}

// client is a test WebSocket client whose reader goroutine queues every
// frame it receives, so that pings are answered while the test waits.
type client struct {
	t      testing.TB
	ws     *websocket.Conn
	frames chan []byte
	done   chan struct{}
	err    error // the read error that ended the connection; set before done closes
}

// in returns a view of c whose failures belong to t (a subtest using a
// client its parent dialled). It shares the connection and its frames.
func (c *client) in(t testing.TB) *client {
	v := *c
	v.t = t
	return &v
}

func (e *env) dial() *client {
	e.t.Helper()
	c, err := e.tryDial()
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) tryDial() (*client, error) { return e.tryDialHeader(nil) }

// tryDialHeader dials with extra request headers (as a front adds them).
func (e *env) tryDialHeader(h http.Header) (*client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, e.url, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			return nil, fmt.Errorf("dial: %w: HTTP %d %s", err, resp.StatusCode, b)
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	ws.SetReadLimit(-1)
	c := &client{t: e.t, ws: ws, frames: make(chan []byte, 100000), done: make(chan struct{})}
	go c.readLoop()
	e.t.Cleanup(func() { c.ws.CloseNow() })
	return c, nil
}

// dialSilent connects without a reader: nothing is read, pings are not
// answered.
func (e *env) dialSilent() *websocket.Conn {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, e.url, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ws.CloseNow() })
	return ws
}

func (c *client) readLoop() {
	defer close(c.done)
	for {
		_, b, err := c.ws.Read(context.Background())
		if err != nil {
			c.err = err
			return
		}
		c.frames <- b
	}
}

func (c *client) send(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) sendFrame(typ string, data any) {
	c.t.Helper()
	c.send(wire.ClientFrameBytes(typ, data))
}

// nextRaw returns the next frame, failing the test if none comes.
func (c *client) nextRaw() []byte {
	c.t.Helper()
	select {
	case b := <-c.frames:
		return b
	case <-c.done:
		select {
		case b := <-c.frames:
			return b
		default:
		}
		c.t.Fatalf("connection ended while waiting for a frame: %v", c.err)
	case <-time.After(waitTimeout):
		c.t.Fatal("no frame within", waitTimeout)
	}
	return nil
}

func (c *client) next() wire.ServerFrame {
	c.t.Helper()
	b := c.nextRaw()
	f, err := wire.ParseServerFrame(b)
	if err != nil {
		c.t.Fatalf("server sent %s: %v", b, err)
	}
	return f
}

func (c *client) expect(kind wire.ServerKind) wire.ServerFrame {
	c.t.Helper()
	b := c.nextRaw()
	f, err := wire.ParseServerFrame(b)
	if err != nil || f.Kind != kind {
		c.t.Fatalf("got %s, want a frame of kind %d", b, kind)
	}
	return f
}

func (c *client) expectError(contains string) string {
	c.t.Helper()
	f := c.expect(wire.KindError)
	if !strings.Contains(f.Error, contains) {
		c.t.Fatalf("error %q does not contain %q", f.Error, contains)
	}
	return f.Error
}

func (c *client) expectDelivery() wire.Delivery {
	c.t.Helper()
	return *c.expect(wire.KindDelivery).Delivery
}

func (c *client) expectResult(status string) wire.PublishResult {
	c.t.Helper()
	f := c.expect(wire.KindPublishResult)
	if f.PublishResult.Status != status {
		c.t.Fatalf("PublishResult %+v, want status %s", *f.PublishResult, status)
	}
	return *f.PublishResult
}

// expectClose waits for the server to close the connection with code,
// skipping no frames: any frame before the close fails the test.
func (c *client) expectClose(code websocket.StatusCode) {
	c.t.Helper()
	select {
	case b := <-c.frames:
		c.t.Fatalf("got frame %s, want close %d", b, code)
	case <-c.done:
	case <-time.After(waitTimeout):
		c.t.Fatalf("connection not closed within %v", waitTimeout)
	}
	if got := websocket.CloseStatus(c.err); got != code {
		c.t.Fatalf("closed with %v (%v), want %d", got, c.err, code)
	}
}

// subscribe1 subscribes anonymously (level 1) and checks the exact answer.
func (c *client) subscribe1(userID, key string) {
	c.t.Helper()
	c.sendFrame(wire.TypeSubscribe, wire.Subscribe{UserID: userID, SubscriptionKey: key})
	if b := c.nextRaw(); string(b) != string(wire.SubscribeOK) {
		c.t.Fatalf("subscribe answer %s", b)
	}
}

// challenge sends an AuthRequest for peer and returns the nonce.
func (c *client) challenge(peer string) string {
	c.t.Helper()
	c.sendFrame(wire.TypeAuthRequest, wire.AuthRequest{PeerID: peer})
	f := c.expect(wire.KindAuthChallenge)
	if f.AuthChallenge.Host != testHost {
		c.t.Fatalf("challenge host %q", f.AuthChallenge.Host)
	}
	return f.AuthChallenge.Nonce
}

// auth runs the level-2 handshake as id (in the given peer ID form) and
// returns after SubscribeOK; the replay and Drained follow.
func (c *client) auth(id identity, as wire.PeerID) {
	c.t.Helper()
	nonce := c.challenge(as.String())
	c.sendFrame(wire.TypeSubscribe, id.signedSubscribe(testHost, nonce, as))
	if b := c.nextRaw(); string(b) != string(wire.SubscribeOK) {
		c.t.Fatalf("level-2 subscribe answer %s", b)
	}
}

// auth2 authenticates and consumes the replay up to Drained, which must
// count want messages; it returns them.
func (c *client) auth2(id identity, want int) []wire.Delivery {
	c.t.Helper()
	c.auth(id, id.qm)
	var got []wire.Delivery
	for {
		f := c.next()
		switch f.Kind {
		case wire.KindDelivery:
			got = append(got, *f.Delivery)
		case wire.KindDrained:
			if f.Drained.Count != want || len(got) != want {
				c.t.Fatalf("Drained %d after %d deliveries, want %d", f.Drained.Count, len(got), want)
			}
			return got
		default:
			c.t.Fatalf("unexpected frame during replay: %+v", f)
		}
	}
}

func (c *client) publish(ct []byte, recipient, ref string) {
	c.t.Helper()
	c.sendFrame(wire.TypePublish, wire.Publish{
		EncryptedMessage: base64.StdEncoding.EncodeToString(ct),
		Recipient:        recipient,
		Ref:              ref,
	})
}

func (c *client) ack(id string) {
	c.t.Helper()
	c.sendFrame(wire.TypeAck, wire.Ack{MessageID: id})
}

// barrier sends a frame the server answers with an error at once: when the
// error comes, every earlier frame has been read.
func (c *client) barrier() {
	c.t.Helper()
	c.send([]byte(`{"Type":"Barrier","Data":{}}`))
	f := c.next()
	if (f.Kind != wire.KindError && f.Kind != wire.KindLevel2Error) || !strings.Contains(f.Error, "unknown Type") {
		c.t.Fatalf("barrier: got %+v", f)
	}
}

// ciphertext returns n bytes (more if tag is longer) starting with tag.
func ciphertext(n int, tag string) []byte {
	b := make([]byte, max(n, len(tag)))
	copy(b, tag)
	for i := len(tag); i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// metric returns the value of one sample of /metrics ("name" or
// `name{label="v"}`), 0 if absent.
func (e *env) metric(sample string) float64 {
	e.t.Helper()
	resp, err := http.Get(e.http + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if name, val, ok := strings.Cut(line, " "); ok && name == sample {
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				e.t.Fatalf("metric %s: %v", line, err)
			}
			return v
		}
	}
	return 0
}

// metrics returns the lines of /metrics that start with prefix, for
// failure messages.
func (e *env) metrics(prefix string) string {
	e.t.Helper()
	resp, err := http.Get(e.http + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// eventually waits until cond holds.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isCloseErr(err error, code websocket.StatusCode) bool {
	var ce websocket.CloseError
	return errors.As(err, &ce) && ce.Code == code
}

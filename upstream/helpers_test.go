package upstream_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"courier/relay"
	"courier/relay/sqlitestore"
	"courier/upstream"
	"courier/wire"
)

const waitTimeout = 15 * time.Second

func testLogger() *slog.Logger {
	if os.Getenv("UPSTREAM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testRelay is the real relay on a real SQLite file, served on a fixed
// loopback address so that it can be stopped and started again there.
type testRelay struct {
	t    *testing.T
	cfg  relay.Config
	addr string

	mu      sync.Mutex
	store   *sqlitestore.Store
	srv     *relay.Server
	hs      *http.Server
	handler atomic.Pointer[http.Handler] // what hs serves; swapRelay replaces it
}

func startRelay(t *testing.T, mutate func(*relay.Config)) *testRelay {
	t.Helper()
	cfg := relay.DefaultConfig()
	cfg.PublicHost = "relay.test"
	cfg.Store.Path = filepath.Join(t.TempDir(), "relay.db")
	cfg.Store.Synchronous = "normal"
	cfg.Limits.PublishRate = 0
	cfg.Limits.DeliveryWait = 2 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &testRelay{t: t, cfg: cfg, addr: ln.Addr().String()}
	r.serve(ln)
	t.Cleanup(r.stop)
	return r
}

func (r *testRelay) url() string { return "ws://" + r.addr + "/" }

func (r *testRelay) serve(ln net.Listener) {
	r.t.Helper()
	st, err := sqlitestore.Open(r.cfg.Store.Path, sqlitestore.Options{Synchronous: r.cfg.Store.Synchronous, Logger: testLogger()})
	if err != nil {
		r.t.Fatal(err)
	}
	srv, err := relay.New(r.cfg, st, testLogger().With("side", "relay"))
	if err != nil {
		r.t.Fatal(err)
	}
	h := srv.Handler()
	r.handler.Store(&h)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		(*r.handler.Load()).ServeHTTP(w, req)
	})}
	go hs.Serve(ln)
	r.mu.Lock()
	r.store, r.srv, r.hs = st, srv, hs
	r.mu.Unlock()
}

// stop shuts the relay down as SIGTERM does: every connection gets 1012.
func (r *testRelay) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv == nil {
		return
	}
	r.hs.Close() // the listener; hijacked WebSockets are the relay's to close
	if err := r.srv.Close(); err != nil {
		r.t.Errorf("relay close: %v", err)
	}
	if err := r.store.Close(); err != nil {
		r.t.Errorf("store close: %v", err)
	}
	r.srv = nil
}

// swapRelay restarts the relay server the way a rolling restart does: a
// new server on the same store takes over the listener at once, then the
// old one shuts down, closing its connections with 1012.
func (r *testRelay) swapRelay() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	next, err := relay.New(r.cfg, r.store, testLogger().With("side", "relay"))
	if err != nil {
		r.t.Fatal(err)
	}
	h := next.Handler()
	r.handler.Store(&h)
	if err := r.srv.Close(); err != nil {
		r.t.Errorf("relay close: %v", err)
	}
	r.srv = next
}

// restart starts the relay again on the same address and database.
func (r *testRelay) restart() {
	r.t.Helper()
	var ln net.Listener
	var err error
	deadline := time.Now().Add(waitTimeout)
	for {
		if ln, err = net.Listen("tcp", r.addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // the port is being released
	}
	if err != nil {
		r.t.Fatal(err)
	}
	r.serve(ln)
}

// node is a test identity and the sign function a node's endpoint offers.
type node struct {
	priv ed25519.PrivateKey
	pub  []byte
	peer wire.PeerID

	mu       sync.Mutex
	signErr  error
	received []upstream.Inbound
	handled  chan upstream.Inbound
	failNext int // Handle calls to fail
}

func newNode(n int) *node {
	seed := sha256.Sum256([]byte("upstream test node " + strconv.Itoa(n)))
	priv := ed25519.NewKeyFromSeed(seed[:])
	pub := wire.MarshalPublicKey(priv.Public().(ed25519.PublicKey))
	return &node{priv: priv, pub: pub, peer: wire.PeerIDFromPublicKey(pub), handled: make(chan upstream.Inbound, 10000)}
}

func (n *node) sign(ctx context.Context, content string) (upstream.Signature, error) {
	n.mu.Lock()
	err := n.signErr
	n.mu.Unlock()
	if err != nil {
		return upstream.Signature{}, err
	}
	return upstream.Signature{
		Signature: hex.EncodeToString(ed25519.Sign(n.priv, []byte(content))),
		PubKey:    hex.EncodeToString(n.pub),
		PeerID:    n.peer.String(),
	}, nil
}

var errHandler = errors.New("test: handler refuses")

func (n *node) handle(ctx context.Context, batch []upstream.Inbound) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.failNext > 0 {
		n.failNext--
		return errHandler
	}
	for _, m := range batch {
		n.received = append(n.received, m)
		n.handled <- m
	}
	return nil
}

// client runs an upstream.Client for n until the test ends.
func (n *node) client(t *testing.T, url string, mutate func(*upstream.Config)) (*upstream.Client, chan upstream.Status) {
	t.Helper()
	states := make(chan upstream.Status, 1000)
	cfg := upstream.Config{
		URL:           url,
		Sign:          n.sign,
		Handle:        n.handle,
		Logger:        testLogger().With("side", "upstream", "peer", n.peer.String()[:8]),
		OnStateChange: func(s upstream.Status) { states <- s },
		BackoffMin:    20 * time.Millisecond,
		BackoffMax:    200 * time.Millisecond,
		RestartJitter: 50 * time.Millisecond,
		PingInterval:  time.Second,
		PingTimeout:   time.Second,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := upstream.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(waitTimeout):
			t.Error("Run did not return after cancel")
		}
	})
	return c, states
}

// waitState waits until the client reports state st.
func waitState(t *testing.T, states <-chan upstream.Status, st upstream.State) upstream.Status {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case s := <-states:
			if s.State == st {
				return s
			}
		case <-timeout:
			t.Fatalf("no %s state within %s", st, waitTimeout)
		}
	}
}

func waitMessage(t *testing.T, n *node) upstream.Inbound {
	t.Helper()
	select {
	case m := <-n.handled:
		return m
	case <-time.After(waitTimeout):
		t.Fatal("no inbound message")
	}
	panic("unreachable")
}

func publish(t *testing.T, c *upstream.Client, to wire.PeerID, ct []byte) upstream.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	ch, err := c.Publish(ctx, to.String(), ct)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	select {
	case r := <-ch:
		return r
	case <-ctx.Done():
		t.Fatal("no publish result")
	}
	panic("unreachable")
}

// proxy forwards TCP to target until frozen: then it keeps the connections
// open but passes no byte, as a dead network path does.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen bool
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); p.pipe(u, c) }()
			go func() { defer wg.Done(); p.pipe(c, u) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *proxy) url() string { return "ws://" + p.ln.Addr().String() + "/" }

func (p *proxy) freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

func (p *proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		frozen := p.frozen
		p.mu.Unlock()
		if frozen {
			continue // swallow: the path is dead
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

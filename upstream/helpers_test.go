package upstream_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"courier/relay"
	"courier/relay/relaytest"
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

// startRelay runs the real relay (package relaytest) for one test.
func startRelay(t *testing.T, mutate func(*relay.Config)) *relaytest.Relay {
	t.Helper()
	return relaytest.Start(t, mutate, testLogger().With("side", "relay"))
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
		ExpectedHost:  "relay.test", // relaytest's public_host
		Sign:          n.sign,
		Handle:        n.handle,
		Logger:        testLogger().With("side", "upstream", "peer", n.peer.String()[:8]),
		OnStateChange: func(s upstream.Status) { states <- s },
		BackoffMin:    20 * time.Millisecond,
		BackoffMax:    200 * time.Millisecond,
		RestartJitter: 50 * time.Millisecond,
		PingInterval:  time.Second,
		// A pong waits behind whatever the relay is reading or writing;
		// on two loaded cores under -race that can take seconds.
		PingTimeout: 5 * time.Second,
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

// Package upstream is the sidecar's one WebSocket connection to its relay.
//
// A Client dials relay_url, authenticates at protocol level 2 (the signature
// comes from a SignFunc, so the private key never leaves the node),
// subscribes, and then keeps the connection: it reconnects forever with
// capped exponential backoff and full jitter, at once (jittered) when the
// relay restarts, and notices a dead connection by keepalive pings.
// Publishes are pipelined and matched to their PublishResult by ref; inbound
// messages are handed up in order, in batches, and acked only after the
// handler says it has them durably.
//
// With Config.Anonymous the session is a level-1 one instead: no
// AuthRequest, no signature; the client subscribes by its subscription key
// alone under an opaque UserID, publishes without a ref and gets no
// PublishResult (each publish is answered at once with Result.Unconfirmed),
// and acks what it received at level 1. The relay never learns the peer ID
// from it: the SignFunc is asked for the identity only to compute the
// subscription key, and nothing it returns is sent.
//
// upstream knows nothing of queues or nodes: the sidecar's engine gives it
// functions to sign and to take inbound messages.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"golang.org/x/net/proxy"

	"courier/wire"
)

// Signature is what the node's sign endpoint returns.
type Signature struct {
	Signature string // hex ed25519 signature over the content
	PubKey    string // hex marshalled public key
	PeerID    string // the node's peer ID
}

// SignFunc signs content with the node's identity key.
type SignFunc func(ctx context.Context, content string) (Signature, error)

// Inbound is one message the relay delivered.
type Inbound struct {
	ID         string
	Ciphertext []byte
}

// Handler takes inbound messages in the order the relay sent them. It must
// return nil only once it holds every message durably: the client acks them
// to the relay after it returns. On error nothing is acked and the
// connection is dropped, so the relay replays them after the reconnect.
type Handler func(ctx context.Context, batch []Inbound) error

// State is the state of the relay connection.
type State string

// Connection states, as /v1/status reports them.
const (
	StateConnecting   State = "connecting"
	StateConnected    State = "connected"
	StateDisconnected State = "disconnected"
)

// Status is a snapshot of the connection.
type Status struct {
	State     State
	Since     time.Time
	LastError string
	PeerID    string // the authenticated peer ID, once known
}

// Result is the answer to one publish.
type Result struct {
	wire.PublishResult
	Err error // ErrConnectionLost when the connection dropped before the answer
	// Unconfirmed: a level-1 (anonymous) publish, written to the
	// connection; the relay answers none, so nobody can tell whether it
	// was stored or reached the recipient. PublishResult is empty.
	Unconfirmed bool
}

// Errors callers branch on.
var (
	ErrNotConnected   = errors.New("upstream: not connected to the relay")
	ErrConnectionLost = errors.New("upstream: relay connection lost before the publish result")
	// ErrWrongHost: the relay's challenge names a host the client did not
	// mean to reach; it was not signed.
	ErrWrongHost = errors.New("upstream: challenge for another host")
	// ErrTooLarge: the message is larger than the relay accepts (its
	// limits.max_message_bytes, read from its description at GET /). The
	// relay would refuse it, or close the connection over its frame.
	ErrTooLarge = errors.New("too_large")
)

// Config configures a Client. URL, Sign and Handle are required.
type Config struct {
	URL string
	// ExpectedHost is a host name the relay's AuthChallenge may name (its
	// public_host) besides URL's own host. The client signs a challenge
	// only for one of the two; any other is refused without asking Sign,
	// since a relay could pass on another relay's challenge to log in
	// there as this peer. Default: empty (URL's host only).
	ExpectedHost string
	Sign         SignFunc
	Handle       Handler
	// Anonymous makes the session a level-1 one: subscribe by the
	// subscription key alone, as UserID, with no AuthRequest and no
	// signature; publish without a ref (no PublishResult comes: each
	// publish is answered Unconfirmed as soon as it is written). Sign is
	// still asked for the node's identity, to compute the key; nothing it
	// returns is sent to the relay. Default false (level 2, as the peer).
	Anonymous bool
	// UserID is the level-1 subscription's userID, required with
	// Anonymous: the relay remembers acks per userID, so it must stay the
	// same across connections (and restarts) for acked messages not to be
	// sent again. It must not be the peer ID. Unused without Anonymous.
	UserID string
	// OnRelayError, if set, is called with the reason of every {"error": …}
	// or level-2 Error frame the relay sends outside the handshake (at
	// level 1, the answer to a refused publish, which names no message).
	// It runs on the reader's goroutine and must not block.
	OnRelayError func(reason string)
	// RootCAs, if set, are the only certificate authorities a wss:// relay's
	// certificate may chain to (the sidecar's relay_ca_file). Default nil:
	// the system roots.
	RootCAs *x509.CertPool
	// Proxy, if set, is a SOCKS5 proxy (scheme socks5 or socks5h, both
	// alike; user and password in the URL authenticate to it) that every
	// connection to the relay goes through: the WebSocket and the GET / of
	// its description. The relay's host name is passed to the proxy to
	// resolve, never looked up here, and proxy settings from the
	// environment do not apply. Default nil: direct, or an HTTP proxy
	// from the environment (HTTPS_PROXY, NO_PROXY).
	Proxy  *url.URL
	Logger *slog.Logger
	// OnStateChange, if set, is called after every state change. It runs on
	// the client's goroutine and must not block.
	OnStateChange func(Status)

	BackoffMin       time.Duration // first reconnect wait bound; default 250ms
	BackoffMax       time.Duration // cap of the reconnect wait bound; default 30s
	RestartJitter    time.Duration // bound of the wait after a 1012 close; default 500ms
	HandshakeTimeout time.Duration // dial + auth + subscribe; default 10s
	PingInterval     time.Duration // keepalive ping period; default 10s
	PingTimeout      time.Duration // a pong later than this drops the connection; default 5s
	WriteTimeout     time.Duration // per frame write; default 10s
	MaxFrameBytes    int64         // read limit; default wire.MaxFrameBytes(16 MiB)
	MaxInboundBatch  int           // messages handed to Handle at once; default 256
	// MaxInboundBytes bounds the ciphertext bytes received and not yet
	// acked (read from the connection, waiting for Handle or in its
	// batch); default 32 MiB. Beyond it the reader stops reading until
	// Handle has taken some (back-pressure on the relay, which holds the
	// rest), so a relay, or peers flooding a shared subscription key,
	// cannot make the client hold more. One message larger than the
	// bound is still taken when nothing else is held.
	MaxInboundBytes int64
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.BackoffMin, 250*time.Millisecond)
	def(&c.BackoffMax, 30*time.Second)
	def(&c.RestartJitter, 500*time.Millisecond)
	def(&c.HandshakeTimeout, 10*time.Second)
	def(&c.PingInterval, 10*time.Second)
	def(&c.PingTimeout, 5*time.Second)
	def(&c.WriteTimeout, 10*time.Second)
	if c.MaxFrameBytes <= 0 {
		c.MaxFrameBytes = wire.MaxFrameBytes(16 << 20)
	}
	if c.MaxInboundBatch <= 0 {
		c.MaxInboundBatch = 256
	}
	if c.MaxInboundBytes <= 0 {
		c.MaxInboundBytes = 32 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Client keeps the connection to one relay. Create it with New and run it
// with Run; Publish may be called from any goroutine.
type Client struct {
	cfg      Config
	http     *http.Client // for the WebSocket dial and GET /, with RootCAs
	host     string       // the relay's host[:port], for logs
	hostname string       // the relay URL's host name, without port
	via      string       // the SOCKS5 proxy's host:port (no credentials), or ""

	mu      sync.Mutex
	status  Status
	session *session // nil while not connected
}

// New validates cfg and returns a Client. It does not connect: Run does.
func New(cfg Config) (*Client, error) {
	if cfg.Sign == nil || cfg.Handle == nil {
		return nil, errors.New("upstream: Config.Sign and Config.Handle are required")
	}
	if cfg.Anonymous {
		if cfg.UserID == "" {
			return nil, errors.New("upstream: Config.UserID is required with Anonymous")
		}
		if _, err := wire.ParsePeerID(cfg.UserID); err == nil {
			return nil, errors.New("upstream: Config.UserID must not be a peer ID with Anonymous: use an opaque random string")
		}
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return nil, fmt.Errorf("upstream: relay URL %q: want ws://host[:port]/ or wss://host[:port]/", cfg.URL)
	}
	cfg.setDefaults()
	// One transport per client, HTTP/1.1 only (a WebSocket upgrade is
	// HTTP/1.1), verifying the relay with RootCAs or the system roots.
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment, // as http.DefaultClient did
		TLSClientConfig:     &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: cfg.HandshakeTimeout,
	}
	var via string
	if p := cfg.Proxy; p != nil {
		if (p.Scheme != "socks5" && p.Scheme != "socks5h") || p.Host == "" {
			return nil, fmt.Errorf("upstream: proxy %s://%s: want socks5://host:port or socks5h://host:port", p.Scheme, p.Host)
		}
		// golang.org/x/net/proxy's SOCKS5 client sends the relay's host
		// name to the proxy as a name (ATYP DOMAINNAME), for both schemes:
		// no local DNS lookup of the relay. It dials every connection of
		// tr, to any host, loopback too; tr.Proxy is nil, so no proxy from
		// the environment applies either.
		d, err := proxy.FromURL(p, &net.Dialer{})
		if err != nil {
			return nil, fmt.Errorf("upstream: proxy %s://%s: %w", p.Scheme, p.Host, err)
		}
		cd, ok := d.(proxy.ContextDialer)
		if !ok {
			return nil, fmt.Errorf("upstream: proxy %s://%s: no context dialer", p.Scheme, p.Host)
		}
		// net/http dials on a context detached from the request's, with
		// no deadline: a proxy that accepts and never answers would hold
		// each attempt's connection and goroutine forever (net/http's
		// built-in socks5 support has the same hole). The dial through
		// the proxy, handshake included, is bounded here instead.
		timeout := cfg.HandshakeTimeout
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			return cd.DialContext(ctx, network, addr)
		}
		via = p.Host
	}
	return &Client{
		cfg:      cfg,
		http:     &http.Client{Transport: tr},
		host:     u.Host,
		hostname: u.Hostname(),
		via:      via,
		status:   Status{State: StateDisconnected, Since: time.Now()},
	}, nil
}

// Status returns the current connection status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

func (c *Client) setStatus(st State, lastErr error, peerID string) {
	c.mu.Lock()
	s := c.status
	if s.State != st {
		s.State, s.Since = st, time.Now()
	}
	if lastErr != nil {
		s.LastError = lastErr.Error()
	}
	if peerID != "" {
		s.PeerID = peerID
	}
	c.status = s
	c.mu.Unlock()
	if c.cfg.OnStateChange != nil {
		c.cfg.OnStateChange(s)
	}
}

// Run connects and stays connected until ctx is done, then closes the
// connection cleanly and returns nil. Failures are retried forever; they are
// reported through Status and the log.
func (c *Client) Run(ctx context.Context) error {
	defer c.setStatus(StateDisconnected, nil, "")
	attempt := 0
	for {
		c.setStatus(StateConnecting, nil, "")
		start := time.Now()
		err := c.connectAndServe(ctx)
		if ctx.Err() != nil {
			return nil
		}
		c.setStatus(StateDisconnected, err, "")
		// A connection that held for a while resets the backoff: the next
		// failure is a new outage, not the same one.
		if time.Since(start) > c.cfg.BackoffMax {
			attempt = 0
		}
		var wait time.Duration
		if websocket.CloseStatus(err) == wire.CloseServiceRestart {
			wait = rand.N(c.cfg.RestartJitter + 1)
			attempt = 0
		} else {
			wait = Backoff(c.cfg.BackoffMin, c.cfg.BackoffMax, attempt)
			attempt++
		}
		c.cfg.Logger.Warn("relay connection ended", "relay", c.host, "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// Backoff returns a wait drawn uniformly from [0, min(max, min·2^attempt)]:
// capped exponential backoff with full jitter, so that many sidecars that
// lost the same relay do not come back in step.
func Backoff(min, max time.Duration, attempt int) time.Duration {
	bound := max
	if attempt < 32 {
		if b := min << attempt; b > 0 && b < max {
			bound = b
		}
	}
	return rand.N(bound + 1)
}

// Publish sends one message to the relay and returns once the frame is
// written; the result arrives on the channel (exactly one value). Calls are
// written in call order, so one caller publishing in sequence keeps its
// order at the relay. An error wrapping ErrNotConnected when there is no
// connection or the frame could not be written (the connection is then
// gone: retry after the reconnect); ErrTooLarge, without sending, when the
// message is larger than the relay accepts.
func (c *Client) Publish(ctx context.Context, recipient string, ciphertext []byte) (<-chan Result, error) {
	c.mu.Lock()
	s := c.session
	c.mu.Unlock()
	if s == nil {
		return nil, ErrNotConnected
	}
	return s.publish(ctx, recipient, ciphertext)
}

// connectAndServe runs one connection from dial to its end.
func (c *Client) connectAndServe(ctx context.Context) error {
	hctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(hctx, c.cfg.URL, &websocket.DialOptions{HTTPClient: c.http})
	if err != nil {
		if c.via != "" {
			return fmt.Errorf("dial through the SOCKS5 proxy %s: %w", c.via, err)
		}
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(c.cfg.MaxFrameBytes)

	var peerID string
	if c.cfg.Anonymous {
		err = c.subscribeAnonymous(hctx, conn)
	} else {
		peerID, err = c.handshake(hctx, conn)
	}
	if err != nil {
		return err
	}
	s := newSession(c, conn)
	s.level1 = c.cfg.Anonymous
	s.maxMessageBytes = c.relayMessageLimit(hctx)
	c.mu.Lock()
	c.session = s
	c.mu.Unlock()
	c.setStatus(StateConnected, nil, peerID)
	attrs := []any{"relay", c.host}
	if c.cfg.Anonymous {
		attrs = append(attrs, "identity", "anonymous (level 1)")
	} else {
		attrs = append(attrs, "peer_id", peerID)
	}
	if c.via != "" {
		attrs = append(attrs, "via_proxy", c.via)
	}
	c.cfg.Logger.Info("relay connected", attrs...)

	err = s.serve(ctx)

	c.mu.Lock()
	c.session = nil
	c.mu.Unlock()
	s.failPending()
	return err
}

// relayMessageLimit reads the relay's limits.max_message_bytes from the
// description it serves at GET / on the same address, or returns 0 when it
// cannot (a proxy in front that passes only WebSockets, an older relay):
// then nothing is refused here and the relay decides.
func (c *Client) relayMessageLimit(ctx context.Context) int {
	u, err := url.Parse(c.cfg.URL)
	if err != nil {
		return 0
	}
	u.Scheme = strings.Replace(u.Scheme, "ws", "http", 1) // ws→http, wss→https
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0
	}
	req.Header.Set("Accept", "application/json")
	req.Close = true // once per connection: no idle connection left behind
	resp, err := c.http.Do(req)
	if err != nil {
		c.cfg.Logger.Debug("relay description unavailable", "relay", c.host, "err", err)
		return 0
	}
	defer resp.Body.Close()
	var d struct {
		Limits struct {
			MaxMessageBytes int `json:"max_message_bytes"`
		} `json:"limits"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&d) != nil {
		c.cfg.Logger.Debug("relay description unavailable", "relay", c.host, "status", resp.StatusCode)
		return 0
	}
	return max(d.Limits.MaxMessageBytes, 0)
}

// handshake authenticates at level 2 and subscribes; it returns the peer ID.
func (c *Client) handshake(ctx context.Context, conn *websocket.Conn) (string, error) {
	// The node's peer ID is learned from the sign endpoint itself: it is
	// needed for the AuthRequest, before there is a challenge to sign.
	ident, err := c.cfg.Sign(ctx, "courier-identity:v1")
	if err != nil {
		return "", fmt.Errorf("sign endpoint: %w", err)
	}
	peer, err := wire.ParsePeerID(ident.PeerID)
	if err != nil {
		return "", fmt.Errorf("sign endpoint returned a bad peer ID: %w", err)
	}
	if err := c.write(ctx, conn, wire.ClientFrameBytes(wire.TypeAuthRequest, wire.AuthRequest{PeerID: peer.String()})); err != nil {
		return "", fmt.Errorf("send AuthRequest: %w", err)
	}
	f, err := readFrame(ctx, conn)
	if err != nil {
		return "", fmt.Errorf("read AuthChallenge: %w", err)
	}
	if f.Kind != wire.KindAuthChallenge {
		return "", fmt.Errorf("relay answered AuthRequest with %s", describe(f))
	}
	if !c.hostExpected(f.AuthChallenge.Host) {
		want := c.hostname
		if c.cfg.ExpectedHost != "" {
			want += " or " + c.cfg.ExpectedHost
		}
		host := clip(f.AuthChallenge.Host)
		return "", fmt.Errorf("%w: the relay's challenge is for host %q, not %s; not signed (if the relay's public_host is right, set relay_host = %q)",
			ErrWrongHost, host, want, host)
	}
	sig, err := c.cfg.Sign(ctx, wire.AuthPayload(f.AuthChallenge.Host, f.AuthChallenge.Nonce))
	if err != nil {
		return "", fmt.Errorf("sign endpoint: %w", err)
	}
	if sig.PeerID != peer.String() {
		return "", fmt.Errorf("sign endpoint changed identity from %s to %s", peer, sig.PeerID)
	}
	sub := wire.Subscribe{
		UserID:          peer.String(),
		SubscriptionKey: peer.SubscriptionKey(wire.RelayPrefixBits),
		Protocol:        wire.ProtocolLevel2,
		PubKey:          sig.PubKey,
		Signature:       sig.Signature,
	}
	if err := c.write(ctx, conn, wire.ClientFrameBytes(wire.TypeSubscribe, sub)); err != nil {
		return "", fmt.Errorf("send SubscribeMessage: %w", err)
	}
	f, err = readFrame(ctx, conn)
	if err != nil {
		return "", fmt.Errorf("read subscribe answer: %w", err)
	}
	if f.Kind != wire.KindSubscribed {
		return "", fmt.Errorf("relay refused the subscription: %s", describe(f))
	}
	return peer.String(), nil
}

// subscribeAnonymous subscribes at level 1 by the node's subscription key
// under cfg.UserID. The node's identity is asked of the sign endpoint (it
// is needed for the key) and stays here: the relay gets the key and the
// opaque userID, nothing else.
func (c *Client) subscribeAnonymous(ctx context.Context, conn *websocket.Conn) error {
	ident, err := c.cfg.Sign(ctx, "courier-identity:v1")
	if err != nil {
		return fmt.Errorf("sign endpoint: %w", err)
	}
	peer, err := wire.ParsePeerID(ident.PeerID)
	if err != nil {
		return fmt.Errorf("sign endpoint returned a bad peer ID: %w", err)
	}
	sub := wire.Subscribe{UserID: c.cfg.UserID, SubscriptionKey: peer.SubscriptionKey(wire.RelayPrefixBits)}
	if err := c.write(ctx, conn, wire.ClientFrameBytes(wire.TypeSubscribe, sub)); err != nil {
		return fmt.Errorf("send SubscribeMessage: %w", err)
	}
	f, err := readFrame(ctx, conn)
	if err != nil {
		return fmt.Errorf("read subscribe answer: %w", err)
	}
	if f.Kind != wire.KindSubscribed {
		return fmt.Errorf("relay refused the subscription: %s", describe(f))
	}
	return nil
}

// hostExpected reports whether a challenge naming host may be signed: host
// is the relay URL's host name (with or without its port) or ExpectedHost,
// compared without regard to case.
func (c *Client) hostExpected(host string) bool {
	if host == "" {
		return false
	}
	for _, ok := range []string{c.hostname, c.host, c.cfg.ExpectedHost} {
		if ok != "" && strings.EqualFold(host, ok) {
			return true
		}
	}
	return false
}

func (c *Client) write(ctx context.Context, conn *websocket.Conn, b []byte) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.WriteTimeout)
	defer cancel()
	return conn.Write(ctx, websocket.MessageText, b)
}

func readFrame(ctx context.Context, conn *websocket.Conn) (wire.ServerFrame, error) {
	_, b, err := conn.Read(ctx)
	if err != nil {
		return wire.ServerFrame{}, err
	}
	return wire.ParseServerFrame(b)
}

func describe(f wire.ServerFrame) string {
	switch f.Kind {
	case wire.KindError, wire.KindLevel2Error:
		return "error: " + clip(f.Error)
	default:
		return "unexpected frame kind " + strconv.Itoa(int(f.Kind))
	}
}

// maxQuoted is the most of a relay's own text (an error reason, a host, a
// message ID) that goes into a log line, a status or an error: a relay can
// send megabytes of it in one frame.
const maxQuoted = 256

// clip returns s cut to maxQuoted bytes (at a rune boundary, marked "…").
func clip(s string) string {
	if len(s) <= maxQuoted {
		return s
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

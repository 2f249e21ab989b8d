// Package sidecartest is what the sidecar's behaviour tests run against: the
// real relay (relay.Server on a real SQLite file, served on a fixed loopback
// address so that it can be stopped and started again there), a fake node
// per sidecar (httptest servers for the sign, OFFLINE and inbound endpoints
// that record what they got and can be told to fail), a level-2 relay client
// that never acks, and an Engine started and stopped with the test.
//
// Only tests import it.
package sidecartest

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"courier/relay"
	"courier/relay/relaytest"
	"courier/sidecar"
	"courier/sidecar/queue"
	"courier/wire"
)

// WaitTimeout bounds every wait: nothing takes near as long unless it is
// broken.
const WaitTimeout = 20 * time.Second

// Logger logs to stderr at debug level when COURIER_TEST_LOG is set, and
// nowhere otherwise.
func Logger() *slog.Logger {
	if os.Getenv("COURIER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// Eventually polls cond every 10ms until it holds, failing the test with
// what after WaitTimeout.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", WaitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Relay is the real relay on a real SQLite file (package relaytest).
type Relay = relaytest.Relay

// StartRelay starts a relay with relaytest's settings, but public_host
// "127.0.0.1" (the host of its URL, so that a sidecar signs its
// challenges), changed by mutate, logging to logger (nil: [Logger]). It
// stops when the test ends.
func StartRelay(t testing.TB, mutate func(*relay.Config), logger *slog.Logger) *Relay {
	t.Helper()
	if logger == nil {
		logger = Logger().With("side", "relay")
	}
	return relaytest.Start(t, func(c *relay.Config) {
		c.PublicHost = "127.0.0.1"
		if mutate != nil {
			mutate(c)
		}
	}, logger)
}

// Request is one call a node endpoint received.
type Request struct {
	ID         string // wire.MessageID(Ciphertext)
	Recipient  string // OFFLINE only
	Ciphertext []byte
	Path       string // inbound only
	Content    string // sign only: what was to be signed
	ReceivedAt time.Time
	Status     int // what the endpoint answered
}

// Endpoint is one of a fake node's endpoints: it records every call and
// answers 200, or a failure it has been told to give.
type Endpoint struct {
	mu         sync.Mutex
	failNext   int
	failStatus int
	failAlways bool
	failIDs    map[string]int // message ID → status, answered for that message only
	hold       chan struct{}  // while set, calls wait for it to close
	arrived    chan struct{}  // a value for each call that starts waiting on hold
	requests   []Request
}

// Hold makes calls wait until release is called; arrived receives a value
// as each call starts to wait. A held call is recorded, and answered, when
// released, whether the caller still waits for the answer or not.
func (e *Endpoint) Hold() (arrived <-chan struct{}, release func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	hold, arr := make(chan struct{}), make(chan struct{}, 100)
	e.hold, e.arrived = hold, arr
	var once sync.Once
	return arr, func() {
		once.Do(func() {
			e.mu.Lock()
			e.hold = nil
			e.mu.Unlock()
			close(hold)
		})
	}
}

// FailNext makes the next n calls fail with status.
func (e *Endpoint) FailNext(n, status int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failNext, e.failStatus = n, status
}

// FailAlways makes every call fail with status until Recover.
func (e *Endpoint) FailAlways(status int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failAlways, e.failStatus = true, status
}

// FailID makes every call for message id fail with status until Recover:
// a message the node keeps failing while it takes the others.
func (e *Endpoint) FailID(id string, status int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.failIDs == nil {
		e.failIDs = make(map[string]int)
	}
	e.failIDs[id] = status
}

// Recover makes calls succeed again.
func (e *Endpoint) Recover() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failAlways, e.failNext, e.failIDs = false, 0, nil
}

// answer decides the status for one call and records it.
func (e *Endpoint) answer(r Request) int {
	e.mu.Lock()
	hold, arrived := e.hold, e.arrived
	e.mu.Unlock()
	if hold != nil {
		arrived <- struct{}{}
		<-hold
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	r.Status = http.StatusOK
	switch {
	case e.failIDs[r.ID] != 0:
		r.Status = e.failIDs[r.ID]
	case e.failAlways:
		r.Status = e.failStatus
	case e.failNext > 0:
		e.failNext--
		r.Status = e.failStatus
	}
	e.requests = append(e.requests, r)
	return r.Status
}

// Requests returns every call so far, failed ones included, in arrival
// order: the raw count, duplicates and all.
func (e *Endpoint) Requests() []Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Request(nil), e.requests...)
}

// Accepted returns the calls the endpoint answered 2xx, in arrival order.
func (e *Endpoint) Accepted() []Request {
	var out []Request
	for _, r := range e.Requests() {
		if r.Status >= 200 && r.Status <= 299 {
			out = append(out, r)
		}
	}
	return out
}

// AcceptedIDs counts the accepted calls per message ID: what a node that
// drops duplicates by ID would keep, with how many raw copies it got.
func (e *Endpoint) AcceptedIDs() map[string]int {
	ids := make(map[string]int)
	for _, r := range e.Accepted() {
		ids[r.ID]++
	}
	return ids
}

// Node is a fake OpenBazaar node: an Ed25519 identity and the three
// endpoints the sidecar calls, on one httptest server.
type Node struct {
	Name    string
	Priv    ed25519.PrivateKey
	PubKey  []byte // marshalled (wire.MarshalPublicKey)
	Peer    wire.PeerID
	Server  *httptest.Server
	Sign    *Endpoint
	Offline *Endpoint
	Inbound *Endpoint

	authMu   sync.Mutex
	user     string // basic auth required when set
	password string
	cookie   string // OpenBazaar_Auth_Cookie required when set
	denied   int    // calls answered 401 for want of credentials
}

// RequireAuth makes every endpoint answer 401, before anything else, to a
// call without these credentials: HTTP basic auth when user is set, and
// the OpenBazaar_Auth_Cookie cookie when cookie is set.
func (n *Node) RequireAuth(user, password, cookie string) {
	n.authMu.Lock()
	defer n.authMu.Unlock()
	n.user, n.password, n.cookie = user, password, cookie
}

// Denied returns how many calls were answered 401 for want of credentials.
func (n *Node) Denied() int {
	n.authMu.Lock()
	defer n.authMu.Unlock()
	return n.denied
}

// authorized checks a call's credentials as RequireAuth asked, answering
// 401 when they are missing or wrong.
func (n *Node) authorized(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n.authMu.Lock()
		user, password, cookie := n.user, n.password, n.cookie
		ok := true
		if user != "" {
			u, p, has := r.BasicAuth()
			ok = has && u == user && p == password
		}
		if cookie != "" {
			c, err := r.Cookie("OpenBazaar_Auth_Cookie")
			ok = ok && err == nil && c.Value == cookie
		}
		if !ok {
			n.denied++
		}
		n.authMu.Unlock()
		if !ok {
			http.Error(w, "not authorized", http.StatusUnauthorized)
			return
		}
		next(w, r)
	}
}

// NewNode makes a node whose key derives from name. Its server stops when
// the test ends.
func NewNode(t testing.TB, name string) *Node {
	t.Helper()
	seed := sha256.Sum256([]byte("courier sidecar test node " + name))
	priv := ed25519.NewKeyFromSeed(seed[:])
	pub := wire.MarshalPublicKey(priv.Public().(ed25519.PublicKey))
	n := &Node{
		Name: name, Priv: priv, PubKey: pub, Peer: wire.PeerIDFromPublicKey(pub),
		Sign: new(Endpoint), Offline: new(Endpoint), Inbound: new(Endpoint),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /ob/signmessage", n.authorized(n.serveSign))
	mux.HandleFunc("POST /courier/offline", n.authorized(n.serveOffline))
	mux.HandleFunc("POST /courier/inbound", n.authorized(n.serveInbound))
	n.Server = httptest.NewServer(mux)
	t.Cleanup(n.Server.Close)
	return n
}

// SignURL, OfflineURL and InboundURL are the node's endpoints.
func (n *Node) SignURL() string    { return n.Server.URL + "/ob/signmessage" }
func (n *Node) OfflineURL() string { return n.Server.URL + "/courier/offline" }
func (n *Node) InboundURL() string { return n.Server.URL + "/courier/inbound" }

func badRequest(w http.ResponseWriter, format string, args ...any) {
	http.Error(w, fmt.Sprintf(format, args...), http.StatusBadRequest)
}

func (n *Node) serveSign(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Content string `json:"content"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Content == "" {
		badRequest(w, "want {\"content\": …}")
		return
	}
	if st := n.Sign.answer(Request{Content: req.Content}); st != http.StatusOK {
		http.Error(w, "sign endpoint told to fail", st)
		return
	}
	writeJSON(w, map[string]string{
		"signature": hex.EncodeToString(ed25519.Sign(n.Priv, []byte(req.Content))),
		"pubkey":    hex.EncodeToString(n.PubKey),
		"peerId":    n.Peer.String(),
	})
}

func (n *Node) serveOffline(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Recipient  string `json:"recipient"`
		Ciphertext []byte `json:"ciphertext"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.Recipient == "" || len(req.Ciphertext) == 0 {
		badRequest(w, "want {\"recipient\",\"ciphertext\"}: %v", err)
		return
	}
	if _, err := wire.ParsePeerID(req.Recipient); err != nil {
		badRequest(w, "recipient: %v", err)
		return
	}
	st := n.Offline.answer(Request{ID: wire.MessageID(req.Ciphertext), Recipient: req.Recipient, Ciphertext: req.Ciphertext})
	if st != http.StatusOK {
		http.Error(w, "OFFLINE endpoint told to fail", st)
		return
	}
	writeJSON(w, map[string]bool{"ok": true})
}

func (n *Node) serveInbound(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID         string    `json:"id"`
		Ciphertext []byte    `json:"ciphertext"`
		Path       string    `json:"path"`
		ReceivedAt time.Time `json:"received_at"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		badRequest(w, "inbound body: %v", err)
		return
	}
	if wire.MessageID(req.Ciphertext) != req.ID || req.Path == "" || req.ReceivedAt.IsZero() {
		badRequest(w, "inbound: id must hash the ciphertext, path and received_at are required")
		return
	}
	st := n.Inbound.answer(Request{ID: req.ID, Ciphertext: req.Ciphertext, Path: req.Path, ReceivedAt: req.ReceivedAt})
	if st != http.StatusOK {
		http.Error(w, "inbound endpoint told to fail", st)
		return
	}
	writeJSON(w, map[string]bool{"ok": true})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// Config is a valid sidecar configuration for node n with short timeouts:
// relay_grace 300ms, publish_timeout the default (10s), retries between 20ms and 200ms,
// the queue in dir. relayURL "" opts out of INDIRECT; the inbound endpoint
// is configured.
func Config(n *Node, relayURL, dir string) sidecar.Config {
	cfg := sidecar.DefaultConfig()
	cfg.RelayURL = relayURL
	cfg.API.Listen = "127.0.0.1:0"
	cfg.Node = sidecar.NodeConfig{OfflinePublishURL: n.OfflineURL(), InboundURL: n.InboundURL(), SignURL: n.SignURL()}
	cfg.Store.Path, cfg.Store.Synchronous = filepath.Join(dir, "courier.db"), "normal"
	cfg.Delivery.RelayGrace = 300 * time.Millisecond
	// The default (10s), not less: on a loaded machine a relay can take
	// over a second to answer a publish, and a timeout sends the message
	// OFFLINE. A test of the timeout sets its own.
	cfg.Delivery.PublishTimeout = sidecar.DefaultPublishTimeout
	cfg.Delivery.RetryWaitMin = 20 * time.Millisecond
	cfg.Delivery.RetryWaitMax = 200 * time.Millisecond
	cfg.Log.Level = "debug"
	return cfg
}

// Options are the engine options the tests use: a 50ms poll, a reconnect
// wait of at most 200ms, and a prune (of what is older than
// store.retention) every 100ms.
func Options() sidecar.Options {
	return sidecar.Options{Poll: 50 * time.Millisecond, NodeTimeout: 5 * time.Second, ReconnectWaitMax: 200 * time.Millisecond, PruneEvery: 100 * time.Millisecond}
}

// Sidecar is an Engine running for a test.
type Sidecar struct {
	t      testing.TB
	E      *sidecar.Engine
	Node   *Node
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// StartSidecar creates an Engine for cfg and runs it until the test ends
// (or Stop); then it checks that Run returned nil and closes the engine,
// twice, since Close is idempotent.
func StartSidecar(t testing.TB, n *Node, cfg sidecar.Config, opts sidecar.Options) *Sidecar {
	t.Helper()
	return StartSidecarLogging(t, n, cfg, opts, Logger().With("side", "sidecar-"+n.Name))
}

// StartSidecarLogging is StartSidecar with the engine logging to logger.
func StartSidecarLogging(t testing.TB, n *Node, cfg sidecar.Config, opts sidecar.Options, logger *slog.Logger) *Sidecar {
	t.Helper()
	return startSidecar(t, n, cfg, opts, logger, nil)
}

// StartSidecarAfter is StartSidecar with before run between the engine's
// New (which checks cfg) and its Run: for a world that changes in between.
func StartSidecarAfter(t testing.TB, n *Node, cfg sidecar.Config, opts sidecar.Options, before func()) *Sidecar {
	t.Helper()
	return startSidecar(t, n, cfg, opts, Logger().With("side", "sidecar-"+n.Name), before)
}

func startSidecar(t testing.TB, n *Node, cfg sidecar.Config, opts sidecar.Options, logger *slog.Logger, before func()) *Sidecar {
	t.Helper()
	e, err := sidecar.New(cfg, logger, opts)
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sidecar{t: t, E: e, Node: n, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- e.Run(ctx) }()
	t.Cleanup(s.Stop)
	return s
}

// WatchFile follows the TOML file at path (first read as cfg) as courier
// does, applying each change with Reconfigure, until the test ends.
func (s *Sidecar) WatchFile(path string, cfg sidecar.Config) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- sidecar.Watch(ctx, path, cfg, Logger(), func(next sidecar.Config) {
			if err := s.E.Reconfigure(next); err != nil {
				s.t.Errorf("Reconfigure: %v", err)
			}
		})
	}()
	s.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			s.t.Errorf("Watch: %v", err)
		}
	})
}

// Cancel cancels Run's context and returns at once; Stop waits.
func (s *Sidecar) Cancel() { s.cancel() }

// Stop cancels Run, waits for it, and closes the engine. Idempotent.
func (s *Sidecar) Stop() {
	s.once.Do(func() {
		s.cancel()
		select {
		case err := <-s.done:
			if err != nil {
				s.t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(WaitTimeout):
			s.t.Errorf("Run did not return within %s of cancel", WaitTimeout)
		}
		if err := s.E.Close(); err != nil {
			s.t.Errorf("Close: %v", err)
		}
		if err := s.E.Close(); err != nil {
			s.t.Errorf("second Close: %v", err)
		}
	})
}

// WaitRelay waits until the relay connection is in state.
func (s *Sidecar) WaitRelay(state string) sidecar.RelayStatus {
	s.t.Helper()
	var st sidecar.RelayStatus
	Eventually(s.t, "relay state "+state+" of sidecar "+s.Node.Name, func() bool {
		st = s.E.RelayStatus()
		return st.State == state
	})
	return st
}

// Submit submits a message and fails the test unless it is accepted anew.
func (s *Sidecar) Submit(to *Node, ciphertext []byte) string {
	s.t.Helper()
	m, created, err := s.E.Submit(context.Background(), to.Peer.String(), ciphertext)
	if err != nil || !created {
		s.t.Fatalf("Submit: created %v, err %v", created, err)
	}
	return m.ID
}

// WaitMessage waits until message id is in state, and returns it.
func (s *Sidecar) WaitMessage(id string, state queue.State) queue.Outbound {
	s.t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for {
		m := s.Message(id)
		if m.State == state {
			return m
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out after %s waiting for message %.8s to become %s: it is %s, path %q, attempts %d, last error %q",
				WaitTimeout, id, state, m.State, m.Path, m.Attempts, m.LastError)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Message returns message id now.
func (s *Sidecar) Message(id string) queue.Outbound {
	s.t.Helper()
	m, err := s.E.Message(context.Background(), id)
	if err != nil {
		s.t.Fatalf("Message(%s): %v", id, err)
	}
	return m
}

// Ciphertext returns distinct opaque bytes for message i of a test, size
// bytes long (longer if the label needs it).
func Ciphertext(label string, i, size int) []byte {
	b := []byte(fmt.Sprintf("%s #%06d|", label, i))
	unique := len(b)
	h := sha256.Sum256(b)
	for len(b) < size {
		b = append(b, h[:]...)
	}
	return b[:max(size, unique)]
}

// NoAckClient is a level-2 relay client for a node that subscribes and
// reads what the relay sends but never acks: a recipient that is connected
// yet never confirms.
type NoAckClient struct {
	mu       sync.Mutex
	received []string // message IDs
}

// Received returns the IDs delivered to the client.
func (c *NoAckClient) Received() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.received...)
}

// DialNoAck connects a NoAckClient for n to the relay and returns once it
// is subscribed. It disconnects when the test ends.
func DialNoAck(t testing.TB, r *Relay, n *Node) *NoAckClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	hctx, hcancel := context.WithTimeout(ctx, WaitTimeout)
	defer hcancel()
	conn, _, err := websocket.Dial(hctx, r.URL(), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	conn.SetReadLimit(wire.MaxFrameBytes(r.Cfg.Limits.MaxMessageBytes))
	write := func(typ string, data any) {
		if err := conn.Write(hctx, websocket.MessageText, wire.ClientFrameBytes(typ, data)); err != nil {
			t.Fatal(err)
		}
	}
	read := func() wire.ServerFrame {
		_, b, err := conn.Read(hctx)
		if err != nil {
			t.Fatal(err)
		}
		f, err := wire.ParseServerFrame(b)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	write(wire.TypeAuthRequest, wire.AuthRequest{PeerID: n.Peer.String()})
	ch := read()
	if ch.Kind != wire.KindAuthChallenge {
		t.Fatalf("no AuthChallenge: %+v", ch)
	}
	sig := ed25519.Sign(n.Priv, []byte(wire.AuthPayload(ch.AuthChallenge.Host, ch.AuthChallenge.Nonce)))
	write(wire.TypeSubscribe, wire.Subscribe{
		UserID: n.Peer.String(), SubscriptionKey: n.Peer.SubscriptionKey(wire.RelayPrefixBits),
		Protocol: wire.ProtocolLevel2, PubKey: hex.EncodeToString(n.PubKey), Signature: hex.EncodeToString(sig),
	})
	if f := read(); f.Kind != wire.KindSubscribed {
		t.Fatalf("subscribe refused: %+v", f)
	}
	c := &NoAckClient{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, b, err := conn.Read(ctx)
			if err != nil {
				return
			}
			if f, err := wire.ParseServerFrame(b); err == nil && f.Kind == wire.KindDelivery {
				c.mu.Lock()
				c.received = append(c.received, f.Delivery.ID)
				c.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		conn.CloseNow()
		<-done
	})
	return c
}

// RecordHandler is a slog.Handler that keeps every record's message and
// attributes as one line, for tests that look for a log line.
type RecordHandler struct {
	mu    *sync.Mutex
	lines *[]string
	attrs string
}

// NewRecordHandler returns an empty RecordHandler.
func NewRecordHandler() RecordHandler {
	return RecordHandler{mu: new(sync.Mutex), lines: new([]string)}
}

func (h RecordHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h RecordHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message + h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	*h.lines = append(*h.lines, b.String())
	h.mu.Unlock()
	return nil
}

func (h RecordHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	h.attrs = b.String()
	return h
}

func (h RecordHandler) WithGroup(string) slog.Handler { return h }

// Lines returns the records so far that contain every one of subs.
func (h RecordHandler) Lines(subs ...string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
next:
	for _, l := range *h.lines {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// ReadAll reads a response body for an error message.
func ReadAll(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 1<<16))
	return string(b)
}

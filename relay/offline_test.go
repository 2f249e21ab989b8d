package relay_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"courier/internal/syncbuf"
	"courier/relay"
	"courier/relay/sqlitestore"
	"courier/wire"
)

// testNode stands in for the operator's OpenBazaar node: its OFFLINE
// endpoint, which can fail (any status), hang, and recover.
type testNode struct {
	t   testing.TB
	hs  *httptest.Server
	url string

	mu      sync.Mutex
	status  int  // the answer; 0 is 202
	hang    bool // hold requests until the client gives up
	echo    bool // answer with the request's body
	creds   func(r *http.Request) bool
	reqs    []nodeReq
	hung    chan struct{} // a held request was given up by the relay
	holding chan struct{} // a request is being held
	stopped chan struct{}
}

type nodeReq struct {
	ID, Recipient string
	Ciphertext    []byte
	Status        int // what the node answered; 0: held until the relay gave up
	User, Pass    string
	Cookie        string
	At            time.Time // when the node got it
}

func newTestNode(t testing.TB) *testNode {
	n := &testNode{t: t, hung: make(chan struct{}, 100), holding: make(chan struct{}, 100), stopped: make(chan struct{})}
	n.hs = httptest.NewServer(http.HandlerFunc(n.serve))
	n.url = n.hs.URL + "/courier/offline"
	t.Cleanup(func() {
		close(n.stopped)
		n.hs.Close()
	})
	return n
}

func (n *testNode) serve(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Recipient  string `json:"recipient"`
		Ciphertext string `json:"ciphertext"`
	}
	raw, _ := io.ReadAll(r.Body)
	if r.Method != http.MethodPost || r.URL.Path != "/courier/offline" || json.Unmarshal(raw, &body) != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	ct, err := base64.StdEncoding.DecodeString(body.Ciphertext)
	if err != nil {
		http.Error(w, "bad base64", http.StatusBadRequest)
		return
	}
	req := nodeReq{ID: wire.MessageID(ct), Recipient: body.Recipient, Ciphertext: ct, At: time.Now()}
	req.User, req.Pass, _ = r.BasicAuth()
	if c, err := r.Cookie("OpenBazaar_Auth_Cookie"); err == nil {
		req.Cookie = c.Value
	}
	n.mu.Lock()
	status, hang, creds, echo := n.status, n.hang, n.creds, n.echo
	n.mu.Unlock()
	if hang {
		n.holding <- struct{}{}
		select {
		case <-r.Context().Done():
			n.record(req)
			n.hung <- struct{}{}
			return
		case <-n.stopped:
			return
		}
	}
	if status == 0 {
		status = http.StatusAccepted
	}
	if creds != nil && !creds(r) {
		status = http.StatusUnauthorized
	}
	req.Status = status
	n.record(req)
	w.WriteHeader(status)
	if echo {
		w.Write(raw)
		return
	}
	io.WriteString(w, `{"error":"node says no"}`)
}

func (n *testNode) record(r nodeReq) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.reqs = append(n.reqs, r)
}

func (n *testNode) set(status int, hang bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.status, n.hang = status, hang
}

// attempts counts the requests for message id; ok counts those answered 2xx.
func (n *testNode) attempts(id string) (all, ok int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, r := range n.reqs {
		if r.ID == id {
			all++
			if r.Status/100 == 2 {
				ok++
			}
		}
	}
	return all, ok
}

// accepted returns the requests the node answered 2xx.
func (n *testNode) accepted() []nodeReq {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []nodeReq
	for _, r := range n.reqs {
		if r.Status/100 == 2 {
			out = append(out, r)
		}
	}
	return out
}

func (n *testNode) waitHandedOff(id string) nodeReq {
	n.t.Helper()
	eventually(n.t, "the node to take "+id[:12], func() bool { _, ok := n.attempts(id); return ok > 0 })
	for _, r := range n.accepted() {
		if r.ID == id {
			return r
		}
	}
	panic("unreachable")
}

const testAfter = 400 * time.Millisecond

// withBridge configures the bridge to node with short durations.
func withBridge(node *testNode, more func(*relay.OfflineConfig)) func(*relay.Config) {
	return func(c *relay.Config) {
		c.Limits.DeliveryWait = testAfter
		off := relay.DefaultOfflineConfig()
		off.PublishURL = node.url
		off.Timeout = 5 * time.Second
		off.RetryMin = 20 * time.Millisecond
		off.RetryMax = 100 * time.Millisecond
		off.PollInterval = 100 * time.Millisecond
		off.UnreadyAfter = 3
		if more != nil {
			more(&off)
		}
		c.Offline = &off
	}
}

// serial makes the bridge hand off one message at a time, oldest due
// first: a message handed off later shows that every one due before it
// has had its turn.
func serial(o *relay.OfflineConfig) { o.Concurrency = 1 }

func (c *client) publishFallback(ct []byte, recipient, ref, fallback string) {
	c.t.Helper()
	c.sendFrame(wire.TypePublish, wire.Publish{
		EncryptedMessage: base64.StdEncoding.EncodeToString(ct),
		Recipient:        recipient,
		Ref:              ref,
		Fallback:         fallback,
	})
}

func (e *env) handoffs(outcome string) float64 {
	e.t.Helper()
	return e.metric(`courier_relay_handoffs_total{outcome="` + outcome + `"}`)
}

func (e *env) description() relay.Description {
	e.t.Helper()
	resp, err := http.Get(e.http + "/")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var d relay.Description
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *env) readyz() (int, string) {
	e.t.Helper()
	resp, err := http.Get(e.http + "/readyz")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func handoffStatus(t testing.TB, st relay.HandoffStore, id string) relay.HandoffState {
	t.Helper()
	s, err := st.HandoffStatus(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestBridgeLevel1 : a level-1 publish to a recipient who does not ack is
// handed to the node once offline.after has passed, and stays stored.
func TestBridgeLevel1(t *testing.T) {
	node := newTestNode(t)
	e := newEnv(t, withBridge(node, nil))
	if d := e.description(); !d.Offline.Enabled || d.Offline.After != testAfter.String() {
		t.Errorf("GET / offline = %+v, want enabled, after %v", d.Offline, testAfter)
	}
	bob := newIdentity(t, 1)
	ct := ciphertext(300, "level 1 to an absent recipient")
	id := wire.MessageID(ct)
	pub := e.dial() // a send-only level-1 client
	sent := time.Now()
	pub.publish(ct, bob.ID(), "")
	r := node.waitHandedOff(id)
	if took := r.At.Sub(sent); took < testAfter {
		t.Errorf("handed off %v after the publish, before offline.after (%v)", took, testAfter)
	}
	if r.Recipient != bob.ID() || !bytes.Equal(r.Ciphertext, ct) {
		t.Errorf("the node got recipient %s and %d bytes, want %s and the %d bytes published", r.Recipient, len(r.Ciphertext), bob.ID(), len(ct))
	}
	eventually(t, "handed_off counted", func() bool { return e.handoffs("handed_off") == 1 })
	if got := handoffStatus(t, e.store, id); got != relay.HandoffDone {
		t.Errorf("hand-off state %v, want handed_off", got)
	}
	// Stored too: the recipient still gets it INDIRECT.
	b := e.dial()
	if got := b.auth2(bob, 1); got[0].ID != id {
		t.Errorf("replayed %s, want %s", got[0].ID, id)
	}
}

// TestBridgeOffWhenNotConfigured: without [offline], GET / says so and
// nothing is handed off.
func TestBridgeOffWhenNotConfigured(t *testing.T) {
	e := newEnv(t, nil)
	if d := e.description(); d.Offline.Enabled {
		t.Errorf("GET / offline = %+v without [offline]", d.Offline)
	}
	pub := level2Publisher(t, e, 100)
	pub.publishFallback(ciphertext(100, "no bridge"), newIdentity(t, 1).ID(), "r", wire.FallbackRelay)
	pub.expectResult(wire.StatusQueued)
}

// TestBridgeFallbackOffline: a level-2 publish with "fallback":"relay" is
// answered offline once handed off, whether its recipient is absent or
// connected and silent.
func TestBridgeFallbackOffline(t *testing.T) {
	node := newTestNode(t)
	e := newEnv(t, withBridge(node, nil))
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)

	ct := ciphertext(100, "fallback, bob absent")
	pub.publishFallback(ct, bob.ID(), "absent", wire.FallbackRelay)
	res := pub.expectResult(wire.StatusOffline)
	if res.Ref != "absent" || res.ID != wire.MessageID(ct) {
		t.Errorf("result %+v", res)
	}
	if _, ok := node.attempts(res.ID); ok != 1 {
		t.Errorf("answered offline with %d hand-offs made, want 1", ok)
	}

	b := e.dial()
	b.auth2(bob, 1)
	ct2 := ciphertext(100, "fallback, bob connected and silent")
	pub.publishFallback(ct2, bob.ID(), "silent", wire.FallbackRelay)
	if d := b.expectDelivery(); d.ID != wire.MessageID(ct2) {
		t.Fatalf("bob got %s", d.ID)
	}
	res = pub.expectResult(wire.StatusOffline)
	if _, ok := node.attempts(res.ID); ok != 1 || res.Ref != "silent" {
		t.Errorf("result %+v with %d hand-offs made, want offline after 1", res, ok)
	}
}

// TestBridgeLevel2WithoutFallback: a level-2 publish that does not ask
// for the bridge is never handed off; a fallback other than "relay" is
// refused.
func TestBridgeLevel2WithoutFallback(t *testing.T) {
	node := newTestNode(t)
	e := newEnv(t, withBridge(node, serial))
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	ct := ciphertext(100, "no fallback")
	pub.publish(ct, bob.ID(), "plain")
	pub.expectResult(wire.StatusQueued)
	if got := handoffStatus(t, e.store, wire.MessageID(ct)); got != relay.HandoffNone {
		t.Errorf("hand-off state %v after a level-2 publish without fallback, want none", got)
	}
	pub.publishFallback(ciphertext(100, "odd fallback"), bob.ID(), "odd", "sidecar")
	if res := pub.expectResult(wire.StatusRejected); !strings.HasPrefix(res.Reason, wire.ReasonInvalid) || !strings.Contains(res.Reason, "fallback") {
		t.Errorf("reason %q", res.Reason)
	}
	// One due later, handed off: the first one had its turn before.
	later := ciphertext(100, "later, with fallback")
	pub.publishFallback(later, bob.ID(), "later", wire.FallbackRelay)
	pub.expectResult(wire.StatusOffline)
	if all, _ := node.attempts(wire.MessageID(ct)); all != 0 {
		t.Errorf("a level-2 publish without fallback was handed off (%d attempts)", all)
	}
}

// TestBridgeRecipientAcks: the recipient's authenticated ack within
// offline.after stops the hand-off; an anonymous ack does not, even with
// the recipient's peer ID as its userID.
func TestBridgeRecipientAcks(t *testing.T) {
	node := newTestNode(t)
	// The acks must commit within offline.after: generous on a loaded machine.
	e := newEnv(t, withBridge(node, func(o *relay.OfflineConfig) { serial(o); o.After = 3 * time.Second }))
	bob := newIdentity(t, 1)
	b := e.dial()
	b.auth2(bob, 0)
	pub1 := e.dial() // level 1

	ct := ciphertext(100, "acked in time")
	pub1.publish(ct, bob.ID(), "")
	d := b.expectDelivery()
	b.ack(d.ID)
	eventually(t, "the hand-off dropped", func() bool { return e.handoffs("dropped_acked") == 1 })
	if all, _ := node.attempts(d.ID); all != 0 {
		t.Errorf("an acked message was handed off (%d attempts)", all)
	}
	if got := handoffStatus(t, e.store, d.ID); got != relay.HandoffNone {
		t.Errorf("hand-off state %v after the drop, want none", got)
	}

	// A fallback publish the recipient acks: delivered, and no hand-off.
	pub2 := level2Publisher(t, e, 100)
	ct2 := ciphertext(100, "fallback acked")
	pub2.publishFallback(ct2, bob.ID(), "acked", wire.FallbackRelay)
	b.ack(b.expectDelivery().ID)
	pub2.expectResult(wire.StatusDelivered)
	eventually(t, "the second hand-off dropped", func() bool { return e.handoffs("dropped_acked") == 2 })

	// An anonymous subscriber on bob's key, named like bob, acks: the
	// hand-off still happens.
	anon := e.dial()
	anon.subscribe1(bob.ID(), bob.Key())
	for range 2 {
		anon.expectDelivery()
	}
	ct3 := ciphertext(100, "anonymously acked")
	pub1.publish(ct3, bob.ID(), "")
	if d := anon.expectDelivery(); d.ID != wire.MessageID(ct3) {
		t.Fatalf("anonymous got %s", d.ID)
	}
	anon.ack(wire.MessageID(ct3))
	if d := b.expectDelivery(); d.ID != wire.MessageID(ct3) {
		t.Fatalf("bob got %s", d.ID)
	}
	node.waitHandedOff(wire.MessageID(ct3))
	if all, _ := node.attempts(d.ID); all != 0 {
		t.Errorf("the acked message was handed off later (%d attempts)", all)
	}
}

// TestBridgeNodeFailsThenRecovers: while the node answers 500 the publish
// is answered queued, attempts go on with backoff, /readyz fails; once
// the node takes it, it is handed off exactly once, /readyz recovers, and
// a republish is not handed off again.
func TestBridgeNodeFailsThenRecovers(t *testing.T) {
	node := newTestNode(t)
	node.set(http.StatusInternalServerError, false)
	e := newEnv(t, withBridge(node, serial))
	bob := newIdentity(t, 1)
	pub := level2Publisher(t, e, 100)
	ct := ciphertext(100, "the node fails first")
	id := wire.MessageID(ct)
	pub.publishFallback(ct, bob.ID(), "r", wire.FallbackRelay)
	pub.expectResult(wire.StatusQueued)
	eventually(t, "three failed attempts", func() bool { all, _ := node.attempts(id); return all >= 3 })
	eventually(t, "/readyz failing", func() bool {
		code, body := e.readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "offline bridge") && strings.Contains(body, "500")
	})
	if e.handoffs("failed_attempt") < 3 {
		t.Errorf("failed_attempt = %v, want at least 3", e.handoffs("failed_attempt"))
	}
	node.set(0, false)
	node.waitHandedOff(id)
	eventually(t, "/readyz ready again", func() bool { code, _ := e.readyz(); return code == http.StatusOK })

	// Republished after the hand-off: answered offline, not handed again.
	pub.publishFallback(ct, bob.ID(), "again", wire.FallbackRelay)
	if res := pub.expectResult(wire.StatusOffline); res.Ref != "again" {
		t.Errorf("republish result %+v", res)
	}
	pub1 := e.dial()
	pub1.publish(ct, bob.ID(), "") // a level-1 republish too
	later := ciphertext(100, "due after the republishes")
	pub1.publish(later, bob.ID(), "")
	node.waitHandedOff(wire.MessageID(later))
	if _, ok := node.attempts(id); ok != 1 {
		t.Errorf("the node took the message %d times, want exactly 1", ok)
	}
	if got := e.handoffs("handed_off"); got != 2 {
		t.Errorf("handed_off = %v, want 2", got)
	}
}

// TestBridgeNodeHangs: a node that does not answer costs one attempt of
// offline.timeout, then the bridge retries.
func TestBridgeNodeHangs(t *testing.T) {
	node := newTestNode(t)
	node.set(0, true)
	e := newEnv(t, withBridge(node, func(o *relay.OfflineConfig) { o.Timeout = 300 * time.Millisecond }))
	ct := ciphertext(100, "the node hangs")
	id := wire.MessageID(ct)
	start := time.Now()
	e.dial().publish(ct, newIdentity(t, 1).ID(), "")
	select {
	case <-node.hung:
	case <-time.After(waitTimeout):
		t.Fatal("the relay did not give up a request the node held")
	}
	if took := time.Since(start); took > testAfter+300*time.Millisecond+10*time.Second {
		t.Errorf("the held attempt ended %v after the publish", took)
	}
	eventually(t, "the failed attempt counted", func() bool { return e.handoffs("failed_attempt") >= 1 })
	node.set(0, false)
	node.waitHandedOff(id)
	if _, ok := node.attempts(id); ok != 1 {
		t.Errorf("handed off %d times", ok)
	}
}

// TestBridgeGivesUpAtExpiry: a hand-off the node never takes ends when its
// message expires.
func TestBridgeGivesUpAtExpiry(t *testing.T) {
	node := newTestNode(t)
	node.set(http.StatusBadGateway, false)
	e := newEnv(t, func(c *relay.Config) {
		withBridge(node, nil)(c)
		c.Limits.MessageTTL = 1500 * time.Millisecond
	})
	ct := ciphertext(100, "expires unhanded")
	id := wire.MessageID(ct)
	e.dial().publish(ct, newIdentity(t, 1).ID(), "")
	eventually(t, "the hand-off given up", func() bool { return e.handoffs("expired") == 1 })
	all, _ := node.attempts(id)
	if all == 0 {
		t.Error("no attempt before the message expired")
	}
	if got := handoffStatus(t, e.store, id); got != relay.HandoffNone {
		t.Errorf("hand-off state %v after expiry, want none", got)
	}
}

// TestBridgeRestartResumes: a hand-off pending when the relay stops is
// made after it starts again, once.
func TestBridgeRestartResumes(t *testing.T) {
	node := newTestNode(t)
	node.set(http.StatusServiceUnavailable, false)
	mutate := withBridge(node, nil)
	e := newEnv(t, mutate)
	ct := ciphertext(100, "pending across a restart")
	id := wire.MessageID(ct)
	e.dial().publish(ct, newIdentity(t, 1).ID(), "")
	eventually(t, "a failed attempt", func() bool { all, _ := node.attempts(id); return all >= 1 })
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	node.set(0, false)
	st, err := sqlitestore.Open(e.cfg.Store.Path, sqlitestore.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	re := newEnvOn(t, e.cfg, st)
	node.waitHandedOff(id)
	eventually(t, "handed_off counted", func() bool { return re.handoffs("handed_off") == 1 })
	if _, ok := node.attempts(id); ok != 1 {
		t.Errorf("handed off %d times", ok)
	}
}

// childOfflineEnv, when set for a child relay, turns its bridge on to the
// URL it names (see childConfig).
const childOfflineEnv = "COURIER_RELAY_TEST_CHILD_OFFLINE"

// TestBridgeKill9: kill -9 of a relay loses neither a hand-off it has
// made (not made again) nor one that is pending (made after the restart,
// at once although the dead relay's claim on it had 25 s to run): the
// node answers 2xx exactly once per message in all.
func TestBridgeKill9(t *testing.T) {
	node := newTestNode(t)
	path := filepath.Join(t.TempDir(), "relay.db")
	e, child := startChildEnv(t, path, childOfflineEnv+"="+node.url)
	bob := newIdentity(t, 1)
	pub := e.dial()
	done := ciphertext(100, "handed off before the kill")
	pub.publish(done, bob.ID(), "")
	node.waitHandedOff(wire.MessageID(done))
	eventually(t, "the child to record the hand-off", func() bool { return e.handoffs("handed_off") == 1 })

	node.set(http.StatusInternalServerError, false)
	pending := ciphertext(100, "pending at the kill")
	pub.publish(pending, bob.ID(), "")
	eventually(t, "a failed attempt", func() bool { all, _ := node.attempts(wire.MessageID(pending)); return all >= 2 })
	// Killed while an attempt is in flight (claimed, its lease running).
	node.set(0, true)
	select {
	case <-node.holding:
	case <-time.After(waitTimeout):
		t.Fatal("no attempt in flight")
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	node.set(0, false)

	st, err := sqlitestore.Open(path, sqlitestore.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := testConfig(t)
	cfg.Store.Path = path
	withBridge(node, serial)(&cfg)
	re := newEnvOn(t, cfg, st)
	node.waitHandedOff(wire.MessageID(pending))
	// Republish the one handed off before the kill, then one more: when
	// that one is handed off, the republish has had its turn.
	p2 := level2Publisher(t, re, 100)
	p2.publishFallback(done, bob.ID(), "again", wire.FallbackRelay)
	p2.expectResult(wire.StatusOffline)
	last := ciphertext(100, "after the restart")
	re.dial().publish(last, bob.ID(), "")
	node.waitHandedOff(wire.MessageID(last))
	for _, ct := range [][]byte{done, pending, last} {
		if _, ok := node.attempts(wire.MessageID(ct)); ok != 1 {
			t.Errorf("%q: the node answered 2xx %d times, want exactly 1", ct[:20], ok)
		}
	}
}

// TestBridgeCredentials: basic auth from offline.password_file and the
// cookie from offline.cookie_file go with every attempt (the cookie read
// again after a 401), and neither is ever logged.
func TestBridgeCredentials(t *testing.T) {
	dir := t.TempDir()
	const (
		password = "pa55-never-logged"
		cookie1  = "cookie-one-never-logged"
		cookie2  = "cookie-two-never-logged"
	)
	pwFile := filepath.Join(dir, "password")
	cookieFile := filepath.Join(dir, ".cookie")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cookieFile, []byte("OpenBazaar_Auth_Cookie="+cookie1), 0o600); err != nil {
		t.Fatal(err)
	}
	node := newTestNode(t)
	node.creds = func(r *http.Request) bool {
		u, p, ok := r.BasicAuth()
		c, err := r.Cookie("OpenBazaar_Auth_Cookie")
		return ok && u == "ob" && p == password && err == nil && c.Value == cookie2
	}
	logs := &syncbuf.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := testConfig(t)
	withBridge(node, func(o *relay.OfflineConfig) {
		o.Username, o.PasswordFile, o.CookieFile = "ob", pwFile, cookieFile
	})(&cfg)
	st, err := sqlitestore.Open(cfg.Store.Path, sqlitestore.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := newEnvLogged(t, cfg, st, logger)

	ct := ciphertext(100, "with credentials")
	id := wire.MessageID(ct)
	e.dial().publish(ct, newIdentity(t, 1).ID(), "")
	// The node wants the new cookie: the first attempts get 401.
	eventually(t, "an attempt refused", func() bool { all, _ := node.attempts(id); return all >= 1 })
	if err := os.WriteFile(cookieFile, []byte("OpenBazaar_Auth_Cookie="+cookie2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := node.waitHandedOff(id)
	if r.User != "ob" || r.Pass != password || r.Cookie != cookie2 {
		t.Errorf("the node got user %q, password %q, cookie %q", r.User, r.Pass, r.Cookie)
	}
	node.mu.Lock()
	first := node.reqs[0]
	node.mu.Unlock()
	if first.Cookie != cookie1 || first.Pass != password {
		t.Errorf("the first attempt sent cookie %q, password %q", first.Cookie, first.Pass)
	}
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	for _, line := range []string{"OFFLINE hand-off failed", "handed OFFLINE"} {
		if !strings.Contains(out, line) {
			t.Errorf("the logs lack %q:\n%s", line, out)
		}
	}
	for _, secret := range []string{password, cookie1, cookie2, base64.StdEncoding.EncodeToString([]byte("ob:" + password))} {
		if strings.Contains(out, secret) {
			t.Errorf("the logs contain a credential %q", secret)
		}
	}
}

// TestBridgeUnreadableCredentials: New refuses credential files it cannot
// read, naming the key.
func TestBridgeUnreadableCredentials(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	empty := filepath.Join(t.TempDir(), ".cookie")
	if err := os.WriteFile(empty, []byte("OpenBazaar_Auth_Cookie=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	node := newTestNode(t)
	for _, tt := range []struct {
		key    string
		mutate func(o *relay.OfflineConfig)
	}{
		{"offline.password_file", func(o *relay.OfflineConfig) { o.Username, o.PasswordFile = "ob", missing }},
		{"offline.cookie_file", func(o *relay.OfflineConfig) { o.CookieFile = missing }},
		{"offline.cookie_file", func(o *relay.OfflineConfig) { o.CookieFile = empty }},
	} {
		cfg := testConfig(t)
		withBridge(node, tt.mutate)(&cfg)
		st, err := sqlitestore.Open(cfg.Store.Path, sqlitestore.Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		srv, err := relay.New(cfg, st, testLogger(t))
		if err == nil {
			srv.Close()
			t.Errorf("%s: New accepted it", tt.key)
		} else if !strings.Contains(err.Error(), tt.key) {
			t.Errorf("%s: New = %v", tt.key, err)
		}
		st.Close()
	}
}

// TestBridgeNeverLogsCiphertext: a node whose error answer quotes the
// request does not get the ciphertext into the relay's logs; its status
// does.
func TestBridgeNeverLogsCiphertext(t *testing.T) {
	node := newTestNode(t)
	node.mu.Lock()
	node.status, node.echo = http.StatusBadRequest, true
	node.mu.Unlock()
	logs := &syncbuf.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := testConfig(t)
	withBridge(node, nil)(&cfg)
	st, err := sqlitestore.Open(cfg.Store.Path, sqlitestore.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := newEnvLogged(t, cfg, st, logger)
	ct := ciphertext(300, "secret sealed bytes")
	e.dial().publish(ct, newIdentity(t, 1).ID(), "")
	eventually(t, "two failed attempts", func() bool { return e.handoffs("failed_attempt") >= 2 })
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "400 Bad Request") {
		t.Errorf("the logs lack the node's answer:\n%s", out)
	}
	b64 := base64.StdEncoding.EncodeToString(ct)
	if strings.Contains(out, b64[:16]) {
		t.Errorf("the logs contain the ciphertext:\n%s", out)
	}
}

// TestBridgeShutdownDuringAttempt: Shutdown lets an attempt under way end
// (bounded by offline.timeout) instead of cutting it short, and the
// hand-off stays pending for the next start.
func TestBridgeShutdownDuringAttempt(t *testing.T) {
	node := newTestNode(t)
	node.set(0, true)
	const timeout = time.Second
	e := newEnv(t, withBridge(node, func(o *relay.OfflineConfig) { o.Timeout = timeout }))
	ct := ciphertext(100, "in flight at shutdown")
	e.dial().publish(ct, newIdentity(t, 1).ID(), "")
	select {
	case <-node.holding:
	case <-time.After(waitTimeout):
		t.Fatal("no attempt in flight")
	}
	start := time.Now()
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > timeout+10*time.Second {
		t.Errorf("Shutdown took %v with an attempt of at most %v under way", took, timeout)
	}
	if got := handoffStatus(t, e.store, wire.MessageID(ct)); got != relay.HandoffPending {
		t.Errorf("after Shutdown the hand-off is %v, want pending", got)
	}
}

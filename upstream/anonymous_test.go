package upstream_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"courier/relay"
	"courier/relay/relaytest"
	"courier/upstream"
	"courier/wire"
)

const anonUserID = "anon-4f1c2a9e8b7d6c5e"

// signLog wraps a node's sign function and keeps every signature it gave.
type signLog struct {
	n    *node
	mu   sync.Mutex
	sigs []string
}

func (l *signLog) sign(ctx context.Context, content string) (upstream.Signature, error) {
	s, err := l.n.sign(ctx, content)
	if err == nil {
		l.mu.Lock()
		l.sigs = append(l.sigs, s.Signature)
		l.mu.Unlock()
	}
	return s, err
}

func (l *signLog) signatures() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.sigs...)
}

// identifying returns the strings that would name n to whoever reads
// them: its peer ID in both spellings, its public key (hex and base64,
// marshalled and raw), and every signature its sign function gave.
func identifying(n *node, sigs []string) []string {
	raw := n.pub[4:]
	out := []string{
		n.peer.String(), n.peer.Canonical(),
		hex.EncodeToString(n.pub), hex.EncodeToString(raw),
		base64.StdEncoding.EncodeToString(n.pub), base64.StdEncoding.EncodeToString(raw),
	}
	if id, err := wire.IdentityPeerID(n.pub); err == nil {
		out = append(out, id.String())
	}
	return append(out, sigs...)
}

// checkAnonymousFrames fails the test if any frame names n, or is
// anything but a level-1 subscribe (by key, under anonUserID), publish
// or ack.
func checkAnonymousFrames(t *testing.T, frames [][]byte, n *node, sigs []string) (subs, pubs, acks int) {
	t.Helper()
	secret := identifying(n, sigs)
	for _, f := range frames {
		for _, s := range secret {
			if bytes.Contains(f, []byte(s)) {
				t.Errorf("a frame to the relay names the node (%.12s…): %.200s", s, f)
			}
		}
		cf, err := wire.ParseClientFrame(f)
		if err != nil {
			t.Errorf("unparsable frame %.200s: %v", f, err)
			continue
		}
		switch cf.Type {
		case wire.TypeSubscribe:
			subs++
			s := cf.Subscribe
			if s.UserID != anonUserID || s.SubscriptionKey != n.peer.SubscriptionKey(wire.RelayPrefixBits) ||
				s.Protocol != 0 || s.PubKey != "" || s.Signature != "" {
				t.Errorf("subscribe %+v, want level 1 by key under %q", s, anonUserID)
			}
			var raw map[string]map[string]any
			if err := json.Unmarshal(f, &raw); err == nil {
				for k := range raw["Data"] {
					if k != "userID" && k != "subscriptionKey" {
						t.Errorf("subscribe carries %q", k)
					}
				}
			}
		case wire.TypePublish:
			pubs++
			if cf.Publish.Ref != "" || cf.Publish.Fallback != "" {
				t.Errorf("level-1 publish with ref %q fallback %q", cf.Publish.Ref, cf.Publish.Fallback)
			}
		case wire.TypeAck:
			acks++
		default:
			t.Errorf("frame of type %s from an anonymous client: %.200s", cf.Type, f)
		}
	}
	return subs, pubs, acks
}

// An anonymous client talks to the real relay, through a front that
// records every frame it sends: messages go both ways with an
// authenticated peer, and nothing it sends names its peer ID, its key or
// a signature. After a restart under the same userID the relay does not
// send again what was acked.
func TestAnonymousSessionNamesNoPeer(t *testing.T) {
	r := startRelay(t, nil)
	front := relaytest.StartFront(t, r, false)
	a, b := newNode(1), newNode(2)
	al := &signLog{n: a}
	anon := func(c *upstream.Config) { c.Anonymous, c.UserID, c.Sign = true, anonUserID, al.sign }

	stopA := make(chan struct{})
	ca, sa := a.clientUntil(t, front.URL(), anon, stopA)
	if s := waitState(t, sa, upstream.StateConnected); s.PeerID != "" {
		t.Errorf("anonymous status names peer %q", s.PeerID)
	}
	cb, sb := b.client(t, r.URL(), nil)
	waitState(t, sb, upstream.StateConnected)

	// B (authenticated) → A (anonymous): stored under A's key, pushed to
	// A's level-1 subscription. No anonymous ack counts as delivered.
	toA := []byte("sealed for a, 1")
	if res := publish(t, cb, a.peer, toA); res.Err != nil || res.Status != wire.StatusQueued {
		t.Errorf("B's publish to anonymous A: %+v, want queued (an anonymous ack is no delivery)", res)
	}
	if got := waitMessage(t, a); !bytes.Equal(got.Ciphertext, toA) {
		t.Fatalf("A got %q", got.Ciphertext)
	}

	// A → B: a level-1 publish, answered Unconfirmed at once.
	toB := []byte("sealed for b")
	res := publish(t, ca, b.peer, toB)
	if !res.Unconfirmed || res.Err != nil || res.Status != "" {
		t.Fatalf("anonymous publish result %+v, want Unconfirmed", res)
	}
	if got := waitMessage(t, b); !bytes.Equal(got.Ciphertext, toB) {
		t.Fatalf("B got %q", got.Ciphertext)
	}

	// A's ack of toA reaches the relay before A goes: wait for it in the
	// captured frames.
	deadline := time.Now().Add(waitTimeout)
	for {
		_, _, acks := checkAnonymousFrames(t, front.Frames(), a, al.signatures())
		if acks >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("A never acked")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stopA)
	waitState(t, sa, upstream.StateDisconnected)

	// Restart A under the same userID: toA was acked, so the relay sends
	// only the new message.
	toA2 := []byte("sealed for a, 2")
	if res := publish(t, cb, a.peer, toA2); res.Status != wire.StatusQueued {
		t.Fatalf("second publish to A: %+v", res)
	}
	_, sa2 := a.client(t, front.URL(), anon)
	waitState(t, sa2, upstream.StateConnected)
	if got := waitMessage(t, a); !bytes.Equal(got.Ciphertext, toA2) {
		t.Errorf("after the restart A got %q first, want only the new message", got.Ciphertext)
	}

	subs, pubs, acks := checkAnonymousFrames(t, front.Frames(), a, al.signatures())
	if subs != 2 || pubs != 1 || acks < 1 {
		t.Errorf("captured %d subscribes, %d publishes, %d acks; want 2, 1, ≥1", subs, pubs, acks)
	}
	if len(al.signatures()) == 0 {
		t.Error("the sign endpoint was never asked: the key cannot have been computed, so the check proves nothing")
	}
	for _, h := range front.Requests() {
		for k, vs := range h {
			for _, v := range vs {
				for _, s := range identifying(a, al.signatures()) {
					if strings.Contains(v, s) {
						t.Errorf("HTTP header %s names the node", k)
					}
				}
			}
		}
	}
}

// clientUntil is client, but the client stops when stop is closed.
func (n *node) clientUntil(t *testing.T, url string, mutate func(*upstream.Config), stop <-chan struct{}) (*upstream.Client, chan upstream.Status) {
	t.Helper()
	states := make(chan upstream.Status, 1000)
	cfg := upstream.Config{
		URL: url, Sign: n.sign, Handle: n.handle,
		Logger:        testLogger().With("side", "upstream-anon"),
		OnStateChange: func(s upstream.Status) { states <- s },
		BackoffMin:    20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	}
	mutate(&cfg)
	c, err := upstream.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	go func() {
		select {
		case <-stop:
		case <-done:
		}
		cancel()
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c, states
}

// The relay's {"error": …} to a level-1 publish (here too_large: the
// client could not read the relay's limit, the front hides GET /) reaches
// OnRelayError, and the connection stays.
func TestAnonymousPublishErrorIsReported(t *testing.T) {
	r := startRelay(t, func(c *relay.Config) { c.Limits.MaxMessageBytes = 1024 })
	front := relaytest.StartFront(t, r, true)
	a, b := newNode(1), newNode(2)
	errs := make(chan string, 10)
	ca, sa := a.client(t, front.URL(), func(c *upstream.Config) {
		c.Anonymous, c.UserID = true, anonUserID
		c.OnRelayError = func(reason string) { errs <- reason }
	})
	waitState(t, sa, upstream.StateConnected)
	if res := publish(t, ca, b.peer, make([]byte, 2048)); !res.Unconfirmed {
		t.Fatalf("result %+v, want Unconfirmed", res)
	}
	select {
	case reason := <-errs:
		if !strings.HasPrefix(reason, strings.TrimSpace(wire.ReasonTooLarge)) {
			t.Errorf("reported %q, want too_large", reason)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the relay's error was not reported")
	}
	// Still connected: a small publish goes through to B.
	_, sb := b.client(t, r.URL(), nil)
	waitState(t, sb, upstream.StateConnected)
	if res := publish(t, ca, b.peer, []byte("small")); !res.Unconfirmed {
		t.Fatalf("result %+v", res)
	}
	if got := waitMessage(t, b); string(got.Ciphertext) != "small" {
		t.Errorf("B got %q", got.Ciphertext)
	}
	if st := ca.Status(); st.State != upstream.StateConnected {
		t.Errorf("after the error the client is %s", st.State)
	}
}

// hostileRelay answers every level-1 subscribe with answer (then closes
// with 1008), or, with answer empty, accepts it and closes at once.
func hostileRelay(t *testing.T, answer string) (url string, subscribes *atomic.Int32) {
	subscribes = new(atomic.Int32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		c, err := websocket.Accept(w, req, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(req.Context(), waitTimeout)
		defer cancel()
		_, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		if f, err := wire.ParseClientFrame(b); err != nil || f.Type != wire.TypeSubscribe || f.Subscribe.Protocol != 0 {
			t.Errorf("hostile relay got %.200s first, want a level-1 subscribe", b)
			return
		}
		subscribes.Add(1)
		if answer == "" {
			_ = c.Write(ctx, websocket.MessageText, wire.SubscribeOK)
			c.Close(websocket.StatusGoingAway, "bye")
			return
		}
		_ = c.Write(ctx, websocket.MessageText, wire.ErrorFrame(answer))
		c.Close(websocket.StatusPolicyViolation, "refused")
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/", subscribes
}

// A relay that refuses the level-1 subscribe with {"error": …}, or that
// accepts it and closes at once: the status says so and the client keeps
// trying, with backoff, without crashing or spinning.
func TestAnonymousHostileRelay(t *testing.T) {
	for _, tc := range []struct{ name, answer, want string }{
		{"error answer", "over_quota: test relay says no", "refused the subscription: error: over_quota: test relay says no"},
		{"closes at once", "", "bye"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, subs := hostileRelay(t, tc.answer)
			a := newNode(1)
			c, states := a.client(t, url, func(c *upstream.Config) { c.Anonymous, c.UserID = true, anonUserID })
			var last upstream.Status
			deadline := time.After(waitTimeout)
			for subs.Load() < 3 || !strings.Contains(last.LastError, tc.want) {
				select {
				case last = <-states:
				case <-deadline:
					t.Fatalf("after %d subscribes, last status %+v; want %q and retries", subs.Load(), last, tc.want)
				}
			}
			if _, err := c.Publish(context.Background(), newNode(2).peer.String(), []byte("x")); err != nil && !errors.Is(err, upstream.ErrNotConnected) {
				t.Errorf("publish to a hostile relay: %v", err)
			}
		})
	}
}

func TestNewValidatesAnonymous(t *testing.T) {
	n := newNode(1)
	base := upstream.Config{URL: "ws://127.0.0.1:1/", Sign: n.sign, Handle: n.handle, Anonymous: true}
	if _, err := upstream.New(base); err == nil {
		t.Error("Anonymous without UserID accepted")
	}
	base.UserID = n.peer.String()
	if _, err := upstream.New(base); err == nil {
		t.Error("Anonymous with the peer ID as UserID accepted")
	}
	base.UserID = anonUserID
	if _, err := upstream.New(base); err != nil {
		t.Errorf("valid anonymous config refused: %v", err)
	}
}

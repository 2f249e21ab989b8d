package upstream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"courier/upstream"
	"courier/wire"
)

func TestDeliveredBetweenTwoClients(t *testing.T) {
	r := startRelay(t, nil)
	a, b := newNode(1), newNode(2)
	ca, sa := a.client(t, r.URL(), nil)
	_, sb := b.client(t, r.URL(), nil)
	if s := waitState(t, sa, upstream.StateConnected); s.PeerID != a.peer.String() {
		t.Errorf("status peer ID = %q, want %s", s.PeerID, a.peer)
	}
	waitState(t, sb, upstream.StateConnected)

	ct := []byte("sealed for b")
	res := publish(t, ca, b.peer, ct)
	if res.Err != nil || res.Status != wire.StatusDelivered || res.ID != wire.MessageID(ct) {
		t.Fatalf("result = %+v, want delivered %s", res, wire.MessageID(ct))
	}
	got := waitMessage(t, b)
	if got.ID != wire.MessageID(ct) || !bytes.Equal(got.Ciphertext, ct) {
		t.Errorf("b got %+v", got)
	}
	if st := ca.Status(); st.State != upstream.StateConnected || st.PeerID != a.peer.String() {
		t.Errorf("Status() = %+v", st)
	}
}

func TestQueuedWhenRecipientAway(t *testing.T) {
	r := startRelay(t, nil)
	a, away := newNode(1), newNode(3)
	ca, sa := a.client(t, r.URL(), func(c *upstream.Config) {
		// A 4 MiB frame keeps the relay's reader (which answers pings) busy
		// for a second or more under -race: the production default, not the
		// tests' impatient one.
		c.PingTimeout = 5 * time.Second
	})
	waitState(t, sa, upstream.StateConnected)
	res := publish(t, ca, away.peer, []byte("for later"))
	if res.Err != nil || res.Status != wire.StatusQueued {
		t.Fatalf("result = %+v, want queued", res)
	}
	// Just over the relay's limit, which the client read from the relay's
	// description: refused without sending, and the connection stays.
	_, err := ca.Publish(context.Background(), away.peer.String(), make([]byte, r.Cfg.Limits.MaxMessageBytes+1))
	if !errors.Is(err, upstream.ErrTooLarge) || !strings.HasPrefix(err.Error(), strings.TrimSpace(wire.ReasonTooLarge)) {
		t.Fatalf("oversized: %v, want ErrTooLarge", err)
	}
	if res := publish(t, ca, away.peer, []byte("also for later")); res.Status != wire.StatusQueued {
		t.Fatalf("after the oversized one: %+v, want queued", res)
	}

	// The recipient connects later: the relay replays, upstream hands it up.
	away.client(t, r.URL(), nil)
	if got := waitMessage(t, away); string(got.Ciphertext) != "for later" {
		t.Errorf("replayed %q", got.Ciphertext)
	}
}

// Pipelined publishes keep their order and each gets its own result.
func TestPipelinedPublishKeepsOrder(t *testing.T) {
	r := startRelay(t, nil)
	a, b := newNode(1), newNode(2)
	ca, sa := a.client(t, r.URL(), nil)
	_, sb := b.client(t, r.URL(), nil)
	waitState(t, sa, upstream.StateConnected)
	waitState(t, sb, upstream.StateConnected)

	const n = 300
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	results := make([]<-chan upstream.Result, n)
	for i := range n {
		ch, err := ca.Publish(ctx, b.peer.String(), []byte(fmt.Sprintf("message %04d", i)))
		if err != nil {
			t.Fatal(err)
		}
		results[i] = ch
	}
	for i, ch := range results {
		select {
		case res := <-ch:
			if want := wire.MessageID([]byte(fmt.Sprintf("message %04d", i))); res.ID != want || res.Status != wire.StatusDelivered {
				t.Fatalf("result %d = %+v, want delivered %s", i, res, want)
			}
		case <-ctx.Done():
			t.Fatalf("no result for %d", i)
		}
	}
	for i := range n {
		if got, want := string(waitMessage(t, b).Ciphertext), fmt.Sprintf("message %04d", i); got != want {
			t.Fatalf("arrival %d = %q, want %q", i, got, want)
		}
	}
}

// A handler that fails gets nothing acked: after the reconnect the relay
// replays the message and the handler sees it again.
func TestHandlerErrorMeansNoAck(t *testing.T) {
	r := startRelay(t, nil)
	a, b := newNode(1), newNode(2)
	ca, sa := a.client(t, r.URL(), nil)
	waitState(t, sa, upstream.StateConnected)
	b.failNext = 1
	_, sb := b.client(t, r.URL(), nil)
	waitState(t, sb, upstream.StateConnected)

	ct := []byte("must survive a handler failure")
	// Delivered or queued, depending on whether the replay's ack makes it
	// within the relay's wait; either way the publisher got an answer.
	if res := publish(t, ca, b.peer, ct); res.Err != nil {
		t.Errorf("result = %+v", res)
	}
	s := waitState(t, sb, upstream.StateDisconnected)
	if !strings.Contains(s.LastError, "inbound handler") {
		t.Errorf("last error = %q, want the handler failure", s.LastError)
	}
	if got := waitMessage(t, b); !bytes.Equal(got.Ciphertext, ct) {
		t.Errorf("replayed %q", got.Ciphertext)
	}
}

// After an ack the relay never sends the message to that peer again.
func TestAckedMessagesAreNotReplayed(t *testing.T) {
	r := startRelay(t, nil)
	a, b := newNode(1), newNode(2)
	ca, sa := a.client(t, r.URL(), nil)
	waitState(t, sa, upstream.StateConnected)
	_, sb := b.client(t, r.URL(), nil)
	waitState(t, sb, upstream.StateConnected)
	if res := publish(t, ca, b.peer, []byte("first")); res.Status != wire.StatusDelivered {
		t.Fatalf("first: %+v", res)
	}
	waitMessage(t, b)

	r.Stop()
	waitState(t, sb, upstream.StateDisconnected)
	r.Restart()
	waitState(t, sb, upstream.StateConnected)
	waitState(t, sa, upstream.StateConnected)
	if res := publish(t, ca, b.peer, []byte("second")); res.Status != wire.StatusDelivered {
		t.Fatalf("second: %+v", res)
	}
	if got := waitMessage(t, b); string(got.Ciphertext) != "second" {
		t.Errorf("after restart b got %q first, want only the new message", got.Ciphertext)
	}
}

// A relay restart (close 1012) brings the client back at once, however
// long its backoff: the replacement relay is already listening.
func TestReconnectsAtOnceAfter1012(t *testing.T) {
	r := startRelay(t, nil)
	a := newNode(1)
	_, sa := a.client(t, r.URL(), func(c *upstream.Config) {
		c.BackoffMin, c.BackoffMax = time.Hour, time.Hour // only the 1012 rule may bring it back quickly
	})
	waitState(t, sa, upstream.StateConnected)
	r.Swap()
	s := waitState(t, sa, upstream.StateDisconnected)
	if !strings.Contains(s.LastError, "1012") && !strings.Contains(strings.ToLower(s.LastError), "restart") {
		t.Errorf("last error = %q, want the 1012 close", s.LastError)
	}
	waitState(t, sa, upstream.StateConnected)
}

// While the relay is gone, publishes fail fast with ErrNotConnected, and the
// client comes back by itself when the relay does.
func TestReconnectsAfterRelayOutage(t *testing.T) {
	r := startRelay(t, nil)
	a := newNode(1)
	ca, sa := a.client(t, r.URL(), nil)
	waitState(t, sa, upstream.StateConnected)
	r.Stop()
	waitState(t, sa, upstream.StateDisconnected)
	if _, err := ca.Publish(context.Background(), a.peer.String(), []byte("x")); !errors.Is(err, upstream.ErrNotConnected) {
		t.Errorf("publish while down: %v, want ErrNotConnected", err)
	}
	r.Restart()
	waitState(t, sa, upstream.StateConnected)
}

// A relay that vanishes without a close (dead network path) is noticed by
// the keepalive within seconds, and publishes waiting for a result fail.
func TestKeepaliveNoticesDeadPath(t *testing.T) {
	r := startRelay(t, nil)
	p := startProxy(t, r.Addr)
	a := newNode(1)
	ca, sa := a.client(t, p.url(), func(c *upstream.Config) {
		c.PingInterval, c.PingTimeout = 200*time.Millisecond, 300*time.Millisecond
	})
	waitState(t, sa, upstream.StateConnected)
	p.freeze()
	start := time.Now()
	ch, err := ca.Publish(context.Background(), newNode(9).peer.String(), []byte("into the void"))
	if err != nil {
		t.Fatal(err)
	}
	s := waitState(t, sa, upstream.StateDisconnected)
	if !strings.Contains(s.LastError, "keepalive") {
		t.Errorf("last error = %q, want keepalive", s.LastError)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("dead path noticed after %s", d)
	}
	select {
	case res := <-ch:
		if !errors.Is(res.Err, upstream.ErrConnectionLost) {
			t.Errorf("pending publish: %+v, want ErrConnectionLost", res)
		}
	case <-time.After(waitTimeout):
		t.Fatal("pending publish never answered")
	}
}

func TestSignFailureKeepsRetrying(t *testing.T) {
	r := startRelay(t, nil)
	a := newNode(1)
	a.signErr = errors.New("node is down")
	_, sa := a.client(t, r.URL(), nil)
	s := waitState(t, sa, upstream.StateDisconnected)
	if !strings.Contains(s.LastError, "sign endpoint") || !strings.Contains(s.LastError, "node is down") {
		t.Errorf("last error = %q", s.LastError)
	}
	a.mu.Lock()
	a.signErr = nil
	a.mu.Unlock()
	waitState(t, sa, upstream.StateConnected)
}

// A relay that refuses the subscription (here: another host name than the
// one signed for can't happen, so we make the node sign as someone else).
func TestRefusedSubscription(t *testing.T) {
	r := startRelay(t, nil)
	a, impostor := newNode(1), newNode(2)
	a.priv = impostor.priv // signs with a key that does not hash to its peer ID
	_, sa := a.client(t, r.URL(), nil)
	s := waitState(t, sa, upstream.StateDisconnected)
	if !strings.Contains(s.LastError, "refused the subscription") {
		t.Errorf("last error = %q", s.LastError)
	}
}

func TestNewValidates(t *testing.T) {
	n := newNode(1)
	for _, u := range []string{"", "http://relay/", "ws://", "relay.example.org", "ws://%zz"} {
		if _, err := upstream.New(upstream.Config{URL: u, Sign: n.sign, Handle: n.handle}); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
	if _, err := upstream.New(upstream.Config{URL: "ws://127.0.0.1:1/"}); err == nil {
		t.Error("New without Sign/Handle accepted")
	}
}

func TestBackoff(t *testing.T) {
	lo, hi := 100*time.Millisecond, 2*time.Second
	tests := []struct {
		attempt int
		bound   time.Duration
	}{{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {3, 800 * time.Millisecond}, {5, 2 * time.Second}, {62, 2 * time.Second}, {1000, 2 * time.Second}}
	for _, tt := range tests {
		var biggest time.Duration
		for range 2000 {
			d := upstream.Backoff(lo, hi, tt.attempt)
			if d < 0 || d > tt.bound {
				t.Fatalf("Backoff(attempt %d) = %s, outside [0, %s]", tt.attempt, d, tt.bound)
			}
			biggest = max(biggest, d)
		}
		if biggest < tt.bound/2 { // full jitter spreads over the whole range
			t.Errorf("attempt %d: largest of 2000 draws %s, want near %s", tt.attempt, biggest, tt.bound)
		}
	}
}

// A challenge is signed only for the relay URL's host or ExpectedHost:
// relaytest's public_host is "relay.test", its URL's host 127.0.0.1.
func TestChallengeHost(t *testing.T) {
	r := startRelay(t, nil)
	a := newNode(1)
	var challenges []string
	var mu sync.Mutex
	sign := func(ctx context.Context, content string) (upstream.Signature, error) {
		mu.Lock()
		if strings.HasPrefix(content, "courier-auth:") {
			challenges = append(challenges, content)
		}
		mu.Unlock()
		return a.sign(ctx, content)
	}
	_, states := a.client(t, r.URL(), func(c *upstream.Config) { c.ExpectedHost, c.Sign = "", sign })
	s := waitState(t, states, upstream.StateDisconnected)
	if !strings.Contains(s.LastError, `challenge is for host "relay.test"`) || !strings.Contains(s.LastError, "not signed") {
		t.Errorf("last error = %q, want the refused host", s.LastError)
	}
	mu.Lock()
	if len(challenges) != 0 {
		t.Errorf("signed %q", challenges)
	}
	mu.Unlock()

	// The same relay, expected under its public_host: signed, connected.
	_, states = a.client(t, r.URL(), func(c *upstream.Config) { c.ExpectedHost = "RELAY.test" })
	waitState(t, states, upstream.StateConnected)
}

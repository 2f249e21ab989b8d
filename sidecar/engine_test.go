package sidecar_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"courier/localapi"
	"courier/relay"
	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// triesPerCall is how many HTTP requests one engine attempt at a node
// endpoint makes when the node answers 5xx: one. The engine's durable
// schedule is the only retry policy (it was 3 while the node client also
// retried inside each attempt, so the node saw 3x offline_max_attempts).
const triesPerCall = 1

// pair is two sidecars, A and B, on one relay.
type pair struct {
	relay      *st.Relay
	a, b       *st.Sidecar
	cfgA, cfgB sidecar.Config
}

// startPair starts a relay and sidecars A and B on it, with their nodes,
// and waits until both are connected. mutate changes both configs.
func startPair(t *testing.T, relayMutate func(*relay.Config), mutate func(*sidecar.Config)) pair {
	t.Helper()
	r := st.StartRelay(t, relayMutate, nil)
	var p pair
	p.relay = r
	for i, name := range []string{"A", "B"} {
		n := st.NewNode(t, name)
		cfg := st.Config(n, r.URL(), t.TempDir())
		if mutate != nil {
			mutate(&cfg)
		}
		s := st.StartSidecar(t, n, cfg, st.Options())
		if i == 0 {
			p.a, p.cfgA = s, cfg
		} else {
			p.b, p.cfgB = s, cfg
		}
	}
	if got := p.a.WaitRelay(sidecar.RelayConnected); got.PeerID != p.a.Node.Peer.String() {
		t.Errorf("A authenticated as %q, want %s", got.PeerID, p.a.Node.Peer)
	}
	p.b.WaitRelay(sidecar.RelayConnected)
	return p
}

// waitInbound waits until node n has accepted message id on its inbound
// endpoint and returns that request.
func waitInbound(t *testing.T, n *st.Node, id string) st.Request {
	t.Helper()
	var got st.Request
	st.Eventually(t, "node "+n.Name+" to receive "+id[:8]+" on its inbound endpoint", func() bool {
		for _, r := range n.Inbound.Accepted() {
			if r.ID == id {
				got = r
				return true
			}
		}
		return false
	})
	return got
}

func TestIndirectBothWays(t *testing.T) {
	p := startPair(t, nil, nil)
	for _, dir := range []struct {
		name     string
		from, to *st.Sidecar
	}{
		{"A to B", p.a, p.b},
		{"B to A", p.b, p.a},
	} {
		ct := st.Ciphertext(dir.name, 1, 300)
		id := dir.from.Submit(dir.to.Node, ct)
		m := dir.from.WaitMessage(id, queue.Delivered)
		if m.Path != queue.PathIndirect || m.LastError != "" || m.Attempts != 1 {
			t.Errorf("%s: delivered with path %q, attempts %d, last error %q; want INDIRECT, 1, none", dir.name, m.Path, m.Attempts, m.LastError)
		}
		got := waitInbound(t, dir.to.Node, id)
		if got.Path != "INDIRECT" || !bytes.Equal(got.Ciphertext, ct) {
			t.Errorf("%s: node got path %q, ciphertext intact %v", dir.name, got.Path, bytes.Equal(got.Ciphertext, ct))
		}
		if n := len(dir.from.Node.Offline.Requests()); n != 0 {
			t.Errorf("%s: the sender's OFFLINE endpoint was called %d times", dir.name, n)
		}
	}
	// Exactly once each, raw: nothing was pushed twice meanwhile.
	for _, s := range []*st.Sidecar{p.a, p.b} {
		if reqs := s.Node.Inbound.Requests(); len(reqs) != 1 {
			t.Errorf("node %s inbound endpoint got %d requests, want 1", s.Node.Name, len(reqs))
		}
	}
	stA, err := p.a.E.Status(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if stA.Paths[queue.PathIndirect] != 1 || stA.Outbox[queue.Delivered] != 1 || stA.Relay.State != sidecar.RelayConnected {
		t.Errorf("A status = %+v", stA)
	}
}

// Every NACK sends the message to the sender's node OFFLINE endpoint.
func TestNackGoesOffline(t *testing.T) {
	cases := []struct {
		name        string
		relay       func(*relay.Config)
		cfg         func(*sidecar.Config)
		recipient   func(t *testing.T, r *st.Relay, b *st.Node) // connects the recipient, if at all
		sizes       []int                                       // messages sent; the last one is checked
		wantErr     string                                      // in the last message's last_error
		wantPushed  bool                                        // the recipient's relay client got it anyway
		stillRelays bool                                        // a later message to a connected peer is still delivered INDIRECT
		viaProxy    bool                                        // the sidecar reaches the relay through a WebSocket-only proxy
	}{
		{
			name:    "queued: recipient not connected",
			sizes:   []int{200},
			wantErr: "relay answered queued",
		},
		{
			name:    "rejected: over quota",
			relay:   func(c *relay.Config) { c.Limits.MaxMessagesPerKey = 1 },
			sizes:   []int{200, 200},
			wantErr: "rejected: over_quota",
		},
		{
			name:    "rejected: too large",
			relay:   func(c *relay.Config) { c.Limits.MaxMessageBytes = 1024 },
			sizes:   []int{2000},
			wantErr: "too_large",
		},
		{
			// The relay's limit is known from its description: the sidecar
			// does not even send a frame the relay would refuse to read.
			name:    "too large for the relay's frame limit",
			relay:   func(c *relay.Config) { c.Limits.MaxMessageBytes = 1024 },
			sizes:   []int{64 << 10},
			wantErr: "too_large: the message is 65536 bytes, the relay accepts at most 1024",
		},
		{
			// The same behind a proxy that hides the description: the relay
			// closes the connection over the frame (1009) instead of
			// answering. Without a bound the sidecar would publish it again
			// on every reconnect, forever.
			name:        "connection lost again and again: frame over the relay's limit, limit unknown",
			relay:       func(c *relay.Config) { c.Limits.MaxMessageBytes = 1024 },
			viaProxy:    true,
			sizes:       []int{64 << 10},
			wantErr:     "connection lost before the publish result, 3 times",
			stillRelays: true,
		},
		{
			// The recipient is connected at level 2 but never acks, and the
			// relay would wait longer than the sidecar: the sidecar's
			// publish_timeout decides.
			name:  "timeout: recipient connected, never acks",
			relay: func(c *relay.Config) { c.Limits.DeliveryWait = 5 * time.Second },
			cfg:   func(c *sidecar.Config) { c.Delivery.PublishTimeout = 300 * time.Millisecond },
			recipient: func(t *testing.T, r *st.Relay, b *st.Node) {
				st.DialNoAck(t, r, b)
			},
			sizes:      []int{200},
			wantErr:    "no publish result from the relay within 300ms",
			wantPushed: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := st.StartRelay(t, tc.relay, nil)
			a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
			url := r.URL()
			if tc.viaProxy {
				url = r.WebSocketOnlyURL(t)
			}
			cfg := st.Config(a, url, t.TempDir())
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			sa := st.StartSidecar(t, a, cfg, st.Options())
			sa.WaitRelay(sidecar.RelayConnected)
			var noAck *st.NoAckClient
			if tc.recipient != nil {
				noAck = st.DialNoAck(t, r, b)
			}
			var id string
			var ct []byte
			for i, size := range tc.sizes {
				ct = st.Ciphertext(tc.name, i, size)
				id = sa.Submit(b, ct)
				m := sa.WaitMessage(id, queue.HandedOff)
				if m.Path != queue.PathOffline {
					t.Errorf("message %d: path %q, want OFFLINE", i, m.Path)
				}
			}
			m := sa.Message(id)
			if !strings.Contains(m.LastError, tc.wantErr) {
				t.Errorf("last_error = %q, want it to mention %q", m.LastError, tc.wantErr)
			}
			if m.Attempts != 1 {
				t.Errorf("attempts = %d, want 1: one OFFLINE hand-off, accepted at once", m.Attempts)
			}
			got := a.Offline.Accepted()
			if len(got) != len(tc.sizes) || got[len(got)-1].ID != id || got[len(got)-1].Recipient != b.Peer.String() || !bytes.Equal(got[len(got)-1].Ciphertext, ct) {
				t.Errorf("OFFLINE endpoint got %d messages; want %d, the last one %.8s for %s intact", len(got), len(tc.sizes), id, b.Peer)
			}
			if noAck != nil && tc.wantPushed {
				if ids := noAck.Received(); len(ids) != 1 || ids[0] != id {
					t.Errorf("the connected recipient got %v, want [%s]", ids, id)
				}
			}
			if tc.stillRelays {
				sa.WaitRelay(sidecar.RelayConnected)
				sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
				sb.WaitRelay(sidecar.RelayConnected)
				id := sa.Submit(b, st.Ciphertext(tc.name, 99, 100))
				if m := sa.WaitMessage(id, queue.Delivered); m.Path != queue.PathIndirect {
					t.Errorf("a normal message after it: path %q", m.Path)
				}
			}
		})
	}
}

// rate_limited is the one NACK worth trying INDIRECT again, shortly.
func TestRateLimitedRetriedIndirect(t *testing.T) {
	p := startPair(t, func(c *relay.Config) { c.Limits.PublishRate, c.Limits.PublishBurst = 4, 1 },
		func(c *sidecar.Config) { c.Delivery.RelayGrace = 30 * time.Second })
	// The three wait, queued, while the relay is away, and are published
	// back to back when it is back: within the same few milliseconds
	// however slow the machine, so the relay must rate-limit two.
	p.relay.Stop()
	st.Eventually(t, "A to notice the relay is gone", func() bool { return p.a.E.RelayStatus().State != sidecar.RelayConnected })
	var ids []string
	for i := range 3 {
		ids = append(ids, p.a.Submit(p.b.Node, st.Ciphertext("limited", i, 100)))
	}
	p.relay.Restart()
	retried := 0
	for _, id := range ids {
		m := p.a.WaitMessage(id, queue.Delivered)
		if m.Path != queue.PathIndirect {
			t.Errorf("%.8s: path %q", id, m.Path)
		}
		if m.Attempts > 1 {
			retried++
		}
	}
	if retried == 0 {
		t.Error("no message needed a second attempt: the relay did not rate-limit")
	}
	if n := labelledCounter(t, p.a.E, "courier_publish_results_total", "rejected"); n < 1 {
		t.Errorf("%v publishes answered rejected, want the rate limit to have answered at least one", n)
	}
	if n := len(p.a.Node.Offline.Requests()); n != 0 {
		t.Errorf("OFFLINE endpoint called %d times", n)
	}
}

// With the relay gone, messages wait for the grace, then go OFFLINE; when
// it is back, INDIRECT again.
func TestRelayDownGraceThenBack(t *testing.T) {
	// Long enough that the checks "within the grace" below always run
	// within it, on a loaded machine too.
	const grace = 3 * time.Second
	p := startPair(t, nil, func(c *sidecar.Config) { c.Delivery.RelayGrace = grace })
	id1 := p.a.Submit(p.b.Node, st.Ciphertext("before", 1, 100))
	p.a.WaitMessage(id1, queue.Delivered)

	down := time.Now()
	p.relay.Stop()
	st.Eventually(t, "A to notice the relay is gone", func() bool {
		return p.a.E.RelayStatus().State != sidecar.RelayConnected
	})
	id2 := p.a.Submit(p.b.Node, st.Ciphertext("during", 2, 100))
	if m := p.a.Message(id2); m.State != queue.Queued || m.Path != queue.PathNone {
		t.Errorf("just after submit, within the grace: %s %q, want queued and no path yet", m.State, m.Path)
	}
	if err := p.a.E.Ready(context.Background()); err != nil {
		t.Errorf("Ready within the grace (%s after the relay went down): %v", time.Since(down), err)
	}
	m := p.a.WaitMessage(id2, queue.HandedOff)
	if m.Path != queue.PathOffline || !strings.Contains(m.LastError, "past the grace") {
		t.Errorf("during outage: path %q, last error %q", m.Path, m.LastError)
	}
	if waited := m.UpdatedAt.Sub(down); waited < grace {
		t.Errorf("handed off %s after the relay went down, before the %s grace", waited, grace)
	}
	if err := p.a.E.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "relay") {
		t.Errorf("Ready with the relay down past the grace = %v, want a relay error", err)
	}

	p.relay.Restart()
	p.a.WaitRelay(sidecar.RelayConnected)
	p.b.WaitRelay(sidecar.RelayConnected)
	id3 := p.a.Submit(p.b.Node, st.Ciphertext("after", 3, 100))
	if m := p.a.WaitMessage(id3, queue.Delivered); m.Path != queue.PathIndirect {
		t.Errorf("after the relay is back: path %q", m.Path)
	}
	if err := p.a.E.Ready(context.Background()); err != nil {
		t.Errorf("Ready with the relay back: %v", err)
	}
	waitInbound(t, p.b.Node, id3)
	if ids := p.b.Node.Inbound.AcceptedIDs(); ids[id2] != 0 || len(ids) != 2 {
		t.Errorf("B's node got %v; the OFFLINE message must not come INDIRECT too", ids)
	}
}

// A relay restart in the middle of a stream, shorter than the grace:
// publishes awaiting their result are lost with the connection and sent
// again after the reconnect, and the relay knows them by ID. A is back
// before B (here by force; in life by the luck of the reconnect jitter),
// so the relay answers queued; within relay_grace of the relay's return A
// tries again instead of going OFFLINE: all INDIRECT, each once.
func TestRelayRestartMidStream(t *testing.T) {
	p := startPair(t, nil, func(c *sidecar.Config) { c.Delivery.RelayGrace = 10 * time.Second })
	const n = 150
	ids := make([]string, n)
	for i := range n {
		ids[i] = p.a.Submit(p.b.Node, st.Ciphertext("restart", i, 200))
		if i == n/3 {
			p.relay.Stop()
			p.b.Stop() // gracefully: what B's node has, it is not sent again
			p.relay.Restart()
		}
	}
	p.a.WaitRelay(sidecar.RelayConnected)
	st.Eventually(t, "A to publish again and be answered queued", func() bool {
		for _, id := range ids {
			if strings.Contains(p.a.Message(id).LastError, "just after it came back") {
				return true
			}
		}
		return false
	})
	p.b = st.StartSidecar(t, p.b.Node, p.cfgB, st.Options()) // B is back
	for _, id := range ids {
		if m := p.a.WaitMessage(id, queue.Delivered); m.Path != queue.PathIndirect {
			t.Errorf("%.8s: path %q", id, m.Path)
		}
	}
	st.Eventually(t, "B's node to get them all", func() bool { return len(p.b.Node.Inbound.AcceptedIDs()) == n })
	got := p.b.Node.Inbound.AcceptedIDs()
	for _, id := range ids {
		if got[id] != 1 {
			t.Errorf("B's node got %.8s %d times", id, got[id])
		}
	}
	if raw := len(p.b.Node.Inbound.Requests()); raw != n {
		t.Errorf("B's node got %d raw requests for %d messages", raw, n)
	}
	if raw := len(p.a.Node.Offline.Requests()); raw != 0 {
		t.Errorf("A's OFFLINE endpoint got %d requests", raw)
	}
}

// The window after the relay's return is bounded by relay_grace: a
// recipient that does not come back gets its messages OFFLINE after it.
func TestQueuedAfterComebackGoesOfflineAfterGrace(t *testing.T) {
	const grace = time.Second
	p := startPair(t, nil, func(c *sidecar.Config) { c.Delivery.RelayGrace = grace })
	p.b.Stop() // B is away for good
	p.relay.Stop()
	p.relay.Restart()
	back := time.Now()
	p.a.WaitRelay(sidecar.RelayConnected)
	id := p.a.Submit(p.b.Node, st.Ciphertext("away", 1, 100))
	m := p.a.WaitMessage(id, queue.HandedOff)
	if m.Path != queue.PathOffline || !strings.Contains(m.LastError, "relay answered queued") {
		t.Errorf("path %q, last error %q", m.Path, m.LastError)
	}
	if waited := m.UpdatedAt.Sub(back); waited < grace {
		t.Errorf("handed off %s after the relay came back, within the %s grace", waited, grace)
	}
}

// configTOML is a sidecar config file for the opt-out test.
func configTOML(relayURL string, n *st.Node, store string) string {
	var b strings.Builder
	if relayURL != "" {
		fmt.Fprintf(&b, "relay_url = %q   # delete this line to opt out of INDIRECT\n", relayURL)
	}
	fmt.Fprintf(&b, `
[api]
listen = "127.0.0.1:0"

[node]
offline_publish_url = %q
inbound_url         = %q
sign_url            = %q

[store]
path = %q
synchronous = "normal"

[delivery]
relay_grace = "30s"
publish_timeout = "1s"
retry_wait_min = "20ms"
retry_wait_max = "200ms"
`, n.OfflineURL(), n.InboundURL(), n.SignURL(), store)
	return b.String()
}

// Deleting relay_url sends everything OFFLINE, queued messages included;
// putting it back turns INDIRECT on again. No restart.
func TestLiveOptOutAndIn(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())

	dir := t.TempDir()
	path := filepath.Join(dir, "courier.toml")
	write := func(content string) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // as editors save
			t.Fatal(err)
		}
	}
	write(configTOML(r.URL(), a, "courier.db"))
	cfg, err := sidecar.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	sa := st.StartSidecar(t, a, cfg, st.Options())
	sa.WatchFile(path, cfg)
	sa.WaitRelay(sidecar.RelayConnected)
	sb.WaitRelay(sidecar.RelayConnected)
	id1 := sa.Submit(b, st.Ciphertext("in", 1, 100))
	sa.WaitMessage(id1, queue.Delivered)

	// With the relay away and a 30s grace, a message waits, queued.
	r.Stop()
	st.Eventually(t, "A to notice the relay is gone", func() bool { return sa.E.RelayStatus().State != sidecar.RelayConnected })
	waiting := sa.Submit(b, st.Ciphertext("waiting", 2, 100))
	if m := sa.Message(waiting); m.State != queue.Queued {
		t.Fatalf("waiting message is %s, want queued", m.State)
	}

	write(configTOML("", a, "courier.db")) // opt out
	sa.WaitRelay(sidecar.RelayDisabled)
	if m := sa.WaitMessage(waiting, queue.HandedOff); m.Path != queue.PathOffline || !strings.Contains(m.LastError, "no relay configured") {
		t.Errorf("the queued message after opt-out: path %q, last error %q", m.Path, m.LastError)
	}
	fresh := sa.Submit(b, st.Ciphertext("opted out", 3, 100))
	if m := sa.WaitMessage(fresh, queue.HandedOff); m.Path != queue.PathOffline {
		t.Errorf("a new message after opt-out: path %q", m.Path)
	}
	if err := sa.E.Ready(context.Background()); err != nil {
		t.Errorf("Ready without a relay: %v", err)
	}

	r.Restart()
	write(configTOML(r.URL(), a, "courier.db")) // opt in again
	sa.WaitRelay(sidecar.RelayConnected)
	sb.WaitRelay(sidecar.RelayConnected)
	back := sa.Submit(b, st.Ciphertext("in again", 4, 100))
	if m := sa.WaitMessage(back, queue.Delivered); m.Path != queue.PathIndirect {
		t.Errorf("after opting in again: path %q", m.Path)
	}
	offline := a.Offline.AcceptedIDs()
	if len(offline) != 2 || offline[waiting] != 1 || offline[fresh] != 1 {
		t.Errorf("OFFLINE endpoint got %v, want the two opted-out messages once each", offline)
	}
}

func TestOfflineEndpointFailing(t *testing.T) {
	t.Run("fails a few times, then takes it", func(t *testing.T) {
		a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
		s := st.StartSidecar(t, a, st.Config(a, "", t.TempDir()), st.Options())
		const failures = 4
		a.Offline.FailNext(failures, http.StatusServiceUnavailable)
		id := s.Submit(b, st.Ciphertext("retry", 1, 100))
		m := s.WaitMessage(id, queue.HandedOff)
		// One request per attempt: 4 failed, the 5th taken.
		if m.Path != queue.PathOffline || m.Attempts != failures+1 {
			t.Errorf("handed off with path %q after %d attempts, want OFFLINE after %d", m.Path, m.Attempts, failures+1)
		}
		if reqs := a.Offline.Requests(); len(reqs) != failures+1 {
			t.Errorf("OFFLINE endpoint got %d requests, want %d", len(reqs), failures+1)
		}
		stat, err := s.E.Status(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		if h := stat.Node["offline"]; h.ConsecutiveFailures != 0 || h.LastOK.IsZero() || !strings.Contains(h.LastError, "503") {
			t.Errorf("offline endpoint health = %+v, want OK now, the 503 remembered", h)
		}
	})
	for _, tc := range []struct {
		name  string
		relay bool // the message goes INDIRECT first, and is NACKed
	}{
		{"budget spent, no relay", false},
		{"budget spent, after an INDIRECT NACK", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
			url := ""
			if tc.relay {
				url = st.StartRelay(t, nil, nil).URL()
			}
			cfg := st.Config(a, url, t.TempDir())
			cfg.Delivery.OfflineMaxAttempts = 2
			s := st.StartSidecar(t, a, cfg, st.Options())
			if tc.relay {
				s.WaitRelay(sidecar.RelayConnected)
			}
			a.Offline.FailAlways(http.StatusServiceUnavailable)
			id := s.Submit(b, st.Ciphertext("doomed", 1, 100))
			m := s.WaitMessage(id, queue.Failed)
			if !strings.Contains(m.LastError, "gave up after 2 attempts") || !strings.Contains(m.LastError, "503") {
				t.Errorf("last_error = %q, want the attempts and the node's answer", m.LastError)
			}
			if m.Attempts != 2 {
				t.Errorf("attempts = %d, want 2", m.Attempts)
			}
			// The budget counts OFFLINE attempts only: an INDIRECT publish
			// before them does not use it up.
			if n := len(a.Offline.Requests()); n != 2*triesPerCall {
				t.Errorf("OFFLINE endpoint got %d requests, want %d (2 attempts)", n, 2*triesPerCall)
			}
			stat, err := s.E.Status(context.Background(), 0)
			if err != nil {
				t.Fatal(err)
			}
			if stat.Outbox[queue.Failed] != 1 {
				t.Errorf("status outbox = %v", stat.Outbox)
			}
		})
	}
}

// The inbound endpoint fails for a while: the relay is acked all the same
// (the sidecar holds the messages), the node gets them once each, in order,
// when it recovers, and /readyz says 503 meanwhile.
func TestInboundEndpointFailingThenRecovering(t *testing.T) {
	p := startPair(t, nil, nil)
	api := httptest.NewServer(localapi.New(p.b.E, "", nil))
	t.Cleanup(api.Close)
	readyz := func() (int, string) {
		resp, err := http.Get(api.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, st.ReadAll(resp.Body)
	}
	if code, body := readyz(); code != http.StatusOK {
		t.Fatalf("readyz before = %d %s", code, body)
	}

	p.b.Node.Inbound.FailAlways(http.StatusServiceUnavailable)
	var ids []string
	for i := range 5 {
		id := p.a.Submit(p.b.Node, st.Ciphertext("inbound", i, 100))
		ids = append(ids, id)
		p.a.WaitMessage(id, queue.Delivered) // the relay got B's sidecar's ack
	}
	var body string
	st.Eventually(t, "B's /readyz to report the failing inbound endpoint", func() bool {
		var code int
		code, body = readyz()
		return code == http.StatusServiceUnavailable
	})
	if !strings.Contains(body, `"error"`) || !strings.Contains(body, "inbound") {
		t.Errorf("readyz body = %s", body)
	}
	stat, err := p.b.E.Status(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if stat.Inbox.Pending != 5 {
		t.Errorf("inbox pending = %d, want 5", stat.Inbox.Pending)
	}

	p.b.Node.Inbound.Recover()
	st.Eventually(t, "B's node to get all 5", func() bool { return len(p.b.Node.Inbound.Accepted()) == 5 })
	got := p.b.Node.Inbound.Accepted()
	for i, r := range got {
		if r.ID != ids[i] {
			t.Errorf("inbound #%d is %.8s, want %.8s: out of order", i, r.ID, ids[i])
		}
	}
	st.Eventually(t, "B's /readyz to be 200 again", func() bool {
		code, _ := readyz()
		return code == http.StatusOK
	})
	if n := len(p.b.Node.Inbound.Accepted()); n != 5 {
		t.Errorf("node accepted %d, want 5: a message was pushed again after the node had it", n)
	}
}

// A graceful stop lets a call to the node already under way finish and
// records its outcome: what the node took is not sent to it again after
// the restart.
func TestStopFinishesNodeCall(t *testing.T) {
	t.Run("inbound push", func(t *testing.T) {
		p := startPair(t, nil, nil)
		arrived, release := p.b.Node.Inbound.Hold()
		defer release()
		id1 := p.a.Submit(p.b.Node, st.Ciphertext("held", 1, 100))
		<-arrived
		p.b.Cancel() // shutdown begins with the push under way
		release()
		p.b.Stop()
		sb := st.StartSidecar(t, p.b.Node, p.cfgB, st.Options())
		sb.WaitRelay(sidecar.RelayConnected)
		id2 := p.a.Submit(p.b.Node, st.Ciphertext("after", 2, 100))
		waitInbound(t, p.b.Node, id2) // pushes are in order: a second id1 would come first
		if got := p.b.Node.Inbound.AcceptedIDs(); got[id1] != 1 || len(p.b.Node.Inbound.Requests()) != 2 {
			t.Errorf("B's node got %v, want each message once", got)
		}
	})
	t.Run("OFFLINE hand-off", func(t *testing.T) {
		a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
		cfg := st.Config(a, "", t.TempDir())
		s := st.StartSidecar(t, a, cfg, st.Options())
		arrived, release := a.Offline.Hold()
		defer release()
		id := s.Submit(b, st.Ciphertext("held", 1, 100))
		<-arrived
		s.Cancel()
		release()
		s.Stop()
		s = st.StartSidecar(t, a, cfg, st.Options())
		s.WaitMessage(id, queue.HandedOff)
		st.Eventually(t, "nothing left sending", func() bool {
			stat, err := s.E.Status(context.Background(), 0)
			return err == nil && stat.Outbox[queue.Sending] == 0
		})
		if n := len(a.Offline.Requests()); n != 1 {
			t.Errorf("OFFLINE endpoint got %d requests, want 1", n)
		}
	})
}

func TestInboundOrder(t *testing.T) {
	p := startPair(t, nil, nil)
	const n = 200
	ids := make([]string, n)
	for i := range n {
		ids[i] = p.a.Submit(p.b.Node, st.Ciphertext("order", i, 256))
	}
	st.Eventually(t, fmt.Sprintf("B's node to get %d messages", n), func() bool {
		return len(p.b.Node.Inbound.Accepted()) >= n
	})
	got := p.b.Node.Inbound.Accepted()
	if len(got) != n {
		t.Fatalf("B's node got %d messages, want %d", len(got), n)
	}
	for i, r := range got {
		if r.ID != ids[i] {
			t.Fatalf("message #%d at B's node is %.8s, want %.8s: not in submission order", i, r.ID, ids[i])
		}
	}
	for _, id := range ids {
		if m := p.a.WaitMessage(id, queue.Delivered); m.Path != queue.PathIndirect {
			t.Fatalf("%.8s: path %q", id, m.Path)
		}
	}
	if reqs := p.b.Node.Inbound.Requests(); len(reqs) != n {
		t.Errorf("B's node got %d raw requests, want %d", len(reqs), n)
	}
}

func TestEngineLifecycle(t *testing.T) {
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	cfg := st.Config(a, "", t.TempDir())
	e, err := sidecar.New(cfg, st.Logger(), st.Options())
	if err != nil {
		t.Fatal(err)
	}

	// Run returns nil when its context ends, by cancel or by deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	id := func() string {
		m, created, err := e.Submit(context.Background(), b.Peer.String(), []byte("lifecycle"))
		if err != nil || !created {
			t.Fatalf("Submit: %v %v", created, err)
		}
		return m.ID
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after its deadline = %v, want nil", err)
		}
	case <-time.After(st.WaitTimeout):
		t.Fatal("Run did not return")
	}

	// A store change is refused; other changes are taken.
	moved := cfg
	moved.Store.Path = filepath.Join(t.TempDir(), "elsewhere.db")
	if err := e.Reconfigure(moved); err == nil || !strings.Contains(err.Error(), "store") {
		t.Errorf("Reconfigure with a new store path = %v, want an error naming store", err)
	}
	bad := cfg
	bad.Delivery.OfflineMaxAttempts = 0
	if err := e.Reconfigure(bad); err == nil || !strings.Contains(err.Error(), "delivery.offline_max_attempts") {
		t.Errorf("Reconfigure with an invalid config = %v", err)
	}
	good := cfg
	good.Delivery.OfflineMaxAttempts = 3
	if err := e.Reconfigure(good); err != nil {
		t.Errorf("Reconfigure: %v", err)
	}
	if e.Config() != good {
		t.Errorf("Config() is not the reconfigured one")
	}

	// Input errors the local API maps to 400 and 413.
	for _, tc := range []struct {
		recipient string
		ct        []byte
		want      error
	}{
		{"not a peer", []byte("x"), sidecar.ErrInvalidInput},
		{b.Peer.String(), nil, sidecar.ErrInvalidInput},
		{b.Peer.String(), make([]byte, sidecar.MaxMessageBytes+1), sidecar.ErrTooLarge},
	} {
		if _, _, err := e.Submit(context.Background(), tc.recipient, tc.ct); !errors.Is(err, tc.want) {
			t.Errorf("Submit(%.10q, %d bytes) = %v, want %v", tc.recipient, len(tc.ct), err, tc.want)
		}
	}

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if _, err := e.Message(context.Background(), id); err == nil {
		t.Error("Message after Close succeeded")
	}

	// The message accepted before is still there for the next engine.
	e2, err := sidecar.New(cfg, st.Logger(), st.Options())
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	if _, err := e2.Message(context.Background(), id); err != nil {
		t.Errorf("after reopening: %v", err)
	}
}

// A node that refuses a message for good (4xx: it cannot open it, say) is
// not asked again, and the messages behind it still arrive, in order.
func TestInboundRefusedIsNotRetried(t *testing.T) {
	p := startPair(t, nil, nil)
	p.b.Node.Inbound.FailNext(1, http.StatusUnprocessableEntity)
	var ids []string
	for i := range 3 {
		ids = append(ids, p.a.Submit(p.b.Node, st.Ciphertext("refused", i, 100)))
	}
	st.Eventually(t, "B's node to take the two it accepts", func() bool { return len(p.b.Node.Inbound.Accepted()) == 2 })
	got := p.b.Node.Inbound.Accepted()
	if got[0].ID != ids[1] || got[1].ID != ids[2] {
		t.Errorf("node took %.8s, %.8s; want %.8s, %.8s", got[0].ID, got[1].ID, ids[1], ids[2])
	}
	// The accepted ones are marked just after the node took them; the
	// refused one must not stay pending either.
	st.Eventually(t, "B's inbox to have nothing pending: the refused message is given up on", func() bool {
		stat, err := p.b.E.Status(context.Background(), 0)
		return err == nil && stat.Inbox.Pending == 0
	})
	if n := counterValue(t, p.b.E, "courier_inbound_refused_total"); n != 1 {
		t.Errorf("courier_inbound_refused_total = %v, want 1", n)
	}
	if n := len(p.b.Node.Inbound.Requests()); n != 3 {
		t.Errorf("node saw %d inbound requests, want 3: the refused one must not be retried", n)
	}
	if err := p.b.E.Ready(context.Background()); err != nil {
		t.Errorf("a refusal is not an endpoint failure, yet Ready = %v", err)
	}
}

// counterValue reads one unlabelled counter from the engine's metrics.
func counterValue(t *testing.T, e *sidecar.Engine, name string) float64 {
	t.Helper()
	mfs, err := e.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

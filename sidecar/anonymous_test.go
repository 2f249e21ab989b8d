package sidecar_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/coder/websocket"

	"courier/relay"
	"courier/relay/relaytest"
	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
	"courier/wire"
)

// twinOfA is a node name whose peer shares node "A"'s 16-bit subscription
// key (found by trying names in order; TestTwinSharesKey checks it).
const twinOfA = "A-twin-23692"

func TestTwinSharesKey(t *testing.T) {
	a, twin := st.NewNode(t, "A"), st.NewNode(t, twinOfA)
	if a.Peer.SubscriptionKey(wire.RelayPrefixBits) != twin.Peer.SubscriptionKey(wire.RelayPrefixBits) || a.Peer.String() == twin.Peer.String() {
		t.Fatalf("%s and %s do not share a subscription key", a.Peer, twin.Peer)
	}
}

// anonymousConfig is st.Config for n in anonymous mode through relayURL.
func anonymousConfig(n *st.Node, relayURL, dir string) sidecar.Config {
	cfg := st.Config(n, relayURL, dir)
	cfg.RelayIdentity = sidecar.IdentityAnonymous
	return cfg
}

// identifying returns what would name node n to the relay: its peer ID in
// both spellings, its public key (hex and base64, marshalled and raw), and
// every signature its sign endpoint gave (Ed25519 signatures are
// deterministic: they are made again from the recorded contents).
func identifying(n *st.Node) []string {
	raw := n.PubKey[4:]
	out := []string{n.Peer.String(), n.Peer.Canonical(),
		hex.EncodeToString(n.PubKey), hex.EncodeToString(raw),
		base64.StdEncoding.EncodeToString(n.PubKey), base64.StdEncoding.EncodeToString(raw)}
	if id, err := wire.IdentityPeerID(n.PubKey); err == nil {
		out = append(out, id.String())
	}
	for _, r := range n.Sign.Requests() {
		sig := ed25519.Sign(n.Priv, []byte(r.Content))
		out = append(out, hex.EncodeToString(sig), base64.StdEncoding.EncodeToString(sig))
	}
	return out
}

// checkFrames fails the test if a frame the sidecar sent names n, or is
// anything but a level-1 subscribe, publish or ack; it returns the
// userIDs it subscribed with, in order.
func checkFrames(t *testing.T, front *relaytest.Front, n *st.Node) (userIDs []string) {
	t.Helper()
	secret := identifying(n)
	for _, f := range front.Frames() {
		for _, s := range secret {
			if bytes.Contains(f, []byte(s)) {
				t.Errorf("a frame to the relay names node %s (%.12s…): %.200s", n.Name, s, f)
			}
		}
		cf, err := wire.ParseClientFrame(f)
		if err != nil {
			t.Errorf("unparsable frame %.200s: %v", f, err)
			continue
		}
		switch cf.Type {
		case wire.TypeSubscribe:
			s := cf.Subscribe
			if s.Protocol != 0 || s.PubKey != "" || s.Signature != "" || s.SubscriptionKey != n.Peer.SubscriptionKey(wire.RelayPrefixBits) {
				t.Errorf("subscribe %+v, want level 1 by %s's key", s, n.Name)
			}
			userIDs = append(userIDs, s.UserID)
		case wire.TypePublish:
			if cf.Publish.Ref != "" {
				t.Errorf("level-1 publish with a ref %q", cf.Publish.Ref)
			}
		case wire.TypeAck:
		default:
			t.Errorf("an anonymous sidecar sent a %s frame: %.200s", cf.Type, f)
		}
	}
	for _, h := range front.Requests() {
		for k, vs := range h {
			for _, v := range vs {
				for _, s := range secret {
					if strings.Contains(v, s) {
						t.Errorf("HTTP header %s names node %s", k, n.Name)
					}
				}
			}
		}
	}
	return userIDs
}

// deliveriesOf counts the relay's delivery frames of message id in frames.
func deliveriesOf(frames [][]byte, id string) int {
	n := 0
	for _, b := range frames {
		if f, err := wire.ParseServerFrame(b); err == nil && f.Kind == wire.KindDelivery && f.Delivery.ID == id {
			n++
		}
	}
	return n
}

// The real relay, real sidecars: A anonymous (through a front that
// records every frame), B authenticated, and T authenticated and sharing
// A's subscription key. Messages go both ways between A and B; A's
// outbound ones end handed_off OFFLINE, said to be also INDIRECT; A also
// receives T's message, which its node cannot open: not_for_node, not
// refused. Nothing A sends names its peer ID, its key or a signature.
// After a restart A subscribes under the same userID and the relay does
// not send again what A acked.
func TestAnonymousSidecarEndToEnd(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	front := relaytest.StartFront(t, r, false)
	a, b, twin := st.NewNode(t, "A"), st.NewNode(t, "B"), st.NewNode(t, twinOfA)
	dirA := t.TempDir()
	cfgA := anonymousConfig(a, front.URL(), dirA)
	sa := st.StartSidecar(t, a, cfgA, st.Options())
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
	stw := st.StartSidecar(t, twin, st.Config(twin, r.URL(), t.TempDir()), st.Options())
	if got := sa.WaitRelay(sidecar.RelayConnected); got.PeerID != "" || got.Identity != sidecar.IdentityAnonymous {
		t.Errorf("A's relay status %+v, want anonymous with no peer ID", got)
	}
	if got := sb.WaitRelay(sidecar.RelayConnected); got.Identity != sidecar.IdentityPeer || got.PeerID != b.Peer.String() {
		t.Errorf("B's relay status %+v, want peer %s", got, b.Peer)
	}
	stw.WaitRelay(sidecar.RelayConnected)

	// B → A: A's level-1 subscription gets it; B's relay cannot confirm it
	// (no authenticated connection of A), so B hands it OFFLINE as well.
	toA := sb.Submit(a, st.Ciphertext("B to A", 1, 300))
	st.Eventually(t, "B's message at A's node", func() bool { return a.Inbound.AcceptedIDs()[toA] == 1 })
	if m := sb.WaitMessage(toA, queue.HandedOff); m.Path != queue.PathOffline {
		t.Errorf("B's message to anonymous A: %+v", m)
	}

	// A → B: a level-1 publish, then OFFLINE too.
	toB := sa.Submit(b, st.Ciphertext("A to B", 1, 300))
	m := sa.WaitMessage(toB, queue.HandedOff)
	if m.Path != queue.PathOffline || !strings.Contains(m.LastError, "also published INDIRECT") {
		t.Errorf("A's message: state %s path %s last error %q; want handed_off OFFLINE, also INDIRECT", m.State, m.Path, m.LastError)
	}
	st.Eventually(t, "A's message at B's node, INDIRECT", func() bool { return b.Inbound.AcceptedIDs()[toB] == 1 })
	if got := a.Offline.AcceptedIDs()[toB]; got != 1 {
		t.Errorf("A's node's OFFLINE endpoint got A's message %d times, want 1", got)
	}

	// B → T: T's (delivered); A's subscription gets it too, A's node
	// cannot open it.
	forT := st.Ciphertext("B to T", 1, 300)
	a.Inbound.FailID(wire.MessageID(forT), http.StatusBadRequest)
	toT := sb.Submit(twin, forT)
	if m := sb.WaitMessage(toT, queue.Delivered); m.Path != queue.PathIndirect {
		t.Errorf("B's message to T: %+v", m)
	}
	st.Eventually(t, "T's message offered to A's node and found not for it", func() bool {
		s, err := sa.E.Status(context.Background(), 0)
		return err == nil && s.Inbox.NotForNode == 1
	})
	s, err := sa.E.Status(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if s.Inbox.Refused != 0 || s.Inbox.NotForNode != 1 || len(s.Attention) != 0 {
		t.Errorf("A's status: inbox %+v, attention %+v; want one not_for_node, nothing refused or to look at", s.Inbox, s.Attention)
	}
	if v := counterValue(t, sa.E, "courier_inbound_not_for_node_total"); v != 1 {
		t.Errorf("courier_inbound_not_for_node_total = %v", v)
	}
	if v := counterValue(t, sa.E, "courier_inbound_refused_total"); v != 0 {
		t.Errorf("courier_inbound_refused_total = %v", v)
	}

	// Restart A on the same store, after a new message for it.
	acked := toA
	st.Eventually(t, "A to ack B's message", func() bool {
		for _, f := range front.Frames() {
			if cf, err := wire.ParseClientFrame(f); err == nil && cf.Type == wire.TypeAck && cf.Ack.MessageID == acked {
				return true
			}
		}
		return false
	})
	sa.Stop()
	toA2 := sb.Submit(a, st.Ciphertext("B to A", 2, 300))
	sb.WaitMessage(toA2, queue.HandedOff)
	sa2 := st.StartSidecar(t, a, cfgA, st.Options())
	sa2.WaitRelay(sidecar.RelayConnected)
	st.Eventually(t, "the new message at A's node after the restart", func() bool { return a.Inbound.AcceptedIDs()[toA2] == 1 })
	if n := deliveriesOf(front.FramesFromRelay(), acked); n != 1 {
		t.Errorf("the relay sent the message A had acked %d times, want once (no replay after the restart)", n)
	}

	ids := checkFrames(t, front, a)
	if len(ids) != 2 || ids[0] != ids[1] || ids[0] == "" {
		t.Errorf("userIDs subscribed with: %q; want the same one twice", ids)
	}
	if _, err := wire.ParsePeerID(ids[0]); err == nil {
		t.Errorf("userID %q is a peer ID", ids[0])
	}
	if len(a.Sign.Requests()) == 0 {
		t.Error("A's sign endpoint was never asked: the check for signatures proves nothing")
	}
	for _, r := range a.Sign.Requests() {
		if r.Content != "courier-identity:v1" {
			t.Errorf("anonymous A had %q signed", r.Content)
		}
	}
}

// Switching relay_identity while running reconnects in the new mode, like
// a relay_url change, and back.
func TestRelayIdentityReload(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	front := relaytest.StartFront(t, r, false)
	a := st.NewNode(t, "A")
	cfg := st.Config(a, front.URL(), t.TempDir())
	s := st.StartSidecar(t, a, cfg, st.Options())
	if got := s.WaitRelay(sidecar.RelayConnected); got.PeerID != a.Peer.String() || got.Identity != sidecar.IdentityPeer {
		t.Fatalf("status %+v, want peer", got)
	}
	before := len(front.Frames())

	cfg.RelayIdentity = sidecar.IdentityAnonymous
	if err := s.E.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if got := s.E.RelayStatus(); got.State != sidecar.RelayConnecting || got.PeerID != "" || got.Identity != sidecar.IdentityAnonymous {
		t.Errorf("status just after the switch %+v, want connecting, anonymous", got)
	}
	s.WaitRelay(sidecar.RelayConnected)
	var level1 bool
	for _, f := range front.Frames()[before:] {
		if cf, err := wire.ParseClientFrame(f); err == nil {
			if cf.Type == wire.TypeAuthRequest {
				t.Errorf("an AuthRequest after the switch to anonymous")
			}
			level1 = level1 || (cf.Type == wire.TypeSubscribe && cf.Subscribe.Protocol == 0)
		}
	}
	if !level1 {
		t.Error("no level-1 subscribe after the switch")
	}

	cfg.RelayIdentity = sidecar.IdentityPeer
	if err := s.E.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	st.Eventually(t, "authenticated again", func() bool {
		got := s.E.RelayStatus()
		return got.State == sidecar.RelayConnected && got.PeerID == a.Peer.String()
	})
	cfg.RelayIdentity = "nobody"
	if err := s.E.Reconfigure(cfg); err == nil || !strings.Contains(err.Error(), "relay_identity") {
		t.Errorf("Reconfigure with relay_identity %q: %v", cfg.RelayIdentity, err)
	}
}

// A relay that refuses the anonymous subscribe with {"error": …}: the
// status says so, the sidecar keeps trying, and a message goes OFFLINE
// after the grace as with any relay that is down.
func TestAnonymousSubscribeRefused(t *testing.T) {
	var subscribes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		c, err := websocket.Accept(w, req, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(req.Context(), st.WaitTimeout)
		defer cancel()
		if _, _, err := c.Read(ctx); err != nil {
			return
		}
		subscribes.Add(1)
		_ = c.Write(ctx, websocket.MessageText, wire.ErrorFrame("over_quota: this test relay takes no one"))
		c.Close(websocket.StatusPolicyViolation, "refused")
	}))
	t.Cleanup(srv.Close)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	s := st.StartSidecar(t, a, anonymousConfig(a, "ws"+strings.TrimPrefix(srv.URL, "http")+"/", t.TempDir()), st.Options())
	st.Eventually(t, "the refusal in the status, and retries", func() bool {
		got := s.E.RelayStatus()
		return subscribes.Load() >= 2 && strings.Contains(got.LastError, "over_quota: this test relay takes no one")
	})
	id := s.Submit(b, st.Ciphertext("to B", 1, 100))
	if m := s.WaitMessage(id, queue.HandedOff); m.Path != queue.PathOffline {
		t.Errorf("message %+v", m)
	}
}

// What anonymity costs in traffic, measured: T shares A's 16-bit key. n
// messages to each: A's anonymous subscription receives all 2n (the relay
// cannot tell them apart by key), T's authenticated one only its n; A's
// node takes its own and finds T's not for it. The bytes are the relay's
// delivery frames as received.
func TestAnonymousTrafficSharedKey(t *testing.T) {
	const n, size = 20, 2000
	r := st.StartRelay(t, nil, nil)
	frontA := relaytest.StartFront(t, r, false)
	frontT := relaytest.StartFront(t, r, false)
	a, b, twin := st.NewNode(t, "A"), st.NewNode(t, "B"), st.NewNode(t, twinOfA)
	sa := st.StartSidecar(t, a, anonymousConfig(a, frontA.URL(), t.TempDir()), st.Options())
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
	stw := st.StartSidecar(t, twin, st.Config(twin, frontT.URL(), t.TempDir()), st.Options())
	sa.WaitRelay(sidecar.RelayConnected)
	sb.WaitRelay(sidecar.RelayConnected)
	stw.WaitRelay(sidecar.RelayConnected)
	for i := range n {
		ct := st.Ciphertext("B to T", i, size)
		a.Inbound.FailID(wire.MessageID(ct), http.StatusUnprocessableEntity) // A's node cannot open T's messages
		sb.Submit(twin, ct)
		sb.Submit(a, st.Ciphertext("B to A", i, size))
	}
	st.Eventually(t, "A's node to take its messages and refuse T's", func() bool {
		s, err := sa.E.Status(context.Background(), 0)
		return err == nil && s.Inbox.Delivered == n && s.Inbox.NotForNode == n
	})
	st.Eventually(t, "T's node to take its messages", func() bool { return len(twin.Inbound.AcceptedIDs()) == n })
	count := func(frames [][]byte) (msgs, bytes int) {
		for _, b := range frames {
			if f, err := wire.ParseServerFrame(b); err == nil && f.Kind == wire.KindDelivery {
				msgs++
				bytes += len(b)
			}
		}
		return msgs, bytes
	}
	am, ab := count(frontA.FramesFromRelay())
	tm, tb := count(frontT.FramesFromRelay())
	t.Logf("anonymous A received %d messages, %d bytes; authenticated T %d messages, %d bytes (%d-byte ciphertexts): A's share of its key's traffic is %.0f%%",
		am, ab, tm, tb, size, 100*float64(n)/float64(am))
	if am != 2*n || tm != n {
		t.Errorf("deliveries: anonymous A %d, authenticated T %d; want %d and %d", am, tm, 2*n, n)
	}
	if len(twin.Inbound.AcceptedIDs()) != n || len(a.Inbound.AcceptedIDs()) != n {
		t.Errorf("nodes took A %d, T %d; want %d each", len(a.Inbound.AcceptedIDs()), len(twin.Inbound.AcceptedIDs()), n)
	}
}

// relay_identity: "peer" (the default, also when absent) or "anonymous";
// anything else is refused naming the key and the choices.
func TestRelayIdentityConfig(t *testing.T) {
	base := "relay_url = \"ws://127.0.0.1:8080/\"\n[node]\noffline_publish_url = \"http://127.0.0.1:4002/o\"\nsign_url = \"http://127.0.0.1:4002/s\"\n"
	for _, tc := range []struct {
		line      string
		anonymous bool
		err       string
	}{
		{"", false, ""},
		{"relay_identity = \"peer\"\n", false, ""},
		{"relay_identity = \"anonymous\"\n", true, ""},
		{"relay_identity = \"Anonymous\"\n", false, "relay_identity: is \"Anonymous\": use \"peer\""},
		{"relay_identity = 1\n", false, "relay_identity"},
	} {
		cfg, err := sidecar.ParseConfig(strings.NewReader(tc.line + base))
		if err == nil {
			err = cfg.Validate()
		}
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.line, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one containing %q", tc.line, err, tc.err)
		case tc.err == "" && cfg.Anonymous() != tc.anonymous:
			t.Errorf("%q: Anonymous() = %v", tc.line, cfg.Anonymous())
		}
	}
}

// The same switch made in the TOML file of a running sidecar (Watch, as
// cmd/courier runs it): saving relay_identity = "anonymous" reconnects at
// level 1 by key, and deleting the line goes back to the peer login.
func TestRelayIdentityReloadFromTOML(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	front := relaytest.StartFront(t, r, false)
	a := st.NewNode(t, "A")
	dir := t.TempDir()
	path := filepath.Join(dir, "courier.toml")
	toml := func(identity string) string {
		s := fmt.Sprintf("relay_url = %q\n", front.URL())
		if identity != "" {
			s += fmt.Sprintf("relay_identity = %q\n", identity)
		}
		return s + fmt.Sprintf("[api]\nlisten = \"127.0.0.1:0\"\n[node]\noffline_publish_url = %q\ninbound_url = %q\nsign_url = %q\n[store]\npath = \"courier.db\"\nsynchronous = \"normal\"\n[delivery]\nrelay_grace = \"300ms\"\n",
			a.OfflineURL(), a.InboundURL(), a.SignURL())
	}
	write := func(identity string) {
		if err := os.WriteFile(path, []byte(toml(identity)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	cfg, err := sidecar.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	s := st.StartSidecar(t, a, cfg, st.Options())
	if got := s.WaitRelay(sidecar.RelayConnected); got.PeerID != a.Peer.String() {
		t.Fatalf("status %+v, want logged in as %s", got, a.Peer)
	}
	s.WatchFile(path, cfg)

	before := len(front.Frames())
	write(sidecar.IdentityAnonymous)
	st.Eventually(t, "anonymous and connected after the edit", func() bool {
		got := s.E.RelayStatus()
		return got.Identity == sidecar.IdentityAnonymous && got.State == sidecar.RelayConnected && got.PeerID == ""
	})
	level1 := false
	for _, f := range front.Frames()[before:] {
		if cf, err := wire.ParseClientFrame(f); err == nil {
			level1 = level1 || (cf.Type == wire.TypeSubscribe && cf.Subscribe.Protocol == 0 && cf.Subscribe.UserID != a.Peer.String())
		}
	}
	if !level1 {
		t.Error("no level-1 subscribe after relay_identity = \"anonymous\" was saved")
	}
	write("")
	st.Eventually(t, "logged in as the peer again after the line was deleted", func() bool {
		got := s.E.RelayStatus()
		return got.Identity == sidecar.IdentityPeer && got.State == sidecar.RelayConnected && got.PeerID == a.Peer.String()
	})
}

// The relay restarts under an anonymous sidecar (1012, then back on the
// same store): the sidecar comes back at level 1 under the same userID and
// takes what was sent to it meanwhile; what it sent while the relay was
// away went OFFLINE after the grace.
func TestAnonymousRelayRestart(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	front := relaytest.StartFront(t, r, false)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	sa := st.StartSidecar(t, a, anonymousConfig(a, front.URL(), t.TempDir()), st.Options())
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
	sa.WaitRelay(sidecar.RelayConnected)
	sb.WaitRelay(sidecar.RelayConnected)

	r.Stop()
	sa.WaitRelay(sidecar.RelayDisconnected)
	away := sa.Submit(b, st.Ciphertext("A while the relay is away", 1, 200))
	if m := sa.WaitMessage(away, queue.HandedOff); m.Path != queue.PathOffline || !strings.Contains(m.LastError, "relay unreachable") {
		t.Errorf("A's message while the relay was away: %+v", m)
	}
	r.Restart()
	sa.WaitRelay(sidecar.RelayConnected)
	sb.WaitRelay(sidecar.RelayConnected)
	toA := sb.Submit(a, st.Ciphertext("B to A after the restart", 1, 200))
	st.Eventually(t, "B's message at A's node", func() bool { return a.Inbound.AcceptedIDs()[toA] == 1 })
	ids := checkFrames(t, front, a)
	if len(ids) < 2 {
		t.Fatalf("subscribes: %q, want one before and one after the restart", ids)
	}
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Errorf("userIDs %q: changed across the relay's restart", ids)
		}
	}
}

// The relay answers a level-1 publish with {"error": "too_large: …"} (the
// sidecar could not read the relay's limit: the front hides GET /). The
// message is not lost, it went OFFLINE as well; the error is counted by
// kind; the connection stays and the next message goes through.
func TestAnonymousPublishRefusedByRelay(t *testing.T) {
	r := st.StartRelay(t, func(c *relay.Config) { c.Limits.MaxMessageBytes = 1024 }, nil)
	front := relaytest.StartFront(t, r, true)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	sa := st.StartSidecar(t, a, anonymousConfig(a, front.URL(), t.TempDir()), st.Options())
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
	sa.WaitRelay(sidecar.RelayConnected)
	sb.WaitRelay(sidecar.RelayConnected)

	big := sa.Submit(b, st.Ciphertext("too large for the relay", 1, 4096))
	if m := sa.WaitMessage(big, queue.HandedOff); m.Path != queue.PathOffline {
		t.Errorf("refused message: %+v", m)
	}
	st.Eventually(t, "the relay's too_large counted", func() bool {
		return labelledCounter(t, sa.E, "courier_relay_errors_total", "too_large") == 1
	})
	small := sa.Submit(b, st.Ciphertext("small enough", 1, 200))
	st.Eventually(t, "the next message at B's node, INDIRECT", func() bool { return b.Inbound.AcceptedIDs()[small] == 1 })
	if got := b.Inbound.AcceptedIDs()[big]; got != 0 {
		t.Errorf("B's node got the refused message INDIRECT %d times", got)
	}
	if st := sa.E.RelayStatus(); st.State != sidecar.RelayConnected {
		t.Errorf("after the relay's error A is %s", st.State)
	}
}

package systest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"courier/internal/cluster"
	"courier/relay/redisstore/redistest"
	"courier/upstream"
	"courier/wire"
)

// front is HAProxy started from deploy/haproxy.cfg, with its addresses
// rewritten to the test's loopback ports and a stats page added so that
// the test can wait for HAProxy's view of each instance.
type front struct {
	t     *testing.T
	addr  string // the relays' front, host:port
	stats string // the stats page, host:port
	cmd   *exec.Cmd
	log   *bytes.Buffer
}

var bindRE = regexp.MustCompile(`(?m)^    bind :80$`)
var serverRE = regexp.MustCompile(`(?m)^    server (relay\d) 127\.0\.0\.1:\d+$`)

func startFront(t *testing.T, dir string, relays []*cluster.Relay) *front {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy is not installed (apt-get install haproxy); skipping the multi-instance system test")
	}
	root, err := cluster.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(filepath.Join(root, "deploy", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	f := &front{t: t, addr: freeAddr(t), stats: freeAddr(t), log: new(bytes.Buffer)}
	text := bindRE.ReplaceAllString(string(cfg), "    bind "+f.addr)
	i := 0
	text = serverRE.ReplaceAllStringFunc(text, func(string) string {
		s := fmt.Sprintf("    server relay%d %s", i+1, relays[i].Addr())
		i++
		return s
	})
	if i != len(relays) || !strings.Contains(text, "bind "+f.addr) {
		t.Fatalf("deploy/haproxy.cfg: found %d server lines (want %d) or no \"bind :80\"", i, len(relays))
	}
	// The test machine's descriptor limit is lower than a production front's.
	text = strings.Replace(text, "    maxconn 60000\n", "    maxconn 2000\n", 1)
	text += fmt.Sprintf("\nlisten stats\n    bind %s\n    stats enable\n    stats uri /stats\n", f.stats)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	f.cmd = exec.Command(bin, "-db", "-f", path)
	f.cmd.Stdout, f.cmd.Stderr = f.log, f.log
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = f.cmd.Process.Kill()
		_ = f.cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", f.log)
		}
	})
	return f
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// status returns HAProxy's status of each backend server ("UP", "DOWN", …).
func (f *front) status() map[string]string {
	resp, err := http.Get("http://" + f.stats + "/stats;csv")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	rows, err := csv.NewReader(resp.Body).ReadAll()
	if err != nil {
		return nil
	}
	out := make(map[string]string)
	for _, r := range rows {
		if len(r) > 17 && r[0] == "courier_relays" && strings.HasPrefix(r[1], "relay") {
			out[r[1]] = r[17]
		}
	}
	return out
}

// waitUp waits until HAProxy sees every named server UP.
func (f *front) waitUp(ctx context.Context, names ...string) {
	f.t.Helper()
	for {
		st := f.status()
		ok := true
		for _, n := range names {
			if !strings.HasPrefix(st[n], "UP") {
				ok = false
			}
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			f.t.Fatalf("HAProxy never saw %v up: %v", names, st)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// peer is a level-2 client (the sidecar's own upstream.Client, with a key
// of its own) connected through the front. It records what it receives.
type peer struct {
	id     string
	client *upstream.Client

	mu       sync.Mutex
	received []string
	seen     map[string]int
	states   []upstream.Status
}

func newPeer(t *testing.T, ctx context.Context, n int, url string) *peer {
	seed := sha256.Sum256([]byte(fmt.Sprintf("courier multirelay peer %d", n)))
	priv := ed25519.NewKeyFromSeed(seed[:])
	pub := wire.MarshalPublicKey(priv.Public().(ed25519.PublicKey))
	p := &peer{id: wire.PeerIDFromPublicKey(pub).String(), seen: make(map[string]int)}
	c, err := upstream.New(upstream.Config{
		URL:          url,
		ExpectedHost: "relay.test", // the instances' public_host: the name behind the front
		Sign: func(ctx context.Context, content string) (upstream.Signature, error) {
			return upstream.Signature{
				Signature: hex.EncodeToString(ed25519.Sign(priv, []byte(content))),
				PubKey:    hex.EncodeToString(pub),
				PeerID:    p.id,
			}, nil
		},
		Handle: func(ctx context.Context, batch []upstream.Inbound) error {
			p.mu.Lock()
			defer p.mu.Unlock()
			for _, m := range batch {
				if p.seen[m.ID] == 0 {
					p.received = append(p.received, m.ID)
				}
				p.seen[m.ID]++
			}
			return nil
		},
		OnStateChange: func(s upstream.Status) {
			p.mu.Lock()
			p.states = append(p.states, s)
			p.mu.Unlock()
		},
		BackoffMin: 50 * time.Millisecond,
		BackoffMax: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.client = c
	done := make(chan struct{})
	runCtx, cancel := context.WithCancel(ctx)
	go func() {
		defer close(done)
		_ = c.Run(runCtx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return p
}

func (p *peer) connected() bool { return p.client.Status().State == upstream.StateConnected }

func (p *peer) has(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[id] > 0
}

func (p *peer) receivedIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.received...)
}

// publishUntilAnswered publishes ct to the recipient until the relay
// answers it (a lost connection or no connection: again, the same
// ciphertext, so the same message ID), and returns the status.
func publishUntilAnswered(ctx context.Context, p *peer, to string, ct []byte) (string, error) {
	for {
		ch, err := p.client.Publish(ctx, to, ct)
		if err == nil {
			select {
			case r := <-ch:
				if r.Err == nil {
					return r.Status, nil
				}
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// anonSub is a level-1 (anonymous) subscriber of a key through the
// front, as the light client is: it acks what it gets and reconnects
// whenever the connection ends.
type anonSub struct {
	mu   sync.Mutex
	seen map[string]bool
}

func startAnonSub(t *testing.T, ctx context.Context, url, key string) *anonSub {
	a := &anonSub{seen: make(map[string]bool)}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for runCtx.Err() == nil {
			a.session(runCtx, url, key)
			select {
			case <-runCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return a
}

// session is one connection: subscribe, then take and ack deliveries
// until it ends.
func (a *anonSub) session(ctx context.Context, url, key string) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	ws, _, err := websocket.Dial(dctx, url, nil)
	cancel()
	if err != nil {
		return
	}
	defer ws.CloseNow()
	ws.SetReadLimit(-1)
	if ws.Write(ctx, websocket.MessageText, wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{UserID: "light client", SubscriptionKey: key})) != nil {
		return
	}
	for {
		_, b, err := ws.Read(ctx)
		if err != nil {
			return
		}
		f, err := wire.ParseServerFrame(b)
		if err != nil || f.Kind != wire.KindDelivery {
			continue
		}
		a.mu.Lock()
		a.seen[f.Delivery.ID] = true
		a.mu.Unlock()
		if ws.Write(ctx, websocket.MessageText, wire.ClientFrameBytes(wire.TypeAck, wire.Ack{MessageID: f.Delivery.ID})) != nil {
			return
		}
	}
}

func (a *anonSub) has(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[id]
}

// instanceOf returns the index of the relay whose log shows peer's most
// recent level-2 subscription, -1 if none.
func instanceOf(relays []*cluster.Relay, peerID string) int {
	// Logged at info with [log] client_details (the peer ID is not logged otherwise).
	re := regexp.MustCompile(`time=(\S+) level=INFO msg=subscribed .*level=2 peer=` + regexp.QuoteMeta(peerID))
	best, bestAt := -1, ""
	for i, r := range relays {
		b, err := os.ReadFile(r.Log)
		if err != nil {
			continue
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			if m[1] > bestAt {
				best, bestAt = i, m[1]
			}
		}
	}
	return best
}

// readyConns returns the connections an instance's /readyz reports.
func readyConns(r *cluster.Relay) int {
	resp, err := http.Get(r.HTTPURL() + "/readyz")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var v struct {
		Connections int `json:"connections"`
	}
	if json.NewDecoder(resp.Body).Decode(&v) != nil {
		return -1
	}
	return v.Connections
}

// relayDeliveryWait is the relays' delivery_wait in
// TestThreeInstancesBehindHAProxy.
const relayDeliveryWait = 5 * time.Second

// TestThreeInstancesBehindHAProxy runs three courier-relay processes on one
// redis-server behind HAProxy (deploy/haproxy.cfg), with a level-2
// publisher and recipient connected through the front:
//
//  1. publisher and recipient on different instances: every message is
//     delivered, in order;
//  2. every instance restarted in turn (SIGTERM: drain, 1012; started
//     again) while messages stream at a steady rate: every message answered
//     queued or delivered reaches the recipient;
//  3. kill -9 of the instance holding the recipient, still streaming:
//     likewise, after the recipient reconnects through the front.
//
// A level-1 subscriber of the recipient's key (as the light client is)
// also gets every message answered queued or delivered, reconnecting
// through the front whenever its instance goes.
//
// Two sidecars with their devnodes, also through the front, send to each
// other at a steady rate all through 2 and 3: every message a node handed
// its sidecar reaches the other node exactly once (INDIRECT, or OFFLINE
// where the sidecar fell back during a reconnect), and the sidecars send
// OFFLINE at most the messages sent during a reconnect (see
// nodeStream.boundOffline).
func TestThreeInstancesBehindHAProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	rs := redistest.Start(t, redistest.Options{})
	c := cluster.New(t.TempDir(), bins)
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("stopping the relays: %v", err)
		}
	})
	conf := fmt.Sprintf(`listen = "127.0.0.1:1"
public_host = "relay.test"
log_level = "debug"
drain_delay = "2500ms"
shutdown_timeout = "5s"

[store]
driver = "redis"
url = %q
namespace = "systest"

[limits]
publish_rate = 100000
publish_burst = 100000
# Phase 1 wants every answer delivered: room for a loaded machine's ack.
delivery_wait = %q

[log]
client_details = true # instanceOf reads the peer IDs from the logs
`, rs.URL(), relayDeliveryWait.String())
	relays, f, url, w := startFrontedSidecars(t, ctx, c, conf)

	alice := newPeer(t, ctx, 1, url)
	eventually(t, ctx, "the publisher connected", alice.connected)
	bob := newPeer(t, ctx, 2, url)
	eventually(t, ctx, "the recipient connected", bob.connected)
	bobID, err := wire.ParsePeerID(bob.id)
	if err != nil {
		t.Fatal(err)
	}
	light := startAnonSub(t, ctx, url, bobID.SubscriptionKey(wire.RelayPrefixBits))
	ai, bi := instanceOf(relays, alice.id), instanceOf(relays, bob.id)
	if ai < 0 || bi < 0 || ai == bi {
		t.Fatalf("publisher on instance %d, recipient on %d: want two different instances (leastconn)", ai+1, bi+1)
	}
	t.Logf("publisher on relay%d, recipient on relay%d", ai+1, bi+1)

	// 1. Across instances: delivered, in order.
	var want []string
	for i := range 40 {
		ct := []byte(fmt.Sprintf("in order %03d", i))
		st, err := publishUntilAnswered(ctx, alice, bob.id, ct)
		if err != nil || st != wire.StatusDelivered {
			t.Fatalf("message %d: %q, %v; want delivered", i, st, err)
		}
		want = append(want, wire.MessageID(ct))
	}
	if got := bob.receivedIDs(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("recipient got %d messages %v, want %d in publish order", len(got), got, len(want))
	}

	// 2 and 3 stream messages at a steady rate meanwhile: the raw peers
	// at 50 msg/s, the nodes both ways at 12.5 msg/s each.
	var (
		mu       sync.Mutex
		answered = make(map[string]string) // ID -> queued / delivered
		failed   []string
	)
	streamCtx, stopStream := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond) // 50 msg/s
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-streamCtx.Done():
				return
			case <-tick.C:
			}
			ct := []byte(fmt.Sprintf("streamed %05d", i))
			wg.Go(func() {
				st, err := publishUntilAnswered(ctx, alice, bob.id, ct)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					failed = append(failed, fmt.Sprintf("%s: %v", ct, err))
				case st == wire.StatusDelivered || st == wire.StatusQueued:
					answered[wire.MessageID(ct)] = st
				default:
					failed = append(failed, fmt.Sprintf("%s: %s", ct, st))
				}
			})
		}
	})
	ns := startNodeStream(ctx, w, "node message")
	ns.boundOffline(relayDeliveryWait)
	countAnswered := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(answered)
	}
	streamFor := func(n int) { // until n more messages are answered
		start := countAnswered()
		eventually(t, ctx, fmt.Sprintf("%d more answers", n), func() bool { return countAnswered() >= start+n })
	}
	streamFor(20)

	// 2. Rolling restart: SIGTERM (drain, then 1012), start again, wait
	// until HAProxy has it back, next.
	rollStart := time.Now()
	for i, r := range relays {
		if err := r.Stop(); err != nil {
			t.Fatalf("stopping %s: %v", r.Name, err)
		}
		if err := r.Restart(ctx); err != nil {
			t.Fatalf("starting %s again: %v", r.Name, err)
		}
		f.waitUp(ctx, fmt.Sprintf("relay%d", i+1))
		streamFor(10)
	}
	t.Logf("rolling restart of 3 instances: %v", time.Since(rollStart).Round(time.Millisecond))

	// 3. kill -9 of the instance holding the recipient.
	eventually(t, ctx, "the recipient connected", bob.connected)
	bi = instanceOf(relays, bob.id)
	if bi < 0 {
		t.Fatal("recipient's instance not found")
	}
	t.Logf("killing relay%d (the recipient's)", bi+1)
	if err := relays[bi].Kill(); err != nil {
		t.Fatal(err)
	}
	streamFor(20)
	if err := relays[bi].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	f.waitUp(ctx, fmt.Sprintf("relay%d", bi+1))
	streamFor(10)
	// The node stream goes on 6 s without a restart, so that the messages
	// sent outside the sidecars' reconnects (boundOffline) are many: a
	// sidecar that sent everything OFFLINE would break the bound.
	quiet := ns.sent()
	eventually(t, ctx, "150 more node messages", func() bool { return ns.sent() >= quiet+150 })
	stopStream()
	wg.Wait()
	ns.finish()

	mu.Lock()
	defer mu.Unlock()
	if len(failed) > 0 {
		t.Fatalf("%d publishes not answered queued or delivered: %v", len(failed), failed)
	}
	missing := func() []string {
		var out []string
		for id := range answered {
			if !bob.has(id) || !light.has(id) {
				out = append(out, id)
			}
		}
		return out
	}
	eventually(t, ctx, "every answered message at the recipient and the level-1 subscriber of its key", func() bool { return len(missing()) == 0 })
	queued := 0
	for _, st := range answered {
		if st == wire.StatusQueued {
			queued++
		}
	}
	t.Logf("%d messages streamed and answered (%d queued, the rest delivered); all reached the recipient and the level-1 subscriber", len(answered), queued)
	for _, r := range relays {
		if n := readyConns(r); n < 0 {
			t.Errorf("%s not ready at the end", r.Name)
		}
	}
}

// eventually waits until cond holds or ctx ends.
func eventually(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestSentinelFailoverBehindHAProxy: three instances behind HAProxy on
// Redis with Sentinel (one primary, one replica, three Sentinels, all on
// loopback); two sidecars with their nodes send to each other at a steady
// rate while the primary is killed. The relays go on on the new primary
// (the time is measured), and every message a node handed its sidecar
// reaches the other node exactly once: what the relays could not take
// during the failover went OFFLINE, and what asynchronous replication
// might lose of what they had stored is covered by the same fallback only
// if it was never answered; the test counts both.
func TestSentinelFailoverBehindHAProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	sn := redistest.StartSentinel(t)
	c := cluster.New(t.TempDir(), bins)
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("stopping the processes: %v", err)
		}
	})
	addrs := make([]string, len(sn.Addrs))
	for i, a := range sn.Addrs {
		addrs[i] = fmt.Sprintf("%q", a)
	}
	conf := fmt.Sprintf(`listen = "127.0.0.1:1"
public_host = "relay.test"
log_level = "debug"
drain_delay = "1s"

[store]
driver = "redis"
sentinel_addrs = [%s]
master_name = %q

[limits]
publish_rate = 100000
publish_burst = 100000
delivery_wait = "3s"
`, strings.Join(addrs, ", "), sn.MasterName)
	relays, _, _, w := startFrontedSidecars(t, ctx, c, conf)

	ns := startNodeStream(ctx, w, "failover message")
	sentCount := ns.sent
	eventually(t, ctx, "40 messages sent", func() bool { return sentCount() >= 40 })

	killed := time.Now()
	sn.Primary.Stop() // kill -9
	allReady := func() bool {
		for _, r := range relays {
			resp, err := http.Get(r.HTTPURL() + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return false
			}
		}
		return true
	}
	// Ready again means Redis answers through the Sentinels' new primary.
	eventually(t, ctx, "a relay not ready after the kill", func() bool { return !allReady() || time.Since(killed) > 5*time.Second })
	eventually(t, ctx, "every relay ready on the new primary", allReady)
	took := time.Since(killed)
	w.waitConnected(w.sideA)
	w.waitConnected(w.sideB)
	n := sentCount()
	eventually(t, ctx, "40 more messages sent", func() bool { return sentCount() >= n+40 })
	ns.finish()
	t.Logf("Redis failover: every relay ready on the new primary %v after the primary was killed (Sentinel down-after 1s)", took.Round(10*time.Millisecond))
	if took > 30*time.Second {
		t.Errorf("relays ready again only after %v, want within 30s", took)
	}
}

// startFrontedSidecars starts three relay instances with conf behind a
// real HAProxy, and two devnodes with their sidecars connected through
// the front (told the instances' public_host, relay.test).
func startFrontedSidecars(t *testing.T, ctx context.Context, c *cluster.Cluster, conf string) ([]*cluster.Relay, *front, string, *world) {
	t.Helper()
	var relays []*cluster.Relay
	for i := range 3 {
		r, err := c.StartRelayConfig(ctx, fmt.Sprintf("relay%d", i+1), conf)
		if err != nil {
			t.Fatal(err)
		}
		relays = append(relays, r)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, r := range relays {
				t.Logf("%s:\n%s", r.Name, r.Tail(15))
			}
		}
	})
	f := startFront(t, c.Dir, relays)
	f.waitUp(ctx, "relay1", "relay2", "relay3")
	url := "ws://" + f.addr + "/"

	nodeA, err := c.StartDevNode(ctx, "nodeA")
	if err != nil {
		t.Fatal(err)
	}
	nodeB, err := c.StartDevNode(ctx, "nodeB")
	if err != nil {
		t.Fatal(err)
	}
	sides := make([]*cluster.Sidecar, 2)
	for i, n := range []*cluster.DevNode{nodeA, nodeB} {
		if sides[i], err = c.StartSidecar(ctx, fmt.Sprintf("sidecar%c", 'A'+i), cluster.SidecarConfig{RelayURL: url, RelayHost: "relay.test", Node: n, Extra: sidecarDelivery}); err != nil {
			t.Fatal(err)
		}
	}
	w := &world{t: t, ctx: ctx, c: c, nodeA: nodeA, nodeB: nodeB, sideA: sides[0], sideB: sides[1]}
	w.waitConnected(w.sideA)
	w.waitConnected(w.sideB)
	return relays, f, url, w
}

// nodeStream sends node messages at a steady 25 msg/s, alternately node A
// to node B and back, through their sidecars, until finish.
type nodeStream struct {
	w    *world
	stop context.CancelFunc
	done chan struct{}

	mu             sync.Mutex
	sentAB, sentBA []string // message IDs accepted by the sending sidecar
	errs           []string // sends a sidecar refused

	// Set by boundOffline: the sidecars' reconnects are watched, and
	// finish checks the OFFLINE fallbacks against them.
	watches      []*relayWatch // sidecar A's, sidecar B's
	deliveryWait time.Duration
}

// boundOffline makes finish check the bound: the sidecars fall
// back to OFFLINE for at most the messages sent during a reconnect. A
// reconnect of a sidecar is the time its relay connection is not
// "connected" (from its /v1/status, polled; see relayWatch). A message
// sent (accepted by its sidecar) at t can be answered "queued", and so go
// OFFLINE, only if its recipient's sidecar was not connected at some
// moment of [t, t + deliveryWait] (the relays' delivery_wait: an ack
// later than that is not waited for), or its own sidecar lost the
// connection before the answer. So a reconnect [left, back] of either
// sidecar covers the messages sent in [left - deliveryWait, back + 1s]
// (the second for the answer's way back), and the OFFLINE fallbacks of
// each direction must be at most its messages sent in those windows.
// Start it right after startNodeStream.
func (s *nodeStream) boundOffline(deliveryWait time.Duration) {
	s.deliveryWait = deliveryWait
	s.watches = []*relayWatch{watchRelay(s.w.ctx, s.w.sideA), watchRelay(s.w.ctx, s.w.sideB)}
}

// outage is one time a sidecar's relay connection was not connected.
type outage struct{ left, back time.Time }

// relayWatch polls a sidecar's /v1/status every 25 ms and records its
// relay connection's outages. An outage shorter than a poll is still seen:
// the connected state's "since" changes. Each is recorded from the last
// poll that saw the connection up (at or before it left) to the moment
// the status says it was connected again.
type relayWatch struct {
	s    *cluster.Sidecar
	stop context.CancelFunc
	done chan struct{}

	mu      sync.Mutex
	outages []outage
}

func watchRelay(ctx context.Context, s *cluster.Sidecar) *relayWatch {
	ctx, stop := context.WithCancel(ctx)
	rw := &relayWatch{s: s, stop: stop, done: make(chan struct{})}
	add := func(left, back time.Time) {
		rw.mu.Lock()
		rw.outages = append(rw.outages, outage{left, back})
		rw.mu.Unlock()
	}
	go func() {
		defer close(rw.done)
		var upSeen, upSince, downFrom time.Time
		for {
			at := time.Now()
			st, err := s.API().Status(ctx)
			if err == nil {
				r := st.Relay
				switch {
				case r.State != "connected":
					if downFrom.IsZero() {
						downFrom = upSeen
						if downFrom.IsZero() { // never seen up: since the watch began
							downFrom = at
						}
					}
				case !downFrom.IsZero():
					add(downFrom, r.Since)
					downFrom = time.Time{}
				case !upSince.IsZero() && !r.Since.Equal(upSince):
					add(upSeen, r.Since) // down and up again between two polls
				}
				if r.State == "connected" {
					upSeen, upSince = at, r.Since
				}
			}
			select {
			case <-ctx.Done():
				if !downFrom.IsZero() {
					add(downFrom, time.Now())
				}
				return
			case <-time.After(25 * time.Millisecond):
			}
		}
	}()
	return rw
}

// finish stops the watch and returns the outages it saw.
func (rw *relayWatch) finish() []outage {
	rw.stop()
	<-rw.done
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.outages
}

func startNodeStream(ctx context.Context, w *world, text string) *nodeStream {
	streamCtx, stop := context.WithCancel(ctx)
	s := &nodeStream{w: w, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(40 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-streamCtx.Done():
				return
			case <-tick.C:
			}
			from, to := w.nodeA, w.nodeB
			if i%2 == 1 {
				from, to = w.nodeB, w.nodeA
			}
			sent, err := from.Send(ctx, to, fmt.Sprintf("%s %05d", text, i))
			s.mu.Lock()
			switch {
			case err != nil:
				s.errs = append(s.errs, err.Error())
			case from == w.nodeA:
				s.sentAB = append(s.sentAB, sent.ID)
			default:
				s.sentBA = append(s.sentBA, sent.ID)
			}
			s.mu.Unlock()
		}
	}()
	return s
}

// sent counts the messages accepted so far, both ways.
func (s *nodeStream) sent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sentAB) + len(s.sentBA)
}

// finish stops the stream and checks that every accepted message reached
// the other node exactly once, whichever path it took.
func (s *nodeStream) finish() {
	w, t := s.w, s.w.t
	t.Helper()
	s.stop()
	<-s.done
	var windows []outage // reconnects of either sidecar, widened (see boundOffline)
	for _, rw := range s.watches {
		for _, o := range rw.finish() {
			t.Logf("%s: relay connection down %s for %v", rw.s.Name, o.left.Format("15:04:05.000"), o.back.Sub(o.left).Round(time.Millisecond))
			windows = append(windows, outage{o.left.Add(-s.deliveryWait), o.back.Add(time.Second)})
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) > 0 {
		t.Fatalf("%d node sends refused by their sidecar: %v", len(s.errs), s.errs)
	}
	for _, d := range []struct {
		side     *cluster.Sidecar
		to       *cluster.DevNode
		sent     []string
		from, at string
	}{{w.sideA, w.nodeB, s.sentAB, "nodeA", "nodeB"}, {w.sideB, w.nodeA, s.sentBA, "nodeB", "nodeA"}} {
		states := w.waitFinal(d.side, d.sent)
		paths := make(map[string]int)
		for _, m := range states {
			paths[m.State+"/"+m.Path]++
		}
		w.waitReceived(d.to, d.sent)
		w.checkExactlyOnce(d.to, d.sent)
		t.Logf("%s -> %s: %d messages, all at %s exactly once; by final state/path: %v", d.from, d.at, len(d.sent), d.at, paths)
		if s.watches == nil {
			continue
		}
		offline, during := 0, 0
		for _, m := range states {
			if m.Path == "OFFLINE" {
				offline++
			}
			for _, win := range windows {
				if !m.CreatedAt.Before(win.left) && !m.CreatedAt.After(win.back) {
					during++
					break
				}
			}
		}
		t.Logf("%s -> %s: %d sent during a reconnect (widened by delivery_wait %v before, 1s after), %d sent OFFLINE", d.from, d.at, during, s.deliveryWait, offline)
		if offline > during {
			t.Errorf("%s -> %s: %d messages sent OFFLINE, more than the %d sent during a sidecar's reconnect", d.from, d.at, offline, during)
		}
	}
}

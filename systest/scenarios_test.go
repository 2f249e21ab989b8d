package systest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"courier/internal/cluster"
)

// 1. desktop ↔ desktop: node A → sidecar A → relay → sidecar B → node B,
// delivered over INDIRECT; and the reverse.
func TestDesktopToDesktop(t *testing.T) {
	w := newWorld(t, options{})
	for _, dir := range []struct {
		name     string
		from, to *cluster.DevNode
		side     *cluster.Sidecar
	}{
		{"A to B", w.nodeA, w.nodeB, w.sideA},
		{"B to A", w.nodeB, w.nodeA, w.sideB},
	} {
		text := "hello, " + dir.name
		id := w.send(dir.from, dir.to, text)
		m := w.waitFinal(dir.side, []string{id})[id]
		if m.State != "delivered" || m.Path != "INDIRECT" {
			t.Errorf("%s: state %s path %s (%s), want delivered INDIRECT", dir.name, m.State, m.Path, m.LastError)
		}
		got := w.waitReceived(dir.to, []string{id})[id]
		if got.Text != text || got.Sender != dir.from.PeerID || got.Path != "INDIRECT" {
			t.Errorf("%s: node received %+v, want %q from %s via INDIRECT", dir.name, got, text, dir.from.PeerID)
		}
		w.checkExactlyOnce(dir.to, []string{id})
	}
}

// 2. The recipient is not on the relay: the sender's sidecar hands the
// message to node A's OFFLINE endpoint within the configured timeout.
func TestRecipientNotOnRelayGoesOffline(t *testing.T) {
	w := newWorld(t, options{noSidecarB: true})
	start := time.Now()
	id := w.send(w.nodeA, w.nodeB, "are you there?")
	m := w.waitFinal(w.sideA, []string{id})[id]
	took := time.Since(start)
	if m.State != "handed_off" || m.Path != "OFFLINE" {
		t.Fatalf("state %s path %s (%s), want handed_off OFFLINE", m.State, m.Path, m.LastError)
	}
	// The relay answers "queued" at once; the hand-off must not wait for the
	// publish timeout (10s here), let alone the node's polling interval.
	if took > 5*time.Second {
		t.Errorf("OFFLINE hand-off took %s", took)
	}
	off, err := w.nodeA.Offline(w.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(off) != 1 || off[0]["id"] != id || off[0]["recipient"] != w.nodeB.PeerID {
		t.Errorf("node A's OFFLINE endpoint got %v, want %s for %s", off, id, w.nodeB.PeerID)
	}
	t.Logf("handed to OFFLINE %s after the send (last_error %q)", took.Round(time.Millisecond), m.LastError)
}

// stream sends n messages from → to, one after another, calling between(i)
// before message i; it returns the IDs in sending order.
func (w *world) stream(from, to *cluster.DevNode, prefix string, n int, between func(i int)) []string {
	w.t.Helper()
	ids := make([]string, 0, n)
	for i := range n {
		if between != nil {
			between(i)
		}
		ids = append(ids, w.send(from, to, fmt.Sprintf("%s-%04d", prefix, i)))
	}
	return ids
}

// 3. The relay is killed with kill -9 mid-stream and restarted: everything
// accepted arrives exactly once, and the sidecars reconnect by themselves.
func TestRelayKilledMidStream(t *testing.T) {
	w := newWorld(t, options{})
	ids := w.stream(w.nodeA, w.nodeB, "relay-crash", 60, func(i int) {
		if i == 30 {
			if err := w.relay.Kill(); err != nil {
				t.Fatal(err)
			}
		}
		if i == 40 {
			if err := w.relay.Restart(w.ctx); err != nil {
				t.Fatal(err)
			}
		}
	})
	states := w.waitFinal(w.sideA, ids)
	var indirect []string
	for _, id := range ids {
		switch m := states[id]; {
		case m.State == "delivered":
			indirect = append(indirect, id)
		case m.State == "handed_off":
			t.Logf("%s went OFFLINE: %s", id[:12], m.LastError)
		default:
			t.Errorf("%s: %s (%s)", id[:12], m.State, m.LastError)
		}
	}
	// The relay came back within the sidecars' grace: all INDIRECT.
	if len(indirect) != len(ids) {
		t.Errorf("%d of %d delivered INDIRECT", len(indirect), len(ids))
	}
	w.waitReceived(w.nodeB, indirect)
	w.checkExactlyOnce(w.nodeB, ids)
	w.waitConnected(w.sideA)
	w.waitConnected(w.sideB)
}

// 4. The receiving sidecar is killed with kill -9 and restarted: what it
// had acked to the relay reaches node B exactly once.
func TestReceivingSidecarKilled(t *testing.T) {
	w := newWorld(t, options{})
	var killing, killed time.Time
	ids := w.stream(w.nodeA, w.nodeB, "sidecar-crash", 60, func(i int) {
		if i == 30 {
			killing = time.Now()
			if err := w.sideB.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = time.Now()
		}
		if i == 40 {
			if err := w.sideB.Restart(w.ctx); err != nil {
				t.Fatal(err)
			}
		}
	})
	w.waitFinal(w.sideA, ids)
	// Messages sent while B was away were answered "queued" and went
	// OFFLINE as well; the relay still holds them for B. Every one reaches
	// node B once, INDIRECT, after the restart.
	w.waitReceived(w.nodeB, ids)
	w.checkDelivered(w.nodeB, ids, killing, killed)
}

// 5. Live opt-out: relay_url is deleted from A's TOML while messages flow;
// the rest goes OFFLINE; put back, INDIRECT resumes; no restart.
func TestLiveOptOutAndIn(t *testing.T) {
	w := newWorld(t, options{})
	// Phases: a message is labelled with the phase read just before it was
	// sent. Only settled phases have one path to check; messages sent while
	// an edit is being taken up may go either way.
	const (
		before    = 0 // connected
		optedOut  = 1 // relay_url deleted, state seen "disabled"
		optedIn   = 2 // relay_url back, state seen "connected"
		switching = 9 // an edit is on its way
	)
	var phase atomic.Int32
	var mu sync.Mutex
	byPhase := map[int32][]string{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // messages flow the whole time
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := phase.Load()
			sent, err := w.nodeA.Send(w.ctx, w.nodeB, fmt.Sprintf("flow-%d-%04d", p, i))
			if err != nil {
				t.Errorf("send: %v", err)
				return
			}
			mu.Lock()
			byPhase[p] = append(byPhase[p], sent.ID)
			mu.Unlock()
			time.Sleep(20 * time.Millisecond) // a steady trickle, not a flood
		}
	}()
	waitCount := func(p int32, n int) {
		if err := cluster.WaitFor(w.ctx, fmt.Sprintf("%d messages in phase %d", n, p), func(context.Context) (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			return len(byPhase[p]) >= n, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitCount(before, 10)
	phase.Store(switching)
	if err := w.sideA.SetRelayURL(""); err != nil {
		t.Fatal(err)
	}
	w.waitRelayState(w.sideA, "disabled")
	phase.Store(optedOut)
	waitCount(optedOut, 10)
	phase.Store(switching)
	if err := w.sideA.SetRelayURL(w.relay.URL()); err != nil {
		t.Fatal(err)
	}
	w.waitConnected(w.sideA)
	phase.Store(optedIn)
	waitCount(optedIn, 10)
	close(stop)
	<-done

	want := map[int32]string{before: "INDIRECT", optedOut: "OFFLINE", optedIn: "INDIRECT"}
	var all []string
	for _, p := range []int32{before, switching, optedOut, optedIn} {
		ids := byPhase[p]
		states := w.waitFinal(w.sideA, ids)
		for i, id := range ids {
			all = append(all, id)
			m := states[id]
			if m.State == "failed" {
				t.Errorf("phase %d: %s failed: %s", p, id[:12], m.LastError)
				continue
			}
			// The last message before an edit may still be on its way when
			// the edit lands.
			if p != switching && m.Path != want[p] && i != len(ids)-1 {
				t.Errorf("phase %d: %s went %s, want %s", p, id[:12], m.Path, want[p])
			}
		}
	}
	var indirect []string
	for _, id := range all {
		if m, _ := w.sideA.Message(w.ctx, id); m.Path == "INDIRECT" {
			indirect = append(indirect, id)
		}
	}
	w.waitReceived(w.nodeB, indirect)
	w.checkExactlyOnce(w.nodeB, all)
	if !w.sideA.Running() {
		t.Error("sidecar A is not running: the opt-out must need no restart")
	}
}

// 7. 1,000 messages in both directions at once between two sidecars: all
// delivered, each sender's order kept at the receiver.
func TestThousandBothWays(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	w := newWorld(t, options{})
	const n = 1000
	var ab, ba []string
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); ab = w.streamQuiet(w.nodeA, w.nodeB, "A", n) }()
	go func() { defer wg.Done(); ba = w.streamQuiet(w.nodeB, w.nodeA, "B", n) }()
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, d := range []struct {
		name string
		ids  []string
		side *cluster.Sidecar
		to   *cluster.DevNode
	}{{"A→B", ab, w.sideA, w.nodeB}, {"B→A", ba, w.sideB, w.nodeA}} {
		states := w.waitFinal(d.side, d.ids)
		notDelivered := 0
		for _, id := range d.ids {
			if states[id].State != "delivered" {
				notDelivered++
			}
		}
		if notDelivered > 0 {
			t.Errorf("%s: %d of %d not delivered INDIRECT", d.name, notDelivered, n)
		}
		w.waitReceived(d.to, d.ids)
		w.checkExactlyOnce(d.to, d.ids)
		w.checkOrder(d.to, d.ids)
	}
}

// streamQuiet is stream for a goroutine: it reports with Errorf.
func (w *world) streamQuiet(from, to *cluster.DevNode, prefix string, n int) []string {
	ids := make([]string, 0, n)
	for i := range n {
		sent, err := from.Send(w.ctx, to, fmt.Sprintf("%s-%04d", prefix, i))
		if err != nil {
			w.t.Errorf("%s sends %d: %v", from.Name, i, err)
			return ids
		}
		ids = append(ids, sent.ID)
	}
	return ids
}

// checkOrder fails unless n received ids in the order given (other
// messages may come in between).
func (w *world) checkOrder(n *cluster.DevNode, ids []string) {
	w.t.Helper()
	list, err := n.Received(w.ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	pos := make(map[string]int, len(list))
	for i, r := range list {
		pos[r.ID] = i
	}
	for i := 1; i < len(ids); i++ {
		if pos[ids[i]] < pos[ids[i-1]] {
			w.t.Errorf("%s: message %d arrived before message %d", n.Name, i, i-1)
			return
		}
	}
}

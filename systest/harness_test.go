package systest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"courier/internal/cluster"
)

// scenarioTimeout bounds one scenario; the whole suite must stay well under
// ten minutes on two cores.
const scenarioTimeout = 2 * time.Minute

// relayLimits lets one sidecar connection publish as fast as the tests do.
const relayLimits = `[limits]
publish_rate = 100000
publish_burst = 100000
delivery_wait = "3s"
`

// sidecarDelivery keeps retries quick; relay_grace is long enough that a
// relay restarted at once is waited for, not routed around.
const sidecarDelivery = `[delivery]
relay_grace = "15s"
publish_timeout = "10s"
retry_wait_min = "50ms"
retry_wait_max = "1s"

[log]
level = "debug"
`

// world is a relay, two devnodes and their sidecars.
type world struct {
	t     *testing.T
	ctx   context.Context
	c     *cluster.Cluster
	relay *cluster.Relay
	// operator is the relay operator's node, which the relay's OFFLINE
	// bridge publishes through (options.bridge), or nil.
	operator *cluster.DevNode
	nodeA    *cluster.DevNode
	nodeB    *cluster.DevNode
	sideA    *cluster.Sidecar
	sideB    *cluster.Sidecar
	cancel   context.CancelFunc
}

// options tune newWorld.
type options struct {
	relayExtra   string
	sidecarExtra string
	noSidecarB   bool
	// noRelayA starts sidecar A without relay_url: opted out of INDIRECT.
	noRelayA bool
	// relayOnly starts the relay (and the operator's node) only: no nodes,
	// no sidecars.
	relayOnly bool
	// offlinePoll, when set, puts nodes A and B on the cluster's simulated
	// OFFLINE network, polling at this interval.
	offlinePoll time.Duration
	// bridge turns the relay's OFFLINE bridge on: an operator's devnode on
	// the simulated OFFLINE network is started first and the relay's
	// [offline] publish_url points at it, handing off after bridgeAfter.
	bridge      bool
	bridgeAfter time.Duration
}

func newWorld(t *testing.T, o options) *world {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	w := &world{t: t, ctx: ctx, cancel: cancel, c: cluster.New(t.TempDir(), bins)}
	t.Cleanup(func() {
		if err := w.c.Close(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
		cancel()
		if t.Failed() {
			w.dumpLogs()
		}
	})
	if o.relayExtra == "" {
		o.relayExtra = relayLimits
	}
	if o.sidecarExtra == "" {
		o.sidecarExtra = sidecarDelivery
	}
	var err error
	if o.bridge {
		if w.operator, err = w.c.StartDevNodeWith(ctx, "operator", cluster.DevNodeOptions{Offline: true}); err != nil {
			t.Fatal(err)
		}
		o.relayExtra += fmt.Sprintf("\n[offline]\npublish_url = %q\n", w.operator.URL()+"/courier/offline")
		if o.bridgeAfter > 0 {
			o.relayExtra += fmt.Sprintf("after = %q\n", o.bridgeAfter.String())
		}
	}
	if w.relay, err = w.c.StartRelay(ctx, "relay", o.relayExtra); err != nil {
		t.Fatal(err)
	}
	if o.relayOnly {
		return w
	}
	nodeOpts := cluster.DevNodeOptions{Offline: o.offlinePoll > 0, OfflinePoll: o.offlinePoll}
	if w.nodeA, err = w.c.StartDevNodeWith(ctx, "nodeA", nodeOpts); err != nil {
		t.Fatal(err)
	}
	if w.nodeB, err = w.c.StartDevNodeWith(ctx, "nodeB", nodeOpts); err != nil {
		t.Fatal(err)
	}
	relayA := w.relay.URL()
	if o.noRelayA {
		relayA = ""
	}
	if w.sideA, err = w.c.StartSidecar(ctx, "sidecarA", cluster.SidecarConfig{RelayURL: relayA, Node: w.nodeA, Extra: o.sidecarExtra}); err != nil {
		t.Fatal(err)
	}
	if o.noRelayA {
		w.waitRelayState(w.sideA, "disabled")
	} else {
		w.waitConnected(w.sideA)
	}
	if !o.noSidecarB {
		if w.sideB, err = w.c.StartSidecar(ctx, "sidecarB", cluster.SidecarConfig{RelayURL: w.relay.URL(), Node: w.nodeB, Extra: o.sidecarExtra}); err != nil {
			t.Fatal(err)
		}
		w.waitConnected(w.sideB)
	}
	return w
}

// dumpLogs shows the end of every process's log: the world's and any a
// test started itself in the world's cluster.
func (w *world) dumpLogs() {
	for _, p := range w.c.Procs() {
		w.t.Logf("---- %s (last lines of %s)\n%s", p.Name, p.Log, p.Tail(80))
	}
}

func (w *world) waitConnected(s *cluster.Sidecar) {
	w.t.Helper()
	w.waitRelayState(s, "connected")
}

func (w *world) waitRelayState(s *cluster.Sidecar, want string) {
	w.t.Helper()
	err := cluster.WaitFor(w.ctx, s.Name+" relay "+want, func(ctx context.Context) (bool, error) {
		st, err := s.RelayState(ctx)
		return st == want, err
	})
	if err != nil {
		w.t.Fatal(err)
	}
}

// send makes from's node send text to to's node through from's sidecar.
func (w *world) send(from, to *cluster.DevNode, text string) string {
	w.t.Helper()
	sent, err := from.Send(w.ctx, to, text)
	if err != nil {
		w.t.Fatalf("%s sends %q: %v", from.Name, text, err)
	}
	return sent.ID
}

// waitFinal waits until every message has a final state on s and returns
// them by ID.
func (w *world) waitFinal(s *cluster.Sidecar, ids []string) map[string]cluster.Message {
	w.t.Helper()
	out := make(map[string]cluster.Message, len(ids))
	err := cluster.WaitFor(w.ctx, fmt.Sprintf("%d messages final on %s", len(ids), s.Name), func(ctx context.Context) (bool, error) {
		for _, id := range ids {
			if m, ok := out[id]; ok && final(m.State) {
				continue
			}
			m, err := s.Message(ctx, id)
			if err != nil {
				return false, err
			}
			if !final(m.State) {
				return false, nil
			}
			out[id] = m
		}
		return true, nil
	})
	if err != nil {
		w.t.Fatal(err)
	}
	return out
}

func final(state string) bool {
	return state == "delivered" || state == "handed_off" || state == "failed"
}

// waitReceived waits until n has received every ID and returns what it
// received, by ID.
func (w *world) waitReceived(n *cluster.DevNode, ids []string) map[string]cluster.Received {
	w.t.Helper()
	var got map[string]cluster.Received
	err := cluster.WaitFor(w.ctx, fmt.Sprintf("%d messages at %s", len(ids), n.Name), func(ctx context.Context) (bool, error) {
		list, err := n.Received(ctx)
		if err != nil {
			return false, err
		}
		got = make(map[string]cluster.Received, len(list))
		for _, r := range list {
			got[r.ID] = r
		}
		for _, id := range ids {
			if _, ok := got[id]; !ok {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		w.t.Fatal(err)
	}
	return got
}

// checkExactlyOnce fails for any message the node got from its sidecar
// more than once, and for any it got that was not sent.
func (w *world) checkExactlyOnce(n *cluster.DevNode, sent []string) {
	w.t.Helper()
	w.checkDelivered(n, sent, time.Time{}, time.Time{})
}

// checkDelivered is checkExactlyOnce for a receiving sidecar killed with
// kill -9 at crash: a message the node took just before the crash, whose
// "node has it" the sidecar had not committed yet, is posted again after
// the restart. PROTOCOL.md has the node drop such repeats by message ID
// (the devnode does: it lists each ID once and counts the POSTs). Only
// repeats explained by the crash pass: first POST within a second before
// it, the repeat after it. The crash lasts from killing (before SIGKILL
// was sent) to killed (the process is gone).
func (w *world) checkDelivered(n *cluster.DevNode, sent []string, killing, killed time.Time) {
	w.t.Helper()
	list, err := n.Received(w.ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	want := make(map[string]bool, len(sent))
	for _, id := range sent {
		want[id] = true
	}
	var dups, strays []string
	for _, r := range list {
		explained := !killing.IsZero() && r.Count == 2 &&
			r.FirstSeen.After(killing.Add(-time.Second)) && r.FirstSeen.Before(killed) && r.LastSeen.After(killed)
		if explained {
			w.t.Logf("%s: %s posted again after the crash (node dropped it by ID)", n.Name, r.ID[:12])
		}
		if r.Count != 1 && !explained {
			dups = append(dups, fmt.Sprintf("%s×%d (first %s, last %s, crash %s)", r.ID[:12], r.Count,
				r.FirstSeen.Format("15:04:05.000"), r.LastSeen.Format("15:04:05.000"), killing.Format("15:04:05.000")))
		}
		if !want[r.ID] {
			strays = append(strays, r.ID[:12])
		}
	}
	sort.Strings(dups)
	if len(dups) > 0 {
		w.t.Errorf("%s got %d messages more than once: %s", n.Name, len(dups), strings.Join(dups, " "))
	}
	if len(strays) > 0 {
		w.t.Errorf("%s got %d messages nobody sent: %s", n.Name, len(strays), strings.Join(strays, " "))
	}
}

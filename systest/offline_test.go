package systest

import (
	"testing"
	"time"

	"courier/internal/cluster"
)

// 7. A node that does not run Courier: node C has no sidecar and is on the
// simulated OFFLINE network only. Node A's sidecar cannot deliver INDIRECT
// (nobody takes it at the relay), hands the message to node A's OFFLINE
// endpoint, which publishes it; node C finds it at its next poll, opens it
// and checks its signature. The OFFLINE delay is the poll's, not the relay's.
func TestNodeWithoutCourierGetsOffline(t *testing.T) {
	const poll = 300 * time.Millisecond
	w := newWorld(t, options{offlinePoll: poll, noSidecarB: true})
	nodeC, err := w.c.StartDevNodeWith(w.ctx, "nodeC", cluster.DevNodeOptions{Offline: true, OfflinePoll: poll})
	if err != nil {
		t.Fatal(err)
	}

	id := w.send(w.nodeA, nodeC, "to a node without Courier")
	if m := w.waitFinal(w.sideA, []string{id})[id]; m.State != "handed_off" || m.Path != "OFFLINE" {
		t.Fatalf("sidecar A: %s %s (%s), want handed_off OFFLINE: node C is not at the relay", m.State, m.Path, m.LastError)
	}
	got := w.waitReceived(nodeC, []string{id})[id]
	if got.Text != "to a node without Courier" || got.Sender != w.nodeA.PeerID || got.Path != "OFFLINE" || got.OfflineCount != 1 {
		t.Errorf("node C received %+v", got)
	}
	delay := got.FirstSeen.Sub(got.PublishedAt)
	t.Logf("OFFLINE delay: %s (poll every %s)", delay.Round(time.Millisecond), poll)
	if delay < 0 || delay > poll+10*time.Second {
		t.Errorf("OFFLINE delay %s: want within a poll interval (%s), allowing for a loaded machine", delay, poll)
	}
	// Node B, also on the network, never sees node C's message.
	if list, err := w.nodeB.Received(w.ctx); err != nil || len(list) != 0 {
		t.Errorf("node B received %+v (%v)", list, err)
	}
}

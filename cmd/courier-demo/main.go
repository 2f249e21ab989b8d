// Command courier-demo shows Courier doing its job, on this machine only:
// it builds the binaries, starts a relay on its embedded SQLite, two
// stand-in nodes (devnode) with a sidecar each, sends a message from A to
// B, says in plain words what happened. Then a light client (the browser
// client in headless Chromium, or a scripted level-2 client where there is
// no Chromium) writes to node B and to node C, a node without Courier on
// the simulated OFFLINE network, which the relay's OFFLINE bridge reaches;
// the two delays are printed side by side. At the end it stops every
// process it started. `make demo` runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"courier/internal/cluster"
)

func main() {
	lightClient := flag.String("light-client", "auto", "the light client: browser (headless Chromium), scripted (a level-2 client in Go), or auto (browser where Chromium is installed)")
	flag.Parse()
	if *lightClient != "auto" && *lightClient != "browser" && *lightClient != "scripted" {
		fmt.Fprintf(os.Stderr, "courier-demo: -light-client: want auto, browser or scripted, not %q\n", *lightClient)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Stdout, *lightClient)
	interrupted := ctx.Err() != nil
	stop()
	if interrupted {
		fmt.Fprintln(os.Stderr, "courier-demo: interrupted")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "courier-demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer, lightClient string) (err error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }

	dir, err := os.MkdirTemp("", "courier-demo-")
	if err != nil {
		return err
	}
	keep := false
	defer func() {
		if !keep {
			os.RemoveAll(dir)
		}
	}()
	root, err := cluster.ModuleRoot()
	if err != nil {
		return err
	}
	say("Courier demo: a relay, two nodes and their sidecars, a light client and a node without Courier, all on loopback, all stopped at the end.")
	say("Building courier-relay, courier and devnode…")
	bins, err := cluster.Build(ctx, root, dir, false)
	if err != nil {
		return err
	}
	c := cluster.New(dir, bins)
	defer func() {
		if cerr := c.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if err != nil {
			keep = true
			if errors.Is(err, context.Canceled) {
				say("Interrupted: stopped every process the demo started; their logs are kept in %s", dir)
				return
			}
			say("Something went wrong; every process's log is kept in %s", dir)
		} else {
			say("Stopped every process the demo started.")
		}
	}()

	// The relay operator's own node: the relay's OFFLINE bridge publishes
	// through it, onto the simulated OFFLINE network.
	operator, err := c.StartDevNodeWith(ctx, "operator", cluster.DevNodeOptions{Offline: true})
	if err != nil {
		return err
	}
	relay, err := c.StartRelay(ctx, "relay", fmt.Sprintf("[offline]\npublish_url = %q\nafter = %q\n", operator.URL()+"/courier/offline", bridgeAfter.String()))
	if err != nil {
		return err
	}
	say("  relay     courier-relay at %s (SQLite file %s/relay.db), OFFLINE bridge through its operator's node", relay.URL(), dir)
	nodeA, err := c.StartDevNode(ctx, "nodeA")
	if err != nil {
		return err
	}
	nodeB, err := c.StartDevNode(ctx, "nodeB")
	if err != nil {
		return err
	}
	const delivery = "[delivery]\nrelay_grace = \"2s\"\n"
	sideA, err := c.StartSidecar(ctx, "sidecarA", cluster.SidecarConfig{RelayURL: relay.URL(), Node: nodeA, Extra: delivery})
	if err != nil {
		return err
	}
	sideB, err := c.StartSidecar(ctx, "sidecarB", cluster.SidecarConfig{RelayURL: relay.URL(), Node: nodeB, Extra: delivery})
	if err != nil {
		return err
	}
	say("  node A    %s, its sidecar's API at %s", nodeA.PeerID, sideA.URL())
	say("  node B    %s, its sidecar's API at %s", nodeB.PeerID, sideB.URL())
	for _, s := range []*cluster.Sidecar{sideA, sideB} {
		if err := cluster.WaitFor(ctx, s.Name+" to connect", func(ctx context.Context) (bool, error) {
			st, err := s.RelayState(ctx)
			return st == "connected", err
		}); err != nil {
			return err
		}
	}
	say("Both sidecars are connected to the relay and authenticated as their node.")
	say("")

	text := "Hello B, here is my order."
	say("Node A sends %q to node B (sealed to B's key, signed by A).", text)
	start := time.Now()
	sent, err := nodeA.Send(ctx, nodeB, text)
	if err != nil {
		return err
	}
	say("  sidecar A accepted it as message %s…, state %s", sent.ID[:16], sent.State)
	m, err := waitFinal(ctx, sideA, sent.ID)
	if err != nil {
		return err
	}
	latency := time.Since(start)
	if m.State != "delivered" {
		return fmt.Errorf("expected delivery over INDIRECT, got state %s path %s (%s)", m.State, m.Path, m.LastError)
	}
	got, err := waitReceived(ctx, nodeB, sent.ID)
	if err != nil {
		return err
	}
	say("  path INDIRECT: relay → sidecar B → node B; state %s after %s", m.State, latency.Round(time.Millisecond))
	say("  node B opened it: %q from %s (signature checked)", got.Text, got.Sender)
	say("")

	say("Now node B's sidecar stops, as if B went offline, and A sends again.")
	if err := sideB.Stop(); err != nil {
		return err
	}
	start = time.Now()
	sent, err = nodeA.Send(ctx, nodeB, "Are you there?")
	if err != nil {
		return err
	}
	m, err = waitFinal(ctx, sideA, sent.ID)
	if err != nil {
		return err
	}
	latency = time.Since(start)
	off, err := nodeA.Offline(ctx)
	if err != nil {
		return err
	}
	if m.State != "handed_off" || len(off) == 0 {
		return fmt.Errorf("expected an OFFLINE hand-off, got state %s path %s (%s)", m.State, m.Path, m.LastError)
	}
	say("  the relay stored it but could not confirm delivery (%s)", m.LastError)
	say("  path OFFLINE: sidecar A handed it to node A's own OFFLINE endpoint after %s, state %s", latency.Round(time.Millisecond), m.State)
	say("  the relay keeps it for B too: it is pushed the moment B's sidecar reconnects.")
	say("")
	if err := sideB.Restart(ctx); err != nil {
		return err
	}
	if got, err = waitReceived(ctx, nodeB, sent.ID); err != nil {
		return err
	}
	say("Node B's sidecar is back: node B received %q at once, without polling.", got.Text)
	say("")
	return lightClientStep(ctx, say, c, relay, nodeB, lightClient)
}

func waitFinal(ctx context.Context, s *cluster.Sidecar, id string) (cluster.Message, error) {
	var m cluster.Message
	err := cluster.WaitFor(ctx, "a final state", func(ctx context.Context) (bool, error) {
		var err error
		m, err = s.Message(ctx, id)
		return err == nil && (m.State == "delivered" || m.State == "handed_off" || m.State == "failed"), err
	})
	return m, err
}

func waitReceived(ctx context.Context, n *cluster.DevNode, id string) (cluster.Received, error) {
	var got cluster.Received
	err := cluster.WaitFor(ctx, "node "+n.Name+" to receive "+id, func(ctx context.Context) (bool, error) {
		list, err := n.Received(ctx)
		for _, r := range list {
			if r.ID == id {
				got = r
				return true, nil
			}
		}
		return false, err
	})
	if err != nil {
		return got, errors.Join(err, fmt.Errorf("node %s log:\n%s", n.Name, n.Tail(10)))
	}
	return got, nil
}

const (
	// bridgeAfter is the demo relay's offline.after: how long a light
	// client's message waits for its recipient before the bridge hands it
	// OFFLINE (default: limits.delivery_wait, 3 s).
	bridgeAfter = time.Second
	// nodeCPoll is how often node C polls the OFFLINE network. OpenBazaar
	// polls every minute; the demo is shorter.
	nodeCPoll = 5 * time.Second
)

// lightClientStep shows the relay's OFFLINE bridge: a light client writes
// to node B, which runs Courier (INDIRECT, milliseconds), and to node C,
// which does not (the relay hands it OFFLINE; node C finds it at its next
// poll), and prints both delays side by side.
func lightClientStep(ctx context.Context, say func(string, ...any), c *cluster.Cluster, relay *cluster.Relay, nodeB *cluster.DevNode, kind string) error {
	nodeC, err := c.StartDevNodeWith(ctx, "nodeC", cluster.DevNodeOptions{Offline: true, OfflinePoll: nodeCPoll})
	if err != nil {
		return err
	}
	profile, err := profileDir(c.Dir)
	if err != nil {
		return err
	}
	lc, err := startLightClient(ctx, kind, relay, profile)
	if err != nil {
		return err
	}
	defer lc.Close()
	say("A light client: %s,", lc.What())
	say("  peer ID %s, signed in to the relay at level 2.", lc.PeerID())
	say("  node C    %s runs no Courier: no sidecar; it polls the OFFLINE network every %s (OpenBazaar: every minute).", nodeC.PeerID, nodeCPoll)
	say("")

	text := "Hi B, from a light client."
	say("The light client sends %q to node B, which runs Courier.", text)
	start := time.Now()
	id, status, err := lc.Send(ctx, nodeB.PeerID, nodeB.PubKey, text)
	if err != nil {
		return err
	}
	indirect := time.Since(start)
	if status != "delivered" {
		return fmt.Errorf("expected the relay to answer delivered for node B, got %s", status)
	}
	got, err := waitReceived(ctx, nodeB, id)
	if err != nil {
		return err
	}
	say("  path INDIRECT: relay → sidecar B → node B; the relay answered %s after %d ms", status, indirect.Milliseconds())
	say("  node B opened it: %q from %s (signature checked)", got.Text, got.Sender)
	say("")

	text = "Hi C, from a light client. Do you still sell the lamp?"
	say("The light client sends %q to node C, which does not run Courier.", text)
	start = time.Now()
	id, status, err = lc.Send(ctx, nodeC.PeerID, nodeC.PubKey, text)
	if err != nil {
		return err
	}
	handedOff := time.Since(start)
	if status != "offline" {
		return fmt.Errorf("expected the relay to answer offline for node C, got %s", status)
	}
	say("  nobody took it at the relay within %s: the relay's bridge handed it to its operator's node,", bridgeAfter)
	say("  which published it OFFLINE; the relay answered %s after %d ms", status, handedOff.Milliseconds())
	got, err = waitReceived(ctx, nodeC, id)
	if err != nil {
		return err
	}
	offline := got.FirstSeen.Sub(start)
	if got.Path != "OFFLINE" {
		return fmt.Errorf("node C received the message by %s, not OFFLINE", got.Path)
	}
	say("  path OFFLINE: node C found it at its next poll, %.1f s after the send", offline.Seconds())
	say("  node C opened it: %q from %s (signature checked)", got.Text, got.Sender)
	say("")
	say("Both delays, side by side, from the same light client:")
	say("  %-40s  %s", "to node B (runs Courier): INDIRECT", "to node C (no Courier): OFFLINE")
	say("  %-40s  %s", fmt.Sprintf("%d ms", indirect.Milliseconds()),
		fmt.Sprintf("%.1f s (its next poll; it polls every %s)", offline.Seconds(), nodeCPoll))
	say("  With OpenBazaar's one-minute poll, the OFFLINE side takes up to a minute.")
	return nil
}

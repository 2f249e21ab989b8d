// Command courier-demo shows Courier doing its job, on this machine only:
// it builds the binaries, starts a relay on its embedded SQLite, two
// stand-in nodes (devnode) with a sidecar each, sends a message from A to
// B, says in plain words what happened, then stops every process it
// started. `make demo` runs it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"courier/internal/cluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "courier-demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) (err error) {
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
	say("Courier demo: a relay, two nodes and their sidecars, all on loopback, all stopped at the end.")
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
			say("Something went wrong; every process's log is kept in %s", dir)
		} else {
			say("Stopped every process the demo started.")
		}
	}()

	relay, err := c.StartRelay(ctx, "relay", "")
	if err != nil {
		return err
	}
	say("  relay     courier-relay at %s (SQLite file %s/relay.db)", relay.URL(), dir)
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
	return nil
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

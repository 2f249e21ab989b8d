package sidecar_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// childConfigEnv carries the child's sidecar config, as JSON, from
// TestKilledBeforeInboxCommit to TestInboxCrashChild.
const childConfigEnv = "COURIER_SIDECAR_CRASH_CHILD"

// The receiving sidecar acks the relay only once the message is durable:
// killed (SIGKILL) after it received a message and before its inbox
// commit, it loses nothing: the relay still has the message unacked and
// replays it to the sidecar's next run, which hands it to the node. An
// inbox commit that ran after the ack (asynchronously) would lose it.
func TestKilledBeforeInboxCommit(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	sa := st.StartSidecar(t, a, st.Config(a, r.URL(), t.TempDir()), st.Options())
	cfgB := st.Config(b, r.URL(), t.TempDir())

	// B's sidecar runs in a child process that stops in its inbox commit.
	child := startCrashChild(t, cfgB)
	child.waitLine(t, "RUNNING")
	sa.WaitRelay(sidecar.RelayConnected)
	st.Eventually(t, "B's child sidecar to connect", func() bool { return relaySubscriptions(t, r) >= 2 })

	// The node fails every push: only the inbox can make the message
	// durable at B, and its commit never comes.
	b.Inbound.FailAlways(http.StatusServiceUnavailable)
	id := sa.Submit(b, st.Ciphertext("crash", 1, 100))
	child.waitLine(t, "HOOK")
	// Give an ack sent before the commit (the bug) time to reach the
	// relay: this wait bounds only how surely the bug is caught, never
	// whether the correct code passes.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) && relayAcked(t, r) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	child.kill(t)
	if n := len(b.Inbound.Accepted()); n != 0 {
		t.Fatalf("B's node took %d messages while it was failing", n)
	}
	b.Inbound.Recover()

	// B's sidecar again, on the same store: the relay replays the message.
	sb := st.StartSidecar(t, b, cfgB, st.Options())
	sb.WaitRelay(sidecar.RelayConnected)
	waitInbound(t, b, id)
}

// The other half of the rule: once the node has a message (its inbound
// endpoint answered 2xx), the relay is acked without waiting for the inbox
// commit: the sender hears delivered while B's commit is still stuck, and
// a SIGKILL then costs nothing: the node has it, the relay does not send
// it again.
func TestAckedOnceTheNodeHasIt(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	sa := st.StartSidecar(t, a, st.Config(a, r.URL(), t.TempDir()), st.Options())
	cfgB := st.Config(b, r.URL(), t.TempDir())
	child := startCrashChild(t, cfgB)
	child.waitLine(t, "RUNNING")
	sa.WaitRelay(sidecar.RelayConnected)
	st.Eventually(t, "B's child sidecar to connect", func() bool { return relaySubscriptions(t, r) >= 2 })

	id := sa.Submit(b, st.Ciphertext("at the node first", 1, 100))
	child.waitLine(t, "HOOK") // the commit is stuck for good
	if m := sa.WaitMessage(id, queue.Delivered); m.Path != queue.PathIndirect {
		t.Errorf("A's message: path %q", m.Path)
	}
	waitInbound(t, b, id)
	child.kill(t)

	sb := st.StartSidecar(t, b, cfgB, st.Options())
	sb.WaitRelay(sidecar.RelayConnected)
	next := sa.Submit(b, st.Ciphertext("after the crash", 2, 100))
	waitInbound(t, b, next) // a replay of the first would have come before it
	if got := b.Inbound.AcceptedIDs(); got[id] != 1 {
		t.Errorf("B's node got the first message %d times, want 1", got[id])
	}
}

// TestInboxCrashChild is TestKilledBeforeInboxCommit's child process: a
// sidecar whose queue writer blocks forever just before it writes inbound
// messages, saying "HOOK" on stdout when it gets there.
func TestInboxCrashChild(t *testing.T) {
	raw := os.Getenv(childConfigEnv)
	if raw == "" {
		t.Skip("run by TestKilledBeforeInboxCommit")
	}
	var cfg sidecar.Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	opts := sidecar.WithInboxHook(st.Options(), func() {
		os.Stdout.WriteString("HOOK\n")
		select {} // until killed
	})
	e, err := sidecar.New(cfg, st.Logger().With("side", "crash-child"), opts)
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("RUNNING\n")
	_ = e.Run(context.Background()) // until killed
}

type crashChild struct {
	cmd   *exec.Cmd
	lines chan string
}

func startCrashChild(t *testing.T, cfg sidecar.Config) *crashChild {
	t.Helper()
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestInboxCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childConfigEnv+"="+string(raw))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &crashChild{cmd: cmd, lines: make(chan string, 100)}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() { c.kill(t) })
	return c
}

// waitLine waits for a line the child prints.
func (c *crashChild) waitLine(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(st.WaitTimeout)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatalf("the child ended before saying %s", want)
			}
			if l == want {
				return
			}
		case <-timeout:
			t.Fatalf("the child did not say %s within %s", want, st.WaitTimeout)
		}
	}
}

// kill kills the child with SIGKILL and reaps it; killing it again does
// nothing.
func (c *crashChild) kill(t *testing.T) {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}

// relayMetric reads one unlabelled series from the relay's /metrics.
func relayMetric(t *testing.T, r *st.Relay, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + r.Addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

func relayAcked(t *testing.T, r *st.Relay) float64 {
	return relayMetric(t, r, "courier_relay_messages_acked_total")
}

func relaySubscriptions(t *testing.T, r *st.Relay) float64 {
	return relayMetric(t, r, `courier_relay_subscriptions{level="2"}`)
}

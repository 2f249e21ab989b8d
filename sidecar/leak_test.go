package sidecar_test

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// An engine that ran, and was stopped and closed, leaves no goroutine
// behind: not its parts', not its trackers', not its connections to the
// node.
func TestEngineLeavesNoGoroutines(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
	sb.WaitRelay(sidecar.RelayConnected)
	away := st.NewNode(t, "away")
	before := runtime.NumGoroutine()

	sa := st.StartSidecar(t, a, st.Config(a, r.URL(), t.TempDir()), st.Options())
	sa.WaitRelay(sidecar.RelayConnected)
	id := sa.Submit(b, st.Ciphertext("leak", 1, 100))
	sa.WaitMessage(id, queue.Delivered)
	off := sa.Submit(away, st.Ciphertext("leak", 2, 100))
	sa.WaitMessage(off, queue.HandedOff)
	reply := sb.Submit(a, st.Ciphertext("leak", 3, 100))
	waitInbound(t, a, reply)
	sa.Stop()

	deadline := time.Now().Add(st.WaitTimeout)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			var ours []string
			for _, g := range strings.Split(stacks, "\n\n") {
				if !strings.Contains(g, "courier/sidecar.(*Engine)") && !strings.Contains(g, "courier/upstream.(*session)") && !strings.Contains(g, "courier/upstream.(*Client)") {
					ours = append(ours, g)
				}
			}
			t.Fatalf("%d goroutines before the engine, %d after it stopped; those not of a running engine:\n%s", before, runtime.NumGoroutine(), strings.Join(ours, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond) // polling a condition
	}
}

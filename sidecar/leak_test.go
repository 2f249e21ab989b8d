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
	existing := goroutineIDs()

	sa := st.StartSidecar(t, a, st.Config(a, r.URL(), t.TempDir()), st.Options())
	sa.WaitRelay(sidecar.RelayConnected)
	id := sa.Submit(b, st.Ciphertext("leak", 1, 100))
	sa.WaitMessage(id, queue.Delivered)
	off := sa.Submit(away, st.Ciphertext("leak", 2, 100))
	sa.WaitMessage(off, queue.HandedOff)
	reply := sb.Submit(a, st.Ciphertext("leak", 3, 100))
	waitInbound(t, a, reply)
	sa.Stop()

	// New goroutines, but the relay's: it starts one per connection that
	// has work (B's, after the baseline), which is no business of A's.
	fresh := func() []string {
		var out []string
		for id, g := range goroutines() {
			if !existing[id] && !strings.Contains(g, "courier/relay.") {
				out = append(out, g)
			}
		}
		return out
	}
	deadline := time.Now().Add(st.WaitTimeout)
	for left := fresh(); len(left) > 0; left = fresh() {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines before the engine, %d after it stopped; new ones:\n%s", before, runtime.NumGoroutine(), strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond) // polling a condition
	}
}

// goroutines returns every goroutine's stack by its ID.
func goroutines() map[string]string {
	buf := make([]byte, 4<<20)
	out := make(map[string]string)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if id, _, ok := strings.Cut(strings.TrimPrefix(g, "goroutine "), " "); ok {
			out[id] = g
		}
	}
	return out
}

func goroutineIDs() map[string]bool {
	ids := make(map[string]bool)
	for id := range goroutines() {
		ids[id] = true
	}
	return ids
}

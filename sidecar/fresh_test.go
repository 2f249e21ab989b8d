package sidecar_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// TestFreshPublishedFromMemory: a message the node posts is published at
// once from memory (Submit hands it to the dispatcher), not when a pass
// over the outbox next runs: sidecar A polls the outbox only once an hour
// here, so every message below reaches B's node only through that hand-off.
// First one message at a time, then from concurrent posters: each message
// arrives exactly once, delivered in one publish.
func TestFreshPublishedFromMemory(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	nodeA, nodeB := st.NewNode(t, "A"), st.NewNode(t, "B")
	optsA := st.Options()
	optsA.Poll = time.Hour
	a := st.StartSidecar(t, nodeA, st.Config(nodeA, r.URL(), t.TempDir()), optsA)
	b := st.StartSidecar(t, nodeB, st.Config(nodeB, r.URL(), t.TempDir()), st.Options())
	a.WaitRelay(sidecar.RelayConnected)
	b.WaitRelay(sidecar.RelayConnected)

	// One at a time, each waited for: long after the wakes of the start
	// (the relay connecting), nothing but the hand-off can publish them.
	const posters, each, oneByOne = 8, 40, 20
	var (
		mu  sync.Mutex
		ids []string
		wg  sync.WaitGroup
	)
	for i := range oneByOne {
		id := a.Submit(nodeB, st.Ciphertext("fresh-one", i, 512))
		ids = append(ids, id)
		st.Eventually(t, "B's node to get "+id[:8], func() bool {
			return len(nodeB.Inbound.Accepted()) == i+1
		})
	}
	for p := range posters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := a.Submit(nodeB, st.Ciphertext(fmt.Sprintf("fresh-%d", p), i, 512))
				mu.Lock()
				ids = append(ids, id)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	st.Eventually(t, fmt.Sprintf("B's node to get all %d messages", len(ids)), func() bool {
		return len(nodeB.Inbound.Accepted()) >= len(ids)
	})
	seen := map[string]int{}
	for _, req := range nodeB.Inbound.Accepted() {
		seen[req.ID]++
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Fatalf("message %.8s reached B's node %d times, want 1", id, seen[id])
		}
	}
	for _, id := range ids {
		var m queue.Outbound
		st.Eventually(t, "A to record "+id[:8]+" delivered", func() bool {
			m = a.Message(id)
			return m.State == queue.Delivered
		})
		if m.Attempts != 1 || m.Path != queue.PathIndirect {
			t.Fatalf("message %.8s: %d attempts on path %q, want 1 on INDIRECT", id, m.Attempts, m.Path)
		}
	}
}

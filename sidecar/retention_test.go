package sidecar_test

import (
	"context"
	"net/http"
	"os"
	"testing"
	"time"

	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// Finished outbound messages older than store.retention are deleted, and
// the store file stops growing however many messages pass; a message
// still on its way is kept.
func TestRetentionPrunesOutbox(t *testing.T) {
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	cfg := st.Config(a, "", t.TempDir())
	cfg.Store.Retention = time.Millisecond
	cfg.Delivery.OfflineMaxAttempts = 1000
	s := st.StartSidecar(t, a, cfg, st.Options())

	stuck := st.Ciphertext("stuck", 0, 100)
	stuckID := s.Submit(b, stuck)
	a.Offline.FailID(stuckID, http.StatusServiceUnavailable)

	// The database file: its size is its high-water mark. The WAL beside
	// it comes and goes with checkpoints; it is bounded on its own.
	size := func(suffix string) int64 {
		fi, err := os.Stat(cfg.Store.Path + suffix)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	const rounds, perRound = 12, 100
	var sizes []int64
	for round := range rounds {
		var ids []string
		for i := range perRound {
			ids = append(ids, s.Submit(b, st.Ciphertext("retention", round*perRound+i, 2048)))
		}
		st.Eventually(t, "the round's messages handed off and pruned", func() bool {
			stat, err := s.E.Status(context.Background(), 0)
			if err != nil {
				return false
			}
			finished := stat.Outbox[queue.Delivered] + stat.Outbox[queue.HandedOff] + stat.Outbox[queue.Failed]
			return finished == 0 && stat.Outbox[queue.Queued] == 0 && len(a.Offline.AcceptedIDs()) == (round+1)*perRound
		})
		if _, err := s.E.Message(context.Background(), ids[0]); err == nil {
			t.Fatalf("round %d: a handed-off message is still there", round)
		}
		sizes = append(sizes, size(""))
		if wal := size("-wal"); wal > 2*queue.JournalSizeLimit {
			t.Errorf("round %d: the WAL is %d bytes", round, wal)
		}
	}
	t.Logf("store size after each round: %v", sizes)
	// Once the free pages of pruned rows are there to reuse, the file
	// stops growing: over the second half it may not grow by even one
	// round's ciphertext (without pruning it grows by six rounds' worth).
	if grew := sizes[rounds-1] - sizes[rounds/2-1]; grew >= perRound*2048 {
		t.Errorf("the store grew by %d bytes over the last %d rounds of %d messages: pruning does not bound it", grew, rounds/2, perRound)
	}
	if m := s.Message(stuckID); m.State != queue.Sending {
		t.Errorf("the message still on its way is %s, want sending (kept)", m.State)
	}
	st.Eventually(t, "courier_pruned_total{table=outbox} to count them", func() bool {
		return labelledCounter(t, s.E, "courier_pruned_total", "outbox") >= rounds*perRound
	})
}

// Inbound messages the node has, or refused, are deleted after
// store.retention; one it does not have yet is kept.
func TestRetentionPrunesInbox(t *testing.T) {
	p := startPair(t, nil, nil)
	p.cfgB.Store.Retention = time.Millisecond // B only: A's outbox is watched below
	if err := p.b.E.Reconfigure(p.cfgB); err != nil {
		t.Fatal(err)
	}
	poisonID := p.a.Submit(p.b.Node, st.Ciphertext("keep me", 0, 100))
	p.b.Node.Inbound.FailID(poisonID, http.StatusInternalServerError)
	var ids []string
	for i := 1; i <= 5; i++ {
		if i == 3 {
			p.b.Node.Inbound.FailNext(1, http.StatusUnprocessableEntity) // refused
		}
		id := p.a.Submit(p.b.Node, st.Ciphertext("inbox retention", i, 100))
		ids = append(ids, id)
		p.a.WaitMessage(id, queue.Delivered)
		st.Eventually(t, "B's node to answer for it", func() bool {
			for _, r := range p.b.Node.Inbound.Requests() {
				if r.ID == id {
					return true
				}
			}
			return false
		})
	}
	st.Eventually(t, "B's delivered and refused inbound messages pruned", func() bool {
		stat, err := p.b.E.Status(context.Background(), 0)
		return err == nil && stat.Inbox.Delivered == 0 && stat.Inbox.Refused == 0 && stat.Inbox.Pending == 1 &&
			labelledCounter(t, p.b.E, "courier_pruned_total", "inbox") >= 5
	})
	if got := p.b.Node.Inbound.AcceptedIDs(); len(got) != 4 || got[ids[2]] != 0 {
		t.Errorf("B's node took %v, want the 4 neither poison nor refused", got)
	}
	pending, err := p.b.E.Inbox(context.Background(), 0, 10)
	if err != nil || len(pending) != 1 || pending[0].ID != poisonID {
		t.Errorf("pending inbox = %v, %v; want the one the node has not taken", pending, err)
	}
}

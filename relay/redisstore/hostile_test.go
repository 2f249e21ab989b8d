package redisstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"courier/relay"
	"courier/relay/redisstore/redistest"
	"courier/relay/storetest"
)

// commitOps runs ops as one batch, as the writer would, and returns their
// results in order.
func commitOps(t *testing.T, s *Store, ops []*op) []any {
	t.Helper()
	s.commit(ops)
	out := make([]any, len(ops))
	for i, o := range ops {
		if o.put != nil {
			out[i] = storetest.Wait(t, (<-chan relay.PutResult)(o.pres))
		} else {
			out[i] = storetest.Wait(t, (<-chan relay.AckResult)(o.ares))
		}
	}
	return out
}

func putOp(m relay.Message) *op {
	return &op{put: &m, pres: make(chan relay.PutResult, 1), now: time.Now().UnixMicro()}
}

func ackOp(sub relay.Subscriber, id string) *op {
	return &op{sub: sub, id: id, ares: make(chan relay.AckResult, 1)}
}

// twoKeys returns two test peers with different subscription keys.
func twoKeys() (storetest.Peer, storetest.Peer) {
	a := storetest.NewPeer(1)
	for i := 2; ; i++ {
		if b := storetest.NewPeer(i); b.Key != a.Key {
			return a, b
		}
	}
}

// TestSameIDForTwoKeysInOneBatch: one ciphertext put for a recipient and,
// in the same batch, for a recipient under another subscription key. The
// first is stored; the second is refused with ErrRecipientMismatch, as it
// is when the two puts are in different batches. Before, both lookups of
// the ID index found nothing, so the message was stored under both keys
// and the index named the last.
func TestSameIDForTwoKeysInOneBatch(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	s := openTest(t, srv, Options{})
	p, q := twoKeys()
	m := storetest.NewMessage(p, "one ciphertext, two recipients")
	forged := m
	forged.Recipient, forged.Key = q.ID, q.Key
	res := commitOps(t, s, []*op{putOp(m), putOp(forged), ackOp(p.Sub(), m.ID)})
	if r := res[0].(relay.PutResult); r.Err != nil || r.Existing {
		t.Fatalf("first put: %+v, want stored", r)
	}
	if r := res[1].(relay.PutResult); !errors.Is(r.Err, relay.ErrRecipientMismatch) {
		t.Fatalf("put of the same ID for another key in the same batch: Existing=%v err %v; want ErrRecipientMismatch", r.Existing, r.Err)
	}
	if r := res[2].(relay.AckResult); !r.Found || !r.ByRecipient {
		t.Fatalf("the recipient's ack after both: %+v, want found, by the recipient", r)
	}
	if got := storetest.AllPending(t, s, storetest.Anonymous("u"), q.Key); len(got) != 0 {
		t.Errorf("the other key holds %d messages, want none", len(got))
	}
	if st := storetest.MustStats(t, s); st.Messages != 1 {
		t.Errorf("Stats %+v, want 1 message", st)
	}
}

// TestQuotaInsideGroup: a group of puts of one key that crosses the
// quota: exactly the puts beyond it are refused, each caller hears its own
// message's outcome, and a republish of a refused message in the same
// group is refused too while one of a stored message is existing.
func TestQuotaInsideGroup(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	s := openTest(t, srv, Options{Quota: relay.Quota{MaxMessages: 100, MaxBytes: 1000}})
	p := storetest.NewPeer(1)
	// sizes: 400, 400, 300 (over bytes), 100, 100 (=1000, at the limit), 1 (over)
	sizes := []int{400, 400, 300, 100, 100, 1}
	want := []bool{true, true, false, true, true, false}
	var ms []relay.Message
	var ops []*op
	for i, n := range sizes {
		m := storetest.NewMessage(p, storetest.Body(fmt.Sprintf("m%d ", i), n))
		ms = append(ms, m)
		ops = append(ops, putOp(m))
	}
	ops = append(ops, putOp(ms[2]), putOp(ms[0]))
	res := commitOps(t, s, ops)
	seq := int64(0)
	for i, ok := range want {
		r := res[i].(relay.PutResult)
		if !ok {
			if !errors.Is(r.Err, relay.ErrOverQuota) {
				t.Errorf("put %d (%d bytes): %+v, want over quota", i, sizes[i], r)
			}
			continue
		}
		seq++
		if r.Err != nil || r.Existing || r.Message.ID != ms[i].ID || r.Message.Seq != seq {
			t.Errorf("put %d: %+v, want %s stored as Seq %d", i, r, ms[i].ID[:8], seq)
		}
	}
	if r := res[6].(relay.PutResult); !errors.Is(r.Err, relay.ErrOverQuota) {
		t.Errorf("republish of the refused message: %+v, want over quota", r)
	}
	if r := res[7].(relay.PutResult); r.Err != nil || !r.Existing || r.Message.Seq != 1 {
		t.Errorf("republish of the first: %+v, want existing Seq 1", r)
	}
	if st := storetest.MustStats(t, s); st.Messages != 4 || st.Bytes != 1000 {
		t.Errorf("Stats %+v, want 4 messages of 1000 bytes", st)
	}
}

// busEvents records what another instance's bus events announce.
type busEvents chan string

func (c busEvents) Stored(m relay.Message, republish bool) {
	kind := "M"
	if republish {
		kind = "R"
	}
	c <- fmt.Sprintf("%s %s %d", kind, m.ID[:8], m.Seq)
}
func (busEvents) RecipientAcked(string)       {}
func (busEvents) PeerConnected(string, int64) {}
func (busEvents) Resync(string)               {}

// TestBusOrderOfGroup: the events of one put script reach another
// instance in the group's order, with the Seqs the callers were given: a
// new message, a republish of it (R, its Seq), a put refused over quota
// (no event), a republish of an acked message (no event), another new one.
func TestBusOrderOfGroup(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	ns := fmt.Sprintf("t%d", namespaces.Add(1))
	s1 := openTest(t, srv, Options{Namespace: ns, Quota: relay.Quota{MaxMessages: 3}})
	s2 := openTest(t, srv, Options{Namespace: ns})
	events := make(busEvents, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s2.Listen(ctx, events); err != nil {
		t.Fatal(err)
	}
	p := storetest.NewPeer(1)
	acked := storetest.MustPut(t, s1, storetest.NewMessage(p, "stored and acked before")).Message
	storetest.MustAck(t, s1, p.Sub(), acked.ID)
	if e := storetest.Wait(t, (<-chan string)(events)); e != fmt.Sprintf("M %s 1", acked.ID[:8]) {
		t.Fatalf("first event %q", e)
	}
	var ms []relay.Message
	for i := range 4 {
		ms = append(ms, storetest.NewMessage(p, fmt.Sprintf("bus order %d", i)))
	}
	res := commitOps(t, s1, []*op{putOp(ms[0]), putOp(ms[1]), putOp(ms[0]), putOp(acked), putOp(ms[2]), putOp(ms[3]), putOp(ms[1])})
	for i, want := range []string{"stored", "stored", "existing", "existing", "stored", "over", "existing"} {
		r := res[i].(relay.PutResult)
		got := "stored"
		switch {
		case errors.Is(r.Err, relay.ErrOverQuota):
			got = "over"
		case r.Err != nil:
			got = r.Err.Error()
		case r.Existing:
			got = "existing"
		}
		if got != want {
			t.Fatalf("put %d: %s, want %s", i, got, want)
		}
	}
	want := []string{
		fmt.Sprintf("M %s 2", ms[0].ID[:8]),
		fmt.Sprintf("M %s 3", ms[1].ID[:8]),
		fmt.Sprintf("R %s 2", ms[0].ID[:8]),
		fmt.Sprintf("M %s 4", ms[2].ID[:8]),
		fmt.Sprintf("R %s 3", ms[1].ID[:8]),
	}
	for i, w := range want {
		if e := storetest.Wait(t, (<-chan string)(events)); e != w {
			t.Fatalf("event %d on the other instance: %q, want %q (all: %q)", i, e, w, want)
		}
	}
	// Nothing else: a marker put after the group is the next event.
	marker := storetest.MustPut(t, s1, storetest.NewMessage(storetest.NewPeer(2), "marker")).Message
	if e := storetest.Wait(t, (<-chan string)(events)); e != fmt.Sprintf("M %s %d", marker.ID[:8], marker.Seq) {
		t.Fatalf("after the group: %q, want the marker", e)
	}
}

// TestScriptErrorInBatch: one key's put script fails (its counter holds
// garbage, as a damaged or foreign key would) in a batch that also writes
// another key. Each caller hears its own outcome: the failed key's puts an
// error, the other key's stored; the totals count only what was stored,
// and nothing of the failed group is written or announced.
func TestScriptErrorInBatch(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	ns := fmt.Sprintf("t%d", namespaces.Add(1))
	s1 := openTest(t, srv, Options{Namespace: ns})
	s2 := openTest(t, srv, Options{Namespace: ns})
	events := make(busEvents, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s2.Listen(ctx, events); err != nil {
		t.Fatal(err)
	}
	bad, good := twoKeys()
	if err := srv.Client().Set(ctx, s1.prefix(bad.Key)+"n", "not a number", 0).Err(); err != nil {
		t.Fatal(err)
	}
	m1 := storetest.NewMessage(bad, "to the damaged key")
	m2 := storetest.NewMessage(good, "to the sound key")
	m3 := storetest.NewMessage(bad, "to the damaged key again")
	res := commitOps(t, s1, []*op{putOp(m1), putOp(m2), putOp(m3), ackOp(good.Sub(), m2.ID)})
	for _, i := range []int{0, 2} {
		if r := res[i].(relay.PutResult); r.Err == nil {
			t.Errorf("put %d to the damaged key: %+v, want an error", i, r)
		}
	}
	if r := res[1].(relay.PutResult); r.Err != nil || r.Existing || r.Message.Seq != 1 {
		t.Errorf("put to the sound key: %+v, want stored as Seq 1", r)
	}
	if r := res[3].(relay.AckResult); r.Err != nil || !r.Found || !r.ByRecipient {
		t.Errorf("ack on the sound key: %+v", r)
	}
	if st := storetest.MustStats(t, s1); st.Messages != 1 || st.Bytes != int64(len(m2.Ciphertext)) {
		t.Errorf("Stats %+v, want the one stored message", st)
	}
	if n, err := srv.Client().HLen(ctx, s1.prefix(bad.Key)+"m").Result(); err != nil || n != 0 {
		t.Errorf("the damaged key holds %d messages (%v), want none", n, err)
	}
	if e := storetest.Wait(t, (<-chan string)(events)); e != fmt.Sprintf("M %s 1", m2.ID[:8]) {
		t.Errorf("first event %q, want the sound key's message only", e)
	}
	marker := storetest.MustPut(t, s1, storetest.NewMessage(good, "marker")).Message
	if e := storetest.Wait(t, (<-chan string)(events)); e != fmt.Sprintf("M %s %d", marker.ID[:8], marker.Seq) {
		t.Errorf("after the batch: %q, want the marker", e)
	}
}

// TestSameIDForTwoRecipientsOfOneKey: one ciphertext put for two peers
// that share a subscription key, in one batch (one put script): the first
// is stored, the second refused with ErrRecipientMismatch, and the
// recipient's ack in the same batch finds the message.
func TestSameIDForTwoRecipientsOfOneKey(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	s := openTest(t, srv, Options{Quota: relay.Quota{MaxMessages: 1}})
	a, b := storetest.PeersSharingKey()
	m := storetest.NewMessage(a, "one ciphertext, two recipients of one key")
	forged := m
	forged.Recipient = b.ID
	res := commitOps(t, s, []*op{putOp(m), putOp(forged), ackOp(b.Sub(), m.ID), ackOp(a.Sub(), m.ID)})
	if r := res[0].(relay.PutResult); r.Err != nil || r.Existing {
		t.Fatalf("first put: %+v", r)
	}
	if r := res[1].(relay.PutResult); !errors.Is(r.Err, relay.ErrRecipientMismatch) {
		t.Fatalf("second put: %+v, want ErrRecipientMismatch", r)
	}
	if r := res[2].(relay.AckResult); !r.Found || r.ByRecipient {
		t.Errorf("the other peer's ack: %+v, want found, not by the recipient", r)
	}
	if r := res[3].(relay.AckResult); !r.Found || !r.ByRecipient || r.Recipient != a.ID {
		t.Errorf("the recipient's ack: %+v", r)
	}
	if got := storetest.AllPending(t, s, b.Sub(), b.Key); len(got) != 0 {
		t.Errorf("pending for the other peer: %d, want 0", len(got))
	}
	if st := storetest.MustStats(t, s); st.Messages != 1 {
		t.Errorf("Stats %+v, want 1 message", st)
	}
}

// TestKillMidStream: Redis is killed (SIGKILL) while puts stream in from
// many callers. Every caller is answered (stored, or an error), nothing a
// caller was told is stored is missing after Redis restarts on its AOF
// (appendfsync always), Ready fails while it is down, and the store works
// and closes after.
func TestKillMidStream(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openTest(t, srv, Options{MaxBatch: 64})
	p := storetest.NewPeer(1)
	const n = 300
	results := make([]<-chan relay.PutResult, n)
	msgs := make([]relay.Message, n)
	got := make(map[int]relay.PutResult)
	for i := range n {
		msgs[i] = storetest.NewMessage(p, fmt.Sprintf("streamed %d", i))
		results[i] = s.Put(msgs[i], nil)
		if i == n/2 {
			// The first quarter answered (stored), the second in flight.
			got[n/4-1] = storetest.Wait(t, results[n/4-1])
			srv.Stop()
			if err := s.Ready(context.Background()); err == nil {
				t.Error("Ready with Redis killed: nil error")
			}
		}
	}
	var stored []string
	failed := 0
	for i, ch := range results {
		if r, ok := got[i]; ok {
			stored = append(stored, msgs[i].ID)
			if r.Err != nil {
				t.Fatalf("put %d, before the kill: %v", i, r.Err)
			}
			continue
		}
		select {
		case r := <-ch:
			if r.Err == nil {
				stored = append(stored, msgs[i].ID)
			} else {
				failed++
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("put %d: no result a minute after Redis was killed", i)
		}
	}
	if failed == 0 {
		t.Fatal("no put failed: Redis was not killed mid-stream")
	}
	srv.Restart()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for s.Ready(ctx) != nil {
		if ctx.Err() != nil {
			t.Fatal("Ready never came back after the restart")
		}
		time.Sleep(50 * time.Millisecond)
	}
	have := make(map[string]bool)
	for _, m := range storetest.AllPending(t, s, p.Sub(), p.Key) {
		have[m.ID] = true
	}
	for _, id := range stored {
		if !have[id] {
			t.Errorf("message %s was answered stored but is gone after the restart", id[:8])
		}
	}
	if r := storetest.MustPut(t, s, storetest.NewMessage(p, "after the restart")); r.Err != nil {
		t.Fatal(r.Err)
	}
	t.Logf("%d stored before the kill, %d answered with an error", len(stored), failed)
}

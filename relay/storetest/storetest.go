// Package storetest is the behaviour suite every relay.Store implementation
// must pass, so that the SQLite store and the Redis one behave the same
// under the relay server. An implementation's tests call Run (and RunQuota)
// with a function that opens a fresh, empty store:
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) relay.Store { return openEmpty(t, relay.Quota{}) })
//		storetest.RunQuota(t, openEmpty)
//	}
//
// The suite checks what relay/store.go promises and nothing of how a store
// keeps it. It also exports the helpers it is built from (test peers,
// messages, waiting on results) for implementation-specific tests.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"courier/relay"
	"courier/wire"
)

// Run runs the behaviour suite, one subtest per behaviour, each on a store
// of its own. open must return a new, empty store without a quota each
// time it is called; Run closes it when the subtest ends (closing it again
// in a cleanup of open's own is fine: Close is idempotent). Quotas are
// covered by RunQuota, as they are configured at open.
func Run(t *testing.T, open func(t *testing.T) relay.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s relay.Store)
	}{
		{"PutThenPending", testPutThenPending},
		{"IdempotentPut", testIdempotentPut},
		{"RepublishForAnotherRecipient", testRepublishForAnotherRecipient},
		{"EarlyOutcome", testEarlyOutcome},
		{"OldestFirst", testOldestFirst},
		{"Paging", testPaging},
		{"AnonymousAcksPerUserID", testAnonymousAcksPerUserID},
		{"Namespaces", testNamespaces},
		{"PeerSeesOnlyItsOwn", testPeerSeesOnlyItsOwn},
		{"ByRecipient", testByRecipient},
		{"Sweep", testSweep},
		{"SweepDropsAcks", testSweepDropsAcks},
		{"SweepMany", testSweepMany},
		{"Stats", testStats},
		{"ConcurrentPuts", testConcurrentPuts},
		{"CallOrder", testCallOrder},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

// checkMessage compares a returned message with the one expected. A zero
// Seq or StoredAt in want is not compared.
func checkMessage(t testing.TB, what string, got, want relay.Message) {
	t.Helper()
	if got.ID != want.ID || got.Key != want.Key || got.Recipient != want.Recipient || !bytes.Equal(got.Ciphertext, want.Ciphertext) {
		t.Errorf("%s: got message %s (key %s, recipient %s, %d bytes), want %s (key %s, recipient %s, %d bytes)",
			what, short(got.ID), got.Key, got.Recipient, len(got.Ciphertext),
			short(want.ID), want.Key, want.Recipient, len(want.Ciphertext))
	}
	if want.Seq != 0 && got.Seq != want.Seq {
		t.Errorf("%s: %s has Seq %d, want %d", what, short(got.ID), got.Seq, want.Seq)
	}
	if !want.StoredAt.IsZero() && !got.StoredAt.Equal(want.StoredAt) {
		t.Errorf("%s: %s has StoredAt %v, want %v", what, short(got.ID), got.StoredAt, want.StoredAt)
	}
}

// checkMessages compares a page with the expected messages, in order.
func checkMessages(t testing.TB, what string, got []relay.Message, want ...relay.Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d messages %v, want %d %v", what, len(got), shortIDs(got), len(want), shortIDs(want))
		return
	}
	for i := range got {
		checkMessage(t, fmt.Sprintf("%s[%d]", what, i), got[i], want[i])
	}
}

func shortIDs(ms []relay.Message) []string {
	ids := IDs(ms)
	for i := range ids {
		ids[i] = short(ids[i])
	}
	return ids
}

// differentKeys returns n test peers whose subscription keys all differ.
func differentKeys(t testing.TB, n int) []Peer {
	t.Helper()
	seen := make(map[string]bool)
	var ps []Peer
	for i := 1; len(ps) < n; i++ {
		p := NewPeer(i)
		if !seen[p.Key] {
			seen[p.Key] = true
			ps = append(ps, p)
		}
	}
	return ps
}

func testPutThenPending(t *testing.T, s relay.Store) {
	ps := differentKeys(t, 2)
	p, other := ps[0], ps[1]
	m := NewMessage(p, "hello")
	before := time.Now()
	r := MustPut(t, s, m)
	after := time.Now()
	if r.Existing || r.RecipientAcked {
		t.Errorf("fresh Put: Existing=%v RecipientAcked=%v, want both false", r.Existing, r.RecipientAcked)
	}
	if r.Message.Seq <= 0 {
		t.Errorf("Seq = %d, want > 0", r.Message.Seq)
	}
	checkMessage(t, "Put result", r.Message, m)
	// The store's clock may be another machine's (Redis): allow some skew.
	if r.Message.StoredAt.Before(before.Add(-time.Minute)) || r.Message.StoredAt.After(after.Add(time.Minute)) {
		t.Errorf("StoredAt = %v, want about %v", r.Message.StoredAt, before)
	}
	// Visible to both kinds of subscriber as soon as the result is out.
	checkMessages(t, "anonymous Pending", MustPending(t, s, Anonymous("u1"), p.Key, 0, 10), r.Message)
	checkMessages(t, "peer Pending", MustPending(t, s, p.Sub(), p.Key, 0, 10), r.Message)
	checkMessages(t, "Pending after its Seq", MustPending(t, s, Anonymous("u1"), p.Key, r.Message.Seq, 10))
	checkMessages(t, "anonymous Pending on another key", MustPending(t, s, Anonymous("u1"), other.Key, 0, 10))
	checkMessages(t, "Pending of another peer", MustPending(t, s, other.Sub(), other.Key, 0, 10))
}

func testIdempotentPut(t *testing.T, s relay.Store) {
	p := NewPeer(1)
	m := NewMessage(p, "once")
	first := MustPut(t, s, m)
	between := MustPut(t, s, NewMessage(p, "between"))

	again := MustPut(t, s, m)
	if !again.Existing || again.RecipientAcked {
		t.Errorf("republish: Existing=%v RecipientAcked=%v, want true, false", again.Existing, again.RecipientAcked)
	}
	checkMessage(t, "republish result", again.Message, first.Message)
	checkMessages(t, "Pending after republish", AllPending(t, s, Anonymous("u"), p.Key), first.Message, between.Message)

	MustAck(t, s, p.Sub(), m.ID)
	acked := MustPut(t, s, m)
	if !acked.Existing || !acked.RecipientAcked {
		t.Errorf("republish after the recipient's ack: Existing=%v RecipientAcked=%v, want both true", acked.Existing, acked.RecipientAcked)
	}
	checkMessage(t, "republish after ack", acked.Message, first.Message)
	if st := MustStats(t, s); st.Messages != 2 {
		t.Errorf("Stats after republishing = %+v, want 2 messages", st)
	}
}

// testRepublishForAnotherRecipient: the ID of a stored message put again
// for another recipient (on another key, or on the same key) is refused
// with ErrRecipientMismatch and changes nothing; it is not the original.
func testRepublishForAnotherRecipient(t *testing.T, s relay.Store) {
	ps := differentKeys(t, 2)
	a, b := PeersSharingKey()
	for _, tc := range []struct {
		name      string
		to, other Peer
	}{
		{"another key", ps[0], ps[1]},
		{"same key", a, b},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMessage(tc.to, "for one recipient only "+tc.name)
			first := MustPut(t, s, m)
			before := MustStats(t, s)
			forged := m
			forged.Recipient, forged.Key = tc.other.ID, tc.other.Key
			r := Wait(t, s.Put(forged, nil))
			if !errors.Is(r.Err, relay.ErrRecipientMismatch) {
				t.Fatalf("put of a stored ID for another recipient: Existing=%v, err %v; want ErrRecipientMismatch", r.Existing, r.Err)
			}
			checkMessages(t, "Pending of the other recipient", AllPending(t, s, tc.other.Sub(), tc.other.Key))
			checkMessages(t, "Pending of the recipient", AllPending(t, s, tc.to.Sub(), tc.to.Key), first.Message)
			if st := MustStats(t, s); st != before {
				t.Errorf("Stats %+v after the refused put, want %+v", st, before)
			}
			// The original's recipient still republishes it as before.
			if again := MustPut(t, s, m); !again.Existing || again.Message.Seq != first.Message.Seq {
				t.Errorf("republish by the right recipient: Existing=%v Seq %d, want the original %d", again.Existing, again.Message.Seq, first.Message.Seq)
			}
		})
	}
}

// testEarlyOutcome: Put's early callback hears every successful outcome
// once, before the result, the same as the result, in Put order; never an
// error outcome.
func testEarlyOutcome(t *testing.T, s relay.Store) {
	ps := differentKeys(t, 2)
	a, b := ps[0], ps[1]
	var (
		mu    sync.Mutex
		heard []relay.PutResult
	)
	early := func(r relay.PutResult) {
		mu.Lock()
		heard = append(heard, r)
		mu.Unlock()
	}
	heardCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(heard)
	}
	// Issued without waiting, so that they share transactions.
	const n = 50
	chans := make([]<-chan relay.PutResult, n)
	for i := range chans {
		chans[i] = s.Put(NewMessage(a, fmt.Sprintf("early %d", i)), early)
	}
	for i, ch := range chans {
		r := Wait(t, ch)
		if r.Err != nil {
			t.Fatalf("put %d: %v", i, r.Err)
		}
		if got := heardCount(); got <= i {
			t.Fatalf("result of put %d came before its early outcome (%d heard)", i, got)
		}
		mu.Lock()
		e, prev := heard[i], relay.PutResult{}
		if i > 0 {
			prev = heard[i-1]
		}
		mu.Unlock()
		if e.Err != nil || e.Existing || e.Message.Seq != r.Message.Seq {
			t.Errorf("put %d: early Seq %d (Existing=%v, %v), result Seq %d", i, e.Message.Seq, e.Existing, e.Err, r.Message.Seq)
		}
		checkMessage(t, fmt.Sprintf("early outcome %d", i), e.Message, r.Message)
		if i > 0 && e.Message.Seq <= prev.Message.Seq {
			t.Errorf("early outcomes out of Put order: Seq %d after %d", e.Message.Seq, prev.Message.Seq)
		}
	}
	// A republish is heard as what it is.
	again := NewMessage(a, "early 0")
	r := Wait(t, s.Put(again, early))
	if !r.Existing || heardCount() != n+1 {
		t.Fatalf("republish: Existing=%v, %d early outcomes, want %d", r.Existing, heardCount(), n+1)
	}
	mu.Lock()
	if e := heard[n]; !e.Existing || e.Message.Seq != r.Message.Seq {
		t.Errorf("early outcome of the republish: Existing=%v Seq %d, want the original %d", e.Existing, e.Message.Seq, r.Message.Seq)
	}
	mu.Unlock()
	// An error outcome is not heard early.
	forged := again
	forged.Recipient, forged.Key = b.ID, b.Key
	if r := Wait(t, s.Put(forged, early)); !errors.Is(r.Err, relay.ErrRecipientMismatch) {
		t.Fatalf("forged republish: %v", r.Err)
	}
	if got := heardCount(); got != n+1 {
		t.Errorf("%d early outcomes after an error outcome, want %d", got, n+1)
	}
}

func testOldestFirst(t *testing.T, s relay.Store) {
	a, b := PeersSharingKey()
	var want []relay.Message
	var last int64
	for i := range 6 {
		to := a
		if i%2 == 1 {
			to = b
		}
		r := MustPut(t, s, NewMessage(to, fmt.Sprintf("message %d", i)))
		if r.Message.Seq <= last {
			t.Errorf("put %d: Seq %d after Seq %d, want increasing", i, r.Message.Seq, last)
		}
		last = r.Message.Seq
		want = append(want, r.Message)
	}
	checkMessages(t, "anonymous Pending", MustPending(t, s, Anonymous("u"), a.Key, 0, 100), want...)
	checkMessages(t, "Pending of peer a", MustPending(t, s, a.Sub(), a.Key, 0, 100), want[0], want[2], want[4])
	checkMessages(t, "Pending of peer b", MustPending(t, s, b.Sub(), b.Key, 0, 100), want[1], want[3], want[5])
}

func testPaging(t *testing.T, s relay.Store) {
	p := NewPeer(1)
	var all []relay.Message
	for i := range 10 {
		all = append(all, MustPut(t, s, NewMessage(p, fmt.Sprintf("page %d", i))).Message)
	}
	for _, sub := range []relay.Subscriber{Anonymous("u"), p.Sub()} {
		for _, limit := range []int{1, 3, 9, 10, 11, 100} {
			t.Run(fmt.Sprintf("peer=%v/limit=%d", sub.Peer, limit), func(t *testing.T) {
				var got []relay.Message
				var after int64
				for pages := 0; ; pages++ {
					if pages > len(all) {
						t.Fatalf("still paging after %d pages", pages)
					}
					ms := MustPending(t, s, sub, p.Key, after, limit)
					got = append(got, ms...)
					if len(ms) < limit {
						break
					}
					after = ms[len(ms)-1].Seq
				}
				checkMessages(t, "paged", got, all...)
			})
		}
		t.Run(fmt.Sprintf("peer=%v/after", sub.Peer), func(t *testing.T) {
			checkMessages(t, "after the 4th", MustPending(t, s, sub, p.Key, all[3].Seq, 100), all[4:]...)
			checkMessages(t, "after the last", MustPending(t, s, sub, p.Key, all[9].Seq, 100))
			checkMessages(t, "after -1", MustPending(t, s, sub, p.Key, -1, 100), all...)
			checkMessages(t, "limit 0", MustPending(t, s, sub, p.Key, 0, 0))
		})
	}
}

func testAnonymousAcksPerUserID(t *testing.T, s relay.Store) {
	p := NewPeer(1)
	var ms []relay.Message
	for i := range 3 {
		ms = append(ms, MustPut(t, s, NewMessage(p, fmt.Sprintf("m%d", i))).Message)
	}
	alice, bob := Anonymous("alice"), Anonymous("bob")

	for range 2 { // the second ack is a no-op
		r := MustAck(t, s, alice, ms[1].ID)
		if !r.Found || r.ByRecipient || r.Recipient != p.ID {
			t.Errorf("alice's ack = %+v, want Found, not ByRecipient, Recipient %s", r, p.ID)
		}
	}
	checkMessages(t, "alice", AllPending(t, s, alice, p.Key), ms[0], ms[2])
	checkMessages(t, "bob", AllPending(t, s, bob, p.Key), ms...)
	checkMessages(t, "the recipient peer", AllPending(t, s, p.Sub(), p.Key), ms...)

	if r := MustAck(t, s, alice, wire.MessageID([]byte("never stored"))); r.Found || r.ByRecipient {
		t.Errorf("ack of an unknown ID = %+v, want not Found", r)
	}
	MustAck(t, s, alice, ms[0].ID)
	MustAck(t, s, alice, ms[2].ID)
	checkMessages(t, "alice after acking all", AllPending(t, s, alice, p.Key))
	checkMessages(t, "bob after alice acked all", AllPending(t, s, bob, p.Key), ms...)
}

// testNamespaces: an anonymous userID equal to a peer ID is another
// subscriber than that peer, both ways.
func testNamespaces(t *testing.T, s relay.Store) {
	a, b := PeersSharingKey()
	m1 := MustPut(t, s, NewMessage(a, "acked by the impostor")).Message
	m2 := MustPut(t, s, NewMessage(a, "acked by the peer")).Message
	m3 := MustPut(t, s, NewMessage(b, "to b, acked by a")).Message
	impostor := Anonymous(a.ID)

	if r := MustAck(t, s, impostor, m1.ID); r.ByRecipient {
		t.Errorf("anonymous ack with the recipient's ID as userID: ByRecipient = true")
	}
	if r := MustAck(t, s, a.Sub(), m2.ID); !r.ByRecipient {
		t.Errorf("the recipient peer's ack: ByRecipient = false")
	}
	if r := MustAck(t, s, a.Sub(), m3.ID); r.ByRecipient || !r.Found || r.Recipient != b.ID {
		t.Errorf("peer a's ack of a message to b = %+v, want Found, not ByRecipient, Recipient b", r)
	}
	checkMessages(t, "peer a", AllPending(t, s, a.Sub(), a.Key), m1)
	checkMessages(t, "anonymous userID = a's ID", AllPending(t, s, impostor, a.Key), m2, m3)
	checkMessages(t, "peer b", AllPending(t, s, b.Sub(), b.Key), m3)
	checkMessages(t, "anonymous userID = b's ID", AllPending(t, s, Anonymous(b.ID), b.Key), m1, m2, m3)
	if r := MustPut(t, s, m1); r.RecipientAcked {
		t.Errorf("republish of m1: RecipientAcked after only an anonymous ack")
	}
}

func testPeerSeesOnlyItsOwn(t *testing.T, s relay.Store) {
	a, b := PeersSharingKey()
	ma1 := MustPut(t, s, NewMessage(a, "to a 1")).Message
	mb := MustPut(t, s, NewMessage(b, "to b")).Message
	ma2 := MustPut(t, s, NewMessage(a, "to a 2")).Message
	c := NewPeer(1)
	for i := 2; c.Key == a.Key; i++ {
		c = NewPeer(i)
	}
	mc := MustPut(t, s, NewMessage(c, "to c")).Message

	tests := []struct {
		name string
		sub  relay.Subscriber
		key  string
		want []relay.Message
	}{
		{"peer a", a.Sub(), a.Key, []relay.Message{ma1, ma2}},
		{"peer b", b.Sub(), b.Key, []relay.Message{mb}},
		{"anonymous on the shared key", Anonymous("u"), a.Key, []relay.Message{ma1, mb, ma2}},
		{"peer c", c.Sub(), c.Key, []relay.Message{mc}},
		{"anonymous on c's key", Anonymous("u"), c.Key, []relay.Message{mc}},
	}
	for _, tt := range tests {
		checkMessages(t, tt.name, AllPending(t, s, tt.sub, tt.key), tt.want...)
	}
}

func testByRecipient(t *testing.T, s relay.Store) {
	a, b := PeersSharingKey()
	m := MustPut(t, s, NewMessage(a, "for a")).Message
	steps := []struct {
		name            string
		sub             relay.Subscriber
		wantByRecipient bool
		wantAcked       bool // recipient-acked after this step
	}{
		{"another peer on the same key", b.Sub(), false, false},
		{"an anonymous userID", Anonymous("u"), false, false},
		{"the recipient", a.Sub(), true, true},
		{"the recipient again", a.Sub(), true, true},
	}
	for _, st := range steps {
		r := MustAck(t, s, st.sub, m.ID)
		if !r.Found || r.Recipient != a.ID || r.ByRecipient != st.wantByRecipient {
			t.Errorf("ack by %s = %+v, want Found, Recipient %s, ByRecipient %v", st.name, r, a.ID, st.wantByRecipient)
		}
		var want []relay.Message
		if !st.wantAcked {
			want = []relay.Message{m}
		}
		checkMessages(t, "recipient's Pending after ack by "+st.name, AllPending(t, s, a.Sub(), a.Key), want...)
		if r := MustPut(t, s, m); r.RecipientAcked != st.wantAcked {
			t.Errorf("republish after ack by %s: RecipientAcked = %v, want %v", st.name, r.RecipientAcked, st.wantAcked)
		}
	}
	checkMessages(t, "anonymous that never acked", AllPending(t, s, Anonymous("other"), a.Key), m)
	if r := MustAck(t, s, a.Sub(), wire.MessageID([]byte("unknown"))); r.Found || r.ByRecipient || r.Recipient != "" {
		t.Errorf("recipient ack of an unknown ID = %+v, want zero", r)
	}
}

func testSweep(t *testing.T, s relay.Store) {
	ctx := context.Background()
	p := NewPeer(1)
	var rs []relay.Message
	for i := range 3 {
		rs = append(rs, MustPut(t, s, NewMessage(p, fmt.Sprintf("sweep %d", i))).Message)
	}
	earliest := rs[0].StoredAt
	for _, m := range rs {
		if m.StoredAt.Before(earliest) {
			earliest = m.StoredAt
		}
	}
	if n, err := s.Sweep(ctx, earliest); err != nil || n != 0 {
		t.Errorf("Sweep(earliest StoredAt) = %d, %v; want 0 (only strictly earlier messages go)", n, err)
	}

	// Sweep just after the second message: whatever was stored before then
	// goes (the third too, should the clock not have moved in between).
	cutoff := rs[1].StoredAt.Add(time.Nanosecond)
	var gone, kept []relay.Message
	var keptBytes int64
	for _, m := range rs {
		if m.StoredAt.Before(cutoff) {
			gone = append(gone, m)
		} else {
			kept = append(kept, m)
			keptBytes += int64(len(m.Ciphertext))
		}
	}
	if n, err := s.Sweep(ctx, cutoff); err != nil || n != len(gone) {
		t.Errorf("Sweep(cutoff) = %d, %v; want %d", n, err, len(gone))
	}
	checkMessages(t, "anonymous after sweep", AllPending(t, s, Anonymous("u"), p.Key), kept...)
	checkMessages(t, "peer after sweep", AllPending(t, s, p.Sub(), p.Key), kept...)
	if st := MustStats(t, s); st.Messages != int64(len(kept)) || st.Bytes != keptBytes {
		t.Errorf("Stats after sweep = %+v, want %d messages, %d bytes", st, len(kept), keptBytes)
	}
	if r := MustAck(t, s, p.Sub(), gone[0].ID); r.Found {
		t.Errorf("ack of a swept message: Found")
	}

	if n, err := s.Sweep(ctx, time.Now().Add(time.Hour)); err != nil || n != len(kept) {
		t.Errorf("Sweep(future) = %d, %v; want %d", n, err, len(kept))
	}
	checkMessages(t, "after sweeping all", AllPending(t, s, Anonymous("u"), p.Key))
	if n, err := s.Sweep(ctx, time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Errorf("Sweep of an empty store = %d, %v; want 0", n, err)
	}
}

// testSweepDropsAcks: a swept message takes its acks with it; the same
// ciphertext published again is a new message for everyone.
func testSweepDropsAcks(t *testing.T, s relay.Store) {
	p := NewPeer(1)
	m := NewMessage(p, "comes back")
	first := MustPut(t, s, m).Message
	MustAck(t, s, Anonymous("alice"), m.ID)
	MustAck(t, s, p.Sub(), m.ID)
	if n, err := s.Sweep(context.Background(), first.StoredAt.Add(time.Nanosecond)); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1", n, err)
	}
	again := MustPut(t, s, m)
	if again.Existing || again.RecipientAcked {
		t.Errorf("republish after sweep: Existing=%v RecipientAcked=%v, want both false", again.Existing, again.RecipientAcked)
	}
	if again.Message.Seq <= first.Seq {
		t.Errorf("republish after sweep: Seq %d, want more than the swept %d (a Seq is never reused)", again.Message.Seq, first.Seq)
	}
	checkMessages(t, "alice", AllPending(t, s, Anonymous("alice"), p.Key), again.Message)
	checkMessages(t, "recipient", AllPending(t, s, p.Sub(), p.Key), again.Message)
}

// testSweepMany sweeps more messages than a store would delete in one step.
func testSweepMany(t *testing.T, s relay.Store) {
	const n = 700
	ps := differentKeys(t, 3)
	chans := make([]<-chan relay.PutResult, n)
	for i := range chans {
		chans[i] = s.Put(NewMessage(ps[i%len(ps)], fmt.Sprintf("many %d", i)), nil)
	}
	for i, ch := range chans {
		if r := Wait(t, ch); r.Err != nil {
			t.Fatalf("put %d: %v", i, r.Err)
		}
	}
	if got, err := s.Sweep(context.Background(), time.Now().Add(time.Hour)); err != nil || got != n {
		t.Errorf("Sweep = %d, %v; want %d", got, err, n)
	}
	if st := MustStats(t, s); st != (relay.Stats{}) {
		t.Errorf("Stats after sweeping all = %+v, want zero", st)
	}
	for _, p := range ps {
		checkMessages(t, "after sweeping all", AllPending(t, s, Anonymous("u"), p.Key))
	}
}

func testStats(t *testing.T, s relay.Store) {
	a, b := PeersSharingKey()
	check := func(when string, want relay.Stats) {
		t.Helper()
		if st := MustStats(t, s); st != want {
			t.Errorf("Stats %s = %+v, want %+v", when, st, want)
		}
	}
	check("of an empty store", relay.Stats{})
	m1 := MustPut(t, s, NewMessage(a, Body("ten", 10))).Message
	MustPut(t, s, NewMessage(b, Body("twenty", 20)))
	MustPut(t, s, NewMessage(a, Body("thirty", 30)))
	MustPut(t, s, NewMessage(a, ""))
	check("after 4 puts", relay.Stats{Messages: 4, Bytes: 60})
	MustPut(t, s, m1)
	check("after a republish", relay.Stats{Messages: 4, Bytes: 60})
	MustAck(t, s, a.Sub(), m1.ID)
	MustAck(t, s, Anonymous("u"), m1.ID)
	check("after acks", relay.Stats{Messages: 4, Bytes: 60})
	if _, err := s.Sweep(context.Background(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	check("after sweeping all", relay.Stats{})
}

// waitIn is Wait for goroutines other than the test's: it reports a
// timeout with Errorf and ok=false instead of stopping the test.
func waitIn[T any](t testing.TB, ch <-chan T) (v T, ok bool) {
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	select {
	case v = <-ch:
		return v, true
	case <-timer.C:
		t.Errorf("no result after %v", Timeout)
		return v, false
	}
}

// testConcurrentPuts: many callers putting at once each see their writes
// committed in their call order, every Seq is distinct, and the store
// holds exactly what was acknowledged, in Seq order.
func testConcurrentPuts(t *testing.T, s relay.Store) {
	const callers, each = 16, 40
	p := NewPeer(1)
	results := make([][]relay.PutResult, callers)
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			chans := make([]<-chan relay.PutResult, each)
			for i := range chans {
				chans[i] = s.Put(NewMessage(p, fmt.Sprintf("caller %d message %d", g, i)), nil)
			}
			for _, ch := range chans {
				r, ok := waitIn(t, ch)
				if !ok {
					return
				}
				results[g] = append(results[g], r)
			}
			// What a caller has been told is committed is readable.
			last := results[g][len(results[g])-1].Message
			if ms, err := s.Pending(context.Background(), Anonymous("reader"), p.Key, last.Seq-1, 1); err != nil || len(ms) != 1 || ms[0].ID != last.ID {
				t.Errorf("caller %d: its last write (Seq %d) is not readable after its result: %v, %v", g, last.Seq, shortIDs(ms), err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	bySeq := make(map[int64]string)
	for g, rs := range results {
		var last int64
		for i, r := range rs {
			if r.Err != nil || r.Existing {
				t.Fatalf("caller %d put %d: Existing=%v, %v", g, i, r.Existing, r.Err)
			}
			if r.Message.Seq <= last {
				t.Errorf("caller %d: put %d has Seq %d after Seq %d: not in call order", g, i, r.Message.Seq, last)
			}
			last = r.Message.Seq
			if other, dup := bySeq[last]; dup {
				t.Errorf("Seq %d given to both %s and %s", last, short(other), short(r.Message.ID))
			}
			bySeq[last] = r.Message.ID
		}
	}
	all := AllPending(t, s, Anonymous("u"), p.Key)
	if len(all) != callers*each {
		t.Fatalf("Pending holds %d messages, want %d", len(all), callers*each)
	}
	for _, m := range all {
		if bySeq[m.Seq] != m.ID {
			t.Errorf("stored Seq %d is %s, but Put answered %s", m.Seq, short(m.ID), short(bySeq[m.Seq]))
		}
	}
	if st := MustStats(t, s); st.Messages != callers*each {
		t.Errorf("Stats = %+v, want %d messages", st, callers*each)
	}
}

// testCallOrder: writes commit in the order they were called, whether or
// not the caller waits in between.
func testCallOrder(t *testing.T, s relay.Store) {
	p := NewPeer(1)
	m := NewMessage(p, "put, then ack")
	early := NewMessage(p, "ack, then put")
	putM := s.Put(m, nil)
	ackM := s.Ack(p.Sub(), m.ID)
	anonAckM := s.Ack(Anonymous("u"), m.ID)
	ackEarly := s.Ack(Anonymous("u"), early.ID)
	putEarly := s.Put(early, nil)

	rm := Wait(t, putM)
	if rm.Err != nil || rm.RecipientAcked {
		t.Errorf("put: RecipientAcked=%v, %v; want false (the ack was called after it)", rm.RecipientAcked, rm.Err)
	}
	if r := Wait(t, ackM); r.Err != nil || !r.Found || !r.ByRecipient {
		t.Errorf("recipient ack called right after the put = %+v, want Found and ByRecipient", r)
	}
	if r := Wait(t, anonAckM); r.Err != nil || !r.Found {
		t.Errorf("anonymous ack called right after the put = %+v, want Found", r)
	}
	if r := Wait(t, ackEarly); r.Err != nil || r.Found {
		t.Errorf("ack called before the put = %+v, want not Found", r)
	}
	re := Wait(t, putEarly)
	if re.Err != nil || re.Message.Seq <= rm.Message.Seq {
		t.Errorf("second put: Seq %d (err %v), want more than the first's %d", re.Message.Seq, re.Err, rm.Message.Seq)
	}
	checkMessages(t, "anonymous u", AllPending(t, s, Anonymous("u"), p.Key), re.Message)
	checkMessages(t, "recipient", AllPending(t, s, p.Sub(), p.Key), re.Message)
}

func testClose(t *testing.T, s relay.Store) {
	p := NewPeer(1)
	const queued = 50
	chans := make([]<-chan relay.PutResult, queued)
	for i := range chans {
		chans[i] = s.Put(NewMessage(p, fmt.Sprintf("queued before close %d", i)), nil)
	}
	ack := s.Ack(p.Sub(), NewMessage(p, "queued before close 0").ID)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	var last int64
	for i, ch := range chans {
		r := Wait(t, ch)
		if r.Err != nil || r.Message.Seq <= last {
			t.Errorf("put %d queued before Close: Seq %d after %d, %v; want committed in order", i, r.Message.Seq, last, r.Err)
		}
		last = r.Message.Seq
	}
	if r := Wait(t, ack); r.Err != nil || !r.ByRecipient {
		t.Errorf("ack queued before Close = %+v, want committed, ByRecipient", r)
	}

	if r := Wait(t, s.Put(NewMessage(p, "after close"), nil)); !errors.Is(r.Err, relay.ErrClosed) {
		t.Errorf("Put after Close: %v, want ErrClosed", r.Err)
	}
	if r := Wait(t, s.Ack(p.Sub(), NewMessage(p, "queued before close 1").ID)); !errors.Is(r.Err, relay.ErrClosed) {
		t.Errorf("Ack after Close: %v, want ErrClosed", r.Err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

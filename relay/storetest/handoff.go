package storetest

import (
	"context"
	"testing"
	"time"

	"courier/relay"
)

// RunHandoff runs the behaviour suite of relay.HandoffStore, one subtest
// per behaviour, each on a fresh, empty store from open (which Run's
// rules apply to).
func RunHandoff(t *testing.T, open func(t *testing.T) relay.HandoffStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s relay.HandoffStore)
	}{
		{"HandoffClaimAndLease", testHandoffClaimAndLease},
		{"HandoffFinishIsFinal", testHandoffFinishIsFinal},
		{"HandoffRetry", testHandoffRetry},
		{"HandoffRecipientAck", testHandoffRecipientAck},
		{"HandoffDrop", testHandoffDrop},
		{"HandoffOfStoredMessage", testHandoffOfStoredMessage},
		{"HandoffSwept", testHandoffSwept},
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

// MustPutHandoff is PutHandoff that waits and fails t on an error.
func MustPutHandoff(t testing.TB, s relay.HandoffStore, m relay.Message, due time.Time) relay.PutResult {
	t.Helper()
	r := Wait(t, s.PutHandoff(m, due, nil))
	if r.Err != nil {
		t.Fatalf("PutHandoff(%s): %v", short(m.ID), r.Err)
	}
	return r
}

// MustClaim is ClaimHandoffs that fails t on an error.
func MustClaim(t testing.TB, s relay.HandoffStore, owner string, now time.Time, lease time.Duration) []relay.Handoff {
	t.Helper()
	hs, err := s.ClaimHandoffs(context.Background(), owner, now, lease, 100)
	if err != nil {
		t.Fatalf("ClaimHandoffs(%s): %v", owner, err)
	}
	return hs
}

func checkStatus(t testing.TB, s relay.HandoffStore, id string, want relay.HandoffState) {
	t.Helper()
	got, err := s.HandoffStatus(context.Background(), id)
	if err != nil || got != want {
		t.Errorf("HandoffStatus(%s) = %v, %v; want %v", short(id), got, err, want)
	}
}

func checkNext(t testing.TB, s relay.HandoffStore, want time.Time, wantOK bool) {
	t.Helper()
	got, ok, err := s.NextHandoff(context.Background())
	if err != nil || ok != wantOK || (ok && !got.Equal(want)) {
		t.Errorf("NextHandoff = %v, %v, %v; want %v, %v", got, ok, err, want, wantOK)
	}
}

// base is a fixed point in time the hand-off tests count from: the store
// compares the times it is given, never its own clock.
var base = time.Unix(1_900_000_000, 0)

// testHandoffClaimAndLease: a hand-off is claimed once it is due, by one
// owner at a time, and again by anyone after the lease.
func testHandoffClaimAndLease(t *testing.T, s relay.HandoffStore) {
	p := NewPeer(1)
	m := NewMessage(p, "hand me off")
	due := base.Add(time.Second)
	r := MustPutHandoff(t, s, m, due)
	if r.Handoff != relay.HandoffPending || r.Existing {
		t.Fatalf("PutHandoff: Handoff %v, Existing %v; want pending, new", r.Handoff, r.Existing)
	}
	checkStatus(t, s, m.ID, relay.HandoffPending)
	checkNext(t, s, due, true)
	if hs := MustClaim(t, s, "a", base, time.Minute); len(hs) != 0 {
		t.Errorf("claimed %d hand-offs before they were due", len(hs))
	}
	hs := MustClaim(t, s, "a", due, time.Minute)
	if len(hs) != 1 {
		t.Fatalf("claimed %d hand-offs once due, want 1", len(hs))
	}
	checkMessage(t, "claimed", hs[0].Message, m)
	if hs[0].Attempts != 0 || hs[0].Acked || hs[0].Message.StoredAt.IsZero() {
		t.Errorf("claimed %+v: want no attempts, not acked, StoredAt set", hs[0])
	}
	checkNext(t, s, due.Add(time.Minute), true)
	if hs := MustClaim(t, s, "b", due.Add(59*time.Second), time.Minute); len(hs) != 0 {
		t.Errorf("another owner claimed a hand-off within its lease")
	}
	if hs := MustClaim(t, s, "b", due.Add(time.Minute), time.Minute); len(hs) != 1 {
		t.Errorf("a hand-off whose lease ended was not claimed again (got %d)", len(hs))
	}
	if _, ok, err := s.NextHandoff(context.Background()); err != nil || !ok {
		t.Errorf("NextHandoff with a claimed hand-off = %v, %v; want one", ok, err)
	}
	checkNext(t, s, due.Add(2*time.Minute), true)
}

// testHandoffFinishIsFinal: a finished hand-off is never claimed again,
// not after a republish either, nor dropped.
func testHandoffFinishIsFinal(t *testing.T, s relay.HandoffStore) {
	ctx := context.Background()
	m := NewMessage(NewPeer(1), "once only")
	MustPutHandoff(t, s, m, base)
	if hs := MustClaim(t, s, "a", base, time.Minute); len(hs) != 1 {
		t.Fatalf("claimed %d, want 1", len(hs))
	}
	if err := s.FinishHandoff(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishHandoff(ctx, m.ID); err != nil {
		t.Errorf("FinishHandoff twice: %v", err)
	}
	checkStatus(t, s, m.ID, relay.HandoffDone)
	checkNext(t, s, time.Time{}, false)
	r := MustPutHandoff(t, s, m, base)
	if !r.Existing || r.Handoff != relay.HandoffDone {
		t.Errorf("republish of a handed-off message: Existing %v, Handoff %v; want existing, handed_off", r.Existing, r.Handoff)
	}
	if err := s.DropHandoff(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryHandoff(ctx, m.ID, "a", base); err != nil {
		t.Fatal(err)
	}
	checkStatus(t, s, m.ID, relay.HandoffDone)
	if hs := MustClaim(t, s, "a", base.Add(time.Hour), time.Minute); len(hs) != 0 {
		t.Errorf("a finished hand-off was claimed again")
	}
}

// testHandoffRetry: a failed attempt counts and sets the next due time;
// only the owner of the current claim can record it.
func testHandoffRetry(t *testing.T, s relay.HandoffStore) {
	ctx := context.Background()
	m := NewMessage(NewPeer(1), "try again")
	MustPutHandoff(t, s, m, base)
	MustClaim(t, s, "a", base, time.Second)
	next := base.Add(10 * time.Second)
	if err := s.RetryHandoff(ctx, m.ID, "a", next); err != nil {
		t.Fatal(err)
	}
	checkNext(t, s, next, true)
	if hs := MustClaim(t, s, "a", next.Add(-time.Nanosecond), time.Second); len(hs) != 0 {
		t.Errorf("claimed before the retry was due")
	}
	hs := MustClaim(t, s, "b", next, time.Second)
	if len(hs) != 1 || hs[0].Attempts != 1 {
		t.Fatalf("claim after a retry = %+v; want one hand-off with 1 attempt", hs)
	}
	// a's lease is over and b holds the claim: a's late report changes nothing.
	if err := s.RetryHandoff(ctx, m.ID, "a", base.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	checkNext(t, s, next.Add(time.Second), true)
	if err := s.RetryHandoff(ctx, m.ID, "b", next.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if hs := MustClaim(t, s, "c", next.Add(time.Minute), time.Second); len(hs) != 1 || hs[0].Attempts != 2 {
		t.Errorf("claim after two retries = %+v; want one with 2 attempts", hs)
	}
}

// testHandoffRecipientAck: only the recipient peer's ack marks a claimed
// hand-off Acked, and a put of a message its recipient has acked adds no
// hand-off.
func testHandoffRecipientAck(t *testing.T, s relay.HandoffStore) {
	p := NewPeer(1)
	m := NewMessage(p, "acked meanwhile")
	MustPutHandoff(t, s, m, base)
	MustAck(t, s, Anonymous(p.ID), m.ID) // an anonymous userID equal to the peer ID is not the peer
	hs := MustClaim(t, s, "a", base, time.Second)
	if len(hs) != 1 || hs[0].Acked {
		t.Fatalf("claim after an anonymous ack = %+v; want one, not acked", hs)
	}
	MustAck(t, s, p.Sub(), m.ID)
	hs = MustClaim(t, s, "a", base.Add(time.Second), time.Second)
	if len(hs) != 1 || !hs[0].Acked {
		t.Fatalf("claim after the recipient's ack = %+v; want one, acked", hs)
	}

	m2 := NewMessage(p, "acked before the fallback publish")
	MustPut(t, s, m2)
	MustAck(t, s, p.Sub(), m2.ID)
	r := MustPutHandoff(t, s, m2, base)
	if !r.RecipientAcked || r.Handoff != relay.HandoffNone {
		t.Errorf("PutHandoff of an acked message: RecipientAcked %v, Handoff %v; want acked, none", r.RecipientAcked, r.Handoff)
	}
	checkStatus(t, s, m2.ID, relay.HandoffNone)
}

// testHandoffDrop: a dropped hand-off is gone; a new PutHandoff may add it
// again.
func testHandoffDrop(t *testing.T, s relay.HandoffStore) {
	ctx := context.Background()
	m := NewMessage(NewPeer(1), "dropped")
	MustPutHandoff(t, s, m, base)
	if err := s.DropHandoff(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	checkStatus(t, s, m.ID, relay.HandoffNone)
	checkNext(t, s, time.Time{}, false)
	if hs := MustClaim(t, s, "a", base.Add(time.Hour), time.Second); len(hs) != 0 {
		t.Errorf("a dropped hand-off was claimed")
	}
	checkStatus(t, s, NewMessage(NewPeer(2), "never stored").ID, relay.HandoffNone)
}

// testHandoffOfStoredMessage: PutHandoff of a message stored by a plain
// Put adds its hand-off; a plain Put of a pending one leaves it alone.
func testHandoffOfStoredMessage(t *testing.T, s relay.HandoffStore) {
	m := NewMessage(NewPeer(1), "stored first")
	MustPut(t, s, m)
	checkStatus(t, s, m.ID, relay.HandoffNone)
	checkNext(t, s, time.Time{}, false)
	r := MustPutHandoff(t, s, m, base)
	if !r.Existing || r.Handoff != relay.HandoffPending {
		t.Errorf("PutHandoff of a stored message: Existing %v, Handoff %v; want existing, pending", r.Existing, r.Handoff)
	}
	MustPut(t, s, m)
	r = MustPutHandoff(t, s, m, base.Add(time.Hour))
	if r.Handoff != relay.HandoffPending {
		t.Errorf("PutHandoff again: Handoff %v, want pending", r.Handoff)
	}
	checkNext(t, s, base, true) // the first due time stands
}

// testHandoffSwept: a swept message takes its hand-off with it.
func testHandoffSwept(t *testing.T, s relay.HandoffStore) {
	m := NewMessage(NewPeer(1), "expires")
	MustPutHandoff(t, s, m, base)
	if n, err := s.Sweep(context.Background(), time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1", n, err)
	}
	checkNext(t, s, time.Time{}, false)
	if hs := MustClaim(t, s, "a", base.Add(time.Hour), time.Second); len(hs) != 0 {
		t.Errorf("claimed the hand-off of a swept message")
	}
	checkStatus(t, s, m.ID, relay.HandoffNone)
}

package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"courier/relay"
)

// RunQuota runs the quota part of the suite. open must return a new, empty
// store enforcing q each time it is called; RunQuota closes it when the
// subtest ends.
func RunQuota(t *testing.T, open func(t *testing.T, q relay.Quota) relay.Store) {
	openClosing := func(t *testing.T, q relay.Quota) relay.Store {
		s := open(t, q)
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	}
	t.Run("Limits", func(t *testing.T) { testQuotaLimits(t, openClosing) })
	t.Run("RecipientAckFrees", func(t *testing.T) { testQuotaRecipientAckFrees(t, openClosing) })
	t.Run("SharedKeySharesQuota", func(t *testing.T) { testQuotaSharedKey(t, openClosing(t, relay.Quota{MaxMessages: 2})) })
	t.Run("SweepFrees", func(t *testing.T) { testQuotaSweepFrees(t, openClosing(t, relay.Quota{MaxMessages: 2})) })
	t.Run("ConcurrentPutsStopAtQuota", func(t *testing.T) { testQuotaConcurrent(t, openClosing(t, relay.Quota{MaxMessages: 5})) })
}

// putExpect puts m and checks that it is stored (wantOver false) or
// refused with ErrOverQuota, and that Put's early callback heard it only
// when it was stored.
func putExpect(t testing.TB, s relay.Store, m relay.Message, wantOver bool, what string) relay.PutResult {
	t.Helper()
	heard := make(chan relay.PutResult, 1)
	r := Wait(t, s.Put(m, func(r relay.PutResult) { heard <- r }))
	switch {
	case wantOver && !errors.Is(r.Err, relay.ErrOverQuota):
		t.Errorf("%s (%d bytes): %v, want ErrOverQuota", what, len(m.Ciphertext), r.Err)
	case !wantOver && r.Err != nil:
		t.Errorf("%s (%d bytes): %v, want stored", what, len(m.Ciphertext), r.Err)
	}
	select {
	case e := <-heard:
		if r.Err != nil || e.Message.Seq != r.Message.Seq {
			t.Errorf("%s: early outcome Seq %d, result Seq %d (%v)", what, e.Message.Seq, r.Message.Seq, r.Err)
		}
	default:
		if r.Err == nil {
			t.Errorf("%s: stored, but its early outcome was not heard before the result", what)
		}
	}
	return r
}

func testQuotaLimits(t *testing.T, open func(*testing.T, relay.Quota) relay.Store) {
	const ok, over = false, true
	tests := []struct {
		name  string
		q     relay.Quota
		sizes []int
		want  []bool
	}{
		{"unlimited", relay.Quota{}, []int{1000, 1000, 1000, 1000, 1000}, []bool{ok, ok, ok, ok, ok}},
		{"count", relay.Quota{MaxMessages: 3}, []int{10, 10, 10, 10, 1}, []bool{ok, ok, ok, over, over}},
		{"bytes", relay.Quota{MaxBytes: 100}, []int{60, 50, 40, 1}, []bool{ok, over, ok, over}},
		{"one message over the byte quota", relay.Quota{MaxBytes: 100}, []int{101, 100, 0}, []bool{over, ok, ok}},
		{"both, bytes bind", relay.Quota{MaxMessages: 3, MaxBytes: 100}, []int{50, 50, 1}, []bool{ok, ok, over}},
		{"both, count binds", relay.Quota{MaxMessages: 3, MaxBytes: 100}, []int{1, 1, 1, 1}, []bool{ok, ok, ok, over}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, tt.q)
			ps := differentKeys(t, 2)
			p, other := ps[0], ps[1]
			var stored []relay.Message
			var bytes int64
			for i, size := range tt.sizes {
				m := NewMessage(p, Body(fmt.Sprint(i), size))
				r := putExpect(t, s, m, tt.want[i], fmt.Sprintf("put %d", i))
				if r.Err == nil {
					stored = append(stored, r.Message)
					bytes += int64(size)
				}
			}
			checkMessages(t, "stored", AllPending(t, s, Anonymous("u"), p.Key), stored...)
			if st := MustStats(t, s); st.Messages != int64(len(stored)) || st.Bytes != bytes {
				t.Errorf("Stats = %+v, want %d messages, %d bytes: a refused put stored something", st, len(stored), bytes)
			}
			// Republishing what is stored is never refused, full or not.
			for _, m := range stored {
				if r := Wait(t, s.Put(m, nil)); r.Err != nil || !r.Existing {
					t.Errorf("republish of a stored message: Existing=%v, %v", r.Existing, r.Err)
				}
			}
			// The quota is per key.
			putExpect(t, s, NewMessage(other, "another key"), false, "put to another key")
		})
	}
}

func testQuotaRecipientAckFrees(t *testing.T, open func(*testing.T, relay.Quota) relay.Store) {
	for _, q := range []relay.Quota{{MaxMessages: 2}, {MaxBytes: 100}} {
		t.Run(quotaName(q), func(t *testing.T) {
			s := open(t, q)
			a, b := PeersSharingKey()
			m1 := putExpect(t, s, NewMessage(a, Body("m1", 50)), false, "m1").Message
			putExpect(t, s, NewMessage(a, Body("m2", 50)), false, "m2")
			m3 := NewMessage(a, Body("m3", 50))
			putExpect(t, s, m3, true, "m3 with the key full")

			MustAck(t, s, Anonymous("u"), m1.ID)
			putExpect(t, s, m3, true, "m3 after an anonymous ack")
			MustAck(t, s, b.Sub(), m1.ID)
			putExpect(t, s, m3, true, "m3 after another peer's ack")
			MustAck(t, s, a.Sub(), m1.ID)
			putExpect(t, s, m3, false, "m3 after the recipient's ack")

			m4 := NewMessage(a, Body("m4", 50))
			putExpect(t, s, m4, true, "m4 with the key full again")
			MustAck(t, s, a.Sub(), m1.ID) // a no-op: must not free anything twice
			putExpect(t, s, m4, true, "m4 after a repeated recipient ack")
		})
	}
}

func quotaName(q relay.Quota) string {
	return fmt.Sprintf("messages=%d,bytes=%d", q.MaxMessages, q.MaxBytes)
}

// testQuotaSharedKey: peers that share a subscription key share its quota.
func testQuotaSharedKey(t *testing.T, s relay.Store) {
	a, b := PeersSharingKey()
	putExpect(t, s, NewMessage(a, "to a"), false, "to a")
	mb := putExpect(t, s, NewMessage(b, "to b"), false, "to b").Message
	putExpect(t, s, NewMessage(a, "to a again"), true, "to a with the shared key full")
	putExpect(t, s, NewMessage(b, "to b again"), true, "to b with the shared key full")
	MustAck(t, s, b.Sub(), mb.ID)
	putExpect(t, s, NewMessage(a, "to a again"), false, "to a after b acked")
}

// testQuotaSweepFrees: sweeping frees what the swept messages held, once:
// a message its recipient acked already is not freed a second time.
func testQuotaSweepFrees(t *testing.T, s relay.Store) {
	p := NewPeer(1)
	m1 := putExpect(t, s, NewMessage(p, "m1"), false, "m1").Message
	putExpect(t, s, NewMessage(p, "m2"), false, "m2")
	putExpect(t, s, NewMessage(p, "m3"), true, "m3 with the key full")
	MustAck(t, s, p.Sub(), m1.ID)
	putExpect(t, s, NewMessage(p, "m3"), false, "m3 after the recipient acked m1")

	if n, err := s.Sweep(context.Background(), time.Now().Add(time.Hour)); err != nil || n != 3 {
		t.Fatalf("Sweep = %d, %v; want 3", n, err)
	}
	putExpect(t, s, NewMessage(p, "n1"), false, "n1 after sweeping all")
	putExpect(t, s, NewMessage(p, "n2"), false, "n2 after sweeping all")
	putExpect(t, s, NewMessage(p, "n3"), true, "n3: the sweep freed more than the key held")
}

// testQuotaConcurrent: puts racing for the last places of a key: exactly
// the quota's worth is stored.
func testQuotaConcurrent(t *testing.T, s relay.Store) {
	const n, quota = 30, 5
	p := NewPeer(1)
	results := make([]relay.PutResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			results[i], _ = waitIn(t, s.Put(NewMessage(p, fmt.Sprintf("race %d", i)), nil))
		})
	}
	wg.Wait()
	stored := 0
	for i, r := range results {
		switch {
		case r.Err == nil:
			stored++
		case !errors.Is(r.Err, relay.ErrOverQuota):
			t.Errorf("put %d: %v", i, r.Err)
		}
	}
	if stored != quota {
		t.Errorf("%d of %d racing puts stored, want exactly %d", stored, n, quota)
	}
	if st := MustStats(t, s); st.Messages != quota {
		t.Errorf("Stats = %+v, want %d messages", st, quota)
	}
}

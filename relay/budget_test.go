package relay

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestByteBudget(t *testing.T) {
	b := newByteBudget(100)
	ctx := context.Background()
	if n, err := b.acquire(ctx, 60); err != nil || n != 60 {
		t.Fatalf("acquire 60: %d, %v", n, err)
	}
	// 50 does not fit: it waits, and a later small request waits behind it.
	big := make(chan int64)
	go func() { n, _ := b.acquire(ctx, 50); big <- n }()
	waitFor(t, "the 50 to queue", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 1 })
	small := make(chan int64)
	go func() { n, _ := b.acquire(ctx, 10); small <- n }()
	waitFor(t, "the 10 to queue", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 2 })
	select {
	case <-big:
		t.Fatal("50 granted over the budget")
	case <-small:
		t.Fatal("10 granted ahead of the 50 queued before it")
	case <-time.After(50 * time.Millisecond):
	}
	b.release(60)
	if n := <-big; n != 50 {
		t.Fatalf("big got %d", n)
	}
	if n := <-small; n != 10 {
		t.Fatalf("small got %d", n)
	}
	if got := b.inUse(); got != 60 {
		t.Fatalf("in use %d, want 60", got)
	}
	b.release(60)

	// Larger than the budget: clamped, waits for all of it.
	if n, err := b.acquire(ctx, 1000); err != nil || n != 100 {
		t.Fatalf("acquire 1000: %d, %v", n, err)
	}
	// A waiter whose context ends holds nothing, and does not block the
	// ones behind it.
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error)
	go func() { _, err := b.acquire(cctx, 100); errc <- err }()
	waitFor(t, "the 100 to queue", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 1 })
	behind := make(chan int64)
	go func() { n, _ := b.acquire(ctx, 1); behind <- n }()
	waitFor(t, "the 1 to queue", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.waiters) == 2 })
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("cancelled acquire succeeded")
	}
	b.release(100)
	if n := <-behind; n != 1 {
		t.Fatalf("behind got %d", n)
	}
	if got := b.inUse(); got != 1 {
		t.Fatalf("in use %d, want 1", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSentIDs(t *testing.T) {
	s := sentIDs{max: 3}
	id := func(i int) string { return fmt.Sprintf("%016x%048x", i, 0) }
	if s.take(id(1)) {
		t.Fatal("took an ID never sent")
	}
	for i := range 4 {
		s.add(id(i))
	}
	if s.take(id(0)) {
		t.Fatal("the oldest was not forgotten past max")
	}
	if !s.take(id(3)) || !s.take(id(1)) {
		t.Fatal("a recent one was forgotten")
	}
	if s.take(id(3)) {
		t.Fatal("taken twice")
	}
	if s.take("short") {
		t.Fatal("took a malformed ID")
	}
}

func TestAddrKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:443":             "addr:192.0.2.7",
		"[::ffff:192.0.2.7]:1":      "addr:192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:80": "addr:2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:80": "addr:2001:db8:1:2::/64",
		"not an address":            "addr:not an address",
	} {
		if got := addrKey(in); got != want {
			t.Errorf("addrKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestClientsForgetIdleEntries(t *testing.T) {
	lim := DefaultConfig().Limits
	lim.MaxConnectionsPerIP = 2
	cs := newClients(lim)
	a, ok := cs.openConn("addr:a")
	b, ok2 := cs.openConn("addr:a")
	if !ok || !ok2 {
		t.Fatal("refused under the limit")
	}
	if _, ok := cs.openConn("addr:a"); ok {
		t.Fatal("a third connection accepted with max 2")
	}
	cs.closeConn(a)
	cs.closeConn(b)
	if n := cs.size(); n != 0 {
		t.Fatalf("%d entries left with no connection and full buckets", n)
	}
	p := cs.peer("Qm1")
	if !p.publish.Allow() {
		t.Fatal("peer limiter empty")
	}
	cs.releasePeer(p)
	if n := cs.size(); n != 1 {
		t.Fatalf("%d entries: a peer whose bucket is not full yet is remembered", n)
	}
}

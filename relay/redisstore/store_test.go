package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"courier/relay"
	"courier/relay/redisstore/redistest"
	"courier/relay/storetest"
)

var quiet = slog.New(slog.DiscardHandler)

var namespaces atomic.Int64

// openTest opens a store on srv in a namespace of its own (so each store
// of the suite starts empty) and closes it when the test ends.
func openTest(t testing.TB, srv *redistest.Server, opts Options) *Store {
	t.Helper()
	if opts.Namespace == "" {
		opts.Namespace = fmt.Sprintf("t%d", namespaces.Add(1))
	}
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	s, err := Open(context.Background(), srv.Client(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestStore(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	storetest.Run(t, func(t *testing.T) relay.Store { return openTest(t, srv, Options{}) })
	storetest.RunQuota(t, func(t *testing.T, q relay.Quota) relay.Store {
		return openTest(t, srv, Options{Quota: q})
	})
	storetest.RunHandoff(t, func(t *testing.T) relay.HandoffStore { return openTest(t, srv, Options{}) })
}

func TestStoreSmallBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("the suite again with MaxBatch 2")
	}
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	storetest.Run(t, func(t *testing.T) relay.Store { return openTest(t, srv, Options{MaxBatch: 2}) })
}

// TestRedisRestart: what was acknowledged survives a kill -9 of Redis
// (appendonly, appendfsync always), and the store works again once Redis
// is back, loading its scripts anew.
func TestRedisRestart(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openTest(t, srv, Options{})
	p := storetest.NewPeer(1)
	var want []relay.Message
	for i := range 20 {
		want = append(want, storetest.MustPut(t, s, storetest.NewMessage(p, fmt.Sprintf("before %d", i))).Message)
	}
	srv.Restart()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("Ready after the restart: %v", err)
	}
	got := storetest.AllPending(t, s, storetest.Anonymous("u"), p.Key)
	if len(got) != len(want) {
		t.Fatalf("after the restart: %d messages, want %d", len(got), len(want))
	}
	r := storetest.MustPut(t, s, storetest.NewMessage(p, "after"))
	if r.Message.Seq <= want[len(want)-1].Seq {
		t.Errorf("Seq after the restart %d, want more than %d", r.Message.Seq, want[len(want)-1].Seq)
	}
	if st := storetest.MustStats(t, s); st.Messages != 21 {
		t.Errorf("Stats = %+v, want 21 messages", st)
	}
}

// TestReady: Ready fails while Redis is down and works again after.
func TestReady(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openTest(t, srv, Options{})
	ctx := context.Background()
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	srv.Stop()
	if err := s.Ready(ctx); err == nil {
		t.Fatal("Ready with Redis down: nil error")
	}
	r := storetest.Wait(t, s.Put(storetest.NewMessage(storetest.NewPeer(1), "redis is down"), nil))
	if r.Err == nil {
		t.Error("Put with Redis down: no error")
	}
	srv.Restart()
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("Ready after Redis came back: %v", err)
	}
}

// TestSentinelFailover: the store on Sentinel (one primary, one replica,
// three Sentinels on loopback). After the primary is killed, writes fail
// until the Sentinels have promoted the replica, then go to the new
// primary; the test measures how long that takes and counts what the
// asynchronous replication lost of what the old primary had answered.
func TestSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("a Redis failover takes several seconds")
	}
	sn := redistest.StartSentinel(t)
	rdb, err := NewClient(relay.StoreConfig{Driver: "redis", SentinelAddrs: sn.Addrs, MasterName: sn.MasterName})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), rdb, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	p := storetest.NewPeer(1)
	var acked []relay.Message
	for i := range 200 {
		acked = append(acked, storetest.MustPut(t, s, storetest.NewMessage(p, fmt.Sprintf("before failover %d", i))).Message)
	}
	killed := time.Now()
	sn.Primary.Stop() // kill -9
	var after relay.PutResult
	for i := 0; ; i++ {
		r := storetest.Wait(t, s.Put(storetest.NewMessage(p, fmt.Sprintf("during failover %d", i)), nil))
		if r.Err == nil {
			after = r
			break
		}
		if time.Since(killed) > 60*time.Second {
			t.Fatalf("no write succeeded within 60s of killing the primary: %v", r.Err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(killed)
	got := storetest.AllPending(t, s, storetest.Anonymous("u"), p.Key)
	have := make(map[string]bool)
	for _, m := range got {
		have[m.ID] = true
	}
	lost := 0
	for _, m := range acked {
		if !have[m.ID] {
			lost++
		}
	}
	if !have[after.Message.ID] {
		t.Errorf("the first write after the failover is not readable")
	}
	t.Logf("failover: writes resumed %v after the primary was killed (down-after 1s); %d of %d writes the old primary answered were lost by asynchronous replication",
		took.Round(10*time.Millisecond), lost, len(acked))
	if took > 30*time.Second {
		t.Errorf("writes resumed only after %v, want within 30s", took)
	}
}

// getCalls is how many GET commands srv has run (the ID index lookups).
func getCalls(t *testing.T, srv *redistest.Server) int64 {
	t.Helper()
	c := srv.Client()
	defer c.Close()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_get:calls="); ok {
			n, err := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	return 0
}

// storedEvents is a bus handler that reports the messages other instances
// stored.
type storedEvents chan string

func (c storedEvents) Stored(m relay.Message, _ bool) { c <- m.ID }
func (storedEvents) RecipientAcked(string)            {}
func (storedEvents) PeerConnected(string, int64)      {}
func (storedEvents) Resync(string)                    {}

// TestAckOfKnownIDNeedsNoLookup: an ack of a message this instance stored,
// or heard of on the bus, goes to Redis in one round trip: no lookup of
// the ID index (a GET) before the ack script.
func TestAckOfKnownIDNeedsNoLookup(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	ns := fmt.Sprintf("t%d", namespaces.Add(1))
	s1 := openTest(t, srv, Options{Namespace: ns})
	s2 := openTest(t, srv, Options{Namespace: ns})
	events := make(storedEvents, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s2.Listen(ctx, events); err != nil {
		t.Fatal(err)
	}
	p := storetest.NewPeer(1)
	m1 := storetest.MustPut(t, s1, storetest.NewMessage(p, "acked where it was stored")).Message
	m2 := storetest.MustPut(t, s1, storetest.NewMessage(p, "acked on another instance")).Message
	for range 2 {
		storetest.Wait(t, (<-chan string)(events))
	}
	before := getCalls(t, srv)
	if r := storetest.MustAck(t, s1, p.Sub(), m1.ID); !r.Found || !r.ByRecipient {
		t.Fatalf("ack on the storing instance: %+v", r)
	}
	if r := storetest.MustAck(t, s2, p.Sub(), m2.ID); !r.Found || !r.ByRecipient {
		t.Fatalf("ack on the other instance: %+v", r)
	}
	if n := getCalls(t, srv) - before; n != 0 {
		t.Errorf("the two acks looked up the ID index %d times, want 0", n)
	}
	// An ID it knows nothing of is looked up.
	if r := storetest.MustAck(t, s1, p.Sub(), storetest.NewMessage(p, "never stored").ID); r.Found {
		t.Fatalf("ack of an unknown ID: %+v", r)
	}
	if n := getCalls(t, srv) - before; n != 1 {
		t.Errorf("an ack of an unknown ID looked up the index %d times, want 1", n)
	}
}

// TestAckWithStaleKey: an instance remembers a message under one key;
// meanwhile another instance sweeps it and the same ciphertext is stored
// for another recipient (another key). An ack of it on the first instance
// still finds it where it is now.
func TestAckWithStaleKey(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	ns := fmt.Sprintf("t%d", namespaces.Add(1))
	s1 := openTest(t, srv, Options{Namespace: ns})
	s2 := openTest(t, srv, Options{Namespace: ns})
	a, b := storetest.NewPeer(1), storetest.NewPeer(2)
	if a.Key == b.Key {
		t.Fatal("test peers share a key")
	}
	storetest.MustPut(t, s1, storetest.NewMessage(a, "one ciphertext, two recipients in turn"))
	if n, err := s2.Sweep(context.Background(), time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v", n, err)
	}
	m := storetest.MustPut(t, s2, storetest.NewMessage(b, "one ciphertext, two recipients in turn")).Message
	if r := storetest.MustAck(t, s1, b.Sub(), m.ID); !r.Found || !r.ByRecipient || r.Recipient != b.ID {
		t.Fatalf("ack on the instance that remembered the old key: %+v, want found, by its recipient %s", r, b.ID)
	}
	if got := storetest.AllPending(t, s1, b.Sub(), b.Key); len(got) != 0 {
		t.Fatalf("still pending for its recipient after the ack: %v", storetest.IDs(got))
	}
}

// TestBatchOfOneKey: puts and acks of one subscription key queued at once
// (so that they share batches, and the puts one script) each see the ones
// before them, in call order: quota, a republish of a message put just
// before, an ack freeing room for the put after it.
func TestBatchOfOneKey(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	for round := range 5 {
		s := openTest(t, srv, Options{Quota: relay.Quota{MaxMessages: 5}})
		p := storetest.NewPeer(1)
		var ms []relay.Message
		for i := range 7 {
			ms = append(ms, storetest.NewMessage(p, fmt.Sprintf("round %d message %d", round, i)))
		}
		var puts []<-chan relay.PutResult
		for _, m := range ms[:5] {
			puts = append(puts, s.Put(m, nil))
		}
		ack := s.Ack(p.Sub(), ms[1].ID)
		puts = append(puts, s.Put(ms[5], nil), s.Put(ms[0], nil), s.Put(ms[6], nil))
		for i := range 5 {
			if r := storetest.Wait(t, puts[i]); r.Err != nil || r.Existing || r.Message.Seq != int64(i+1) {
				t.Fatalf("round %d: put %d: %+v, want stored as Seq %d", round, i, r, i+1)
			}
		}
		if r := storetest.Wait(t, ack); !r.Found || !r.ByRecipient {
			t.Fatalf("round %d: ack: %+v", round, r)
		}
		if r := storetest.Wait(t, puts[5]); r.Err != nil || r.Existing {
			t.Fatalf("round %d: put after the ack: %+v, want stored (the ack made room)", round, r)
		}
		if r := storetest.Wait(t, puts[6]); r.Err != nil || !r.Existing || r.Message.Seq != 1 {
			t.Fatalf("round %d: republish: %+v, want existing Seq 1", round, r)
		}
		if r := storetest.Wait(t, puts[7]); !errors.Is(r.Err, relay.ErrOverQuota) {
			t.Fatalf("round %d: put beyond the quota: %+v, want over quota", round, r)
		}
		if st := storetest.MustStats(t, s); st.Messages != 6 {
			t.Fatalf("round %d: Stats %+v, want 6 messages", round, st)
		}
	}
}

// TestRepublishInOneScript: a message put twice, then put with a hand-off,
// in one batch (one put script, which stores the group's new messages at
// its end): the second put finds the first (existing, same Seq, not acked
// by its recipient), the hand-off is recorded pending, and the message is
// stored once.
func TestRepublishInOneScript(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	var maxBatch atomic.Int64
	batched := 0
	for round := range 20 {
		maxBatch.Store(0)
		s := openTest(t, srv, Options{OnCommit: func(n int, _ time.Duration) {
			if int64(n) > maxBatch.Load() {
				maxBatch.Store(int64(n))
			}
		}})
		p := storetest.NewPeer(1)
		first := s.Put(storetest.NewMessage(p, fmt.Sprintf("round %d: keeps the writer busy", round)), nil)
		m := storetest.NewMessage(p, fmt.Sprintf("round %d: put twice, then with a hand-off", round))
		a, b := s.Put(m, nil), s.Put(m, nil)
		h := s.PutHandoff(m, time.Now().Add(time.Hour), nil)
		if r := storetest.Wait(t, first); r.Err != nil {
			t.Fatal(r.Err)
		}
		ra, rb, rh := storetest.Wait(t, a), storetest.Wait(t, b), storetest.Wait(t, h)
		if ra.Err != nil || ra.Existing || ra.Message.Seq != 2 {
			t.Fatalf("round %d: first put %+v, want stored as Seq 2", round, ra)
		}
		if rb.Err != nil || !rb.Existing || rb.RecipientAcked || rb.Message.Seq != 2 {
			t.Fatalf("round %d: second put %+v, want existing Seq 2, not acked", round, rb)
		}
		if rh.Err != nil || !rh.Existing || rh.Handoff != relay.HandoffPending {
			t.Fatalf("round %d: put with a hand-off %+v, want existing with a pending hand-off", round, rh)
		}
		if got := storetest.AllPending(t, s, p.Sub(), p.Key); len(got) != 2 {
			t.Fatalf("round %d: %d messages pending, want 2", round, len(got))
		}
		if st := storetest.MustStats(t, s); st.Messages != 2 {
			t.Fatalf("round %d: Stats %+v, want 2 messages", round, st)
		}
		if maxBatch.Load() >= 3 {
			batched++
		}
	}
	if batched == 0 {
		t.Fatal("the three puts of the message never shared a batch in 20 rounds: the test did not test one script")
	}
	t.Logf("%d of 20 rounds had the three puts in one batch", batched)
}

// TestLargePutGroup: thousands of puts of one key in one batch (one put
// script, which writes them with a few commands of many arguments, cut
// into chunks under Lua's limit) are all stored, in order. The batch is
// committed directly, as the writer would.
func TestLargePutGroup(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Fsync: "everysec"})
	s := openTest(t, srv, Options{MaxBatch: 6000})
	p := storetest.NewPeer(1)
	const n = 5000 // more than 8,000 arguments for one HSET
	batch := make([]*op, n)
	for i := range batch {
		m := storetest.NewMessage(p, fmt.Sprintf("message %d of a large batch", i))
		batch[i] = &op{put: &m, pres: make(chan relay.PutResult, 1), now: time.Now().UnixMicro()}
	}
	s.commit(batch)
	for i, o := range batch {
		if r := storetest.Wait(t, (<-chan relay.PutResult)(o.pres)); r.Err != nil || r.Existing || r.Message.Seq != int64(i+1) {
			t.Fatalf("put %d: %+v, want stored as Seq %d", i, r, i+1)
		}
	}
	if got := storetest.AllPending(t, s, p.Sub(), p.Key); len(got) != n {
		t.Fatalf("%d pending, want %d", len(got), n)
	}
}

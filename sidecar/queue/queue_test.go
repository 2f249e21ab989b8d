package queue

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"courier/internal/sqlitedb"
	"courier/wire"
)

const testRecipient = "QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUzSg"

var quiet = slog.New(slog.DiscardHandler)

func openTest(t testing.TB) (*Queue, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "courier.db")
	q, err := Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q, path
}

// ciphertext returns distinct test bytes for each n, size bytes long.
func ciphertext(n uint64, size int) []byte {
	b := make([]byte, max(size, 8))
	binary.BigEndian.PutUint64(b, n)
	for i := 8; i < len(b); i++ {
		b[i] = byte(i * 31)
	}
	return b
}

func mustEnqueue(t testing.TB, q *Queue, n uint64) Outbound {
	t.Helper()
	m, created, err := q.Enqueue(context.Background(), testRecipient, ciphertext(n, 64))
	if err != nil || !created {
		t.Fatalf("Enqueue(%d) = created %v, %v", n, created, err)
	}
	return m
}

func TestEnqueueGet(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	ct := ciphertext(1, 100)
	before := time.Now()
	m, created, err := q.Enqueue(ctx, testRecipient, ct)
	if err != nil || !created {
		t.Fatalf("Enqueue = %v, %v", created, err)
	}
	if m.ID != wire.MessageID(ct) || m.Recipient != testRecipient || string(m.Ciphertext) != string(ct) ||
		m.State != Queued || m.Path != PathNone || m.Attempts != 0 || m.Seq <= 0 || m.LastError != "" {
		t.Errorf("Enqueue returned %+v", m)
	}
	if m.CreatedAt.Before(before.Add(-time.Millisecond)) || m.CreatedAt.After(time.Now()) || !m.UpdatedAt.Equal(m.CreatedAt) || m.NextAttemptAt.After(time.Now()) {
		t.Errorf("Enqueue times: %+v", m)
	}

	got, err := q.Get(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !equalOutbound(got, m) {
		t.Errorf("Get = %+v\nwant %+v", got, m)
	}

	// Idempotent: the same ciphertext is the same message.
	again, created, err := q.Enqueue(ctx, testRecipient, ct)
	if err != nil || created || !equalOutbound(again, m) {
		t.Errorf("second Enqueue = %+v, created %v, %v; want the original, not created", again, created, err)
	}
	// ... whatever state it has reached meanwhile.
	if _, err := q.Transition(ctx, m.ID, []State{Queued}, Change{State: Delivered, Path: PathIndirect}); err != nil {
		t.Fatal(err)
	}
	if again, created, err := q.Enqueue(ctx, testRecipient, ct); err != nil || created || again.State != Delivered || again.Seq != m.Seq {
		t.Errorf("Enqueue of a delivered message = %+v, created %v, %v", again, created, err)
	}

	if _, err := q.Get(ctx, strings.Repeat("0", 64)); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
	if _, _, err := q.Enqueue(ctx, testRecipient, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("Enqueue(empty ciphertext) = %v, want ErrInvalid", err)
	}
	if _, _, err := q.Enqueue(ctx, "", ct); !errors.Is(err, ErrInvalid) {
		t.Errorf("Enqueue(no recipient) = %v, want ErrInvalid", err)
	}
}

func equalOutbound(a, b Outbound) bool {
	return a.Seq == b.Seq && a.ID == b.ID && a.Recipient == b.Recipient && string(a.Ciphertext) == string(b.Ciphertext) &&
		a.State == b.State && a.Path == b.Path && a.Attempts == b.Attempts && a.CreatedAt.Equal(b.CreatedAt) &&
		a.UpdatedAt.Equal(b.UpdatedAt) && a.LastError == b.LastError && a.NextAttemptAt.Equal(b.NextAttemptAt)
}

// TestGroupCommit: 50 concurrent enqueuers all commit, with distinct
// sequence numbers, in fewer transactions than messages.
func TestGroupCommit(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	const writers, each = 50, 20
	var wg sync.WaitGroup
	results := make([][]Outbound, writers)
	errs := make(chan error, writers*each)
	start := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			<-start
			for i := range each {
				m, created, err := q.Enqueue(ctx, testRecipient, ciphertext(uint64(w*each+i), 1024))
				if err != nil || !created {
					errs <- fmt.Errorf("writer %d message %d: created %v, %v", w, i, created, err)
					return
				}
				results[w] = append(results[w], m)
			}
		})
	}
	commitsBefore := q.commits.Load()
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seqs := map[int64]bool{}
	for _, ms := range results {
		for _, m := range ms {
			if seqs[m.Seq] {
				t.Errorf("seq %d returned twice", m.Seq)
			}
			seqs[m.Seq] = true
			if _, err := q.Get(ctx, m.ID); err != nil {
				t.Errorf("Get(%s) after Enqueue returned: %v", m.ID, err)
			}
		}
	}
	if len(seqs) != writers*each {
		t.Errorf("%d distinct seqs, want %d", len(seqs), writers*each)
	}
	c, err := q.Counts(ctx)
	if err != nil || c.State(Queued) != writers*each {
		t.Errorf("Counts = %+v, %v; want %d queued", c, err, writers*each)
	}
	commits := q.commits.Load() - commitsBefore
	t.Logf("%d messages in %d commits", writers*each, commits)
	if commits >= writers*each {
		t.Errorf("%d commits for %d messages: no group commit", commits, writers*each)
	}
}

func TestTransition(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	m := mustEnqueue(t, q, 1)

	next := time.Now().Add(time.Minute).Truncate(time.Microsecond)
	sent, err := q.Transition(ctx, m.ID, []State{Queued}, Change{State: Sending, Path: PathIndirect, AttemptsDelta: 1, NextAttemptAt: next})
	if err != nil {
		t.Fatal(err)
	}
	if sent.State != Sending || sent.Path != PathIndirect || sent.Attempts != 1 || !sent.NextAttemptAt.Equal(next) ||
		sent.LastError != "" || !sent.UpdatedAt.After(m.UpdatedAt) || !sent.CreatedAt.Equal(m.CreatedAt) || string(sent.Ciphertext) != string(m.Ciphertext) {
		t.Errorf("after queued→sending: %+v", sent)
	}
	if got, _ := q.Get(ctx, m.ID); !equalOutbound(got, sent) {
		t.Errorf("Get = %+v, want %+v", got, sent)
	}

	// The guard: not queued any more, so a second queued→sending fails
	// and changes nothing.
	cur, err := q.Transition(ctx, m.ID, []State{Queued}, Change{State: Sending, Path: PathOffline})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "state is sending") {
		t.Fatalf("guarded transition = %v, want ErrConflict naming the state", err)
	}
	if !equalOutbound(cur, sent) {
		t.Errorf("on conflict, Transition returned %+v, want the current %+v", cur, sent)
	}

	// Several from-states; LastError and AttemptsDelta.
	off, err := q.Transition(ctx, m.ID, []State{Queued, Sending}, Change{State: Sending, Path: PathOffline, LastError: "relay: queued", AttemptsDelta: 2})
	if err != nil || off.Attempts != 3 || off.LastError != "relay: queued" || off.Path != PathOffline || !off.NextAttemptAt.IsZero() {
		t.Errorf("sending→sending OFFLINE = %+v, %v", off, err)
	}
	done, err := q.Transition(ctx, m.ID, []State{Sending}, Change{State: HandedOff, Path: PathOffline})
	if err != nil || done.State != HandedOff || done.LastError != "" || done.Attempts != 3 {
		t.Errorf("sending→handed_off = %+v, %v", done, err)
	}

	if _, err := q.Transition(ctx, strings.Repeat("a", 64), []State{Queued}, Change{State: Sending}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown ID: %v, want ErrNotFound", err)
	}
	invalid := []struct {
		from []State
		c    Change
	}{
		{nil, Change{State: Sending}},
		{[]State{"lost"}, Change{State: Sending}},
		{[]State{Queued}, Change{State: "gone"}},
		{[]State{Queued}, Change{State: Sending, Path: "DIRECT"}},
	}
	for _, tt := range invalid {
		if _, err := q.Transition(ctx, m.ID, tt.from, tt.c); !errors.Is(err, ErrInvalid) {
			t.Errorf("Transition(%v, %+v) = %v, want ErrInvalid", tt.from, tt.c, err)
		}
	}
}

// TestTransitionRace: of many concurrent transitions out of queued, exactly
// one wins.
func TestTransitionRace(t *testing.T) {
	q, _ := openTest(t)
	m := mustEnqueue(t, q, 1)
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, err := q.Transition(context.Background(), m.ID, []State{Queued}, Change{State: Sending, Path: PathIndirect, AttemptsDelta: 1})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, ErrConflict):
				conflicts.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != 19 {
		t.Errorf("%d wins, %d conflicts; want 1 and 19", wins.Load(), conflicts.Load())
	}
	if got, _ := q.Get(context.Background(), m.ID); got.Attempts != 1 {
		t.Errorf("attempts = %d, want 1", got.Attempts)
	}
}

func seqsOf(ms []Outbound) []int64 {
	var s []int64
	for _, m := range ms {
		s = append(s, m.Seq)
	}
	return s
}

func TestDue(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	var all []Outbound
	for i := range 10 {
		all = append(all, mustEnqueue(t, q, uint64(i)))
	}
	now := time.Now()
	// 0-4 stay queued and due; 5, 6 are queued but due later; 7, 8 are
	// sending OFFLINE (8 due later); 9 is delivered.
	move := func(i int, from State, c Change) {
		t.Helper()
		if _, err := q.Transition(ctx, all[i].ID, []State{from}, c); err != nil {
			t.Fatal(err)
		}
	}
	later := now.Add(time.Hour)
	move(5, Queued, Change{State: Queued, NextAttemptAt: later})
	move(6, Queued, Change{State: Queued, Path: PathIndirect, NextAttemptAt: later})
	move(7, Queued, Change{State: Sending, Path: PathOffline, NextAttemptAt: now.Add(-time.Second)})
	move(8, Queued, Change{State: Sending, Path: PathOffline, NextAttemptAt: later})
	move(9, Queued, Change{State: Delivered, Path: PathIndirect})

	due := func(state State, path Path, at time.Time, after int64, limit int) []int64 {
		t.Helper()
		ms, err := q.Due(ctx, state, path, at, after, limit)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if len(m.Ciphertext) == 0 {
				t.Errorf("Due returned %s without its ciphertext", m.ID)
			}
		}
		return seqsOf(ms)
	}
	want := seqsOf(all[:5])
	// Paging through the due queued messages, two at a time.
	var got []int64
	var after int64
	for {
		page := due(Queued, PathNone, now, after, 2)
		if len(page) == 0 {
			break
		}
		if len(page) > 2 {
			t.Fatalf("page of %d, limit 2", len(page))
		}
		got = append(got, page...)
		after = page[len(page)-1]
	}
	if !slices.Equal(got, want) {
		t.Errorf("paged Due(queued) = %v, want %v", got, want)
	}
	if got := due(Queued, PathNone, later, 0, 100); !slices.Equal(got, seqsOf(all[:7])) {
		t.Errorf("Due(queued, an hour on) = %v, want %v", got, seqsOf(all[:7]))
	}
	if got := due(Queued, PathIndirect, later, 0, 100); !slices.Equal(got, []int64{all[6].Seq}) {
		t.Errorf("Due(queued, INDIRECT) = %v, want only %d", got, all[6].Seq)
	}
	if got := due(Sending, PathOffline, now, 0, 100); !slices.Equal(got, []int64{all[7].Seq}) {
		t.Errorf("Due(sending, OFFLINE) = %v, want only %d", got, all[7].Seq)
	}
	if got := due(Sending, PathIndirect, later, 0, 100); len(got) != 0 {
		t.Errorf("Due(sending, INDIRECT) = %v, want none", got)
	}
	if got := due(Delivered, PathNone, now, 0, 100); !slices.Equal(got, []int64{all[9].Seq}) {
		t.Errorf("Due(delivered) = %v", got)
	}
	if _, err := q.Due(ctx, "lost", PathNone, now, 0, 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("Due(bad state) = %v, want ErrInvalid", err)
	}
	if _, err := q.Due(ctx, Queued, PathNone, now, 0, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("Due(limit 0) = %v, want ErrInvalid", err)
	}
}

// TestQueryPlans: Due and PendingInbound are range scans of their indexes,
// in seq order, without a sort: cheap however long the tables grow.
func TestQueryPlans(t *testing.T) {
	q, _ := openTest(t)
	plans := map[string]string{
		`SELECT ` + outboxCols + ` FROM outbox WHERE state = ? AND seq > ? AND (? = '' OR path = ?) AND next_attempt_at <= ? ORDER BY seq LIMIT ?`: "outbox_due",
		`SELECT ` + inboxCols + ` FROM inbox WHERE state = 'pending' AND seq > ? AND next_attempt_at <= ? ORDER BY seq LIMIT ?`:                    "inbox_pending",
		`SELECT ` + outboxColsNoCT + ` FROM outbox ORDER BY updated_at DESC, seq DESC LIMIT ?`:                                                     "outbox_updated",
	}
	for query, index := range plans {
		n := strings.Count(query, "?")
		args := make([]any, n)
		for i := range args {
			args[i] = 1
		}
		rows, err := q.rdb.Query("EXPLAIN QUERY PLAN "+query, args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		p := strings.Join(plan, "; ")
		t.Logf("%s: %s", index, p)
		if !strings.Contains(p, index) || strings.Contains(p, "TEMP B-TREE") {
			t.Errorf("plan for %s…: %q; want %s without a temp b-tree", query[:40], p, index)
		}
	}
}

func TestCountsAndRecent(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	c, err := q.Counts(ctx)
	if err != nil || c.State(Queued) != 0 || c.InboxPending != 0 {
		t.Fatalf("empty Counts = %+v, %v", c, err)
	}
	var ms []Outbound
	for i := range 6 {
		ms = append(ms, mustEnqueue(t, q, uint64(i)))
	}
	changes := []Change{
		{State: Sending, Path: PathIndirect},
		{State: Sending, Path: PathOffline},
		{State: Delivered, Path: PathIndirect},
		{State: HandedOff, Path: PathOffline},
		{State: Failed, Path: PathOffline, LastError: "gave up"},
	}
	for i, ch := range changes {
		if _, err := q.Transition(ctx, ms[i].ID, []State{Queued}, ch); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		ct := ciphertext(uint64(100+i), 10)
		if _, err := q.AddInbound(ctx, wire.MessageID(ct), ct, time.Now()); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := q.MarkInboundDelivered(ctx, wire.MessageID(ct)); err != nil {
				t.Fatal(err)
			}
		}
	}
	c, err = q.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want int
	}{
		{"queued", c.State(Queued), 1},
		{"sending", c.State(Sending), 2},
		{"delivered", c.State(Delivered), 1},
		{"handed_off", c.State(HandedOff), 1},
		{"failed", c.State(Failed), 1},
		{"path none", c.Path(PathNone), 1},
		{"path INDIRECT", c.Path(PathIndirect), 2},
		{"path OFFLINE", c.Path(PathOffline), 3},
		{"sending OFFLINE", c.Count(Sending, PathOffline), 1},
		{"inbox pending", c.InboxPending, 2},
		{"inbox delivered", c.InboxDelivered, 1},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("Counts %s = %d, want %d", ck.name, ck.got, ck.want)
		}
	}

	recent, err := q.Recent(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	// The last transitioned come first; the one never touched is oldest.
	if want := []int64{ms[4].Seq, ms[3].Seq, ms[2].Seq}; !slices.Equal(seqsOf(recent), want) {
		t.Errorf("Recent(3) = %v, want %v", seqsOf(recent), want)
	}
	if recent[0].State != Failed || recent[0].LastError != "gave up" || recent[0].Ciphertext != nil {
		t.Errorf("Recent[0] = %+v", recent[0])
	}
}

func TestInbox(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	received := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	var ids []string
	var batch []NewInbound
	for i := range 5 {
		ct := ciphertext(uint64(i), 32)
		ids = append(ids, wire.MessageID(ct))
		batch = append(batch, NewInbound{ID: wire.MessageID(ct), Ciphertext: ct, ReceivedAt: received})
	}
	created, err := q.AddInbound(ctx, batch[0].ID, batch[0].Ciphertext, received)
	if err != nil || !created {
		t.Fatalf("AddInbound = %v, %v", created, err)
	}
	// Deduplicated by ID, within a batch too.
	createdAll, err := q.AddInboundBatch(ctx, append(batch, batch[1]))
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{false, true, true, true, true, false}; !slices.Equal(createdAll, want) {
		t.Errorf("AddInboundBatch created = %v, want %v", createdAll, want)
	}

	m, err := q.GetInbound(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != ids[0] || string(m.Ciphertext) != string(batch[0].Ciphertext) || !m.ReceivedAt.Equal(received) ||
		m.Delivered || !m.DeliveredAt.IsZero() || m.Attempts != 0 || !m.NextAttemptAt.IsZero() {
		t.Errorf("GetInbound = %+v", m)
	}

	pending := func(at time.Time, after int64, limit int) []string {
		t.Helper()
		ms, err := q.PendingInbound(ctx, at, after, limit)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range ms {
			got = append(got, m.ID)
		}
		return got
	}
	if got := pending(time.Now(), 0, 10); !slices.Equal(got, ids) {
		t.Errorf("PendingInbound = %v, want %v in order", got, ids)
	}

	// A failed push: not due until next.
	next := time.Now().Add(time.Hour)
	if err := q.InboundAttempt(ctx, ids[1], "node said 503", next); err != nil {
		t.Fatal(err)
	}
	if m, _ := q.GetInbound(ctx, ids[1]); m.Attempts != 1 || m.LastError != "node said 503" || !m.NextAttemptAt.Equal(next) {
		t.Errorf("after InboundAttempt: %+v", m)
	}
	// Delivered: never pending again; a second mark is fine.
	for range 2 {
		if err := q.MarkInboundDelivered(ctx, ids[0]); err != nil {
			t.Fatal(err)
		}
	}
	m, _ = q.GetInbound(ctx, ids[0])
	if !m.Delivered || m.DeliveredAt.IsZero() {
		t.Errorf("after MarkInboundDelivered: %+v", m)
	}
	first := m.DeliveredAt
	if err := q.MarkInboundDelivered(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if m, _ := q.GetInbound(ctx, ids[0]); !m.DeliveredAt.Equal(first) {
		t.Errorf("second mark moved DeliveredAt")
	}
	// An attempt recorded after delivery changes nothing.
	if err := q.InboundAttempt(ctx, ids[0], "late", next); err != nil {
		t.Fatal(err)
	}
	if m, _ := q.GetInbound(ctx, ids[0]); m.Attempts != 0 {
		t.Errorf("InboundAttempt on a delivered message counted: %+v", m)
	}
	// Redelivered by the relay after delivery: still a duplicate.
	if created, err := q.AddInbound(ctx, ids[0], batch[0].Ciphertext, time.Now()); err != nil || created {
		t.Errorf("AddInbound of a delivered ID = %v, %v; want not created", created, err)
	}

	if got, want := pending(time.Now(), 0, 10), []string{ids[2], ids[3], ids[4]}; !slices.Equal(got, want) {
		t.Errorf("PendingInbound now = %v, want %v", got, want)
	}
	if got, want := pending(next, 0, 10), ids[1:]; !slices.Equal(got, want) {
		t.Errorf("PendingInbound an hour on = %v, want %v", got, want)
	}
	m3, _ := q.GetInbound(ctx, ids[3])
	if got, want := pending(next, m3.Seq-1, 1), ids[3:4]; !slices.Equal(got, want) {
		t.Errorf("PendingInbound paged = %v, want %v", got, want)
	}

	unknown := strings.Repeat("f", 64)
	if _, err := q.GetInbound(ctx, unknown); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetInbound(unknown) = %v", err)
	}
	if err := q.MarkInboundDelivered(ctx, unknown); !errors.Is(err, ErrNotFound) {
		t.Errorf("MarkInboundDelivered(unknown) = %v", err)
	}
	if err := q.InboundAttempt(ctx, unknown, "x", next); !errors.Is(err, ErrNotFound) {
		t.Errorf("InboundAttempt(unknown) = %v", err)
	}
	if _, err := q.AddInbound(ctx, unknown, []byte("not its hash"), time.Now()); !errors.Is(err, ErrInvalid) {
		t.Errorf("AddInbound with a wrong ID = %v, want ErrInvalid", err)
	}
}

func TestPrune(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	var ms []Outbound
	for i := range 4 {
		ms = append(ms, mustEnqueue(t, q, uint64(i)))
	}
	for i, s := range []State{Delivered, HandedOff, Failed} {
		if _, err := q.Transition(ctx, ms[i].ID, []State{Queued}, Change{State: s}); err != nil {
			t.Fatal(err)
		}
	}
	ct := ciphertext(99, 8)
	id := wire.MessageID(ct)
	if _, err := q.AddInbound(ctx, id, ct, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := q.MarkInboundDelivered(ctx, id); err != nil {
		t.Fatal(err)
	}
	if out, in, err := q.Prune(ctx, time.Now().Add(-time.Hour)); err != nil || out != 0 || in != 0 {
		t.Errorf("Prune(an hour ago) = %d, %d, %v; want nothing", out, in, err)
	}
	if out, in, err := q.Prune(ctx, time.Now().Add(time.Second)); err != nil || out != 3 || in != 1 {
		t.Errorf("Prune(now) = %d, %d, %v; want 3, 1", out, in, err)
	}
	if _, err := q.Get(ctx, ms[3].ID); err != nil {
		t.Errorf("Prune deleted a queued message: %v", err)
	}
	if _, err := q.Get(ctx, ms[0].ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("delivered message still there after Prune: %v", err)
	}
}

func TestClose(t *testing.T) {
	q, path := openTest(t)
	ctx := context.Background()
	m := mustEnqueue(t, q, 1)

	// Writers racing Close: each write either commits or gets ErrClosed.
	var wg sync.WaitGroup
	var committed sync.Map
	var n atomic.Int32
	busy := make(chan struct{})
	for w := range 20 {
		wg.Go(func() {
			for i := range 50 {
				m, _, err := q.Enqueue(ctx, testRecipient, ciphertext(uint64(1000+w*50+i), 64))
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Enqueue during Close: %v", err)
					return
				}
				committed.Store(m.ID, true)
				if n.Add(1) == 100 {
					close(busy)
				}
			}
		})
	}
	<-busy // Close while the writers are at it
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := q.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}

	ops := map[string]error{}
	_, _, ops["Enqueue"] = q.Enqueue(ctx, testRecipient, ciphertext(2, 64))
	_, ops["Get"] = q.Get(ctx, m.ID)
	_, ops["Transition"] = q.Transition(ctx, m.ID, []State{Queued}, Change{State: Sending})
	_, ops["Due"] = q.Due(ctx, Queued, PathNone, time.Now(), 0, 10)
	_, ops["Counts"] = q.Counts(ctx)
	_, ops["Recent"] = q.Recent(ctx, 10)
	_, ops["AddInbound"] = q.AddInbound(ctx, m.ID, ciphertext(1, 64), time.Now())
	_, ops["PendingInbound"] = q.PendingInbound(ctx, time.Now(), 0, 10)
	_, ops["GetInbound"] = q.GetInbound(ctx, m.ID)
	ops["MarkInboundDelivered"] = q.MarkInboundDelivered(ctx, m.ID)
	ops["InboundAttempt"] = q.InboundAttempt(ctx, m.ID, "", time.Now())
	_, _, ops["Prune"] = q.Prune(ctx, time.Now())
	for name, err := range ops {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}

	// Everything acknowledged is there after reopening.
	q2, err := Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	total := 0
	committed.Range(func(k, _ any) bool {
		total++
		if _, err := q2.Get(ctx, k.(string)); err != nil {
			t.Errorf("committed %s lost: %v", k, err)
		}
		return true
	})
	t.Logf("%d writes committed before ErrClosed", total)
}

func TestOpenTwice(t *testing.T) {
	q, path := openTest(t)
	_, err := Open(path, Options{Logger: quiet})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path+".lock") {
		t.Fatalf("second Open = %v, want ErrLocked naming %s.lock", err, path)
	}
	mustEnqueue(t, q, 1)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q2, err := Open(path, Options{Logger: quiet, Synchronous: "normal"})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	defer q2.Close()
	if c, err := q2.Counts(context.Background()); err != nil || c.State(Queued) != 1 {
		t.Errorf("after reopen: %+v, %v", c, err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "no", "such", "dir.db"), Options{Logger: quiet}); err == nil || !strings.Contains(err.Error(), "no/such/dir.db") {
		t.Errorf("Open in a missing directory = %v, want an error naming the path", err)
	}
	if _, err := Open(filepath.Join(dir, "q.db"), Options{Synchronous: "extra"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Open(synchronous extra) = %v, want ErrInvalid", err)
	}
	// A database from a newer courier is refused.
	path := filepath.Join(dir, "newer.db")
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(path, Options{Logger: quiet}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open(newer schema) = %v", err)
	}
	// ... and the lock is released after a failed Open.
	if err := func() error {
		f, err := sqlitedb.Lock(path + ".lock")
		if err == nil {
			f.Close()
		}
		return err
	}(); err != nil {
		t.Errorf("lock still held after a failed Open: %v", err)
	}
}

func TestPathWithQuestionMark(t *testing.T) {
	path := filepath.Join(t.TempDir(), "odd?name#1%20.db")
	q, err := Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	mustEnqueue(t, q, 1)
	q.Close()
	q, err = Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if c, _ := q.Counts(context.Background()); c.State(Queued) != 1 {
		t.Errorf("reopened %q: %+v", path, c)
	}
}

func TestMigrationNumbering(t *testing.T) {
	ms, err := sqlitedb.LoadMigrations(migrationFS)
	if err != nil || len(ms) == 0 {
		t.Fatalf("sqlitedb.LoadMigrations = %d, %v", len(ms), err)
	}
}

func TestFileModes(t *testing.T) {
	q, path := openTest(t)
	mustEnqueue(t, q, 1)
	for _, name := range []string{path, path + "-wal", path + "-shm", path + ".lock"} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want readable by its owner only", name, fi.Mode())
		}
	}
}

// TestCheckpoint: the WAL is folded back and truncated, refused inbox
// rows are pruned like delivered ones, and pending ones are kept.
func TestCheckpointAndPruneRefused(t *testing.T) {
	q, path := openTest(t)
	ctx := context.Background()
	var ids []string
	for i := range 3 {
		ct := ciphertext(uint64(100+i), 4096)
		id := wire.MessageID(ct)
		ids = append(ids, id)
		if _, err := q.AddInbound(ctx, id, ct, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.MarkInboundRefused(ctx, ids[0], "node answered 422"); err != nil {
		t.Fatal(err)
	}
	if err := q.MarkInboundDelivered(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	if m, _ := q.GetInbound(ctx, ids[0]); m.State != InboxRefused || m.Attempts != 1 || m.LastError != "node answered 422" || m.DeliveredAt.IsZero() {
		t.Errorf("refused: %+v", m)
	}
	// A refused message cannot be refused again or pushed again; a
	// polling node may still ack it.
	if err := q.InboundAttempt(ctx, ids[0], "late", time.Now()); err != nil {
		t.Fatal(err)
	}
	if m, _ := q.GetInbound(ctx, ids[0]); m.Attempts != 1 {
		t.Errorf("InboundAttempt on a refused message counted: %+v", m)
	}
	c, err := q.Counts(ctx)
	if err != nil || c.InboxPending != 1 || c.InboxDelivered != 1 || c.InboxRefused != 1 {
		t.Errorf("Counts = %+v, %v", c, err)
	}
	if refused, err := q.RefusedInbound(ctx, 0, 10); err != nil || len(refused) != 1 || refused[0].ID != ids[0] {
		t.Errorf("RefusedInbound = %v, %v", refused, err)
	}
	if out, in, err := q.Prune(ctx, time.Now().Add(time.Second)); err != nil || out != 0 || in != 2 {
		t.Errorf("Prune = %d, %d, %v; want the refused and the delivered one", out, in, err)
	}
	if _, err := q.GetInbound(ctx, ids[2]); err != nil {
		t.Errorf("the pending message was pruned: %v", err)
	}
	if err := q.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() != 0 {
		t.Errorf("WAL is %d bytes after a checkpoint with no reader", fi.Size())
	}
	var limit int64
	if err := q.wdb.QueryRow("PRAGMA journal_size_limit").Scan(&limit); err != nil || limit != JournalSizeLimit {
		t.Errorf("journal_size_limit = %d, %v", limit, err)
	}
	// The writer's busy timeout is back to normal after the checkpoint.
	var busy int64
	if err := q.wdb.QueryRow("PRAGMA busy_timeout").Scan(&busy); err != nil || busy != busyTimeout.Milliseconds() {
		t.Errorf("busy_timeout after Checkpoint = %d, %v", busy, err)
	}
	mustEnqueue(t, q, 7)
}

// TestAtOnceTransitions: a publish answered before it was marked sending
// moves the message from queued in one write, counting that publish; from
// any other state they change nothing.
func TestAtOnceTransitions(t *testing.T) {
	q, _ := openTest(t)
	ctx := context.Background()
	a, b := mustEnqueue(t, q, 1), mustEnqueue(t, q, 2)

	done, err := q.DeliveredAtOnce(ctx, a.ID)
	if err != nil || done.State != Delivered || done.Path != PathIndirect || done.Attempts != 1 {
		t.Fatalf("DeliveredAtOnce = %+v, %v; want delivered INDIRECT, 1 attempt", done, err)
	}
	if _, err := q.DeliveredAtOnce(ctx, a.ID); !errors.Is(err, ErrConflict) {
		t.Errorf("DeliveredAtOnce of a delivered message = %v, want ErrConflict", err)
	}

	next := time.Now().Add(time.Minute).Truncate(time.Microsecond)
	again, err := q.RequeueAtOnce(ctx, b.ID, "relay: rate_limited", next)
	if err != nil || again.State != Queued || again.Path != PathNone || again.Attempts != 1 ||
		again.LastError != "relay: rate_limited" || !again.NextAttemptAt.Equal(next) {
		t.Fatalf("RequeueAtOnce = %+v, %v", again, err)
	}
	sent, err := q.MarkSending(ctx, b.ID)
	if err != nil || sent.Attempts != 2 {
		t.Fatalf("MarkSending after RequeueAtOnce = %+v, %v; want 2 attempts", sent, err)
	}
	if _, err := q.RequeueAtOnce(ctx, b.ID, "x", next); !errors.Is(err, ErrConflict) {
		t.Errorf("RequeueAtOnce of a sending message = %v, want ErrConflict", err)
	}
	if _, err := q.DeliveredAtOnce(ctx, b.ID); !errors.Is(err, ErrConflict) {
		t.Errorf("DeliveredAtOnce of a sending message = %v, want ErrConflict", err)
	}
}

package sqlitestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"courier/internal/sqlitedb"
	"courier/relay"
	"courier/relay/storetest"
)

var quiet = slog.New(slog.DiscardHandler)

// openTest opens a store in a fresh temporary directory and closes it when
// the test ends.
func openTest(t testing.TB, opts Options) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "relay.db")
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, path
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) relay.Store {
		s, _ := openTest(t, Options{})
		return s
	})
	storetest.RunQuota(t, func(t *testing.T, q relay.Quota) relay.Store {
		s, _ := openTest(t, Options{Quota: q})
		return s
	})
	storetest.RunHandoff(t, func(t *testing.T) relay.HandoffStore {
		s, _ := openTest(t, Options{})
		return s
	})
}

func TestStoreSmallBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("the suite again with MaxBatch 2 and synchronous=normal")
	}
	storetest.Run(t, func(t *testing.T) relay.Store {
		s, _ := openTest(t, Options{MaxBatch: 2, Synchronous: "normal"})
		return s
	})
}

func TestReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	s, err := Open(path, Options{Logger: quiet, Quota: relay.Quota{MaxMessages: 2}})
	if err != nil {
		t.Fatal(err)
	}
	p := storetest.NewPeer(1)
	m1 := storetest.MustPut(t, s, storetest.NewMessage(p, "one")).Message
	m2 := storetest.MustPut(t, s, storetest.NewMessage(p, "two")).Message
	storetest.MustAck(t, s, storetest.Anonymous("alice"), m1.ID)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, Options{Logger: quiet, Quota: relay.Quota{MaxMessages: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := storetest.IDs(storetest.AllPending(t, s, storetest.Anonymous("bob"), p.Key)); len(got) != 2 || got[0] != m1.ID || got[1] != m2.ID {
		t.Errorf("after reopen bob gets %v", got)
	}
	if got := storetest.AllPending(t, s, storetest.Anonymous("alice"), p.Key); len(got) != 1 || got[0].Seq != m2.Seq || !got[0].StoredAt.Equal(m2.StoredAt) {
		t.Errorf("after reopen alice gets %+v, want only m2 as stored", got)
	}
	if r := storetest.Wait(t, s.Put(storetest.NewMessage(p, "three"), nil)); !errors.Is(r.Err, relay.ErrOverQuota) {
		t.Errorf("put over quota after reopen: %v; the usage table did not survive", r.Err)
	}
	storetest.MustAck(t, s, p.Sub(), m1.ID)
	r := storetest.MustPut(t, s, storetest.NewMessage(p, "three"))
	if r.Message.Seq <= m2.Seq {
		t.Errorf("Seq after reopen %d, want more than %d", r.Message.Seq, m2.Seq)
	}
	if st := storetest.MustStats(t, s); st.Messages != 3 {
		t.Errorf("Stats = %+v, want 3 messages", st)
	}
}

func TestCloseFlushesToDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	s, err := Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	p := storetest.NewPeer(1)
	var chans []<-chan relay.PutResult
	for i := range 200 {
		chans = append(chans, s.Put(storetest.NewMessage(p, fmt.Sprintf("flushed %d", i)), nil))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for i, ch := range chans {
		if r := storetest.Wait(t, ch); r.Err != nil {
			t.Fatalf("put %d queued before Close: %v", i, r.Err)
		}
	}
	s, err = Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := storetest.AllPending(t, s, storetest.Anonymous("u"), p.Key); len(got) != 200 {
		t.Errorf("after reopen %d messages, want 200", len(got))
	}
}

func TestClosedReads(t *testing.T) {
	s, _ := openTest(t, Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Pending(ctx, storetest.Anonymous("u"), "k", 0, 10); !errors.Is(err, relay.ErrClosed) {
		t.Errorf("Pending after Close: %v", err)
	}
	if _, err := s.Stats(ctx); !errors.Is(err, relay.ErrClosed) {
		t.Errorf("Stats after Close: %v", err)
	}
	if _, err := s.Sweep(ctx, time.Now()); !errors.Is(err, relay.ErrClosed) {
		t.Errorf("Sweep after Close: %v", err)
	}
}

func TestErrLocked(t *testing.T) {
	s, path := openTest(t, Options{})
	_, err := Open(path, Options{Logger: quiet})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open of %s: %v, want ErrLocked", path, err)
	}
	t.Logf("second Open: %v", err)
	for _, want := range []string{path + ".lock", "another courier-relay"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// The first store is unharmed.
	storetest.MustPut(t, s, storetest.NewMessage(storetest.NewPeer(1), "still works"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s2.Close()
}

func TestOpenRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"synchronous", Options{Synchronous: "off"}, "Synchronous"},
		{"batch", Options{MaxBatch: -1}, "MaxBatch"},
		{"quota", Options{Quota: relay.Quota{MaxBytes: -1}}, "Quota"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Logger = quiet
			path := filepath.Join(t.TempDir(), "relay.db")
			if _, err := Open(path, tt.opts); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open: %v, want an error naming %s", err, tt.want)
			}
		})
	}
	t.Run("missing directory", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "no", "such", "dir", "relay.db")
		if _, err := Open(path, Options{Logger: quiet}); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("Open: %v, want an error naming %s", err, path)
		}
	})
}

func TestPathNeedingEscapes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a?b#c%d", "relay.db")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.MustPut(t, s, storetest.NewMessage(storetest.NewPeer(1), "x"))
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at %s: %v", path, err)
	}
}

func TestPragmas(t *testing.T) {
	for _, tt := range []struct {
		sync string
		want int
	}{{"", 2}, {"full", 2}, {"normal", 1}} {
		t.Run("synchronous="+tt.sync, func(t *testing.T) {
			s, _ := openTest(t, Options{Synchronous: tt.sync})
			ctx := context.Background()
			for _, p := range []struct {
				pragma string
				want   string
			}{
				{"journal_mode", "wal"},
				{"synchronous", fmt.Sprint(tt.want)},
				{"foreign_keys", "1"},
				{"busy_timeout", fmt.Sprint(busyTimeout.Milliseconds())},
			} {
				var got string
				if err := s.w.QueryRowContext(ctx, "PRAGMA "+p.pragma).Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != p.want {
					t.Errorf("writer PRAGMA %s = %s, want %s", p.pragma, got, p.want)
				}
			}
			if _, err := s.r.ExecContext(ctx, "CREATE TABLE nope (x)"); err == nil {
				t.Errorf("the read pool can write")
			}
		})
	}
}

func TestMigrations(t *testing.T) {
	ms, err := sqlitedb.LoadMigrations(migrationFS)
	if err != nil {
		t.Fatal(err)
	}
	s, path := openTest(t, Options{})
	var v int
	if err := s.w.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != len(ms) {
		t.Fatalf("user_version = %d, %v; want %d", v, err, len(ms))
	}
	// Running them again changes nothing (each applies once).
	if got, err := sqlitedb.Migrate(context.Background(), s.w, ms); err != nil || got != len(ms) {
		t.Errorf("migrate again = %d, %v", got, err)
	}
	// A database from a newer program is refused, not guessed at.
	if _, err := s.w.Exec(fmt.Sprintf("PRAGMA user_version = %d", len(ms)+1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{Logger: quiet}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open of a newer schema: %v", err)
	}

	bad := []struct {
		name string
		fs   fstest.MapFS
	}{
		{"gap", fstest.MapFS{"migrations/0001_a.sql": {}, "migrations/0003_c.sql": {}}},
		{"no number", fstest.MapFS{"migrations/init.sql": {}}},
		{"zero", fstest.MapFS{"migrations/0000_a.sql": {}}},
	}
	for _, tt := range bad {
		if _, err := sqlitedb.LoadMigrations(tt.fs); err == nil {
			t.Errorf("sqlitedb.LoadMigrations(%s) accepted", tt.name)
		}
	}
}

// TestMigrationIsAtomic: a migration that fails half-way leaves neither its
// statements nor its version behind.
func TestMigrationIsAtomic(t *testing.T) {
	s, _ := openTest(t, Options{})
	ms, err := sqlitedb.LoadMigrations(migrationFS)
	if err != nil {
		t.Fatal(err)
	}
	broken := append(ms, sqlitedb.Migration{Version: len(ms) + 1, Name: "broken.sql",
		SQL: "CREATE TABLE half (x); INSERT INTO no_such_table VALUES (1);"})
	if _, err := sqlitedb.Migrate(context.Background(), s.w, broken); err == nil || !strings.Contains(err.Error(), "broken.sql") {
		t.Fatalf("migrate with a broken step: %v", err)
	}
	var v, n int
	if err := s.w.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != len(ms) {
		t.Errorf("user_version = %d, %v; want %d", v, err, len(ms))
	}
	if err := s.w.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = 'half'").Scan(&n); err != nil || n != 0 {
		t.Errorf("table of the failed migration exists: %d, %v", n, err)
	}
}

// TestQueryPlans checks that the hot queries walk an index, never the whole
// messages table, and need no sort, on a store with a backlog (and, as in
// production, no ANALYZE statistics).
func TestQueryPlans(t *testing.T) {
	s, _ := openTest(t, Options{})
	a, b := storetest.PeersSharingKey()
	var chans []<-chan relay.PutResult
	for i := range 300 {
		to := a
		if i%3 == 0 {
			to = b
		}
		chans = append(chans, s.Put(storetest.NewMessage(to, fmt.Sprintf("backlog %d", i)), nil))
	}
	for _, ch := range chans {
		if r := storetest.Wait(t, ch); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	queries := []struct {
		name string
		sql  string
		args []any
		want string
	}{
		{"pending anonymous", pendingAnonymousSQL, []any{a.Key, 10, "u", 100}, "messages_key"},
		{"pending peer", pendingPeerSQL, []any{a.ID, 10, 100}, "messages_unacked"},
		{"by id", `SELECT seq FROM messages WHERE id = ?`, []any{"x"}, "messages_id"},
		{"sweep", sweepSQL, []any{time.Now().UnixNano(), 256}, "messages_stored_at"},
		{"quota usage", `SELECT messages, bytes FROM key_usage WHERE key = ?`, []any{a.Key}, "PRIMARY KEY"},
	}
	for _, q := range queries {
		t.Run(q.name, func(t *testing.T) {
			rows, err := s.r.Query("EXPLAIN QUERY PLAN "+q.sql, q.args...)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			var plan []string
			for rows.Next() {
				var id, parent, notused int
				var detail string
				if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, detail)
			}
			all := strings.Join(plan, "; ")
			t.Logf("plan: %s", all)
			if !strings.Contains(all, q.want) || strings.Contains(all, "SCAN m") || strings.Contains(all, "TEMP B-TREE") {
				t.Errorf("plan %q: want a search of index %s, no scan, no sort", all, q.want)
			}
		})
	}
}

// putBatch queues ms under one lock, so the writer takes them as one batch
// (up to MaxBatch).
func (s *Store) putBatch(ms ...relay.Message) []<-chan relay.PutResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	chans := make([]<-chan relay.PutResult, len(ms))
	for i, m := range ms {
		ch := make(chan relay.PutResult, 1)
		s.queue = append(s.queue, &putWrite{m: m, ch: ch})
		chans[i] = ch
	}
	s.cond.Signal()
	return chans
}

func TestGroupCommit(t *testing.T) {
	var mu sync.Mutex
	var batches []int
	s, _ := openTest(t, Options{MaxBatch: 10, OnCommit: func(n int, d time.Duration) {
		mu.Lock()
		batches = append(batches, n)
		mu.Unlock()
	}})
	p := storetest.NewPeer(1)
	var ms []relay.Message
	for i := range 35 {
		ms = append(ms, storetest.NewMessage(p, fmt.Sprintf("group %d", i)))
	}
	var last int64
	for i, ch := range s.putBatch(ms...) {
		r := storetest.Wait(t, ch)
		if r.Err != nil || r.Message.Seq != last+1 {
			t.Fatalf("put %d: Seq %d, %v; want %d", i, r.Message.Seq, r.Err, last+1)
		}
		last = r.Message.Seq
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(batches) != "[10 10 10 5]" {
		t.Errorf("commits of %v writes, want [10 10 10 5]", batches)
	}
}

func TestBatchByteCap(t *testing.T) {
	var mu sync.Mutex
	var batches []int
	s, _ := openTest(t, Options{OnCommit: func(n int, d time.Duration) {
		mu.Lock()
		batches = append(batches, n)
		mu.Unlock()
	}})
	s.batchBytes = 100
	p := storetest.NewPeer(1)
	var ms []relay.Message
	for i, size := range []int{40, 40, 40, 150, 10, 10} {
		ms = append(ms, storetest.NewMessage(p, storetest.Body(fmt.Sprint(i), size)))
	}
	for i, ch := range s.putBatch(ms...) {
		if r := storetest.Wait(t, ch); r.Err != nil {
			t.Fatalf("put %d: %v", i, r.Err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// A write larger than the cap still goes, alone.
	if fmt.Sprint(batches) != "[2 1 1 2]" {
		t.Errorf("commits of %v writes, want [2 1 1 2]", batches)
	}
}

// TestPoisonedWrite: a write whose statement fails gets its error alone;
// the writes around it in the same batch commit, in order, and nothing of
// it is stored.
func TestPoisonedWrite(t *testing.T) {
	var commits []int
	s, _ := openTest(t, Options{OnCommit: func(n int, _ time.Duration) { commits = append(commits, n) }})
	poison := storetest.NewPeer(666)
	if _, err := s.w.Exec(fmt.Sprintf(`CREATE TEMP TRIGGER poison BEFORE INSERT ON messages
		WHEN NEW.recipient = '%s' BEGIN SELECT RAISE(ABORT, 'poisoned'); END`, poison.ID)); err != nil {
		t.Fatal(err)
	}
	p := storetest.NewPeer(1)
	chans := s.putBatch(
		storetest.NewMessage(p, "before"),
		storetest.NewMessage(poison, "poison"),
		storetest.NewMessage(p, "after"),
	)
	before, bad, after := storetest.Wait(t, chans[0]), storetest.Wait(t, chans[1]), storetest.Wait(t, chans[2])
	if bad.Err == nil || !strings.Contains(bad.Err.Error(), "poisoned") {
		t.Errorf("poisoned put: %v, want its own error", bad.Err)
	}
	if before.Err != nil || after.Err != nil || after.Message.Seq != before.Message.Seq+1 {
		t.Errorf("neighbours: Seq %d (%v), Seq %d (%v); want consecutive Seqs, no errors",
			before.Message.Seq, before.Err, after.Message.Seq, after.Err)
	}
	if st := storetest.MustStats(t, s); st.Messages != 2 {
		t.Errorf("Stats = %+v, want the 2 good messages", st)
	}
	if got := storetest.AllPending(t, s, poison.Sub(), poison.Key); len(got) != 0 {
		t.Errorf("poisoned message stored")
	}
	if fmt.Sprint(commits) != "[2]" {
		t.Errorf("commits %v, want one of the 2 good writes", commits)
	}
	checkUsage(t, s)
}

// TestPoisonedWriteEarlyOutcomes: a put announced early, in a batch that
// runs again without a failed write, is announced once, with the Seq it
// ends with.
func TestPoisonedWriteEarlyOutcomes(t *testing.T) {
	s, _ := openTest(t, Options{})
	poison := storetest.NewPeer(666)
	if _, err := s.w.Exec(fmt.Sprintf(`CREATE TEMP TRIGGER poison BEFORE INSERT ON messages
		WHEN NEW.recipient = '%s' BEGIN SELECT RAISE(ABORT, 'poisoned'); END`, poison.ID)); err != nil {
		t.Fatal(err)
	}
	p := storetest.NewPeer(1)
	var (
		mu    sync.Mutex
		heard []relay.PutResult
	)
	early := func(r relay.PutResult) {
		mu.Lock()
		heard = append(heard, r)
		mu.Unlock()
	}
	s.mu.Lock()
	var chans []chan relay.PutResult
	for _, m := range []relay.Message{
		storetest.NewMessage(p, "before"),
		storetest.NewMessage(poison, "poison"),
		storetest.NewMessage(p, "after"),
	} {
		ch := make(chan relay.PutResult, 1)
		s.queue = append(s.queue, &putWrite{m: m, ch: ch, early: early})
		chans = append(chans, ch)
	}
	s.cond.Signal()
	s.mu.Unlock()
	before, bad, after := storetest.Wait(t, chans[0]), storetest.Wait(t, chans[1]), storetest.Wait(t, chans[2])
	if before.Err != nil || bad.Err == nil || after.Err != nil {
		t.Fatalf("results: %v, %v, %v", before.Err, bad.Err, after.Err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(heard) != 2 || heard[0].Message.Seq != before.Message.Seq || heard[1].Message.Seq != after.Message.Seq {
		var seqs []int64
		for _, r := range heard {
			seqs = append(seqs, r.Message.Seq)
		}
		t.Errorf("early outcomes with Seqs %v, want once each: %d, %d", seqs, before.Message.Seq, after.Message.Seq)
	}
}

// TestCommitFailure: when the commit itself fails, every write of the batch
// gets the error and none is applied; the store goes on working.
func TestCommitFailure(t *testing.T) {
	s, _ := openTest(t, Options{})
	doom := storetest.NewPeer(13)
	// A deferred foreign key violation is only detected at COMMIT.
	for _, q := range []string{
		`CREATE TABLE doom (seq INTEGER REFERENCES messages (seq) DEFERRABLE INITIALLY DEFERRED)`,
		fmt.Sprintf(`CREATE TRIGGER doom_at_commit AFTER INSERT ON messages WHEN NEW.recipient = '%s'
			BEGIN INSERT INTO doom VALUES (-1); END`, doom.ID),
	} {
		if _, err := s.w.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	p := storetest.NewPeer(1)
	ok := storetest.MustPut(t, s, storetest.NewMessage(p, "committed earlier"))
	chans := s.putBatch(
		storetest.NewMessage(p, "a"),
		storetest.NewMessage(doom, "dooms the commit"),
		storetest.NewMessage(p, "b"),
	)
	for i, ch := range chans {
		if r := storetest.Wait(t, ch); r.Err == nil || !strings.Contains(r.Err.Error(), "commit") {
			t.Errorf("put %d of the failed batch: %v, want the commit error", i, r.Err)
		}
	}
	if st := storetest.MustStats(t, s); st.Messages != 1 {
		t.Errorf("Stats = %+v, want only the earlier message", st)
	}
	r := storetest.MustPut(t, s, storetest.NewMessage(p, "a"))
	if r.Existing || r.Message.Seq != ok.Message.Seq+1 {
		t.Errorf("put after the failed batch: Existing=%v Seq %d; want new, Seq %d", r.Existing, r.Message.Seq, ok.Message.Seq+1)
	}
	checkUsage(t, s)
}

func TestSweepInSteps(t *testing.T) {
	var mu sync.Mutex
	commits := 0
	s, _ := openTest(t, Options{OnCommit: func(int, time.Duration) { mu.Lock(); commits++; mu.Unlock() }})
	s.sweepChunk = 3
	p := storetest.NewPeer(1)
	var ms []relay.Message
	for i := range 10 {
		ms = append(ms, storetest.NewMessage(p, fmt.Sprintf("old %d", i)))
	}
	for _, ch := range s.putBatch(ms...) {
		if r := storetest.Wait(t, ch); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	mu.Lock()
	commits = 0
	mu.Unlock()
	if n, err := s.Sweep(context.Background(), time.Now().Add(time.Hour)); err != nil || n != 10 {
		t.Fatalf("Sweep = %d, %v", n, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if commits != 4 {
		t.Errorf("Sweep of 10 in steps of 3 took %d commits, want 4", commits)
	}
}

func TestSweepHonoursContext(t *testing.T) {
	s, _ := openTest(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Sweep(ctx, time.Now()); !errors.Is(err, context.Canceled) {
		t.Errorf("Sweep with a cancelled context: %v", err)
	}
}

func TestPutRejectsIncompleteMessage(t *testing.T) {
	s, _ := openTest(t, Options{})
	m := storetest.NewMessage(storetest.NewPeer(1), "x")
	for _, tt := range []struct {
		name string
		edit func(*relay.Message)
	}{
		{"no ID", func(m *relay.Message) { m.ID = "" }},
		{"no key", func(m *relay.Message) { m.Key = "" }},
		{"no recipient", func(m *relay.Message) { m.Recipient = "" }},
	} {
		bad := m
		tt.edit(&bad)
		if r := storetest.Wait(t, s.Put(bad, nil)); r.Err == nil {
			t.Errorf("Put with %s: stored", tt.name)
		}
	}
	nilCT := m
	nilCT.Ciphertext = nil
	if r := storetest.MustPut(t, s, nilCT); len(r.Message.Ciphertext) != 0 {
		t.Errorf("nil ciphertext stored as %q", r.Message.Ciphertext)
	}
}

// checkUsage compares the running key_usage and totals with what a full
// scan of messages computes.
func checkUsage(t testing.TB, s *Store) {
	t.Helper()
	query := func(q string) map[string][2]int64 {
		rows, err := s.r.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		m := make(map[string][2]int64)
		for rows.Next() {
			var k string
			var n, b int64
			if err := rows.Scan(&k, &n, &b); err != nil {
				t.Fatal(err)
			}
			m[k] = [2]int64{n, b}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return m
	}
	usage := query(`SELECT key, messages, bytes FROM key_usage`)
	want := query(`SELECT key, count(*), sum(size) FROM messages WHERE recipient_acked = 0 GROUP BY key`)
	if fmt.Sprint(usage) != fmt.Sprint(want) {
		t.Errorf("key_usage %v, messages say %v", usage, want)
	}
	// The writer's copy in memory, read by the writer between batches.
	snap := &usageSnapshot{ch: make(chan map[string][2]int64, 1)}
	if !s.enqueue(snap) {
		t.Fatal("store closed")
	}
	if mem := storetest.Wait(t, snap.ch); fmt.Sprint(mem) != fmt.Sprint(want) {
		t.Errorf("quota usage in memory %v, messages say %v", mem, want)
	}
	totals := query(`SELECT 'all', messages, bytes FROM totals`)
	wantTotals := query(`SELECT 'all', count(*), coalesce(sum(size), 0) FROM messages`)
	if fmt.Sprint(totals) != fmt.Sprint(wantTotals) {
		t.Errorf("totals %v, messages say %v", totals, wantTotals)
	}
	var orphans int
	if err := s.r.QueryRow(`SELECT count(*) FROM acks WHERE seq NOT IN (SELECT seq FROM messages)`).Scan(&orphans); err != nil || orphans != 0 {
		t.Errorf("%d acks of deleted messages (%v)", orphans, err)
	}
}

// TestUsageStaysConsistent drives random puts, acks and sweeps and checks
// the running counters against a full recount after each round.
func TestUsageStaysConsistent(t *testing.T) {
	s, _ := openTest(t, Options{Quota: relay.Quota{MaxMessages: 8, MaxBytes: 400}})
	rng := rand.New(rand.NewPCG(1, 2))
	a, b := storetest.PeersSharingKey()
	peers := []storetest.Peer{a, b, storetest.NewPeer(1), storetest.NewPeer(2)}
	var stored []relay.Message
	for round := range 20 {
		var puts []<-chan relay.PutResult
		var acks []<-chan relay.AckResult
		for i := range 30 {
			to := peers[rng.IntN(len(peers))]
			switch op := rng.IntN(10); {
			case op < 5 || len(stored) == 0:
				body := storetest.Body(fmt.Sprintf("r%d-%d", round, i), 1+rng.IntN(80))
				puts = append(puts, s.Put(storetest.NewMessage(to, body), nil))
			case op < 9:
				m := stored[rng.IntN(len(stored))]
				sub := to.Sub()
				if op == 8 {
					sub = storetest.Anonymous(to.ID)
				} else if rng.IntN(2) == 0 {
					sub = relay.Subscriber{Peer: true, ID: m.Recipient}
				}
				acks = append(acks, s.Ack(sub, m.ID))
			default:
				m := stored[rng.IntN(len(stored))]
				puts = append(puts, s.Put(m, nil)) // republish
			}
		}
		for _, ch := range puts {
			r := storetest.Wait(t, ch)
			switch {
			case r.Err == nil && !r.Existing:
				stored = append(stored, r.Message)
			case r.Err != nil && !errors.Is(r.Err, relay.ErrOverQuota):
				t.Fatal(r.Err)
			}
		}
		for _, ch := range acks {
			if r := storetest.Wait(t, ch); r.Err != nil {
				t.Fatal(r.Err)
			}
		}
		if round%5 == 4 && len(stored) > 0 {
			cut := stored[rng.IntN(len(stored))].StoredAt
			if _, err := s.Sweep(context.Background(), cut); err != nil {
				t.Fatal(err)
			}
			kept := stored[:0]
			for _, m := range stored {
				if !m.StoredAt.Before(cut) {
					kept = append(kept, m)
				}
			}
			stored = kept
		}
		checkUsage(t, s)
		if t.Failed() {
			t.Fatalf("after round %d", round)
		}
	}
}

// usageSnapshot is a write that copies the writer's quota usage in memory.
type usageSnapshot struct {
	ch  chan map[string][2]int64
	mem map[string][2]int64
}

func (u *usageSnapshot) kind() string { return "usage snapshot" }
func (u *usageSnapshot) size() int    { return 0 }
func (u *usageSnapshot) apply(t *wtx) error {
	u.mem = make(map[string][2]int64)
	for k, v := range t.s.usage {
		u.mem[k] = [2]int64{v.n, v.b}
	}
	return nil
}
func (u *usageSnapshot) deliver(err error) { u.ch <- u.mem }

// TestHandoffLeaseReleasedAtOpen: only one process opens a database, so
// the leases of a process that died while claiming are over at the next
// Open: its pending hand-offs are claimed again at once, not after the
// lease.
func TestHandoffLeaseReleasedAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	s, err := Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	m := storetest.NewMessage(storetest.NewPeer(1), "claimed, then the relay died")
	now := time.Now()
	storetest.MustPutHandoff(t, s, m, now)
	if hs := storetest.MustClaim(t, s, "dead", now, time.Hour); len(hs) != 1 {
		t.Fatalf("claimed %d, want 1", len(hs))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if hs := storetest.MustClaim(t, s, "next", time.Now(), time.Hour); len(hs) != 1 {
		t.Errorf("after reopening, claimed %d hand-offs, want the 1 the old owner held", len(hs))
	}
}

// TestRecipientAckTwice: acking a message again (the second ack finds it
// among the recent puts too) changes neither the result nor the quota
// usage; nor does an ack after it was swept.
func TestRecipientAckTwice(t *testing.T) {
	s, _ := openTest(t, Options{Quota: relay.Quota{MaxMessages: 2}})
	p := storetest.NewPeer(1)
	m1 := storetest.MustPut(t, s, storetest.NewMessage(p, "acked twice")).Message
	storetest.MustPut(t, s, storetest.NewMessage(p, "not acked"))
	for i := range 2 {
		if r := storetest.MustAck(t, s, p.Sub(), m1.ID); !r.Found || !r.ByRecipient {
			t.Fatalf("ack %d: %+v", i, r)
		}
		checkUsage(t, s)
	}
	// One unacked message: the quota has room for exactly one more.
	storetest.MustPut(t, s, storetest.NewMessage(p, "fits"))
	if r := storetest.Wait(t, s.Put(storetest.NewMessage(p, "does not fit"), nil)); !errors.Is(r.Err, relay.ErrOverQuota) {
		t.Errorf("put over quota: %v", r.Err)
	}
	if _, err := s.Sweep(context.Background(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if r := storetest.MustAck(t, s, p.Sub(), m1.ID); r.Found {
		t.Errorf("ack after the sweep: %+v, want not found", r)
	}
	checkUsage(t, s)
}

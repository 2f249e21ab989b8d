// Package sqlitestore is the relay's message store (relay.Store) on SQLite:
// one database file in WAL mode, owned by one courier-relay process.
//
// All writes go through one writer goroutine that does group commit: Put
// and Ack queue their write and return a channel at once; the writer takes
// everything queued (up to Options.MaxBatch writes), applies it in call
// order in one transaction, commits (one fsync with the default
// synchronous=FULL), and only then sends each result. A result that has
// been sent is durable: it survives kill -9, and with synchronous=FULL a
// power cut too. Seq is the table's AUTOINCREMENT rowid, so it increases in
// commit order and is never reused, even after Sweep.
//
// Reads (Pending, Stats) use a separate pool of read-only connections, which
// WAL lets run alongside the writer. Pending pages through indexes and never
// loads more than its limit of rows; Stats reads running totals kept by the
// writer.
//
// Only one process may use a database at a time: Open takes an exclusive
// flock on path+".lock" and fails with ErrLocked if another courier-relay
// holds it. The schema is numbered migrations embedded from migrations/*.sql,
// each applied in its own transaction and recorded in PRAGMA user_version.
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"courier/internal/sqlitedb"
	"courier/relay"

	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver
)

// ErrLocked is wrapped by Open when another process (in practice another
// courier-relay) holds the database's lock file.
var ErrLocked = errors.New("database is in use by another courier-relay")

// Options configures a Store. The zero value is usable: no quota,
// synchronous=FULL, batches of up to 1024 writes, slog.Default().
type Options struct {
	// Quota bounds, per subscription key, the messages (and their bytes)
	// that their recipient peer has not acked. Zero fields are unlimited.
	Quota relay.Quota
	// Synchronous is SQLite's synchronous setting: "full" (the default)
	// fsyncs on every commit, so an acknowledged write survives a power cut;
	// "normal" fsyncs only at WAL checkpoints, so an acknowledged write
	// survives a crash of the process but may be lost on power failure.
	Synchronous string
	// MaxBatch is the most writes committed in one transaction. Default 1024.
	MaxBatch int
	// OnCommit, if set, is called from the writer goroutine after each
	// successful commit, before that batch's results are sent, with the
	// number of writes in the batch and how long its transaction took. It
	// must return quickly and must not wait for a write of this Store.
	OnCommit func(batch int, d time.Duration)
	// Logger receives the store's own events (open, failed writes, sweeps).
	// Default slog.Default(). Message contents are never logged.
	Logger *slog.Logger
}

const (
	defaultMaxBatch = 1024
	busyTimeout     = 5 * time.Second
	// sweepChunk is the most messages one Sweep step deletes, in one write
	// of its own, so a big expiry never holds the write lock for long.
	sweepChunk = 256
	// maxBatchBytes caps the ciphertext committed in one transaction, so a
	// burst of large messages makes several commits, not one huge one.
	maxBatchBytes = 64 << 20
	readConns     = 8
	// walCheckpointPages is the WAL size (in pages of 4 KiB) at which the
	// writer checkpoints: about 40 MiB.
	walCheckpointPages = 10000
)

// Store is a relay.Store on SQLite. Create it with Open.
type Store struct {
	path       string // absolute
	opts       Options
	log        *slog.Logger
	db         *sqlitedb.DB
	w          *sql.DB // db.W: exactly one connection, used only by the writer goroutine
	r          *sql.DB // db.R: read-only pool
	sweepChunk int
	batchBytes int

	// Owned by the writer goroutine (and open, before it starts).
	stmts   [numStmts]*sql.Stmt // prepared on w
	usage   map[string]usage    // committed unacked usage per key: key_usage, in memory
	lastNow int64               // the newest stored_at written
	recent  recentPuts          // where the latest puts are, for their acks
	// unmarked: outcomes went to the announcer since its last marker.
	unmarked bool

	mu     sync.Mutex
	cond   *sync.Cond // signalled when queue grows or closed is set
	queue  []write
	closed bool

	announcements chan announcement // writer -> announcer; closed by the writer as it exits
	announcerDone chan struct{}     // closed when the announcer goroutine has exited
	done          chan struct{}     // closed when the writer goroutine has exited
	closeOnce     sync.Once
	closeErr      error
}

var _ relay.Store = (*Store)(nil)

// Open opens (creating it if needed) the database at path, brings its
// schema up to date and starts the writer. It fails with an error wrapping
// ErrLocked when another process holds path+".lock".
func Open(path string, opts Options) (*Store, error) {
	if err := opts.normalize(); err != nil {
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	s := &Store{
		path:       abs,
		opts:       opts,
		log:        opts.Logger,
		sweepChunk: sweepChunk,
		batchBytes: maxBatchBytes,
		usage:      make(map[string]usage),
		// Room for a batch's outcomes: the writer rarely waits for the
		// announcer.
		announcements: make(chan announcement, 1024),
		announcerDone: make(chan struct{}),
		done:          make(chan struct{}),
	}
	s.cond = sync.NewCond(&s.mu)
	if err := s.open(); err != nil {
		s.closeHandles()
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	go s.announceLoop()
	go s.run()
	return s, nil
}

func (o *Options) normalize() error {
	switch strings.ToLower(o.Synchronous) {
	case "", "full":
		o.Synchronous = "FULL"
	case "normal":
		o.Synchronous = "NORMAL"
	default:
		return fmt.Errorf("Options.Synchronous %q: want \"full\" or \"normal\"", o.Synchronous)
	}
	switch {
	case o.MaxBatch < 0:
		return fmt.Errorf("Options.MaxBatch %d: must not be negative", o.MaxBatch)
	case o.MaxBatch == 0:
		o.MaxBatch = defaultMaxBatch
	}
	if o.Quota.MaxMessages < 0 || o.Quota.MaxBytes < 0 {
		return fmt.Errorf("Options.Quota %+v: must not be negative (zero is unlimited)", o.Quota)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// open takes the lock, opens both pools and migrates. On error the caller
// releases whatever was opened (closeHandles).
func (s *Store) open() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := sqlitedb.Open(ctx, s.path, sqlitedb.Options{
		Synchronous:  s.opts.Synchronous,
		BusyTimeout:  busyTimeout,
		Migrations:   migrationFS,
		ReadConns:    readConns,
		WriterParams: []string{"_stmt_cache_size=32"},
		ReaderParams: []string{"_stmt_cache_size=16"},
	})
	switch {
	case errors.Is(err, sqlitedb.ErrLocked):
		return fmt.Errorf("%w (%w); stop it, or give this one another store path", ErrLocked, err)
	case errors.Is(err, sqlitedb.ErrTooNew):
		return fmt.Errorf("%w: it was written by a newer courier-relay", err)
	case err != nil:
		return err
	}
	s.db, s.w, s.r = db, db.W, db.R
	// The writer checkpoints every walCheckpointPages of WAL instead of
	// SQLite's 1000: pages that every commit touches (the tails of the
	// table and its indexes, the totals) are copied into the database
	// once per checkpoint, so fewer checkpoints copy less.
	if _, err := s.w.ExecContext(ctx, fmt.Sprintf("PRAGMA wal_autocheckpoint = %d", walCheckpointPages)); err != nil {
		return err
	}
	for i, q := range stmtSQL {
		if s.stmts[i], err = s.w.PrepareContext(ctx, q); err != nil {
			return fmt.Errorf("prepare %q: %w", q, err)
		}
	}
	if err := s.loadUsage(ctx); err != nil {
		return err
	}
	if _, err := s.w.ExecContext(ctx, handoffReleaseSQL, time.Now().UnixNano()); err != nil {
		return fmt.Errorf("release hand-off leases: %w", err)
	}
	s.log.Info("sqlitestore: opened", "path", s.path, "schema_version", db.Version,
		"synchronous", s.opts.Synchronous, "max_batch", s.opts.MaxBatch)
	return nil
}

// loadUsage reads key_usage into memory, where the writer keeps it (and
// writes each key it changes back in the same transaction), and the newest
// stored_at.
func (s *Store) loadUsage(ctx context.Context) error {
	rows, err := s.w.QueryContext(ctx, `SELECT key, messages, bytes FROM key_usage`)
	if err != nil {
		return fmt.Errorf("load quota usage: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			key string
			u   usage
		)
		if err := rows.Scan(&key, &u.n, &u.b); err != nil {
			return fmt.Errorf("load quota usage: %w", err)
		}
		s.usage[key] = u
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load quota usage: %w", err)
	}
	if err := s.w.QueryRowContext(ctx, `SELECT coalesce(max(stored_at), 0) FROM messages`).Scan(&s.lastNow); err != nil {
		return fmt.Errorf("read newest message: %w", err)
	}
	return nil
}

// closeHandles closes the statements, the pools and releases the lock,
// whichever are open.
func (s *Store) closeHandles() error {
	var errs []error
	for _, st := range s.stmts {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	// Closing the last connection checkpoints the WAL into the database.
	if s.db != nil {
		errs = append(errs, s.db.Close())
	}
	return errors.Join(errs...)
}

// Close stops accepting writes, commits everything already queued (each
// queued write still gets its result), then closes the database and
// releases the lock. Writes after Close yield relay.ErrClosed. Close is
// idempotent; concurrent calls wait for the first to finish.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.cond.Broadcast()
		s.mu.Unlock()
		<-s.done
		<-s.announcerDone
		if err := s.closeHandles(); err != nil {
			s.closeErr = fmt.Errorf("sqlitestore: close %s: %w", s.path, err)
		}
	})
	return s.closeErr
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Package queue is the courier sidecar's durable queue: an outbox of
// messages from the node on their way to a recipient (INDIRECT through the
// relay, or OFFLINE through the node), and an inbox of messages from the
// relay on their way to the node. Both live in one SQLite file.
//
// Every write commits before it returns, so a message the sidecar
// acknowledges survives a crash. Writes go through one writer goroutine that
// commits everything waiting in one transaction (group commit): many
// concurrent writers share each fsync. Reads run concurrently beside it
// (WAL). A Queue is safe for concurrent use. One process at a time may open
// a queue file: [Open] takes an exclusive lock on "<path>.lock".
package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"courier/internal/sqlitedb"
)

// State is where an outbound message stands.
type State string

// Outbound message states.
const (
	Queued    State = "queued"     // waiting to be sent
	Sending   State = "sending"    // on its way: awaiting the relay's result, or an OFFLINE hand-off (retried)
	Delivered State = "delivered"  // the recipient acked it through the relay (path INDIRECT)
	HandedOff State = "handed_off" // the node's OFFLINE endpoint accepted it (path OFFLINE)
	Failed    State = "failed"     // given up; LastError says why
)

// States lists every State, in the order a message usually passes them.
var States = []State{Queued, Sending, Delivered, HandedOff, Failed}

func (s State) valid() bool {
	switch s {
	case Queued, Sending, Delivered, HandedOff, Failed:
		return true
	}
	return false
}

// Path is the way an outbound message is being (or was) delivered.
type Path string

// Delivery paths. Names as in the protocol: never call INDIRECT "offline".
const (
	PathNone     Path = ""         // not routed yet; in [Queue.Due], any path
	PathIndirect Path = "INDIRECT" // through the relay
	PathOffline  Path = "OFFLINE"  // through the node's native OFFLINE endpoint
)

// Paths lists every Path.
var Paths = []Path{PathNone, PathIndirect, PathOffline}

func (p Path) valid() bool {
	switch p {
	case PathNone, PathIndirect, PathOffline:
		return true
	}
	return false
}

// Outbound is one message in the outbox. Times are UTC; a zero
// NextAttemptAt means due at once.
type Outbound struct {
	Seq           int64  // position in the outbox, increasing in commit order
	ID            string // wire.MessageID(Ciphertext)
	Recipient     string
	Ciphertext    []byte
	State         State
	Path          Path
	Attempts      int
	CreatedAt     time.Time
	UpdatedAt     time.Time
	LastError     string
	NextAttemptAt time.Time
}

// InboxState is where an inbound message stands.
type InboxState string

// Inbound message states. pending → delivered, refused or not_for_node;
// refused or not_for_node → delivered (a polling node acked it after
// all). Nothing leaves delivered.
const (
	InboxPending   InboxState = "pending"   // the node does not have it yet: pushed (retried) or waiting for a poll
	InboxDelivered InboxState = "delivered" // the node has it: its inbound endpoint answered 2xx, or it acked a poll
	InboxRefused   InboxState = "refused"   // the inbound endpoint answered 400 or 422: kept, not retried; LastError says why
	// InboxNotForNode: received by an anonymous subscription, which gets
	// every message under its subscription key (other peers' too), and
	// the node could not open it (400 or 422): expected, kept apart from
	// refused, not retried.
	InboxNotForNode InboxState = "not_for_node"
)

// InboxStates lists every InboxState.
var InboxStates = []InboxState{InboxPending, InboxDelivered, InboxRefused, InboxNotForNode}

// Inbound is one message in the inbox. Times are UTC; DeliveredAt is zero
// until it is delivered or refused (it is when that happened),
// NextAttemptAt zero means due at once.
type Inbound struct {
	Seq           int64
	ID            string // wire.MessageID(Ciphertext)
	Ciphertext    []byte
	ReceivedAt    time.Time
	State         InboxState
	Delivered     bool      // State == InboxDelivered: the node has it
	DeliveredAt   time.Time // when it became delivered or refused
	Attempts      int       // failed pushes to the node's inbound endpoint
	NextAttemptAt time.Time
	LastError     string
	// Anonymous: received by an anonymous (level-1) subscription (see
	// NewInbound): a refusal by the node makes it not_for_node.
	Anonymous bool
}

// Errors callers branch on.
var (
	// ErrNotFound: no message with that ID.
	ErrNotFound = errors.New("message not found")
	// ErrConflict: a transition's from-states did not match the message's
	// current state; nothing changed.
	ErrConflict = errors.New("state conflict")
	// ErrClosed: the queue is closed.
	ErrClosed = errors.New("queue closed")
	// ErrLocked: another process has the queue file open.
	ErrLocked = errors.New("queue in use by another process")
	// ErrInvalid: an argument is not acceptable (unknown state or path, an
	// ID that is not the hash of the ciphertext, …).
	ErrInvalid = errors.New("invalid argument")
)

// Options tune Open. The zero value takes the defaults.
type Options struct {
	// Synchronous is SQLite's synchronous mode: "full" (default; a commit
	// survives a power loss) or "normal" (faster; a commit survives a
	// crash of the process, but not of the machine).
	Synchronous string
	// Logger receives the queue's own logs (migrations, failed commits).
	// Default slog.Default(). Ciphertext is never logged.
	Logger *slog.Logger
	// BeforeInboxWrite, if set, is called by the writer just before it
	// writes inbound messages (AddInboundBatch), inside the transaction
	// that commits them: a test stops a process there, between receiving
	// messages and committing them. Nil in production.
	BeforeInboxWrite func()
}

// JournalSizeLimit is the size, in bytes, the WAL file is truncated to
// after a checkpoint that empties it (SQLite's journal_size_limit).
const JournalSizeLimit = 16 << 20

const (
	busyTimeout = 5 * time.Second
	// maxBatch caps the writes committed in one transaction.
	maxBatch = 1024
	// readConns is how many connections serve reads beside the writer.
	readConns = 4
)

// Queue is the sidecar's outbox and inbox. Create it with [Open].
type Queue struct {
	path string
	log  *slog.Logger
	opts Options
	db   *sqlitedb.DB
	wdb  *sql.DB // db.W: one connection, used only by the writer goroutine (and Open)
	rdb  *sql.DB // db.R: read-only connections

	mu      sync.RWMutex // guards closed against sends on ops
	closed  bool
	isDone  atomic.Bool // closed, for readers that need not wait on mu
	ops     chan *op
	stopped chan struct{} // closed when the writer goroutine has returned

	closeOnce sync.Once
	closeErr  error

	commits atomic.Int64 // transactions committed by the writer, for tests
}

// Open opens (creating if need be) the queue at path, a SQLite file, and
// brings its schema up to date. It fails at once, naming the file, when the
// file cannot be opened or another process has it open.
func Open(path string, opts Options) (*Queue, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	var syncMode string
	switch opts.Synchronous {
	case "", "full", "FULL":
		syncMode = "FULL"
	case "normal", "NORMAL":
		syncMode = "NORMAL"
	default:
		return nil, fmt.Errorf("open queue %s: %w: synchronous %q: use \"full\" or \"normal\"", path, ErrInvalid, opts.Synchronous)
	}
	q := &Queue{
		path:    path,
		log:     opts.Logger,
		opts:    opts,
		ops:     make(chan *op, maxBatch),
		stopped: make(chan struct{}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := sqlitedb.Open(ctx, path, sqlitedb.Options{
		Synchronous: syncMode,
		BusyTimeout: busyTimeout,
		// The writer is the only connection that writes, so the only one
		// that checkpoints: after a checkpoint that empties the WAL it
		// truncates the file to this size, so one burst does not leave a
		// large WAL behind.
		JournalSizeLimit: JournalSizeLimit,
		Migrations:       migrationFS,
		ReadConns:        readConns,
		WriterParams:     []string{"_stmt_cache_size=32"},
		ReaderParams:     []string{"_foreign_keys=1", "_stmt_cache_size=32"},
		Private:          true,
	})
	switch {
	case errors.Is(err, sqlitedb.ErrLocked):
		return nil, fmt.Errorf("open queue %s: %w (%w): stop the other courier using this queue, or set another store.path", path, ErrLocked, err)
	case errors.Is(err, sqlitedb.ErrTooNew):
		return nil, fmt.Errorf("open queue %s: %w: upgrade courier, or use another store.path", path, err)
	case err != nil:
		return nil, fmt.Errorf("open queue %s: %w", path, err)
	}
	q.db, q.wdb, q.rdb = db, db.W, db.R
	if n := db.Version - db.FromVersion; n > 0 {
		q.log.Info("queue schema updated", "path", q.path, "migrations", n, "version", db.Version)
	}
	go q.writer()
	return q, nil
}

// Close finishes the writes already submitted, stops the writer, closes the
// database and releases the lock. It is idempotent; operations after Close
// return ErrClosed.
func (q *Queue) Close() error {
	q.closeOnce.Do(func() {
		q.mu.Lock()
		q.closed = true
		q.isDone.Store(true)
		close(q.ops)
		q.mu.Unlock()
		<-q.stopped
		// Fold the WAL back into the database so the file is
		// self-contained while the sidecar is stopped.
		if _, err := q.wdb.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
			q.log.Warn("queue checkpoint on close", "path", q.path, "err", err)
		}
		q.closeErr = q.closeDBs()
	})
	return q.closeErr
}

func (q *Queue) closeDBs() error {
	if err := q.db.Close(); err != nil {
		return fmt.Errorf("close queue %s: %w", q.path, err)
	}
	return nil
}

// op is one write, run by the writer goroutine inside a batch transaction.
// run returns an error only for a database failure, which rolls the batch
// back; outcomes such as ErrConflict are recorded by run's closure. run must
// be repeatable: after a failed batch the writer retries each op alone.
type op struct {
	ctx  context.Context
	run  func(tx *sql.Tx) error
	done chan error // buffered; receives exactly one result
}

// write submits run to the writer and waits until its transaction has
// committed (nil) or failed. Once submitted, a write is waited for even if
// ctx ends meanwhile, so that an error always means it did not commit;
// the writer skips a write whose ctx ended before its batch began.
func (q *Queue) write(ctx context.Context, run func(tx *sql.Tx) error) error {
	o := &op{ctx: ctx, run: run, done: make(chan error, 1)}
	q.mu.RLock()
	if q.closed {
		q.mu.RUnlock()
		return ErrClosed
	}
	select {
	case q.ops <- o:
		q.mu.RUnlock()
	case <-ctx.Done():
		q.mu.RUnlock()
		return ctx.Err()
	}
	return <-o.done
}

// writer commits submitted writes until Close, taking everything that is
// waiting into one transaction (group commit): while one batch is being
// committed, the next one gathers.
func (q *Queue) writer() {
	defer close(q.stopped)
	batch := make([]*op, 0, maxBatch)
	for o := range q.ops {
		batch = append(batch[:0], o)
	fill:
		for len(batch) < maxBatch {
			select {
			case o, ok := <-q.ops:
				if !ok {
					break fill
				}
				batch = append(batch, o)
			default:
				break fill
			}
		}
		q.commit(batch)
		clear(batch) // drop references for the GC
	}
}

// commit runs batch in one transaction and reports to each op. If the
// transaction fails, each op is retried in a transaction of its own, so one
// bad write cannot fail the others.
func (q *Queue) commit(batch []*op) {
	live := batch[:0:0]
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			o.done <- err
			continue
		}
		live = append(live, o)
	}
	if len(live) == 0 {
		return
	}
	err := q.runTx(live)
	if err == nil || len(live) == 1 {
		if err != nil {
			q.log.Error("queue write failed", "path", q.path, "err", err)
		}
		for _, o := range live {
			o.done <- err
		}
		return
	}
	q.log.Warn("queue batch failed; retrying its writes one by one", "path", q.path, "writes", len(live), "err", err)
	for _, o := range live {
		err := q.runTx([]*op{o})
		if err != nil {
			q.log.Error("queue write failed", "path", q.path, "err", err)
		}
		o.done <- err
	}
}

func (q *Queue) runTx(ops []*op) error {
	// Not the ops' contexts: the batch is shared, and a write once begun
	// is finished.
	tx, err := q.wdb.BeginTx(context.Background(), nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()
	for _, o := range ops {
		if err := o.run(tx); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	q.commits.Add(1)
	return nil
}

// Checkpoint copies the WAL back into the database file and, when no
// reader holds an old snapshot, starts the WAL over and truncates it
// (SQLite's wal_checkpoint(TRUNCATE)). It runs on the writer's connection,
// between two batches; readers go on meanwhile. A checkpoint that cannot
// finish because of readers is not an error: the next one goes further.
func (q *Queue) Checkpoint(ctx context.Context) error {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return ErrClosed
	}
	conn, err := q.wdb.Conn(ctx) // the writer's one connection, between two batches
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", q.path, err)
	}
	defer conn.Close()
	// TRUNCATE waits for readers on old snapshots; writes wait meanwhile.
	// Wait briefly, not the usual busy timeout: the next round goes on.
	if _, err := conn.ExecContext(ctx, fmt.Sprintf("PRAGMA busy_timeout = %d", checkpointWait.Milliseconds())); err != nil {
		return fmt.Errorf("checkpoint %s: %w", q.path, err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), fmt.Sprintf("PRAGMA busy_timeout = %d", busyTimeout.Milliseconds()))
	var busy, logPages, done int
	if err := conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logPages, &done); err != nil {
		return fmt.Errorf("checkpoint %s: %w", q.path, err)
	}
	return nil
}

// checkpointWait is how long Checkpoint waits for readers.
const checkpointWait = 100 * time.Millisecond

// readable returns ErrClosed once the queue is closed.
func (q *Queue) readable() error {
	if q.isDone.Load() {
		return ErrClosed
	}
	return nil
}

// nanos and fromNanos convert times to and from the stored Unix
// nanoseconds; the zero time is stored as 0.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

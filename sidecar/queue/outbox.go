package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"courier/wire"
)

// outboxCols are the outbox columns scanOutbound reads, in order.
const outboxCols = "seq, id, recipient, ciphertext, state, path, attempts, created_at, updated_at, last_error, next_attempt_at"

// outboxColsNoCT is outboxCols with an empty ciphertext, for lists that do
// not need it.
const outboxColsNoCT = "seq, id, recipient, x'', state, path, attempts, created_at, updated_at, last_error, next_attempt_at"

type scanner interface{ Scan(dest ...any) error }

func scanOutbound(s scanner) (Outbound, error) {
	var m Outbound
	var created, updated, next int64
	err := s.Scan(&m.Seq, &m.ID, &m.Recipient, &m.Ciphertext, &m.State, &m.Path, &m.Attempts, &created, &updated, &m.LastError, &next)
	m.CreatedAt, m.UpdatedAt, m.NextAttemptAt = fromNanos(created), fromNanos(updated), fromNanos(next)
	if len(m.Ciphertext) == 0 {
		m.Ciphertext = nil
	}
	return m, err
}

// Enqueue stores a new outbound message for recipient, with ID
// wire.MessageID(ciphertext), in state queued, due at once, and returns
// after it has committed: once it returns nil, the message survives a
// crash. Concurrent Enqueues share commits (group commit).
//
// If the ID is already in the outbox, nothing is written: Enqueue returns
// the existing message (whatever its state and recipient) and created false.
// The queue does not check recipient beyond it being non-empty; the caller
// validates it.
func (q *Queue) Enqueue(ctx context.Context, recipient string, ciphertext []byte) (Outbound, bool, error) {
	if recipient == "" || len(ciphertext) == 0 {
		return Outbound{}, false, fmt.Errorf("enqueue: %w: recipient and ciphertext must not be empty", ErrInvalid)
	}
	id := wire.MessageID(ciphertext)
	now := time.Now().UTC()
	var m Outbound
	var created bool
	err := q.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`INSERT INTO outbox (id, recipient, ciphertext, state, path, attempts, created_at, updated_at, last_error, next_attempt_at)
			VALUES (?, ?, ?, ?, '', 0, ?, ?, '', ?) ON CONFLICT (id) DO NOTHING`,
			id, recipient, ciphertext, Queued, now.UnixNano(), now.UnixNano(), now.UnixNano())
		if err != nil {
			return fmt.Errorf("insert %s: %w", id, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 1 {
			seq, err := res.LastInsertId()
			if err != nil {
				return err
			}
			created = true
			m = Outbound{Seq: seq, ID: id, Recipient: recipient, Ciphertext: ciphertext, State: Queued,
				CreatedAt: fromNanos(now.UnixNano()), UpdatedAt: fromNanos(now.UnixNano()), NextAttemptAt: fromNanos(now.UnixNano())}
			return nil
		}
		created = false
		m, err = scanOutbound(tx.QueryRow("SELECT "+outboxColsNoCT+" FROM outbox WHERE id = ?", id))
		if err != nil {
			return fmt.Errorf("read existing %s: %w", id, err)
		}
		m.Ciphertext = ciphertext // the same bytes: the ID is their hash
		return nil
	})
	if err != nil {
		return Outbound{}, false, fmt.Errorf("enqueue %s: %w", id, err)
	}
	return m, created, nil
}

// Get returns the outbound message with that ID, or ErrNotFound.
func (q *Queue) Get(ctx context.Context, id string) (Outbound, error) {
	if err := q.readable(); err != nil {
		return Outbound{}, err
	}
	m, err := scanOutbound(q.rdb.QueryRowContext(ctx, "SELECT "+outboxCols+" FROM outbox WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return Outbound{}, fmt.Errorf("get %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Outbound{}, q.readErr("get "+id, err)
	}
	return m, nil
}

// Change is what [Queue.Transition] writes. Every field is written as
// given (a zero LastError clears it, a zero NextAttemptAt makes the message
// due at once), except AttemptsDelta, which is added to Attempts (after
// ResetAttempts set them to 0, if set), and LastError when KeepLastError
// is set.
type Change struct {
	State         State // required
	Path          Path
	LastError     string
	KeepLastError bool
	AttemptsDelta int
	ResetAttempts bool
	NextAttemptAt time.Time
}

// Transition applies c to the message atomically, but only if its current
// state is one of from; UpdatedAt becomes now. It returns the message as
// changed, after commit. If the message is in another state, nothing
// changes and Transition returns the message as it is with an error
// wrapping ErrConflict; an unknown ID gives ErrNotFound.
func (q *Queue) Transition(ctx context.Context, id string, from []State, c Change) (Outbound, error) {
	return q.transition(ctx, id, from, c, outboxCols)
}

// transition is Transition returning the columns cols (outboxCols, or
// outboxColsNoCT: the named transitions leave the ciphertext out, which
// saves reading and copying it back at every step of every message).
func (q *Queue) transition(ctx context.Context, id string, from []State, c Change, cols string) (Outbound, error) {
	if err := checkChange(from, c); err != nil {
		return Outbound{}, fmt.Errorf("transition %s: %w", id, err)
	}
	args := []any{c.State, c.Path, c.KeepLastError, c.LastError, c.ResetAttempts, c.AttemptsDelta, nanos(c.NextAttemptAt), 0, id}
	for _, s := range from {
		args = append(args, s)
	}
	query := `UPDATE outbox SET state = ?, path = ?,
		last_error = CASE WHEN ? THEN last_error ELSE ? END,
		attempts = (CASE WHEN ? THEN 0 ELSE attempts END) + ?,
		next_attempt_at = ?, updated_at = ?
		WHERE id = ? AND state IN (?` + strings.Repeat(", ?", len(from)-1) + `) RETURNING ` + cols
	var m Outbound
	var outcome error
	err := q.write(ctx, func(tx *sql.Tx) error {
		args[7] = time.Now().UnixNano()
		var err error
		m, err = scanOutbound(tx.QueryRow(query, args...))
		if err == nil {
			outcome = nil
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("update %s: %w", id, err)
		}
		m, err = scanOutbound(tx.QueryRow("SELECT "+cols+" FROM outbox WHERE id = ?", id))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			m, outcome = Outbound{}, ErrNotFound
		case err != nil:
			return fmt.Errorf("read %s: %w", id, err)
		default:
			outcome = fmt.Errorf("%w: state is %s, not %s", ErrConflict, m.State, joinStates(from))
		}
		return nil
	})
	if err == nil {
		err = outcome
	}
	if err != nil {
		return m, fmt.Errorf("transition %s to %s: %w", id, c.State, err)
	}
	return m, nil
}

func checkChange(from []State, c Change) error {
	if len(from) == 0 {
		return fmt.Errorf("%w: no from-states", ErrInvalid)
	}
	for _, s := range from {
		if !s.valid() {
			return fmt.Errorf("%w: from-state %q", ErrInvalid, s)
		}
	}
	if !c.State.valid() {
		return fmt.Errorf("%w: state %q", ErrInvalid, c.State)
	}
	if !c.Path.valid() {
		return fmt.Errorf("%w: path %q", ErrInvalid, c.Path)
	}
	return nil
}

func joinStates(ss []State) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = string(s)
	}
	return strings.Join(parts, " or ")
}

// Due lists up to limit outbound messages in state whose NextAttemptAt is
// at or before now and whose Seq is greater than after, oldest (lowest Seq)
// first, ciphertext included. path PathNone means any path; another path
// selects only messages on it. To page, pass the last Seq returned as
// after. With a far-future now it lists every message in the state (e.g.
// those left sending by a crash).
func (q *Queue) Due(ctx context.Context, state State, path Path, now time.Time, after int64, limit int) ([]Outbound, error) {
	if !state.valid() || !path.valid() || limit <= 0 {
		return nil, fmt.Errorf("due: %w: state %q, path %q, limit %d", ErrInvalid, state, path, limit)
	}
	if err := q.readable(); err != nil {
		return nil, err
	}
	// path is also matched through the index; "? = ''" turns the filter off.
	rows, err := q.rdb.QueryContext(ctx, `SELECT `+outboxCols+` FROM outbox
		WHERE state = ? AND seq > ? AND (? = '' OR path = ?) AND next_attempt_at <= ?
		ORDER BY seq LIMIT ?`, state, after, path, path, now.UnixNano(), limit)
	if err != nil {
		return nil, q.readErr("due", err)
	}
	return collect(rows, scanOutbound, q.readErr)
}

// Recent lists up to limit outbound messages, most recently updated first,
// for a status page. Their Ciphertext is left nil.
func (q *Queue) Recent(ctx context.Context, limit int) ([]Outbound, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("recent: %w: limit %d", ErrInvalid, limit)
	}
	if err := q.readable(); err != nil {
		return nil, err
	}
	rows, err := q.rdb.QueryContext(ctx, `SELECT `+outboxColsNoCT+` FROM outbox ORDER BY updated_at DESC, seq DESC LIMIT ?`, limit)
	if err != nil {
		return nil, q.readErr("recent", err)
	}
	return collect(rows, scanOutbound, q.readErr)
}

// OutboxCounts counts the queue's messages.
type OutboxCounts struct {
	// Outbox counts outbound messages by state, then path. Missing
	// entries are zero; use the methods to sum.
	Outbox map[State]map[Path]int
	// InboxPending counts inbound messages the node does not have yet;
	// InboxDelivered those it has.
	// InboxRefused those the node refused (400 or 422); InboxNotForNode
	// those an anonymous subscription received that the node could not
	// open (another peer's, under the same subscription key).
	InboxPending, InboxDelivered, InboxRefused, InboxNotForNode int
}

// State returns how many outbound messages are in state s, on any path.
func (c OutboxCounts) State(s State) int {
	n := 0
	for _, v := range c.Outbox[s] {
		n += v
	}
	return n
}

// Path returns how many outbound messages are on path p, in any state.
func (c OutboxCounts) Path(p Path) int {
	n := 0
	for _, byPath := range c.Outbox {
		n += byPath[p]
	}
	return n
}

// Count returns how many outbound messages are in state s on path p.
func (c OutboxCounts) Count(s State, p Path) int { return c.Outbox[s][p] }

// Counts counts the outbox by state and path, and the inbox. It reads
// every index entry once: cheap enough for a status page or metrics
// scrape, not for a hot loop.
func (q *Queue) Counts(ctx context.Context) (OutboxCounts, error) {
	if err := q.readable(); err != nil {
		return OutboxCounts{}, err
	}
	// One read transaction, so the numbers agree with each other.
	tx, err := q.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return OutboxCounts{}, q.readErr("counts", err)
	}
	defer tx.Rollback()
	c := OutboxCounts{Outbox: make(map[State]map[Path]int)}
	rows, err := tx.QueryContext(ctx, `SELECT state, path, count(*) FROM outbox GROUP BY state, path`)
	if err != nil {
		return OutboxCounts{}, q.readErr("counts", err)
	}
	defer rows.Close()
	for rows.Next() {
		var s State
		var p Path
		var n int
		if err := rows.Scan(&s, &p, &n); err != nil {
			return OutboxCounts{}, q.readErr("counts", err)
		}
		if c.Outbox[s] == nil {
			c.Outbox[s] = make(map[Path]int)
		}
		c.Outbox[s][p] = n
	}
	if err := rows.Err(); err != nil {
		return OutboxCounts{}, q.readErr("counts", err)
	}
	err = tx.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM inbox WHERE state = 'pending'),
		(SELECT count(*) FROM inbox WHERE state = 'delivered'),
		(SELECT count(*) FROM inbox WHERE state = 'refused'),
		(SELECT count(*) FROM inbox WHERE state = 'not_for_node')`).Scan(&c.InboxPending, &c.InboxDelivered, &c.InboxRefused, &c.InboxNotForNode)
	if err != nil {
		return OutboxCounts{}, q.readErr("counts", err)
	}
	return c, nil
}

// collect scans every row with scan.
func collect[T any](rows *sql.Rows, scan func(scanner) (T, error), wrap func(string, error) error) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, wrap("scan", err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap("read rows", err)
	}
	return out, nil
}

// readErr wraps a read error, reporting ErrClosed if the queue was closed
// under the read.
func (q *Queue) readErr(what string, err error) error {
	if q.isDone.Load() {
		return fmt.Errorf("%s: %w", what, ErrClosed)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// pruneBatch is how many rows one Prune transaction deletes, so that a
// large prune does not hold up other writes for long.
const pruneBatch = 1000

// Prune deletes what is finished and older than before: outbound messages
// delivered, handed_off or failed and last updated before it, and inbound
// messages the node has had, refused, or could not open (not_for_node),
// since before it. Pending inbound
// and queued or sending outbound messages are never deleted. It returns how many of each
// it deleted. A pruned ID is forgotten: enqueued again, it is sent again;
// redelivered by the relay, it is handed to the node again.
func (q *Queue) Prune(ctx context.Context, before time.Time) (outbound, inbound int, err error) {
	steps := []struct {
		n     *int
		query string
	}{
		{&outbound, `DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox
			WHERE updated_at < ? AND state IN ('delivered', 'handed_off', 'failed') LIMIT ?)`},
		{&inbound, `DELETE FROM inbox WHERE seq IN (SELECT seq FROM inbox
			WHERE state IN ('delivered', 'refused', 'not_for_node') AND finished_at < ? LIMIT ?)`},
	}
	for _, s := range steps {
		for {
			var n int64
			err := q.write(ctx, func(tx *sql.Tx) error {
				res, err := tx.Exec(s.query, before.UnixNano(), pruneBatch)
				if err != nil {
					return err
				}
				n, err = res.RowsAffected()
				return err
			})
			if err != nil {
				return outbound, inbound, fmt.Errorf("prune: %w", err)
			}
			*s.n += int(n)
			if n < pruneBatch {
				break
			}
		}
	}
	return outbound, inbound, nil
}

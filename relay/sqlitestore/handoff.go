package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"courier/relay"
)

var _ relay.HandoffStore = (*Store)(nil)

// The hand-off statements (migration 0002). A message ID is found through
// messages' unique index; handoffs is keyed by the message's seq.
const (
	handoffAddSQL   = `INSERT INTO handoffs (seq, due) VALUES (?, ?) ON CONFLICT (seq) DO NOTHING`
	handoffStateSQL = `SELECT state FROM handoffs WHERE seq = ?`
	handoffClaimSQL = `
		UPDATE handoffs SET due = ?, owner = ? WHERE seq IN (
			SELECT seq FROM handoffs WHERE state = 0 AND due <= ? ORDER BY due LIMIT ?)
		RETURNING seq, attempts`
	handoffMessageSQL = `SELECT id, key, recipient, stored_at, recipient_acked, ciphertext FROM messages WHERE seq = ?`
	handoffFinishSQL  = `UPDATE handoffs SET state = 1, owner = '' WHERE seq = (SELECT seq FROM messages WHERE id = ?)`
	handoffRetrySQL   = `UPDATE handoffs SET due = ?, attempts = attempts + 1, owner = ''
		WHERE seq = (SELECT seq FROM messages WHERE id = ?) AND state = 0 AND owner = ?`
	handoffDropSQL   = `DELETE FROM handoffs WHERE seq = (SELECT seq FROM messages WHERE id = ?) AND state = 0`
	handoffStatusSQL = `SELECT h.state FROM handoffs AS h JOIN messages AS m ON m.seq = h.seq WHERE m.id = ?`
	handoffNextSQL   = `SELECT min(due) FROM handoffs WHERE state = 0`
	// handoffReleaseSQL ends the leases of a process that died holding
	// them: only one process opens the database (the lock file), so no
	// claim can be alive at Open.
	handoffReleaseSQL = `UPDATE handoffs SET owner = '', due = min(due, ?) WHERE state = 0 AND owner != ''`
)

// PutHandoff is Put that also records a pending hand-off of m due at due,
// in the same transaction (see relay.HandoffStore).
func (s *Store) PutHandoff(m relay.Message, due time.Time, early func(relay.PutResult)) <-chan relay.PutResult {
	ch := make(chan relay.PutResult, 1)
	switch {
	case m.ID == "" || m.Key == "" || m.Recipient == "":
		ch <- relay.PutResult{Err: errors.New("sqlitestore: put: the message needs an ID, a Key and a Recipient")}
		return ch
	case m.Ciphertext == nil:
		m.Ciphertext = []byte{}
	}
	if !s.enqueue(&putWrite{m: m, ch: ch, early: early, handoff: true, due: due.UnixNano()}) {
		ch <- relay.PutResult{Err: fmt.Errorf("sqlitestore: put %s: %w", m.ID, relay.ErrClosed)}
	}
	return ch
}

// applyHandoff records the pending hand-off of a put that stored its
// message or found it stored: not for a message its recipient has acked,
// and not again for one that has a hand-off (pending or done).
func (p *putWrite) applyHandoff(t *wtx) error {
	seq := p.res.Message.Seq
	if !p.res.RecipientAcked {
		if _, err := t.tx.ExecContext(t.ctx, handoffAddSQL, seq, p.due); err != nil {
			return fmt.Errorf("put %s: add hand-off: %w", p.m.ID, err)
		}
	}
	var state int
	err := t.tx.QueryRowContext(t.ctx, handoffStateSQL, seq).Scan(&state)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		p.res.Handoff = relay.HandoffNone
	case err != nil:
		return fmt.Errorf("put %s: hand-off state: %w", p.m.ID, err)
	case state == 1:
		p.res.Handoff = relay.HandoffDone
	default:
		p.res.Handoff = relay.HandoffPending
	}
	return nil
}

// funcWrite is a write that runs fn in the batch's transaction and
// answers its error once the transaction's fate is known.
type funcWrite struct {
	name string
	fn   func(t *wtx) error
	ch   chan error
}

func (w *funcWrite) kind() string { return w.name }
func (w *funcWrite) size() int    { return 0 }
func (w *funcWrite) apply(t *wtx) error {
	return w.fn(t)
}
func (w *funcWrite) deliver(err error) { w.ch <- err }

// do runs fn as a write of its own and waits for its commit, or ctx (the
// write still runs).
func (s *Store) do(ctx context.Context, name string, fn func(t *wtx) error) error {
	w := &funcWrite{name: name, fn: fn, ch: make(chan error, 1)}
	if !s.enqueue(w) {
		return fmt.Errorf("sqlitestore: %s: %w", name, relay.ErrClosed)
	}
	select {
	case err := <-w.ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ClaimHandoffs claims up to limit due hand-offs for owner (see
// relay.HandoffStore).
func (s *Store) ClaimHandoffs(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]relay.Handoff, error) {
	if limit <= 0 {
		return nil, nil
	}
	var out []relay.Handoff
	err := s.do(ctx, "claim hand-offs", func(t *wtx) error {
		out = out[:0]
		rows, err := t.tx.QueryContext(t.ctx, handoffClaimSQL, now.Add(lease).UnixNano(), owner, now.UnixNano(), limit)
		if err != nil {
			return fmt.Errorf("claim hand-offs: %w", err)
		}
		type claimed struct {
			seq      int64
			attempts int
		}
		var cs []claimed
		for rows.Next() {
			var c claimed
			if err := rows.Scan(&c.seq, &c.attempts); err != nil {
				rows.Close()
				return fmt.Errorf("claim hand-offs: %w", err)
			}
			cs = append(cs, c)
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("claim hand-offs: %w", err)
		}
		for _, c := range cs {
			h := relay.Handoff{Attempts: c.attempts}
			var storedAt int64
			m := &h.Message
			err := t.tx.QueryRowContext(t.ctx, handoffMessageSQL, c.seq).
				Scan(&m.ID, &m.Key, &m.Recipient, &storedAt, &h.Acked, &m.Ciphertext)
			if err != nil {
				// The foreign key deletes a hand-off with its message, so
				// the message is there.
				return fmt.Errorf("claim hand-offs: message %d: %w", c.seq, err)
			}
			m.Seq, m.StoredAt = c.seq, time.Unix(0, storedAt)
			out = append(out, h)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// exec runs one hand-off statement as a write of its own.
func (s *Store) exec(ctx context.Context, name, query string, args ...any) error {
	return s.do(ctx, name, func(t *wtx) error {
		if _, err := t.tx.ExecContext(t.ctx, query, args...); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
}

// FinishHandoff records that the message has been handed off.
func (s *Store) FinishHandoff(ctx context.Context, messageID string) error {
	return s.exec(ctx, "finish hand-off", handoffFinishSQL, messageID)
}

// RetryHandoff records owner's failed attempt; the hand-off is due again
// at due.
func (s *Store) RetryHandoff(ctx context.Context, messageID, owner string, due time.Time) error {
	return s.exec(ctx, "retry hand-off", handoffRetrySQL, due.UnixNano(), messageID, owner)
}

// DropHandoff removes a pending hand-off.
func (s *Store) DropHandoff(ctx context.Context, messageID string) error {
	return s.exec(ctx, "drop hand-off", handoffDropSQL, messageID)
}

// HandoffStatus returns the message's hand-off state, from the read pool.
func (s *Store) HandoffStatus(ctx context.Context, messageID string) (relay.HandoffState, error) {
	if s.isClosed() {
		return 0, fmt.Errorf("sqlitestore: hand-off status: %w", relay.ErrClosed)
	}
	var state int
	err := s.r.QueryRowContext(ctx, handoffStatusSQL, messageID).Scan(&state)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return relay.HandoffNone, nil
	case err != nil:
		return 0, fmt.Errorf("sqlitestore: hand-off status: %w", err)
	case state == 1:
		return relay.HandoffDone, nil
	default:
		return relay.HandoffPending, nil
	}
}

// NextHandoff returns when the earliest pending hand-off is due.
func (s *Store) NextHandoff(ctx context.Context) (time.Time, bool, error) {
	if s.isClosed() {
		return time.Time{}, false, fmt.Errorf("sqlitestore: next hand-off: %w", relay.ErrClosed)
	}
	var due sql.NullInt64
	if err := s.r.QueryRowContext(ctx, handoffNextSQL).Scan(&due); err != nil {
		return time.Time{}, false, fmt.Errorf("sqlitestore: next hand-off: %w", err)
	}
	if !due.Valid {
		return time.Time{}, false, nil
	}
	return time.Unix(0, due.Int64), true, nil
}

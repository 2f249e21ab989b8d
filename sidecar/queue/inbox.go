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

const inboxCols = "seq, id, ciphertext, received_at, state, finished_at, attempts, next_attempt_at, last_error, anonymous"

func scanInbound(s scanner) (Inbound, error) {
	var m Inbound
	var received, finished, next int64
	err := s.Scan(&m.Seq, &m.ID, &m.Ciphertext, &received, &m.State, &finished, &m.Attempts, &next, &m.LastError, &m.Anonymous)
	m.ReceivedAt, m.DeliveredAt, m.NextAttemptAt = fromNanos(received), fromNanos(finished), fromNanos(next)
	m.Delivered = m.State == InboxDelivered
	if len(m.Ciphertext) == 0 {
		m.Ciphertext = nil
	}
	return m, err
}

// NewInbound is a message received from the relay, for [Queue.AddInboundBatch].
type NewInbound struct {
	ID         string // must be wire.MessageID(Ciphertext)
	Ciphertext []byte
	ReceivedAt time.Time
	// Anonymous: received by an anonymous (level-1) subscription, which
	// gets every message under its subscription key, other peers' too.
	Anonymous bool
}

// AddInbound stores a message received from the relay, not yet delivered
// to the node and due at once, and returns after it has committed: only
// then may the relay be acked. It returns false, writing nothing, if the
// ID is already in the inbox (delivered or not): duplicates are
// suppressed by ID. id must be wire.MessageID(ciphertext).
func (q *Queue) AddInbound(ctx context.Context, id string, ciphertext []byte, receivedAt time.Time) (bool, error) {
	created, err := q.AddInboundBatch(ctx, []NewInbound{{ID: id, Ciphertext: ciphertext, ReceivedAt: receivedAt}})
	if err != nil {
		return false, err
	}
	return created[0], nil
}

// AddInboundBatch is AddInbound for several messages at once, stored in
// one transaction, in order. created[i] reports whether msgs[i] was new.
// If any message is invalid, none is stored.
func (q *Queue) AddInboundBatch(ctx context.Context, msgs []NewInbound) (created []bool, err error) {
	for _, m := range msgs {
		if len(m.Ciphertext) == 0 || wire.MessageID(m.Ciphertext) != m.ID {
			return nil, fmt.Errorf("add inbound %s: %w: the ID is not the hash of the ciphertext", m.ID, ErrInvalid)
		}
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	err = q.write(ctx, func(tx *sql.Tx) error {
		if hook := q.opts.BeforeInboxWrite; hook != nil {
			hook()
		}
		created = make([]bool, len(msgs))
		for i, m := range msgs {
			res, err := tx.Exec(`INSERT INTO inbox (id, ciphertext, received_at, anonymous) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
				m.ID, m.Ciphertext, nanos(m.ReceivedAt), m.Anonymous)
			if err != nil {
				return fmt.Errorf("insert %s: %w", m.ID, err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			created[i] = n == 1
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("add inbound: %w", err)
	}
	return created, nil
}

// GetInbound returns the inbound message with that ID, or ErrNotFound.
func (q *Queue) GetInbound(ctx context.Context, id string) (Inbound, error) {
	if err := q.readable(); err != nil {
		return Inbound{}, err
	}
	m, err := scanInbound(q.rdb.QueryRowContext(ctx, "SELECT "+inboxCols+" FROM inbox WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return Inbound{}, fmt.Errorf("get inbound %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Inbound{}, q.readErr("get inbound "+id, err)
	}
	return m, nil
}

// PendingInbound lists up to limit inbound messages the node does not have
// yet, due at or before now, with Seq greater than after, oldest first.
// To page, pass the last Seq returned as after.
func (q *Queue) PendingInbound(ctx context.Context, now time.Time, after int64, limit int) ([]Inbound, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("pending inbound: %w: limit %d", ErrInvalid, limit)
	}
	if err := q.readable(); err != nil {
		return nil, err
	}
	rows, err := q.rdb.QueryContext(ctx, `SELECT `+inboxCols+` FROM inbox
		WHERE state = 'pending' AND seq > ? AND next_attempt_at <= ?
		ORDER BY seq LIMIT ?`, after, now.UnixNano(), limit)
	if err != nil {
		return nil, q.readErr("pending inbound", err)
	}
	return collect(rows, scanInbound, q.readErr)
}

// KnownInbound returns which of ids are in the inbox, in any state.
func (q *Queue) KnownInbound(ctx context.Context, ids []string) (map[string]bool, error) {
	if err := q.readable(); err != nil {
		return nil, err
	}
	known := make(map[string]bool)
	for len(ids) > 0 {
		n := min(len(ids), 500) // SQLite's bound on parameters is far above
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		rows, err := q.rdb.QueryContext(ctx, `SELECT id FROM inbox WHERE id IN (?`+strings.Repeat(", ?", n-1)+`)`, args...)
		if err != nil {
			return nil, q.readErr("known inbound", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, q.readErr("known inbound", err)
			}
			known[id] = true
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, q.readErr("known inbound", err)
		}
		ids = ids[n:]
	}
	return known, nil
}

// RefusedInbound lists up to limit inbound messages the node refused
// (state refused), oldest refusal first, with Seq greater than after.
func (q *Queue) RefusedInbound(ctx context.Context, after int64, limit int) ([]Inbound, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("refused inbound: %w: limit %d", ErrInvalid, limit)
	}
	if err := q.readable(); err != nil {
		return nil, err
	}
	rows, err := q.rdb.QueryContext(ctx, `SELECT `+inboxCols+` FROM inbox
		WHERE state = 'refused' AND seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, q.readErr("refused inbound", err)
	}
	return collect(rows, scanInbound, q.readErr)
}

// The inbox transitions. Each names its from-states in its WHERE clause;
// a message in another state is left as it is (no error), an unknown ID
// gives ErrNotFound.

// MarkInboundDelivered records that the node has the message: pending,
// refused or not_for_node → delivered (a polling node may ack such a
// message after all). Marking it twice is not an error (the first DeliveredAt stays).
func (q *Queue) MarkInboundDelivered(ctx context.Context, id string) error {
	return q.updateInbox(ctx, "mark inbound "+id+" delivered", id,
		`UPDATE inbox SET state = 'delivered', finished_at = ?, next_attempt_at = 0 WHERE id = ? AND state IN ('pending', 'refused', 'not_for_node')`,
		time.Now().UnixNano(), id)
}

// MarkInboundDeliveredBatch is MarkInboundDelivered for several messages,
// in one transaction; unknown IDs are skipped.
func (q *Queue) MarkInboundDeliveredBatch(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	err := q.write(ctx, func(tx *sql.Tx) error {
		now := time.Now().UnixNano()
		for _, id := range ids {
			if _, err := tx.Exec(`UPDATE inbox SET state = 'delivered', finished_at = ?, next_attempt_at = 0 WHERE id = ? AND state IN ('pending', 'refused', 'not_for_node')`, now, id); err != nil {
				return fmt.Errorf("update %s: %w", id, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark inbound delivered: %w", err)
	}
	return nil
}

// MarkInboundRefused records the node's final refusal of a pending
// message (its inbound endpoint answered 400 or 422): pending → refused,
// with reason as its last error. It is not offered to the node again.
func (q *Queue) MarkInboundRefused(ctx context.Context, id, reason string) error {
	return q.updateInbox(ctx, "mark inbound "+id+" refused", id,
		`UPDATE inbox SET state = 'refused', finished_at = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = 0 WHERE id = ? AND state = 'pending'`,
		time.Now().UnixNano(), reason, id)
}

// MarkInboundNotForNode records that the node could not open a pending
// message received by an anonymous subscription (its inbound endpoint
// answered 400 or 422): pending → not_for_node, with reason as its last
// error. An anonymous subscription gets every message stored under its
// subscription key, other peers' too, so this is expected, not a
// problem: unlike refused, it is not listed for attention. It is not
// offered to the node again, so its ciphertext is dropped (the ID stays,
// to recognise a redelivery): other peers' messages on a shared key cost
// the disk an ID each until they are pruned, not their size.
func (q *Queue) MarkInboundNotForNode(ctx context.Context, id, reason string) error {
	return q.updateInbox(ctx, "mark inbound "+id+" not for this node", id,
		`UPDATE inbox SET state = 'not_for_node', ciphertext = x'', finished_at = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = 0 WHERE id = ? AND state = 'pending'`,
		time.Now().UnixNano(), reason, id)
}

// InboundAttempt records a failed push of a pending message to the node:
// one more attempt, lastErr, and the next try at next (zero: whenever the
// pusher next tries). For a message not pending it changes nothing.
func (q *Queue) InboundAttempt(ctx context.Context, id string, lastErr string, next time.Time) error {
	return q.updateInbox(ctx, "record inbound attempt "+id, id,
		`UPDATE inbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ? AND state = 'pending'`,
		lastErr, nanos(next), id)
}

// updateInbox runs one update of an inbox row through the
// writer, and reports an unknown ID as ErrNotFound.
func (q *Queue) updateInbox(ctx context.Context, what, id, query string, args ...any) error {
	var outcome error
	err := q.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(query, args...)
		if err != nil {
			return fmt.Errorf("update %s: %w", id, err)
		}
		outcome, err = inboxOutcome(tx, res, id)
		return err
	})
	if err == nil {
		err = outcome
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// inboxOutcome tells an update that matched apart from a row in another
// state (nil: nothing to do) and an unknown ID (ErrNotFound).
func inboxOutcome(tx *sql.Tx, res sql.Result, id string) (outcome, err error) {
	n, err := res.RowsAffected()
	if err != nil || n == 1 {
		return nil, err
	}
	var one int
	err = tx.QueryRow(`SELECT 1 FROM inbox WHERE id = ?`, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound, nil
	}
	return nil, err
}

// MetaOrInit returns the value stored under key in the sidecar's own
// settings (the meta table), storing init there first if the key has
// none: the first caller's init wins, later ones get it back. It returns
// after the commit, so the value survives a crash once returned.
func (q *Queue) MetaOrInit(ctx context.Context, key, init string) (string, error) {
	if key == "" || init == "" {
		return "", fmt.Errorf("meta: %w: key and init must not be empty", ErrInvalid)
	}
	var value string
	err := q.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.Exec(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`, key, init); err != nil {
			return fmt.Errorf("insert %s: %w", key, err)
		}
		return tx.QueryRow(`SELECT value FROM meta WHERE key = ?`, key).Scan(&value)
	})
	if err != nil {
		return "", fmt.Errorf("meta %s: %w", key, err)
	}
	return value, nil
}

// SetMeta stores value under key in the sidecar's own settings (the meta
// table), replacing what was there, and returns after the commit.
func (q *Queue) SetMeta(ctx context.Context, key, value string) error {
	if key == "" || value == "" {
		return fmt.Errorf("meta: %w: key and value must not be empty", ErrInvalid)
	}
	err := q.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
		return err
	})
	if err != nil {
		return fmt.Errorf("meta %s: %w", key, err)
	}
	return nil
}

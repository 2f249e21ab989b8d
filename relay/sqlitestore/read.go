package sqlitestore

import (
	"context"
	"fmt"
	"time"

	"courier/relay"
)

// The replay queries. Both walk an index in seq order from after and stop
// at limit, so a page costs the same with a backlog of any size (see
// TestQueryPlans). An anonymous subscriber's acked messages are skipped by
// a primary-key probe of acks per candidate row.
const (
	pendingAnonymousSQL = `
		SELECT seq, id, key, recipient, stored_at, ciphertext FROM messages AS m
		WHERE key = ? AND seq > ?
		  AND NOT EXISTS (SELECT 1 FROM acks AS a WHERE a.seq = m.seq AND a.peer = 0 AND a.user_id = ?)
		ORDER BY seq LIMIT ?`
	pendingPeerSQL = `
		SELECT seq, id, key, recipient, stored_at, ciphertext FROM messages
		WHERE recipient = ? AND recipient_acked = 0 AND seq > ?
		ORDER BY seq LIMIT ?`
)

// Pending returns up to limit messages with Seq > after that sub has not
// acked, oldest first. For an anonymous subscriber those are the messages
// stored under key that its userID has not acked; for a peer, the messages
// addressed to it (key is then not consulted: the recipient determines it)
// that it has not acked. A limit of zero or less returns nothing.
func (s *Store) Pending(ctx context.Context, sub relay.Subscriber, key string, after int64, limit int) ([]relay.Message, error) {
	if limit <= 0 {
		return nil, nil
	}
	if s.isClosed() {
		return nil, fmt.Errorf("sqlitestore: pending: %w", relay.ErrClosed)
	}
	var args []any
	query := pendingAnonymousSQL
	if sub.Peer {
		query, args = pendingPeerSQL, []any{sub.ID, after, limit}
	} else {
		args = []any{key, after, sub.ID, limit}
	}
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: pending: %w", err)
	}
	defer rows.Close()
	msgs := make([]relay.Message, 0, min(limit, 64))
	for rows.Next() {
		var (
			m        relay.Message
			storedAt int64
		)
		if err := rows.Scan(&m.Seq, &m.ID, &m.Key, &m.Recipient, &storedAt, &m.Ciphertext); err != nil {
			return nil, fmt.Errorf("sqlitestore: pending: %w", err)
		}
		m.StoredAt = time.Unix(0, storedAt)
		msgs = append(msgs, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitestore: pending: %w", err)
	}
	return msgs, nil
}

// Stats counts what is stored, from totals the writer keeps in step with
// every put and sweep: it costs one row, whatever the size of the store.
func (s *Store) Stats(ctx context.Context) (relay.Stats, error) {
	if s.isClosed() {
		return relay.Stats{}, fmt.Errorf("sqlitestore: stats: %w", relay.ErrClosed)
	}
	var st relay.Stats
	if err := s.r.QueryRowContext(ctx, `SELECT messages, bytes FROM totals WHERE id = 1`).Scan(&st.Messages, &st.Bytes); err != nil {
		return relay.Stats{}, fmt.Errorf("sqlitestore: stats: %w", err)
	}
	return st, nil
}

// Ready implements relay.Readier: the store is open and its database
// answers a read.
func (s *Store) Ready(ctx context.Context) error {
	if s.isClosed() {
		return fmt.Errorf("sqlitestore: %w", relay.ErrClosed)
	}
	var one int
	if err := s.r.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("sqlitestore: %w", err)
	}
	return nil
}

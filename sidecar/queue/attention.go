package queue

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Attention is what a status page shows an operator first: the messages
// that need a look. Their Ciphertext is left nil.
type Attention struct {
	Failed         []Outbound // failed outbound, most recent first
	Waiting        []Outbound // queued or sending since before the cut-off, oldest first
	Refused        []Inbound  // refused by the node, most recent first
	WaitingInbound []Inbound  // pending for the node since before the cut-off, oldest first
}

// inboxColsNoCT is inboxCols with an empty ciphertext, for listings.
var inboxColsNoCT = strings.Replace(inboxCols, "ciphertext", "x''", 1)

// Attention lists up to limit messages of each kind that need an
// operator's look: failed outbound, outbound still queued or sending that
// was accepted before waitingSince, inbound the node refused, and inbound
// received before waitingSince that the node does not have yet. Each query
// follows an index and stops at limit.
func (q *Queue) Attention(ctx context.Context, waitingSince time.Time, limit int) (Attention, error) {
	if limit <= 0 {
		return Attention{}, fmt.Errorf("attention: %w: limit %d", ErrInvalid, limit)
	}
	if err := q.readable(); err != nil {
		return Attention{}, err
	}
	var a Attention
	since := waitingSince.UnixNano()
	outbox := func(dst *[]Outbound, query string, args ...any) error {
		rows, err := q.rdb.QueryContext(ctx, `SELECT `+outboxColsNoCT+` FROM outbox `+query, args...)
		if err != nil {
			return q.readErr("attention", err)
		}
		*dst, err = collect(rows, scanOutbound, q.readErr)
		return err
	}
	inbox := func(dst *[]Inbound, query string, args ...any) error {
		rows, err := q.rdb.QueryContext(ctx, `SELECT `+inboxColsNoCT+` FROM inbox `+query, args...)
		if err != nil {
			return q.readErr("attention", err)
		}
		*dst, err = collect(rows, scanInbound, q.readErr)
		return err
	}
	if err := outbox(&a.Failed, `WHERE state = ? ORDER BY seq DESC LIMIT ?`, Failed, limit); err != nil {
		return Attention{}, err
	}
	if err := outbox(&a.Waiting, `WHERE state IN (?, ?) AND created_at < ? ORDER BY seq LIMIT ?`, Queued, Sending, since, limit); err != nil {
		return Attention{}, err
	}
	if err := inbox(&a.Refused, `WHERE state = ? ORDER BY finished_at DESC LIMIT ?`, InboxRefused, limit); err != nil {
		return Attention{}, err
	}
	if err := inbox(&a.WaitingInbound, `WHERE state = ? AND received_at < ? ORDER BY seq LIMIT ?`, InboxPending, since, limit); err != nil {
		return Attention{}, err
	}
	return a, nil
}

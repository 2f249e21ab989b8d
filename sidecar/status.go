package sidecar

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"courier/sidecar/queue"
)

// Status is what /v1/status reports.
type Status struct {
	Relay  RelayStatus               `json:"relay"`
	Outbox map[queue.State]int       `json:"outbox"`
	Inbox  InboxStatus               `json:"inbox"`
	Paths  map[queue.Path]int        `json:"paths"` // delivered INDIRECT, handed off OFFLINE
	Node   map[string]EndpointHealth `json:"node"`
	Recent []queue.Outbound          `json:"recent,omitempty"`
}

// InboxStatus counts inbound messages: pending (the node does not have
// them yet), delivered (it has them) and refused (its inbound endpoint
// answered 400 or 422; kept, not retried).
type InboxStatus struct {
	Pending   int `json:"pending"`
	Delivered int `json:"delivered"`
	Refused   int `json:"refused"`
}

// Status reports the relay connection, queue depths, counts per path and
// node endpoint health, with the recent outbound messages when recent > 0.
func (e *Engine) Status(ctx context.Context, recent int) (Status, error) {
	c, err := e.q.Counts(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("count queues: %w", err)
	}
	st := Status{
		Relay:  e.RelayStatus(),
		Outbox: make(map[queue.State]int),
		Inbox:  InboxStatus{Pending: c.InboxPending, Delivered: c.InboxDelivered, Refused: c.InboxRefused},
		Paths: map[queue.Path]int{
			queue.PathIndirect: c.Count(queue.Delivered, queue.PathIndirect),
			queue.PathOffline:  c.Count(queue.HandedOff, queue.PathOffline),
		},
		Node: e.health.snapshot(),
	}
	for _, s := range queue.States {
		st.Outbox[s] = c.State(s)
	}
	if recent > 0 {
		if st.Recent, err = e.q.Recent(ctx, recent); err != nil {
			return Status{}, fmt.Errorf("recent messages: %w", err)
		}
	}
	return st, nil
}

// Ready returns nil when the sidecar can do its job, otherwise why not: the
// store fails, the configured relay has been unreachable past the grace, or
// a node endpoint keeps failing.
func (e *Engine) Ready(ctx context.Context) error {
	if _, err := e.q.Counts(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := e.link.downErr(e.Config(), time.Now()); err != nil {
		return err
	}
	return e.health.failing()
}

// Attention is what needs an operator's eye, oldest first in each list,
// without ciphertext.
type Attention struct {
	// Failed outbound messages: given up on; LastError says why. A new
	// POST of one queues it again.
	Failed []queue.Outbound `json:"failed"`
	// Waiting outbound messages: queued or sending for longer than asked.
	Waiting []queue.Outbound `json:"waiting"`
	// Refused inbound messages: the node's inbound endpoint answered 400
	// or 422; LastError has its answer.
	Refused []queue.Inbound `json:"refused"`
	// Stuck inbound messages: the node has not taken them for longer than
	// asked; LastError has the last failure.
	Stuck []queue.Inbound `json:"stuck"`
}

// Attention lists up to limit of each kind of message that needs
// attention: failed, refused, and those waiting longer than waiting.
func (e *Engine) Attention(ctx context.Context, waiting time.Duration, limit int) (Attention, error) {
	var a Attention
	now := time.Now()
	var err error
	if a.Failed, err = e.q.Older(ctx, queue.Failed, farFuture, limit); err != nil {
		return Attention{}, fmt.Errorf("failed messages: %w", err)
	}
	for _, s := range []queue.State{queue.Queued, queue.Sending} {
		ms, err := e.q.Older(ctx, s, now.Add(-waiting), limit)
		if err != nil {
			return Attention{}, fmt.Errorf("waiting messages: %w", err)
		}
		a.Waiting = append(a.Waiting, ms...)
	}
	slices.SortFunc(a.Waiting, func(x, y queue.Outbound) int { return cmp.Compare(x.Seq, y.Seq) })
	a.Waiting = a.Waiting[:min(len(a.Waiting), limit)]
	if a.Refused, err = e.q.OlderInbound(ctx, queue.InboxRefused, farFuture, limit); err != nil {
		return Attention{}, fmt.Errorf("refused messages: %w", err)
	}
	if a.Stuck, err = e.q.OlderInbound(ctx, queue.InboxPending, now.Add(-waiting), limit); err != nil {
		return Attention{}, fmt.Errorf("stuck inbound messages: %w", err)
	}
	return a, nil
}

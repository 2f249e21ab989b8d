package sidecar

import (
	"context"
	"fmt"
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
	// LastHour is, per path, the deliveries of the last hour: how many,
	// per minute, and their latency from acceptance.
	LastHour map[queue.Path]PathHour `json:"last_hour"`
	// Attention lists the messages an operator should look at: failed,
	// refused by the node, waiting longer than AttentionWait; at most
	// attentionLimit of each kind.
	Attention []NeedsAttention `json:"attention"`
	Recent    []queue.Outbound `json:"recent,omitempty"`
}

// AttentionWait is how long a message may wait (outbound: not delivered
// or handed off yet; inbound: not at the node yet) before the status lists
// it as needing attention.
const AttentionWait = time.Minute

// attentionLimit bounds each kind of message in Status.Attention.
const attentionLimit = 20

// NeedsAttention is a message an operator should look at, and why.
type NeedsAttention struct {
	Direction string    `json:"direction"`           // "outbound" or "inbound"
	ID        string    `json:"id"`                  // message ID
	Recipient string    `json:"recipient,omitempty"` // outbound only
	State     string    `json:"state"`               // outbound: failed, queued, sending; inbound: refused, pending
	Path      string    `json:"path,omitempty"`      // outbound: INDIRECT, OFFLINE or none yet
	Attempts  int       `json:"attempts"`
	Since     time.Time `json:"since"`      // accepted from the node (outbound), received from the relay (inbound)
	UpdatedAt time.Time `json:"updated_at"` // last change
	Reason    string    `json:"reason"`     // why it needs a look: the last error, how long it has waited
}

// attention lists what needs a look, failed and refused first.
func (e *Engine) attention(ctx context.Context, now time.Time) ([]NeedsAttention, error) {
	a, err := e.q.Attention(ctx, now.Add(-AttentionWait), attentionLimit)
	if err != nil {
		return nil, err
	}
	out := make([]NeedsAttention, 0, len(a.Failed)+len(a.Refused)+len(a.Waiting)+len(a.WaitingInbound))
	outbound := func(m queue.Outbound, reason string) {
		out = append(out, NeedsAttention{Direction: "outbound", ID: m.ID, Recipient: m.Recipient, State: string(m.State),
			Path: string(m.Path), Attempts: m.Attempts, Since: m.CreatedAt, UpdatedAt: m.UpdatedAt, Reason: reason})
	}
	inbound := func(m queue.Inbound, reason string) {
		updated := m.DeliveredAt // when it was refused
		if updated.IsZero() {
			updated = m.ReceivedAt
		}
		out = append(out, NeedsAttention{Direction: "inbound", ID: m.ID, State: string(m.State),
			Attempts: m.Attempts, Since: m.ReceivedAt, UpdatedAt: updated, Reason: reason})
	}
	waited := func(since time.Time, lastErr string) string {
		r := "waiting for " + now.Sub(since).Round(time.Second).String()
		if lastErr != "" {
			r += "; last error: " + lastErr
		}
		return r
	}
	orElse := func(s, otherwise string) string {
		if s == "" {
			return otherwise
		}
		return s
	}
	for _, m := range a.Failed {
		outbound(m, orElse(m.LastError, "failed")+" (POST it again to retry)")
	}
	for _, m := range a.Refused {
		inbound(m, orElse(m.LastError, "refused by the node")+" (not retried)")
	}
	for _, m := range a.Waiting {
		outbound(m, waited(m.CreatedAt, m.LastError))
	}
	for _, m := range a.WaitingInbound {
		inbound(m, waited(m.ReceivedAt, m.LastError)+" (the node has not taken it)")
	}
	return out, nil
}

// InboxStatus counts inbound messages: pending (the node does not have
// them yet), delivered (it has them) and refused (its inbound endpoint
// answered 400 or 422; kept, not retried).
type InboxStatus struct {
	Pending   int `json:"pending"`
	Delivered int `json:"delivered"`
	Refused   int `json:"refused"`
	// NotForNode: received by an anonymous subscription (which gets every
	// message under its subscription key) and not opened by the node:
	// other peers' messages, expected in anonymous mode; not retried.
	NotForNode int `json:"not_for_node"`
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
		Inbox:  InboxStatus{Pending: c.InboxPending, Delivered: c.InboxDelivered, Refused: c.InboxRefused, NotForNode: c.InboxNotForNode},
		Paths: map[queue.Path]int{
			queue.PathIndirect: c.Count(queue.Delivered, queue.PathIndirect),
			queue.PathOffline:  c.Count(queue.HandedOff, queue.PathOffline),
		},
		Node:     e.health.snapshot(),
		LastHour: e.m.lastHour.lastHour(),
	}
	for _, s := range queue.States {
		st.Outbox[s] = c.State(s)
	}
	if st.Attention, err = e.attention(ctx, time.Now()); err != nil {
		return Status{}, fmt.Errorf("messages needing attention: %w", err)
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

// Attention lists up to limit of each kind of message that needs
// attention: failed, refused, and those waiting longer than waiting.
func (e *Engine) Attention(ctx context.Context, waiting time.Duration, limit int) (queue.Attention, error) {
	return e.q.Attention(ctx, time.Now().Add(-waiting), limit)
}

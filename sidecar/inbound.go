package sidecar

import (
	"context"
	"fmt"
	"sync"
	"time"

	"courier/sidecar/queue"
	"courier/upstream"
)

// takeInbound is upstream's Handler: it stores a batch of messages from the
// relay durably (deduplicated by ID) and only then returns, so that upstream
// acks them. One commit for the whole batch keeps the relay's order.
func (e *Engine) takeInbound(ctx context.Context, batch []upstream.Inbound) error {
	in := make([]queue.NewInbound, len(batch))
	now := time.Now()
	for i, m := range batch {
		in[i] = queue.NewInbound{ID: m.ID, Ciphertext: m.Ciphertext, ReceivedAt: now}
	}
	created, err := e.q.AddInboundBatch(ctx, in)
	if err != nil {
		return fmt.Errorf("store inbound: %w", err)
	}
	n := 0
	for _, c := range created {
		if c {
			n++
		}
	}
	e.m.inbound.Add(float64(n))
	if n > 0 {
		e.mu.Lock()
		close(e.inboxSignal)
		e.inboxSignal = make(chan struct{})
		e.mu.Unlock()
		signal(e.wakeInbound)
	}
	return nil
}

// pushInboundOnce pushes pending inbound messages to the node's inbound
// endpoint, oldest first. It stops at the first failure, so that the node
// sees each sender's messages in order, and tries again after a backoff.
func (e *Engine) pushInboundOnce(ctx context.Context) error {
	cfg := e.Config()
	if cfg.Node.InboundURL == "" {
		return nil // the node polls /v1/inbox
	}
	for {
		// All pending, not just the due ones: a message waiting for its
		// retry holds back those behind it.
		msgs, err := e.q.PendingInbound(ctx, farFuture, 0, 256)
		if err != nil {
			return fmt.Errorf("list inbound: %w", err)
		}
		if len(msgs) == 0 {
			return nil
		}
		// Marking delivered runs alongside the next pushes, group-committed,
		// so a slow disk does not set the pace; a crash in that short window
		// may push a message twice, and the node drops it by ID.
		var marks sync.WaitGroup
		var markErr error
		var markMu sync.Mutex
		// Once the node has a message, recording that must not be undone
		// by a shutdown: with ctx cancelled the queue would skip the write
		// and the next start would push the message again. The marks are
		// waited for below before this pass returns.
		markCtx := context.WithoutCancel(ctx)
		for _, m := range msgs {
			if m.NextAttemptAt.After(time.Now()) || ctx.Err() != nil {
				marks.Wait()
				return markErr
			}
			// A push under way when a shutdown begins is let finish, so
			// that what the node takes is marked, not pushed again later.
			callCtx, release := finishing(ctx)
			err := e.node.post(callCtx, cfg.Node.InboundURL, inboundRequest{
				ID: m.ID, Ciphertext: m.Ciphertext, Path: "INDIRECT", ReceivedAt: m.ReceivedAt,
			}, nil)
			release()
			if refused(err) {
				e.recordNode("inbound", nil) // it answered: the endpoint works
			} else {
				e.recordNode("inbound", err)
			}
			if err != nil && refused(err) {
				// The node will never take this one (it cannot open it, say):
				// record why, and stop offering it, so that it does not hold
				// up the messages behind it.
				e.log.Error("node refused an inbound message; not retrying", "id", m.ID, "err", err)
				e.m.refused.Inc()
				if err := e.q.InboundAttempt(markCtx, m.ID, "refused by the node: "+err.Error(), time.Now()); err != nil {
					return fmt.Errorf("record inbound refusal: %w", err)
				}
				if err := e.q.MarkInboundDelivered(markCtx, m.ID); err != nil {
					return fmt.Errorf("record inbound refusal: %w", err)
				}
				continue
			}
			if err != nil {
				marks.Wait()
				if ctx.Err() != nil {
					return ctx.Err()
				}
				next := time.Now().Add(retryWait(cfg.Delivery.RetryWaitMin, cfg.Delivery.RetryWaitMax, m.Attempts+1))
				e.log.Warn("inbound push failed; will retry", "id", m.ID, "attempts", m.Attempts+1, "retry_at", next, "err", err)
				if err := e.q.InboundAttempt(ctx, m.ID, "inbound endpoint: "+err.Error(), next); err != nil {
					return fmt.Errorf("record inbound attempt: %w", err)
				}
				return nil
			}
			marks.Add(1)
			go func(id string) {
				defer marks.Done()
				if err := e.q.MarkInboundDelivered(markCtx, id); err != nil {
					markMu.Lock()
					markErr = err
					markMu.Unlock()
				}
			}(m.ID)
			e.m.pushed.Inc()
		}
		marks.Wait()
		if markErr != nil {
			return fmt.Errorf("mark inbound delivered: %w", markErr)
		}
	}
}

// Inbox returns up to limit inbound messages the node has not acked, oldest
// first, waiting up to wait for one to arrive when there are none.
func (e *Engine) Inbox(ctx context.Context, wait time.Duration, limit int) ([]queue.Inbound, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		e.mu.Lock()
		arrived := e.inboxSignal
		e.mu.Unlock()
		msgs, err := e.q.PendingInbound(ctx, farFuture, 0, limit)
		if err != nil || len(msgs) > 0 || wait <= 0 {
			return msgs, err
		}
		select {
		case <-arrived:
		case <-deadline.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// AckInbox records that the node has an inbound message.
func (e *Engine) AckInbox(ctx context.Context, id string) error {
	return e.q.MarkInboundDelivered(ctx, id)
}

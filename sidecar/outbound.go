package sidecar

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"courier/sidecar/queue"
	"courier/upstream"
	"courier/wire"
)

const dispatchPage = 256

// maxLostPublishes is how many INDIRECT attempts of one message may end with
// the connection lost before it goes OFFLINE instead.
const maxLostPublishes = 3

// dispatchOnce moves queued messages on: published INDIRECT in outbox
// order while the relay is connected (one connection, in order, so each
// recipient's messages reach the relay in submission order), handed to
// OFFLINE when there is no relay to use, left queued within the grace.
func (e *Engine) dispatchOnce(ctx context.Context) error {
	for {
		rt, up := e.route()
		if rt == routeWait {
			return nil
		}
		e.mu.Lock()
		after := e.cursor
		e.mu.Unlock()
		msgs, err := e.q.Due(ctx, queue.Queued, queue.PathNone, time.Now(), after, dispatchPage)
		if err != nil {
			return fmt.Errorf("list queued: %w", err)
		}
		if len(msgs) == 0 {
			e.mu.Lock()
			if e.cursor == after {
				e.cursor = 0 // next pass starts over: retries due later sit behind the cursor
			}
			e.mu.Unlock()
			return nil
		}
		for _, m := range msgs {
			e.mu.Lock()
			busy := e.inflight[m.ID]
			e.mu.Unlock()
			switch {
			case busy:
			case rt == routeOffline:
				reason := "no relay configured"
				if e.Config().RelayURL != "" {
					reason = "relay unreachable past the grace"
					if last := e.RelayStatus().LastError; last != "" {
						reason += ": " + last
					}
				}
				if err := e.toOffline(ctx, m, []queue.State{queue.Queued}, reason); err != nil {
					return err
				}
			default:
				err := e.publish(ctx, up, m)
				switch {
				case errors.Is(err, upstream.ErrTooLarge):
					// The relay would refuse it (or drop the connection
					// over its frame): OFFLINE at once.
					e.m.fallbacks.WithLabelValues("too_large").Inc()
					if err := e.toOffline(ctx, m, []queue.State{queue.Queued}, err.Error()); err != nil {
						return err
					}
				case err != nil:
					// The connection is gone or going. The cursor must not
					// pass this message: the next pass starts over from the
					// oldest queued one, so nothing is skipped or reordered.
					e.mu.Lock()
					e.cursor = 0
					e.mu.Unlock()
					if ctx.Err() != nil || errors.Is(err, upstream.ErrNotConnected) {
						e.log.Debug("publish not sent; will retry", "id", m.ID, "err", err)
						return nil // the next wake (connected again, or past the grace) retries
					}
					return err
				}
			}
			e.mu.Lock()
			e.cursor = m.Seq
			e.mu.Unlock()
		}
	}
}

// publish sends one message INDIRECT and leaves a tracker waiting for its
// result.
func (e *Engine) publish(ctx context.Context, up *upstream.Client, m queue.Outbound) error {
	select {
	case e.inflightSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	ch, err := up.Publish(ctx, m.Recipient, m.Ciphertext)
	if err != nil {
		<-e.inflightSem
		return err
	}
	e.mu.Lock()
	e.inflight[m.ID] = true
	e.mu.Unlock()
	e.trackers.Add(1)
	go e.track(ctx, m, ch)
	return nil
}

// track records a publish as sending, waits for its result, and moves the
// message to delivered, back to queued, or on to OFFLINE.
func (e *Engine) track(ctx context.Context, m queue.Outbound, results <-chan upstream.Result) {
	defer e.trackers.Done()
	defer func() {
		e.mu.Lock()
		delete(e.inflight, m.ID)
		e.mu.Unlock()
		<-e.inflightSem
	}()
	sent, err := e.q.Transition(ctx, m.ID, []queue.State{queue.Queued}, queue.Change{
		State: queue.Sending, Path: queue.PathIndirect, AttemptsDelta: 1,
	})
	if err != nil {
		if ctx.Err() == nil {
			e.log.Error("mark sending", "id", m.ID, "err", err)
		}
		return
	}
	m = sent
	timeout := time.NewTimer(e.Config().Delivery.PublishTimeout)
	defer timeout.Stop()
	var r upstream.Result
	select {
	case r = <-results:
	case <-timeout.C:
		e.fallBack(ctx, m, "timeout", fmt.Sprintf("no publish result from the relay within %s", e.Config().Delivery.PublishTimeout))
		return
	case <-ctx.Done():
		return // left sending: resumed at the next start
	}
	if r.Err == nil {
		e.m.publishResults.WithLabelValues(r.Status).Inc()
	}
	switch {
	case r.Err != nil && m.Attempts >= maxLostPublishes:
		// Lost with the connection every time: a relay that closes the
		// connection over this very message (a frame over its limit), or
		// one that keeps going down. OFFLINE does not depend on it.
		e.fallBack(ctx, m, "connection_lost", fmt.Sprintf("relay connection lost before the publish result, %d times: %v", m.Attempts, r.Err))
	case r.Err != nil:
		// Connection lost: the relay may or may not have it. Queue it again;
		// the dispatcher sends it OFFLINE if the relay stays away.
		if _, err := e.q.Transition(ctx, m.ID, []queue.State{queue.Sending}, queue.Change{
			State: queue.Queued, Path: queue.PathNone, LastError: r.Err.Error(),
		}); err != nil && ctx.Err() == nil {
			e.log.Error("requeue", "id", m.ID, "err", err)
		}
		signal(e.wakeDispatch)
	case r.Status == wire.StatusDelivered:
		done, err := e.q.Transition(ctx, m.ID, []queue.State{queue.Sending}, queue.Change{
			State: queue.Delivered, Path: queue.PathIndirect,
		})
		if err != nil {
			if ctx.Err() == nil {
				e.log.Error("mark delivered", "id", m.ID, "err", err)
			}
			return
		}
		e.m.delivered(done)
	case r.Status == wire.StatusQueued && e.retryAfterComeback(ctx, m):
		// Queued again for INDIRECT: the relay just came back, and the
		// recipient is likely reconnecting.
	case r.Status == wire.StatusRejected && strings.HasPrefix(r.Reason, wire.ReasonRateLimited) && m.Attempts < 5:
		// The relay asks us to slow down: try INDIRECT again shortly.
		wait := time.Duration(m.Attempts) * 200 * time.Millisecond
		if _, err := e.q.Transition(ctx, m.ID, []queue.State{queue.Sending}, queue.Change{
			State: queue.Queued, Path: queue.PathNone, LastError: "relay: " + r.Reason, NextAttemptAt: time.Now().Add(wait),
		}); err != nil && ctx.Err() == nil {
			e.log.Error("requeue", "id", m.ID, "err", err)
		}
	default:
		reason := "relay answered " + r.Status
		if r.Reason != "" {
			reason += ": " + r.Reason
		}
		e.fallBack(ctx, m, r.Status, reason)
	}
}

// retryAfterComeback queues a message answered queued again, for another
// INDIRECT try shortly, when the relay came back from an outage less than
// relay_grace ago (see relayJustBack); it reports whether it did. The relay
// takes a republished ID as the same message: it pushes it to the
// recipient if connected by then, and stores it once.
func (e *Engine) retryAfterComeback(ctx context.Context, m queue.Outbound) bool {
	until, ok := e.relayJustBack()
	if !ok {
		return false
	}
	next := time.Now().Add(reconnectRetry)
	if next.After(until) {
		next = until
	}
	if _, err := e.q.Transition(ctx, m.ID, []queue.State{queue.Sending}, queue.Change{
		State: queue.Queued, Path: queue.PathNone, LastError: "relay answered queued just after it came back; trying INDIRECT again", NextAttemptAt: next,
	}); err != nil {
		if ctx.Err() == nil {
			e.log.Error("requeue", "id", m.ID, "err", err)
		}
		return false // the caller sends it OFFLINE, if it can
	}
	e.log.Debug("queued just after the relay came back; will publish again", "id", m.ID, "at", next)
	return true
}

// fallBack sends a message that INDIRECT could not confirm OFFLINE.
func (e *Engine) fallBack(ctx context.Context, m queue.Outbound, kind, reason string) {
	e.m.fallbacks.WithLabelValues(kind).Inc()
	if err := e.toOffline(ctx, m, []queue.State{queue.Sending}, reason); err != nil && ctx.Err() == nil {
		e.log.Error("fall back to OFFLINE", "id", m.ID, "err", err)
	}
}

// toOffline puts a message on the OFFLINE path: state sending, path
// OFFLINE, due now, with reason as its last error. Its attempts start again
// from 0: from here on they count OFFLINE attempts, which
// delivery.offline_max_attempts bounds; the INDIRECT ones must not use up
// that budget. m must be the message as stored (its Attempts current).
func (e *Engine) toOffline(ctx context.Context, m queue.Outbound, from []queue.State, reason string) error {
	if _, err := e.q.Transition(ctx, m.ID, from, queue.Change{
		State: queue.Sending, Path: queue.PathOffline, LastError: reason, NextAttemptAt: time.Now(),
		AttemptsDelta: -m.Attempts,
	}); err != nil {
		if errors.Is(err, queue.ErrConflict) {
			return nil // someone else moved it on meanwhile
		}
		return fmt.Errorf("route %s OFFLINE: %w", m.ID, err)
	}
	e.log.Debug("message goes OFFLINE", "id", m.ID, "reason", reason)
	signal(e.wakeOffline)
	return nil
}

// offlineOnce hands every due OFFLINE message to the node's endpoint, a few
// at a time.
func (e *Engine) offlineOnce(ctx context.Context) error {
	var after int64
	for {
		msgs, err := e.q.Due(ctx, queue.Sending, queue.PathOffline, time.Now(), after, 64)
		if err != nil {
			return fmt.Errorf("list OFFLINE due: %w", err)
		}
		if len(msgs) == 0 {
			return nil
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(e.opts.OfflineWorkers)
		for _, m := range msgs {
			after = m.Seq
			g.Go(func() error { return e.handOff(gctx, m) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
}

// handOff posts one message to the node's OFFLINE endpoint: handed_off on
// 2xx; otherwise retried later with backoff, until the budget is spent.
func (e *Engine) handOff(ctx context.Context, m queue.Outbound) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	cfg := e.Config()
	// A hand-off under way when a shutdown begins is let finish, so that
	// what the node takes is recorded, not handed to it again later.
	callCtx, release := finishing(ctx)
	err := e.node.post(callCtx, cfg.Node.OfflinePublishURL, offlineRequest{Recipient: m.Recipient, Ciphertext: m.Ciphertext}, nil)
	release()
	e.recordNode("offline", err)
	if err == nil {
		// The node has it: record that even if a shutdown began meanwhile
		// (with ctx cancelled the queue would skip the write, and the next
		// start would hand the message off again). The last error stays:
		// it says why the message went OFFLINE.
		done, err := e.q.Transition(context.WithoutCancel(ctx), m.ID, []queue.State{queue.Sending}, queue.Change{
			State: queue.HandedOff, Path: queue.PathOffline, AttemptsDelta: 1, LastError: m.LastError,
		})
		if err != nil {
			return fmt.Errorf("mark handed_off %s: %w", m.ID, err)
		}
		e.m.delivered(done)
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	attempts := m.Attempts + 1
	change := queue.Change{State: queue.Sending, Path: queue.PathOffline, AttemptsDelta: 1, LastError: "OFFLINE endpoint: " + err.Error()}
	if attempts >= cfg.Delivery.OfflineMaxAttempts || time.Since(m.CreatedAt) > cfg.Delivery.OfflineMaxAge {
		change.State = queue.Failed
		change.LastError = fmt.Sprintf("gave up after %d attempts over %s; last: %s", attempts, time.Since(m.CreatedAt).Round(time.Second), change.LastError)
		e.m.failed.Inc()
		e.log.Error("message failed", "id", m.ID, "recipient", m.Recipient, "attempts", attempts, "err", err)
	} else {
		change.NextAttemptAt = time.Now().Add(retryWait(cfg.Delivery.RetryWaitMin, cfg.Delivery.RetryWaitMax, attempts))
		e.log.Warn("OFFLINE hand-off failed; will retry", "id", m.ID, "attempts", attempts, "retry_at", change.NextAttemptAt, "err", err)
	}
	if _, err := e.q.Transition(ctx, m.ID, []queue.State{queue.Sending}, change); err != nil {
		return fmt.Errorf("record OFFLINE attempt %s: %w", m.ID, err)
	}
	return nil
}

// retryWait is capped exponential backoff with full jitter, never below min.
func retryWait(min, max time.Duration, attempt int) time.Duration {
	bound := max
	if attempt < 32 {
		if b := min << attempt; b > 0 && b < max {
			bound = b
		}
	}
	return min + rand.N(bound-min+1)
}

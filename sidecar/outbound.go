package sidecar

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"courier/sidecar/queue"
	"courier/upstream"
)

const dispatchPage = 256

// dispatcher is the engine's part that publishes queued messages INDIRECT
// in outbox order: it owns the in-flight set (published, awaiting a
// result: one tracker goroutine each, bounded by sem) and the cursor, its
// position in the outbox. Its lock guards inflight and cursor.
//
// Freshly accepted messages reach it in memory (fresh, filled by Submit
// before it answers, so in the order the node was answered): while the
// dispatcher is caught up (its last pass over the outbox found nothing
// left to send and nothing has asked for a pass since), it publishes them
// from there without reading them back from SQLite. Whatever the channel
// cannot take, or arrives while it is not caught up, a pass over the
// outbox finds: the outbox stays the truth, the channel only a shortcut.
// Only the dispatcher's goroutine touches caughtUp and scanned.
type dispatcher struct {
	sem      chan struct{} // a slot per publish awaiting its result (Options.MaxInflight)
	trackers sync.WaitGroup
	fresh    chan queue.Outbound // accepted messages, from Submit

	caughtUp bool  // the last pass ended on an empty outbox page
	scanned  int64 // the highest Seq a pass has dealt with: fresh ones at or below it were handled by a pass

	mu       sync.Mutex
	inflight map[string]bool
	finished map[string]bool // publishes finished since the last page was read: not to be sent again from that page
	cursor   int64
}

// freshCap bounds the accepted messages waiting in memory for the
// dispatcher; freshMaxBytes is the largest ciphertext handed over that
// way (a larger one is found by the next pass over the outbox).
const (
	freshCap      = 1024
	freshMaxBytes = 64 << 10
)

func (d *dispatcher) position() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cursor
}

func (d *dispatcher) advance(seq int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cursor = seq
	d.scanned = max(d.scanned, seq)
}

// reading is called just before a page of the outbox is read: publishes
// finished before it are reflected in what it reads.
func (d *dispatcher) reading() {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.finished)
}

// restartFrom sends the cursor back to the start of the outbox: always
// when after < 0, otherwise only if it is still at after (nothing moved it
// meanwhile).
func (d *dispatcher) restartFrom(after int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if after < 0 || d.cursor == after {
		d.cursor = 0
	}
}

// busy reports whether message id is being published, or its publish
// finished since the last page was read (that page may show it as it was).
func (d *dispatcher) busy(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.inflight[id] || d.finished[id]
}

// start records a publish awaiting its result; its slot in sem is taken.
func (d *dispatcher) start(id string) {
	d.mu.Lock()
	d.inflight[id] = true
	d.mu.Unlock()
	d.trackers.Add(1)
}

// finish ends what start began, when the result has been dealt with.
func (d *dispatcher) finish(id string) {
	d.mu.Lock()
	delete(d.inflight, id)
	d.finished[id] = true
	d.mu.Unlock()
	<-d.sem
	d.trackers.Done()
}

// dispatchOnce moves queued messages on: published INDIRECT in outbox
// order while the relay is connected (one connection, in order, so each
// recipient's messages reach the relay in submission order), handed to
// OFFLINE when there is no relay to use, left queued within the grace.
func (e *Engine) dispatchOnce(ctx context.Context) error {
	d := &e.disp
	for {
		rt, up := e.link.route(e.Config(), time.Now())
		if rt == routeWait {
			return nil
		}
		after := d.position()
		d.reading()
		msgs, err := e.q.Due(ctx, queue.Queued, queue.PathNone, time.Now(), after, dispatchPage)
		if err != nil {
			return fmt.Errorf("list queued: %w", err)
		}
		if len(msgs) == 0 {
			d.restartFrom(after) // next pass starts over: retries due later sit behind the cursor
			d.caughtUp = true
			return nil
		}
		for _, m := range msgs {
			switch {
			case d.busy(m.ID):
			case rt == routeOffline:
				reason := "no relay configured"
				if e.Config().RelayURL != "" {
					reason = "relay unreachable past the grace"
					if last := e.link.snapshot().LastError; last != "" {
						reason += ": " + last
					}
				}
				if err := e.toOffline(ctx, m, queue.Queued, reason); err != nil {
					return err
				}
			default:
				err := e.publish(ctx, up, m)
				switch {
				case errors.Is(err, upstream.ErrTooLarge):
					// The relay would refuse it (or drop the connection
					// over its frame): OFFLINE at once.
					e.m.fallbacks.WithLabelValues("too_large").Inc()
					if err := e.toOffline(ctx, m, queue.Queued, err.Error()); err != nil {
						return err
					}
				case err != nil:
					// The connection is gone or going. The cursor must not
					// pass this message: the next pass starts over from the
					// oldest queued one, so nothing is skipped or reordered.
					d.restartFrom(-1)
					if ctx.Err() != nil || errors.Is(err, upstream.ErrNotConnected) {
						e.log.Debug("publish not sent; will retry", "id", m.ID, "err", err)
						return nil // the next wake (connected again, or past the grace) retries
					}
					return err
				}
			}
			d.advance(m.Seq)
		}
	}
}

// runDispatcher runs the dispatcher until ctx is done: a pass over the
// outbox at start, on every wake and every poll period; freshly accepted
// messages in between, from memory, while it is caught up.
func (e *Engine) runDispatcher(ctx context.Context) error {
	d := &e.disp
	t := time.NewTicker(e.opts.Poll)
	defer t.Stop()
	pass := true
	for {
		if pass {
			d.caughtUp = false
			if err := e.dispatchOnce(ctx); err != nil && ctx.Err() == nil {
				e.log.Error("delivery pass failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-e.wakeDispatch:
			pass = true
		case <-t.C:
			pass = true
		case m := <-d.fresh:
			pass = !e.dispatchFresh(ctx, m)
		}
	}
}

// dispatchFresh publishes m and whatever else waits in fresh, if the
// dispatcher is caught up. It reports whether it is still caught up;
// if not, a pass over the outbox must follow (and finds what was skipped
// here: it is all in the outbox).
func (e *Engine) dispatchFresh(ctx context.Context, m queue.Outbound) bool {
	d := &e.disp
	for {
		if !d.caughtUp {
			return false
		}
		switch {
		case m.Seq <= d.scanned || d.busy(m.ID):
			// A pass dealt with it already.
		default:
			rt, up := e.link.route(e.Config(), time.Now())
			if rt != routeIndirect {
				return false // a pass decides: wait, or OFFLINE
			}
			err := e.publish(ctx, up, m)
			switch {
			case errors.Is(err, upstream.ErrTooLarge):
				e.m.fallbacks.WithLabelValues("too_large").Inc()
				if err := e.toOffline(ctx, m, queue.Queued, err.Error()); err != nil && ctx.Err() == nil {
					e.log.Error("fall back to OFFLINE", "id", m.ID, "err", err)
				}
			case err != nil:
				d.restartFrom(-1)
				return false // the pass retries it, in outbox order
			}
		}
		select {
		case m = <-d.fresh:
		default:
			return true
		}
	}
}

// handOver gives a message Submit has just stored to the dispatcher, in
// memory; one it cannot take that way is found by a pass over the outbox.
func (e *Engine) handOver(m queue.Outbound) {
	if len(m.Ciphertext) <= freshMaxBytes {
		select {
		case e.disp.fresh <- m:
			return
		default:
		}
	}
	signal(e.wakeDispatch)
}

// publish sends one message INDIRECT and leaves a tracker waiting for its
// result.
func (e *Engine) publish(ctx context.Context, up *upstream.Client, m queue.Outbound) error {
	d := &e.disp
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	ch, err := up.Publish(ctx, m.Recipient, m.Ciphertext)
	if err != nil {
		<-d.sem
		return err
	}
	d.start(m.ID)
	go e.track(ctx, m, ch)
	return nil
}

// sendingMarkDelay is how long a publish may await its result before the
// message is recorded as sending. Most results come within milliseconds:
// those messages go from queued to their outcome in one write instead of
// two. A slow one shows as sending, as before, for status and metrics.
const sendingMarkDelay = time.Second

// track waits for a publish's result, recording the message as sending if
// that takes longer than sendingMarkDelay, and moves the message on as
// decide says: delivered, queued again for INDIRECT, or on to OFFLINE.
func (e *Engine) track(ctx context.Context, m queue.Outbound, results <-chan upstream.Result) {
	defer e.disp.finish(m.ID)
	cfg := e.Config()
	timeout := time.NewTimer(cfg.Delivery.PublishTimeout)
	defer timeout.Stop()
	mark := time.NewTimer(sendingMarkDelay)
	defer mark.Stop()
	o := publishOutcome{Attempts: m.Attempts + 1, Timeout: cfg.Delivery.PublishTimeout, Grace: cfg.Delivery.RelayGrace}
	marked := false // recorded as sending (MarkSending counted this publish)
	for waiting := true; waiting; {
		select {
		case o.Result = <-results:
			waiting = false
		case <-timeout.C:
			o.TimedOut = true
			waiting = false
		case <-mark.C:
			sent, err := e.q.MarkSending(ctx, m.ID)
			if err != nil {
				if ctx.Err() == nil {
					e.log.Error("mark sending", "id", m.ID, "err", err)
				}
				return
			}
			m, marked = sent, true
			o.Attempts = m.Attempts
		case <-ctx.Done():
			return // left queued or sending: published again at the next start
		}
	}
	if o.Result.Err == nil && !o.TimedOut && !o.Result.Unconfirmed {
		e.m.publishResults.WithLabelValues(resultLabel(o.Result.Status)).Inc()
	}
	o.Now, o.BackAt, o.Jitter = time.Now(), e.link.comeback(), rand.Float64()
	e.apply(ctx, m, marked, decide(o))
}

// apply carries out decide's action for message m, whose INDIRECT publish
// has its result: m is sending if marked, otherwise still queued.
func (e *Engine) apply(ctx context.Context, m queue.Outbound, marked bool, a action) {
	from := queue.Queued
	if marked {
		from = queue.Sending
	}
	switch a.Kind {
	case nextDelivered:
		mark := e.q.DeliveredAtOnce
		if marked {
			mark = e.q.MarkDelivered
		}
		done, err := mark(ctx, m.ID)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Error("mark delivered", "id", m.ID, "err", err)
			}
			return
		}
		e.m.delivered(done)
	case nextIndirect:
		requeue := e.q.RequeueAtOnce
		if marked {
			requeue = e.q.Requeue
		}
		if _, err := requeue(ctx, m.ID, a.Reason, a.At); err != nil {
			if ctx.Err() == nil {
				e.log.Error("requeue", "id", m.ID, "err", err)
			}
			return
		}
		e.log.Debug("will publish INDIRECT again", "id", m.ID, "at", a.At, "reason", a.Reason)
		e.wakeAt(a.At)
	case nextOffline:
		e.m.fallbacks.WithLabelValues(resultLabel(a.Cause)).Inc()
		if err := e.toOffline(ctx, m, from, a.Reason); err != nil && ctx.Err() == nil {
			e.log.Error("fall back to OFFLINE", "id", m.ID, "err", err)
		}
	}
}

// wakeAt wakes the dispatcher at t (at once if t has passed), so that a
// retry is not late by a poll period.
func (e *Engine) wakeAt(t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		signal(e.wakeDispatch)
		return
	}
	time.AfterFunc(d, func() { signal(e.wakeDispatch) })
}

// toOffline puts a message on the OFFLINE path (queue.RouteOffline) from
// state from, with reason as its last error, and wakes the OFFLINE worker.
func (e *Engine) toOffline(ctx context.Context, m queue.Outbound, from queue.State, reason string) error {
	if _, err := e.q.RouteOffline(ctx, m.ID, reason, from); err != nil {
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
	err := e.node.post(callCtx, cfg.Node, cfg.Node.OfflinePublishURL, offlineRequest{Recipient: m.Recipient, Ciphertext: m.Ciphertext}, nil)
	release()
	e.health.record("offline", err)
	if err == nil {
		// The node has it: record that even if a shutdown began meanwhile
		// (with ctx cancelled the queue would skip the write, and the next
		// start would hand the message off again). The last error stays:
		// it says why the message went OFFLINE.
		done, err := e.q.MarkHandedOff(context.WithoutCancel(ctx), m.ID)
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
	lastErr := "OFFLINE endpoint: " + err.Error()
	if attempts >= cfg.Delivery.OfflineMaxAttempts || time.Since(m.CreatedAt) > cfg.Delivery.OfflineMaxAge {
		reason := fmt.Sprintf("gave up after %d attempts over %s; last: %s", attempts, time.Since(m.CreatedAt).Round(time.Second), lastErr)
		if _, err := e.q.Fail(ctx, m.ID, reason); err != nil {
			return fmt.Errorf("record OFFLINE failure %s: %w", m.ID, err)
		}
		e.m.failed.Inc()
		e.log.Error("message failed", "id", m.ID, "recipient", m.Recipient, "attempts", attempts, "err", err)
		return nil
	}
	next := time.Now().Add(retryWait(cfg.Delivery.RetryWaitMin, cfg.Delivery.RetryWaitMax, attempts))
	if _, err := e.q.RecordOfflineAttempt(ctx, m.ID, lastErr, next); err != nil {
		return fmt.Errorf("record OFFLINE attempt %s: %w", m.ID, err)
	}
	e.log.Warn("OFFLINE hand-off failed; will retry", "id", m.ID, "attempts", attempts, "retry_at", next, "err", err)
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

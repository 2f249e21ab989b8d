package sidecar

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"courier/sidecar/queue"
	"courier/upstream"
)

// takeInbound is upstream's Handler: it returns once every message of the
// batch is durable, at the node or in the inbox, so that upstream acks
// them then (PROTOCOL.md, "Durability: when each hop answers").
//
// When the node's inbound endpoint is working and nothing is waiting in the
// inbox ahead of the batch, the batch is pushed to the node while its inbox
// commit runs (takeDirect): the relay is acked as soon as the node has the
// messages, without waiting for the fsync. Otherwise the batch is
// committed first and the pusher takes it from the inbox. One commit for
// the whole batch keeps the relay's order.
//
// anonymous says which subscription the batch came by (that of the
// relay_identity the client was started for); it is kept with each
// message, since a refusal by the node means not_for_node for one from an
// anonymous subscription, whatever the mode when the node answers.
//
// A batch may hold a message twice (the relay replays it and pushes it
// again as its sender republishes it): the repeats are dropped here, or
// takeDirect would push it twice.
func (e *Engine) takeInbound(ctx context.Context, batch []upstream.Inbound, anonymous bool) error {
	in := make([]queue.NewInbound, 0, len(batch))
	seen := make(map[string]bool, len(batch))
	now := time.Now()
	for _, m := range batch {
		if seen[m.ID] {
			continue
		}
		seen[m.ID] = true
		in = append(in, queue.NewInbound{ID: m.ID, Ciphertext: m.Ciphertext, ReceivedAt: now, Anonymous: anonymous})
	}
	cfg := e.Config()
	if cfg.Node.InboundURL != "" && e.directOK(ctx, in) {
		return e.takeDirect(ctx, cfg, in)
	}
	created, err := e.q.AddInboundBatch(ctx, in)
	if err != nil {
		return fmt.Errorf("store inbound: %w", err)
	}
	e.arrived(created)
	return nil
}

// arrived counts and announces newly stored inbound messages.
func (e *Engine) arrived(created []bool) {
	n := 0
	for _, c := range created {
		if c {
			n++
		}
	}
	e.m.inbound.Add(float64(n))
	if n > 0 {
		e.arrivals.notify()
		signal(e.wakeInbound)
	}
}

// maxDirect bounds the inbound messages being pushed directly at once
// (held in memory, ciphertext and all, until the node has them), and
// maxDirectBytes their ciphertext bytes (Options.maxDirectBytes in tests):
// a slow node that keeps taking messages must not make the sidecar hold
// a thousand large ones (GiBs at the relay's 4 MiB limit). Beyond either,
// batches wait in the inbox, on disk.
const (
	maxDirect      = 1024
	maxDirectBytes = 64 << 20
)

// directOK reports whether a batch may go to the node before its commit:
// the endpoint is not down, no message waits in the inbox ahead of it
// (other than those being pushed directly already), and none of it is
// known or being pushed already (a redelivery goes through the inbox,
// whose commit drops it).
func (e *Engine) directOK(ctx context.Context, in []queue.NewInbound) bool {
	if e.endpointDown.Load() {
		return false
	}
	claimed := e.claims.count()
	if claimed+len(in) > maxDirect {
		return false // a slow node: the rest waits in the inbox, not in memory
	}
	if held := e.directBytes.Load(); held > 0 && held+inboundBytes(in) > e.opts.maxDirectBytes {
		return false // likewise
	}
	ahead, err := e.q.PendingInbound(ctx, farFuture, 0, claimed+1)
	if err != nil {
		return false
	}
	for _, m := range ahead {
		if !e.claims.has(m.ID) {
			return false
		}
	}
	ids := make([]string, len(in))
	for i, m := range in {
		if e.claims.has(m.ID) {
			return false // the relay sent it again while an earlier copy is still being committed
		}
		ids[i] = m.ID
	}
	known, err := e.q.KnownInbound(ctx, ids)
	return err == nil && len(known) == 0
}

// takeDirect pushes a batch to the node, in order, while its inbox commit
// runs, and returns as soon as every message is durable somewhere: all at
// the node (2xx), or in the inbox (the commit done), whichever comes
// first. The pusher leaves the batch alone meanwhile (claims); once both
// the pushes and the commit are over, what the node took is marked
// delivered, and what it did not is the pusher's.
func (e *Engine) takeDirect(ctx context.Context, cfg Config, in []queue.NewInbound) error {
	ids := make([]string, len(in))
	for i, m := range in {
		ids[i] = m.ID
	}
	e.claims.add(ids)
	size := inboundBytes(in)
	e.directBytes.Add(size)
	var (
		created   []bool
		commitErr error
		took      int   // pushed and taken, in order
		stopErr   error // why the pushes stopped short
	)
	committed, pushed := make(chan struct{}), make(chan struct{})
	// The pushes of one batch start after those of the one before have
	// ended, and not at all if those stopped short: the node gets them in
	// the relay's order.
	run := &directRun{done: pushed, released: make(chan struct{})}
	prev := e.directLast.Swap(run)
	if prev != nil && prev.isReleased() {
		prev = nil // over, and what it left is in the inbox ahead: nothing to wait for
	}
	e.direct.Add(3) // the commit, the pushes, and finish below
	go func() {
		defer e.direct.Done()
		defer close(committed)
		created, commitErr = e.q.AddInboundBatch(context.WithoutCancel(ctx), in)
	}()
	go func() {
		defer e.direct.Done()
		defer close(pushed)
		defer func() { run.ok = took == len(in) }()
		if prev != nil {
			<-prev.done
			if !prev.ok {
				stopErr = errBehindFailure
				return
			}
		}
		for _, m := range in {
			if ctx.Err() != nil {
				stopErr = ctx.Err()
				return
			}
			err := e.pushOne(ctx, cfg, queue.Inbound{ID: m.ID, Ciphertext: m.Ciphertext, ReceivedAt: m.ReceivedAt})
			if err != nil {
				stopErr = err
				return
			}
			e.health.record("inbound", nil)
			e.m.pushed.Inc()
			e.m.pushedDirect.Inc()
			took++
		}
	}()
	go func() {
		defer e.direct.Done()
		<-committed
		<-pushed
		e.finishDirect(ctx, ids, in[0].Anonymous, created, commitErr, took, stopErr) // a batch comes by one subscription
		e.directBytes.Add(-size)
		close(run.released)
	}()
	select {
	case <-committed:
		if commitErr == nil {
			return nil // durable in the inbox
		}
		<-pushed
	case <-pushed:
		if took == len(in) {
			return nil // durable at the node
		}
		<-committed
	}
	if commitErr != nil && took < len(in) {
		return fmt.Errorf("store inbound: %w", commitErr)
	}
	return nil
}

// inboundBytes is the ciphertext size of in.
func inboundBytes(in []queue.NewInbound) (n int64) {
	for _, m := range in {
		n += int64(len(m.Ciphertext))
	}
	return n
}

// directRun is one takeDirect's pushes: done is closed when they have
// ended, ok says (then) whether the node took every message; released is
// closed once finishDirect has recorded the outcome and released the
// claims (what the node did not take is then pending in the inbox).
type directRun struct {
	done     chan struct{}
	ok       bool
	released chan struct{}
}

func (r *directRun) isReleased() bool {
	select {
	case <-r.released:
		return true
	default:
		return false
	}
}

// errBehindFailure: a batch's pushes were not tried, since those of the
// batch before stopped short.
var errBehindFailure = errors.New("an earlier inbound message was not taken")

// finishDirect records what came of takeDirect's pushes once its commit
// is over too, and hands the rest to the pusher.
func (e *Engine) finishDirect(ctx context.Context, ids []string, anonymous bool, created []bool, commitErr error, took int, stopErr error) {
	markCtx := context.WithoutCancel(ctx)
	var done []string
	if commitErr != nil {
		e.log.Error("store inbound", "err", commitErr, "at_node", took, "of", len(ids))
	} else {
		e.arrived(created)
		if err := e.q.MarkInboundDeliveredBatch(markCtx, ids[:took]); err != nil {
			e.log.Error("mark inbound delivered", "err", err)
		} else {
			done = ids[:took]
		}
	}
	if stopErr != nil && took < len(ids) && commitErr == nil {
		switch {
		case refused(stopErr):
			e.health.record("inbound", nil)
			if err := e.refuseInbound(markCtx, anonymous, ids[took], stopErr); err != nil {
				e.log.Error("record inbound refusal", "id", ids[took], "err", err)
			}
		case errors.Is(stopErr, errBehindFailure):
			// Not tried: the pusher offers them after the earlier ones.
		case ctx.Err() == nil:
			e.health.record("inbound", stopErr)
			if err := e.q.InboundAttempt(markCtx, ids[took], "inbound endpoint: "+stopErr.Error(), time.Time{}); err != nil {
				e.log.Error("record inbound attempt", "id", ids[took], "err", err)
			}
		}
	}
	e.claims.release(ids, done)
	signal(e.wakeInbound) // the pusher takes what the node did not
}

// claims are the inbound messages takeDirect is pushing: the pusher leaves
// them alone. Those it has released since the pusher last listed the inbox
// (done) are left alone too: they were pending when the pusher read its
// list, and are delivered now.
type claims struct {
	mu   sync.Mutex
	ids  map[string]int
	done map[string]bool
}

// release ends the claims on ids; delivered are now marked delivered.
func (c *claims) release(ids, delivered []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(map[string]bool)
	}
	for _, id := range delivered {
		c.done[id] = true
	}
	for _, id := range ids {
		if c.ids[id]--; c.ids[id] <= 0 {
			delete(c.ids, id)
		}
	}
}

// listing is called by the pusher just before it reads a page of the
// inbox: what was released before is in what it reads.
func (c *claims) listing() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.done)
}

// skip reports whether the pusher must leave message id alone.
func (c *claims) skip(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ids[id] > 0 || c.done[id]
}

func (c *claims) add(ids []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ids == nil {
		c.ids = make(map[string]int)
	}
	for _, id := range ids {
		c.ids[id]++
	}
}

func (c *claims) has(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ids[id] > 0
}

func (c *claims) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

// arrivals tells long polls (Inbox) that inbound messages arrived.
type arrivals struct {
	mu sync.Mutex
	ch chan struct{} // closed at the next arrival
}

// next returns a channel closed at the next arrival.
func (a *arrivals) next() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ch
}

func (a *arrivals) notify() {
	a.mu.Lock()
	defer a.mu.Unlock()
	close(a.ch)
	a.ch = make(chan struct{})
}

// pusher is the inbound pusher's own state: whether the node's inbound
// endpoint is down, and when to try it again. Only runInbound's goroutine
// touches it.
//
// The pusher offers pending messages to the node in inbox order. What the
// node answers decides, message by message:
//   - 2xx: delivered.
//   - 400 or 422: refused for good: kept as refused, not offered again.
//   - 401, 403, 404 or 405: an answer about the endpoint (credentials,
//     URL, method), not the message: the endpoint is down; the pass stops
//     and the pusher waits (backoff per endpoint), keeping the order.
//   - anything else (5xx, 408, 429, a timeout): a
//     failure. One failure alone cannot tell a message the node chokes on
//     from an endpoint that is down, so the pusher tries the next message:
//     if the node takes that one (or took one earlier in the pass), the
//     failed message alone waits for its own retry (backoff per message)
//     and the others flow past it; if the next fails too, or there is no
//     other to try, the endpoint is down: the pass stops and the pusher
//     waits (backoff per endpoint), keeping the order for when it is back.
//     A new message arriving meanwhile is tried at once.
type pusher struct {
	down    bool      // the endpoint failed and has not answered since
	tries   int       // failed passes in a row while down
	retryAt time.Time // while down: when the next pass may run
	fresh   bool      // a new message arrived since the last pass
}

// runInbound pushes inbound messages to the node until ctx is done: at
// start, when messages arrive, and every poll period.
func (e *Engine) runInbound(ctx context.Context) error {
	var p pusher
	t := time.NewTicker(e.opts.Poll)
	defer t.Stop()
	for {
		if err := e.pushInboundOnce(ctx, &p); err != nil && ctx.Err() == nil {
			e.log.Error("inbound pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-e.wakeInbound:
			p.fresh = true
		case <-t.C:
		}
	}
}

// pushInboundOnce runs one pass of the pusher (see pusher).
func (e *Engine) pushInboundOnce(ctx context.Context, p *pusher) error {
	cfg := e.Config()
	if cfg.Node.InboundURL == "" {
		return nil // the node polls /v1/inbox
	}
	if p.down && !p.fresh && time.Now().Before(p.retryAt) {
		return nil
	}
	if e.claims.count() > 0 {
		return nil // direct pushes are under way, ahead of what the inbox holds; their end wakes the pusher
	}
	p.fresh = false
	// Once the node has a message, recording that must not be undone by a
	// shutdown: with ctx cancelled the queue would skip the write and the
	// next start would push the message again.
	markCtx := context.WithoutCancel(ctx)
	var (
		after     int64
		tookOne   bool           // the node took (or refused) a message in this pass
		suspect   *queue.Inbound // the last message that failed, not yet judged
		suspectEr error          // its failure
		delivered []string       // taken, to be marked in one commit
	)
	flush := func() error {
		err := e.q.MarkInboundDeliveredBatch(markCtx, delivered)
		delivered = delivered[:0]
		return err
	}
	defer func() { _ = flush() }() // what the node took is marked, whatever happens
	for {
		e.claims.listing()
		msgs, err := e.q.PendingInbound(ctx, farFuture, after, 256)
		if err != nil {
			return fmt.Errorf("list inbound: %w", err)
		}
		if len(msgs) == 0 {
			break
		}
		for i := range msgs {
			m := msgs[i]
			after = m.Seq
			if m.NextAttemptAt.After(time.Now()) {
				continue // a message the node failed while taking others: waiting for its own retry
			}
			if e.claims.skip(m.ID) {
				continue // being pushed directly (takeDirect), or just was
			}
			if ctx.Err() != nil {
				return flush()
			}
			err := e.pushOne(ctx, cfg, m)
			switch {
			case err == nil || refused(err):
				e.health.record("inbound", nil) // it answered: the endpoint works
				if err == nil {
					delivered = append(delivered, m.ID)
					e.m.pushed.Inc()
				} else if err := e.refuseInbound(markCtx, m.Anonymous, m.ID, err); err != nil {
					return fmt.Errorf("record inbound refusal: %w", err)
				}
				tookOne, p.down, p.tries = true, false, 0
				e.endpointDown.Store(false)
				if suspect != nil {
					if err := e.inboundPoison(markCtx, cfg, *suspect, suspectEr); err != nil {
						return err
					}
					suspect = nil
				}
			default:
				e.health.record("inbound", err)
				if ctx.Err() != nil {
					return flush() // cut short by the shutdown: not the node's failure
				}
				if endpointFailure(err) {
					// The endpoint is down (401, 403, 404, 405): no
					// next message to try, the order stays.
					if err := flush(); err != nil {
						return fmt.Errorf("mark inbound delivered: %w", err)
					}
					failed := []queue.Inbound{m}
					if suspect != nil {
						failed = []queue.Inbound{*suspect, m}
					}
					return e.inboundDown(markCtx, cfg, p, err, failed...)
				}
				if suspect == nil {
					suspect, suspectEr = &m, err
					continue // the next message tells the endpoint from the message
				}
				// Two in a row: the endpoint is failing.
				if err := flush(); err != nil {
					return fmt.Errorf("mark inbound delivered: %w", err)
				}
				return e.inboundDown(markCtx, cfg, p, err, *suspect, m)
			}
			if len(delivered) >= 256 {
				if err := flush(); err != nil {
					return fmt.Errorf("mark inbound delivered: %w", err)
				}
			}
		}
	}
	if err := flush(); err != nil {
		return fmt.Errorf("mark inbound delivered: %w", err)
	}
	if suspect == nil {
		return nil
	}
	if tookOne {
		return e.inboundPoison(markCtx, cfg, *suspect, suspectEr)
	}
	return e.inboundDown(markCtx, cfg, p, suspectEr, *suspect)
}

// refuseInbound records the node's final refusal (400 or 422) of inbound
// message id. Authenticated, the relay sends only messages addressed to
// this peer: a refusal is a problem, kept as refused and listed for
// attention. Anonymous, the subscription gets every message under its
// subscription key, other peers' too, and the node cannot open those:
// expected, kept as not_for_node, counted apart, logged at debug. The
// node's answer cannot tell another peer's message from a broken one of
// its own, so every refusal of a message received anonymously counts as
// not_for_node. anonymous is how the message was received, not the mode
// in force now: a switch may come between the two.
func (e *Engine) refuseInbound(ctx context.Context, anonymous bool, id string, cause error) error {
	if anonymous {
		e.m.notForNode.Inc()
		e.log.Debug("node could not open an inbound message: another peer's under the same subscription key, most likely", "id", id, "err", cause)
		return e.q.MarkInboundNotForNode(ctx, id, "not opened by the node (anonymous mode: most likely another peer's message under the same subscription key): "+cause.Error())
	}
	e.log.Error("node refused an inbound message; kept as refused, not offered again", "id", id, "err", cause)
	e.m.refused.Inc()
	return e.q.MarkInboundRefused(ctx, id, "refused by the node: "+cause.Error())
}

// pushOne offers one message to the node's inbound endpoint. A push under
// way when a shutdown begins is let finish, so that what the node takes is
// marked, not pushed again later.
func (e *Engine) pushOne(ctx context.Context, cfg Config, m queue.Inbound) error {
	callCtx, release := finishing(ctx)
	defer release()
	return e.node.post(callCtx, cfg.Node, cfg.Node.InboundURL, inboundRequest{
		ID: m.ID, Ciphertext: m.Ciphertext, Path: "INDIRECT", ReceivedAt: m.ReceivedAt,
	}, nil)
}

// inboundPoison records a failed push of a message the node failed while
// it took others: that message alone waits for its retry, with backoff.
func (e *Engine) inboundPoison(ctx context.Context, cfg Config, m queue.Inbound, cause error) error {
	next := time.Now().Add(retryWait(cfg.Delivery.RetryWaitMin, cfg.Delivery.RetryWaitMax, m.Attempts+1))
	e.log.Warn("node failed an inbound message while taking others; will retry it", "id", m.ID, "attempts", m.Attempts+1, "retry_at", next, "err", cause)
	if err := e.q.InboundAttempt(ctx, m.ID, "inbound endpoint: "+cause.Error(), next); err != nil {
		return fmt.Errorf("record inbound attempt: %w", err)
	}
	return nil
}

// inboundDown records that the endpoint is failing: the failed messages
// get an attempt each (not a wait of their own: the order stays for when
// the endpoint is back), and the pusher waits with backoff.
func (e *Engine) inboundDown(ctx context.Context, cfg Config, p *pusher, cause error, failed ...queue.Inbound) error {
	p.down = true
	e.endpointDown.Store(true)
	p.tries++
	p.retryAt = time.Now().Add(retryWait(cfg.Delivery.RetryWaitMin, cfg.Delivery.RetryWaitMax, p.tries))
	e.log.Warn("node's inbound endpoint is failing; will retry", "tries", p.tries, "retry_at", p.retryAt, "err", cause)
	for _, m := range failed {
		if err := e.q.InboundAttempt(ctx, m.ID, "inbound endpoint: "+cause.Error(), time.Time{}); err != nil {
			return fmt.Errorf("record inbound attempt: %w", err)
		}
	}
	return nil
}

// Inbox returns up to limit inbound messages the node has not acked, oldest
// first, waiting up to wait for one to arrive when there are none.
func (e *Engine) Inbox(ctx context.Context, wait time.Duration, limit int) ([]queue.Inbound, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		arrived := e.arrivals.next()
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

// RefusedInbox returns up to limit inbound messages the node's inbound
// endpoint refused for good (400 or 422), oldest first, with State
// queue.InboxRefused and LastError saying what the node answered. They
// are kept (until store.retention) and not offered again; AckInbox on one
// records that the node has it after all.
func (e *Engine) RefusedInbox(ctx context.Context, limit int) ([]queue.Inbound, error) {
	return e.q.RefusedInbound(ctx, 0, limit)
}

// AckInbox records that the node has an inbound message.
func (e *Engine) AckInbox(ctx context.Context, id string) error {
	return e.q.MarkInboundDelivered(ctx, id)
}

package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"courier/sidecar/queue"
	"courier/wire"
)

// Input errors, for the local API to answer 400 or 413.
var (
	ErrInvalidInput = errors.New("invalid input")
	ErrTooLarge     = errors.New("message too large")
	ErrNotFound     = queue.ErrNotFound
)

// Engine delivers messages. Outbound: accepted from the node into the
// outbox, sent INDIRECT through the relay, handed to the node's OFFLINE
// endpoint on any NACK. Inbound: taken from the relay into the inbox, acked
// only once durable, pushed to the node (or held for polling).
//
// It is made of parts that each own their state, run together by Run in
// one errgroup:
//   - the relay link (relay.go, relayLink and manageRelay): the upstream
//     client, its status and the times the delivery rules read;
//   - the dispatcher (outbound.go, dispatcher): the in-flight set and the
//     cursor over the outbox; the decision after each publish is decide
//     (decide.go), carried out through the queue's named transitions
//     (sidecar/queue/transitions.go);
//   - the OFFLINE worker (outbound.go, offlineOnce): hand-offs to the node;
//   - the inbound pusher (inbound.go, pusher): pushes to the node, per
//     message and per endpoint backoff;
//   - node-endpoint health (health.go, nodeHealth);
//   - the janitor (janitor.go): retention and WAL checkpoints.
//
// Create it with New, run it with Run, then Close it. It has no HTTP face:
// the local API asks it.
type Engine struct {
	log  *slog.Logger
	opts Options
	q    *queue.Queue
	node *nodeClient
	m    *metrics

	wakeDispatch chan struct{}
	wakeOffline  chan struct{}
	wakeInbound  chan struct{}
	reconfigured chan struct{}

	link     relayLink
	disp     dispatcher
	health   nodeHealth
	arrivals arrivals

	// The inbound fast path (takeDirect): the messages it is pushing, the
	// commits it left running after an early ack, and whether the pusher
	// found the endpoint down.
	claims       claims
	directBytes  atomic.Int64 // ciphertext bytes of the claimed messages, held in memory
	direct       sync.WaitGroup
	directLast   atomic.Pointer[directRun]
	endpointDown atomic.Bool

	mu     sync.Mutex // guards cfg and closed
	cfg    Config
	closed bool
}

// Options tune an Engine; zero values take the defaults.
type Options struct {
	MaxInflight    int           // INDIRECT publishes awaiting a result; default 1024
	OfflineWorkers int           // concurrent OFFLINE hand-offs; default 8
	NodeTimeout    time.Duration // one HTTP call to the node; default 10s
	Poll           time.Duration // how often due retries are looked for; default 1s
	// PruneEvery is how often finished messages older than
	// store.retention are deleted and the WAL is checkpointed; default 5m.
	PruneEvery time.Duration
	// ReconnectWaitMax caps the wait between attempts to reconnect to the
	// relay (capped exponential backoff with full jitter); default 30s.
	ReconnectWaitMax time.Duration

	// beforeInboxWrite, tests only (export_test.go): see
	// queue.Options.BeforeInboxWrite.
	beforeInboxWrite func()
	// maxDirectBytes, tests only (export_test.go): the bound of the
	// inbound ciphertext pushed directly at once; default maxDirectBytes.
	maxDirectBytes int64
}

// New opens the outbox and inbox at cfg.Store.Path. cfg must be valid.
func New(cfg Config, logger *slog.Logger, opts Options) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxInflight <= 0 {
		opts.MaxInflight = 1024
	}
	if opts.OfflineWorkers <= 0 {
		opts.OfflineWorkers = 8
	}
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = 10 * time.Second
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	if opts.PruneEvery <= 0 {
		opts.PruneEvery = 5 * time.Minute
	}
	if opts.maxDirectBytes <= 0 {
		opts.maxDirectBytes = maxDirectBytes
	}
	q, err := queue.Open(cfg.Store.Path, queue.Options{Synchronous: cfg.Store.Synchronous, Logger: logger, BeforeInboxWrite: opts.beforeInboxWrite})
	if err != nil {
		return nil, fmt.Errorf("open queue: %w", err)
	}
	e := &Engine{
		log:          logger,
		q:            q,
		node:         newNodeClient(opts.NodeTimeout),
		wakeDispatch: make(chan struct{}, 1),
		wakeOffline:  make(chan struct{}, 1),
		wakeInbound:  make(chan struct{}, 1),
		reconfigured: make(chan struct{}, 1),
		disp: dispatcher{sem: make(chan struct{}, opts.MaxInflight), fresh: make(chan queue.Outbound, freshCap),
			inflight: make(map[string]bool), finished: make(map[string]bool)},
		arrivals: arrivals{ch: make(chan struct{})},
		cfg:      cfg,
	}
	e.opts = opts
	initial := e.link.configure(cfg, time.Now())
	e.m = newMetrics(e, initial.State)
	return e, nil
}

// Config returns the configuration in force.
func (e *Engine) Config() Config {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg
}

// Reconfigure puts a new, valid configuration in force. A changed relay_url
// reconnects; a removed one disconnects and sends everything OFFLINE; one
// put back turns INDIRECT on again; a changed relay_identity reconnects in
// the new mode. The store path cannot change while
// running: a change there is refused.
func (e *Engine) Reconfigure(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	if cfg.Store.Path != e.cfg.Store.Path || cfg.Store.Synchronous != e.cfg.Store.Synchronous {
		e.mu.Unlock()
		return errors.New("store: store.path and store.synchronous cannot change while courier runs; restart it to use a new store")
	}
	relayChanged := cfg.RelayURL != e.cfg.RelayURL || cfg.RelayHost != e.cfg.RelayHost ||
		cfg.RelayCAFile != e.cfg.RelayCAFile || cfg.RelayProxy != e.cfg.RelayProxy ||
		cfg.Anonymous() != e.cfg.Anonymous()
	e.cfg = cfg
	e.mu.Unlock()
	if relayChanged {
		// The old client's reports no longer count, and the status says
		// at once what is happening now, not what the old client saw.
		e.m.relayState(e.link.configure(cfg, time.Now()).State)
	}
	signal(e.reconfigured)
	signal(e.wakeDispatch)
	signal(e.wakeInbound)
	return nil
}

// Run delivers until ctx is done, then stops every goroutine it started,
// closes the relay connection cleanly and returns nil. Close the Engine
// after Run has returned.
func (e *Engine) Run(ctx context.Context) error {
	if err := e.resumeAfterCrash(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped before it started
		}
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return e.manageRelay(gctx) })
	g.Go(func() error { return e.runDispatcher(gctx) })
	g.Go(func() error { return e.loop(gctx, e.wakeOffline, e.offlineOnce) })
	g.Go(func() error { return e.runInbound(gctx) })
	g.Go(func() error { return e.janitor(gctx) })
	err := g.Wait()
	e.disp.trackers.Wait()
	e.direct.Wait()
	if ctx.Err() != nil {
		return nil // stopped as asked, by cancel or by deadline
	}
	return err
}

// Close closes the store. Call it after Run has returned; it is idempotent.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	e.node.close()
	return e.q.Close()
}

// loop runs once at start, then on every wake and every poll period, until
// ctx is done. A failing pass is logged and retried: a store that fails now
// may not later, and /readyz reports it meanwhile.
func (e *Engine) loop(ctx context.Context, wake <-chan struct{}, once func(context.Context) error) error {
	t := time.NewTicker(e.opts.Poll)
	defer t.Stop()
	for {
		if err := once(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("delivery pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		case <-t.C:
		}
	}
}

// resumeAfterCrash puts messages that were awaiting an INDIRECT result when
// the sidecar stopped back in the queue; the relay treats a republish of the
// same ID as the same message, so nothing arrives twice.
func (e *Engine) resumeAfterCrash(ctx context.Context) error {
	for {
		msgs, err := e.q.Due(ctx, queue.Sending, queue.PathIndirect, farFuture, 0, 256)
		if err != nil {
			return fmt.Errorf("resume outbox: %w", err)
		}
		if len(msgs) == 0 {
			return nil
		}
		for _, m := range msgs {
			if _, err := e.q.Resume(ctx, m.ID); err != nil {
				return fmt.Errorf("resume %s: %w", m.ID, err)
			}
		}
		e.log.Info("resumed messages left sending", "count", len(msgs))
	}
}

// farFuture is a "now" later than every stored time, for listing every
// message whatever its next attempt. The queue stores Unix nanoseconds, so
// it must be the latest time those can hold (in 2262): a later one, such as
// the year 9999, overflows UnixNano into a negative number that matches
// nothing.
var farFuture = time.Unix(0, math.MaxInt64)

// shutdownGrace is how long a call to the node already under way may go
// on after Run's context has ended: long enough that what the node accepts
// is recorded as accepted (and not sent to it again at the next start),
// short enough that a stuck node does not hold up a shutdown for long.
const shutdownGrace = 5 * time.Second

// finishing returns the context for one call to the node: it outlives ctx
// by shutdownGrace. Start no call once ctx has ended.
func finishing(ctx context.Context) (context.Context, context.CancelFunc) {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(shutdownGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-fctx.Done():
		}
	})
	return fctx, func() { stop(); cancel() }
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Submit accepts a message from the node. It returns once the message is
// durably in the outbox; created is false when the ID was known already.
// A known message that had failed is queued again (state queued, attempts
// 0) and returned so. A ciphertext over MaxMessageBytes() is ErrTooLarge;
// one larger than the relay accepts is taken and goes OFFLINE.
func (e *Engine) Submit(ctx context.Context, recipient string, ciphertext []byte) (queue.Outbound, bool, error) {
	if _, err := wire.ParsePeerID(recipient); err != nil {
		return queue.Outbound{}, false, fmt.Errorf("%w: recipient: %v; use the recipient's Qm… or 12D3Koo… peer ID", ErrInvalidInput, err)
	}
	if len(ciphertext) == 0 {
		return queue.Outbound{}, false, fmt.Errorf("%w: ciphertext is empty", ErrInvalidInput)
	}
	if limit := e.MaxMessageBytes(); len(ciphertext) > limit {
		return queue.Outbound{}, false, fmt.Errorf("%w: ciphertext is %d bytes, the limit is %d (api.max_message_bytes)", ErrTooLarge, len(ciphertext), limit)
	}
	m, created, err := e.q.Enqueue(ctx, recipient, ciphertext)
	if err != nil {
		return queue.Outbound{}, false, fmt.Errorf("store message: %w", err)
	}
	if created {
		e.m.accepted.Inc()
		e.handOver(m)
		return m, true, nil
	}
	if m.State == queue.Failed {
		// The node asks again for a message the sidecar gave up on: queue
		// it again, as new, rather than answer failed forever.
		revived, err := e.q.Revive(ctx, m.ID, "queued again by a new POST; it had failed: "+m.LastError)
		switch {
		case err == nil:
			e.m.revived.Inc()
			e.log.Info("failed message queued again by a new POST", "id", m.ID)
			signal(e.wakeDispatch)
			return revived, false, nil
		case errors.Is(err, queue.ErrConflict):
			return revived, false, nil // revived meanwhile by another POST: as it is now
		default:
			return queue.Outbound{}, false, fmt.Errorf("queue failed message again: %w", err)
		}
	}
	return m, false, nil
}

// MaxMessageBytes is the largest ciphertext Submit accepts now
// (api.max_message_bytes, at most the package's MaxMessageBytes). A
// message larger than the relay takes goes OFFLINE at once.
func (e *Engine) MaxMessageBytes() int {
	if n := e.Config().API.MaxMessageBytes; n > 0 {
		return n
	}
	return MaxMessageBytes
}

// Message returns an outbound message by ID.
func (e *Engine) Message(ctx context.Context, id string) (queue.Outbound, error) {
	return e.q.Get(ctx, id)
}

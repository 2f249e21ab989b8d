package sidecar

import (
	"context"
	"time"

	"courier/upstream"
)

// AttentionAt is what Status lists as needing attention, as if it were now.
func (e *Engine) AttentionAt(ctx context.Context, now time.Time) ([]NeedsAttention, error) {
	return e.attention(ctx, now)
}

// WithInboxHook returns opts with a hook the queue's writer calls just
// before it writes inbound messages, inside their transaction: a test
// stops (or kills) the engine there, after it received messages and
// before it committed them.
func WithInboxHook(opts Options, hook func()) Options {
	opts.beforeInboxWrite = hook
	return opts
}

// WithMaxDirectBytes returns opts with the bound of the inbound ciphertext
// pushed directly to the node at once set to n.
func WithMaxDirectBytes(opts Options, n int64) Options {
	opts.maxDirectBytes = n
	return opts
}

// DirectClaimed is how many inbound messages are being pushed directly
// to the node, held in memory.
func (e *Engine) DirectClaimed() int { return e.claims.count() }

// TakeInbound is upstream's Handler for a peer (level-2) subscription:
// what the relay hands the engine.
func (e *Engine) TakeInbound(ctx context.Context, batch []upstream.Inbound) error {
	return e.takeInbound(ctx, batch, false)
}

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

// TakeInbound is upstream's Handler: what the relay hands the engine.
func (e *Engine) TakeInbound(ctx context.Context, batch []upstream.Inbound) error {
	return e.takeInbound(ctx, batch)
}

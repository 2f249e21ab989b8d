package sidecar

import (
	"context"
	"time"
)

// AttentionAt is what Status lists as needing attention, as if it were now.
func (e *Engine) AttentionAt(ctx context.Context, now time.Time) ([]NeedsAttention, error) {
	return e.attention(ctx, now)
}

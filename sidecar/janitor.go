package sidecar

import (
	"context"
	"time"
)

// janitor keeps the store bounded until ctx is done: every
// Options.PruneEvery it deletes finished messages older than
// store.retention (queue.Prune) and checkpoints the WAL.
func (e *Engine) janitor(ctx context.Context) error {
	t := time.NewTicker(e.opts.PruneEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		e.tidy(ctx)
	}
}

// tidy prunes and checkpoints once. Failures are logged: the next round
// tries again, and a store that keeps failing shows in /readyz.
func (e *Engine) tidy(ctx context.Context) {
	retention := e.Config().Store.Retention
	if retention <= 0 {
		retention = DefaultRetention
	}
	out, in, err := e.q.Prune(ctx, time.Now().Add(-retention))
	if err != nil {
		if ctx.Err() == nil {
			e.log.Error("prune store", "err", err)
		}
		return
	}
	if out > 0 || in > 0 {
		e.m.pruned.WithLabelValues("outbox").Add(float64(out))
		e.m.pruned.WithLabelValues("inbox").Add(float64(in))
		e.log.Info("pruned finished messages", "outbound", out, "inbound", in, "older_than", retention)
	}
	if err := e.q.Checkpoint(ctx); err != nil && ctx.Err() == nil {
		e.log.Warn("checkpoint store", "err", err)
	}
}

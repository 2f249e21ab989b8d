package sidecar

// WithInboxHook returns opts with a hook the queue's writer calls just
// before it writes inbound messages, inside their transaction: a test
// stops (or kills) the engine there, after it received messages and
// before it committed them.
func WithInboxHook(opts Options, hook func()) Options {
	opts.beforeInboxWrite = hook
	return opts
}

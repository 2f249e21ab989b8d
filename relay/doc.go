// Package relay is courier-relay, the store-and-forward WebSocket relay of
// PROTOCOL.md ("Relay wire protocol"): it holds encrypted messages for
// recipients and pushes them the moment a recipient is connected.
//
// The Store interface is the relay's storage contract; implementations
// live in their own packages (relay/sqlitestore). Server serves the
// protocol and the HTTP endpoints beside it (/, /healthz, /readyz,
// /metrics, and /client/ when Config.Client is set) from one
// http.Handler; Config is its TOML configuration.
//
// Per connection the server runs one reader (parses and validates frames
// and hands writes to the store without waiting for their commit), one
// processor (finishes those writes in order as their commits come in:
// pushes to subscribers, publish results), one writer behind a bounded
// send queue, and after a subscribe a replay of what is stored. A
// subscriber that cannot keep up is disconnected, never waited for.
//
// With Config.Offline set, the server runs the OFFLINE bridge (offline.go):
// level-1 publishes and level-2 ones with "fallback":"relay" are stored
// with a pending hand-off (HandoffStore.PutHandoff, in the same commit),
// which the bridge claims once offline.after has passed and POSTs to the
// operator's node, with capped exponential backoff and full jitter, until
// the node takes it, the recipient's authenticated connection acks it, or
// the message expires.
//
// Close codes the server sends:
//
//	1008  subscribe failed (after an {"error": …} frame), or no subscribe in time
//	1009  a frame larger than the limit (see Config.Limits.MaxMessageBytes)
//	1011  the store failed
//	1012  the server is shutting down: reconnect at once, with jitter
//	1013  the client did not read fast enough; its messages stay stored
//	4409  a newer authenticated connection of the same peer took over
package relay

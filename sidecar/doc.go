// Package sidecar is the courier sidecar's delivery engine and configuration:
// it takes messages from the node over the local API, queues them durably
// (package sidecar/queue), sends them INDIRECT through one relay and falls
// back to the node's native OFFLINE path whenever INDIRECT cannot confirm
// delivery, and hands inbound messages to the node.
//
// Where the state machines are:
//   - The outbox states and their named transitions (MarkSending, Requeue,
//     DeliveredAtOnce, RequeueAtOnce, RouteOffline, MarkDelivered,
//     MarkHandedOff, RecordOfflineAttempt, Fail, Revive, Resume), each with
//     its from-states and attempts rule:
//     sidecar/queue/transitions.go.
//   - The inbox states (pending, delivered, refused, not_for_node) and
//     their transitions: sidecar/queue/inbox.go.
//   - Anonymous mode (relay_identity = "anonymous"): the level-1 session is
//     upstream's; a publish answered Unconfirmed goes OFFLINE as well
//     (decide, cause "unconfirmed"); the node's 400/422 for a message
//     received anonymously (kept with it in the inbox) becomes
//     not_for_node instead of refused (refuseInbound, inbound.go); the
//     random userID is kept in the store (anonymousUserID, relay.go).
//   - What happens after one INDIRECT publish (delivered, retry INDIRECT
//     when, or OFFLINE with which cause): decide, a pure function, in
//     decide.go; the engine only gathers its inputs and applies its answer.
//   - How inbound messages reach the node (refusal only on 400/422,
//     per-message and per-endpoint backoff, the push before the commit):
//     inbound.go.
//
// The [Engine] is made of parts that each own their state, run in one
// errgroup: the relay link (relay.go), the dispatcher and the OFFLINE
// worker (outbound.go), the inbound pusher (inbound.go), node-endpoint
// health (health.go) and the janitor (janitor.go).
//
// The configuration is a TOML file ([LoadConfig], [Config.Validate]) that
// [Watch] reloads while the sidecar runs: deleting relay_url opts out of
// INDIRECT without a restart. config.example.toml at the repository root
// documents every key.
package sidecar

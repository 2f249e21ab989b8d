package queue

import (
	"context"
	"time"
)

// The outbox state machine, in one place. Each named transition owns its
// allowed from-states and its rule for Attempts; the engine moves messages
// only through these. A message in a state a transition does not start
// from is left as it is and the transition returns an error wrapping
// ErrConflict (someone else moved it on meanwhile).
//
//	queued ──MarkSending──▶ sending INDIRECT ──MarkDelivered──▶ delivered
//	   ▲ │                      │
//	   └────────Requeue─────────┤ (connection lost, rate limited, queued
//	   │ │                      │  just after the relay came back)
//	   │ └──DeliveredAtOnce──▶ delivered (answered before MarkSending was due)
//	   └────RequeueAtOnce (the same, answered "retry")
//	queued/sending ──RouteOffline──▶ sending OFFLINE ──MarkHandedOff──▶ handed_off
//	                                    │   ▲ RecordOfflineAttempt
//	                                    └───┘
//	                                    └──Fail──▶ failed ──Revive──▶ queued
//
// Anonymous mode (relay_identity = "anonymous") takes one more way
// through the same transitions: a level-1 publish gets no result, so the
// message goes from queued straight to RouteOffline once its frame is
// written (INDIRECT is then a fast extra path, OFFLINE the confirmed
// one), then MarkHandedOff as usual. Its last error says it was also
// published INDIRECT; it never reaches delivered.
//
//	queued ──(level-1 publish written)──RouteOffline──▶ sending OFFLINE ──MarkHandedOff──▶ handed_off
//
// An INDIRECT publish is recorded as sending only when its result is slow
// to come (the engine's sendingMarkDelay): most are answered within
// milliseconds, and go from queued to their outcome in one write. A
// message left queued while its publish was under way is published again
// after a crash, like one left sending (Resume); the relay takes a
// republished ID as the same message.
//
// The named transitions return the message as changed but without its
// ciphertext (nil): the engine has it already where it needs it, and
// reading it back at every step costs a copy of every message each time.
//
// Attempts count the publishes of the current path: MarkSending adds one
// (an INDIRECT publish), as do DeliveredAtOnce and RequeueAtOnce (the
// publish not recorded by a MarkSending), RouteOffline starts them again from 0 (so that the
// INDIRECT ones do not use up delivery.offline_max_attempts), every OFFLINE
// hand-off adds one (RecordOfflineAttempt, MarkHandedOff, Fail), and Revive
// starts them again from 0.

// MarkSending records that an INDIRECT publish is under way: queued →
// sending, path INDIRECT, one more attempt.
func (q *Queue) MarkSending(ctx context.Context, id string) (Outbound, error) {
	return q.transition(ctx, id, []State{Queued}, Change{State: Sending, Path: PathIndirect, AttemptsDelta: 1}, outboxColsNoCT)
}

// MarkDelivered records the relay's delivered answer: sending → delivered,
// path INDIRECT.
func (q *Queue) MarkDelivered(ctx context.Context, id string) (Outbound, error) {
	return q.transition(ctx, id, []State{Sending}, Change{State: Delivered, Path: PathIndirect}, outboxColsNoCT)
}

// Requeue puts a message whose INDIRECT publish did not confirm it back in
// the queue, due at next, with reason as its last error: sending → queued,
// no path. Its attempts stay (they count the INDIRECT publishes so far).
func (q *Queue) Requeue(ctx context.Context, id, reason string, next time.Time) (Outbound, error) {
	return q.transition(ctx, id, []State{Sending}, Change{State: Queued, Path: PathNone, LastError: reason, NextAttemptAt: next}, outboxColsNoCT)
}

// DeliveredAtOnce records the relay's delivered answer to a publish that
// was not marked sending yet: queued → delivered, path INDIRECT, one more
// attempt (that publish).
func (q *Queue) DeliveredAtOnce(ctx context.Context, id string) (Outbound, error) {
	return q.transition(ctx, id, []State{Queued}, Change{State: Delivered, Path: PathIndirect, AttemptsDelta: 1}, outboxColsNoCT)
}

// RequeueAtOnce is Requeue for a publish that was not marked sending yet:
// queued → queued, due at next, reason as last error, one more attempt
// (that publish).
func (q *Queue) RequeueAtOnce(ctx context.Context, id, reason string, next time.Time) (Outbound, error) {
	return q.transition(ctx, id, []State{Queued}, Change{State: Queued, Path: PathNone, LastError: reason, AttemptsDelta: 1, NextAttemptAt: next}, outboxColsNoCT)
}

// Resume puts a message left sending INDIRECT by a stop back in the queue,
// due at once, keeping its last error: sending → queued. The relay takes a
// republished ID as the same message.
func (q *Queue) Resume(ctx context.Context, id string) (Outbound, error) {
	return q.transition(ctx, id, []State{Sending}, Change{State: Queued, Path: PathNone, KeepLastError: true}, outboxColsNoCT)
}

// RouteOffline puts a message on the OFFLINE path, due at once, with
// reason as its last error: queued or sending INDIRECT → sending OFFLINE.
// Its attempts start again from 0: from here on they count OFFLINE
// hand-offs.
func (q *Queue) RouteOffline(ctx context.Context, id, reason string, from ...State) (Outbound, error) {
	if len(from) == 0 {
		from = []State{Queued, Sending}
	}
	return q.transition(ctx, id, from, Change{State: Sending, Path: PathOffline, LastError: reason, ResetAttempts: true, NextAttemptAt: time.Now()}, outboxColsNoCT)
}

// MarkHandedOff records that the node's OFFLINE endpoint took the message:
// sending → handed_off, path OFFLINE, one more attempt; the last error
// stays (it says why the message went OFFLINE).
func (q *Queue) MarkHandedOff(ctx context.Context, id string) (Outbound, error) {
	return q.transition(ctx, id, []State{Sending}, Change{State: HandedOff, Path: PathOffline, AttemptsDelta: 1, KeepLastError: true}, outboxColsNoCT)
}

// RecordOfflineAttempt records a failed OFFLINE hand-off to be tried again
// at next: sending → sending OFFLINE, one more attempt.
func (q *Queue) RecordOfflineAttempt(ctx context.Context, id, lastErr string, next time.Time) (Outbound, error) {
	return q.transition(ctx, id, []State{Sending}, Change{State: Sending, Path: PathOffline, AttemptsDelta: 1, LastError: lastErr, NextAttemptAt: next}, outboxColsNoCT)
}

// Fail gives up on a message after a last failed OFFLINE hand-off:
// sending → failed, path OFFLINE, one more attempt, reason as last error.
func (q *Queue) Fail(ctx context.Context, id, reason string) (Outbound, error) {
	return q.transition(ctx, id, []State{Sending}, Change{State: Failed, Path: PathOffline, AttemptsDelta: 1, LastError: reason}, outboxColsNoCT)
}

// Revive queues a failed message again, as new: failed → queued, no path,
// attempts 0, due at once, reason as last error. A new POST of a failed
// message does this.
func (q *Queue) Revive(ctx context.Context, id, reason string) (Outbound, error) {
	return q.transition(ctx, id, []State{Failed}, Change{State: Queued, Path: PathNone, ResetAttempts: true, LastError: reason}, outboxColsNoCT)
}

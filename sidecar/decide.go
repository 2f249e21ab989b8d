package sidecar

import (
	"fmt"
	"strings"
	"time"

	"courier/upstream"
	"courier/wire"
)

// The outbound decision, in one place: what happens to a message after one
// INDIRECT publish, given the relay's answer (or its absence). decide is
// pure: the engine gathers its inputs, applies the action through the
// queue's named transitions, and counts metrics from the action, so that a
// table test can drive every rule.

// nextKind is what happens to a message after an INDIRECT publish.
type nextKind int

const (
	nextDelivered nextKind = iota // the relay answered delivered: the recipient has it
	nextIndirect                  // publish INDIRECT again at action.At
	nextOffline                   // hand it to the node's OFFLINE endpoint now
)

func (k nextKind) String() string {
	switch k {
	case nextDelivered:
		return "delivered"
	case nextIndirect:
		return "retry INDIRECT"
	case nextOffline:
		return "OFFLINE"
	}
	return fmt.Sprintf("nextKind(%d)", int(k))
}

// action is decide's answer.
type action struct {
	Kind   nextKind
	At     time.Time // nextIndirect: when to publish again
	Cause  string    // nextOffline: the fallback cause, a metric label (queued, rejected, timeout, connection_lost, …)
	Reason string    // the message's last error from now on (empty for delivered)
}

// publishOutcome is what came of one INDIRECT publish.
type publishOutcome struct {
	Attempts int             // INDIRECT publishes of this message so far, this one included (≥ 1)
	Result   upstream.Result // the relay's answer, or Err (connection lost before it)
	TimedOut bool            // no answer within delivery.publish_timeout
	Timeout  time.Duration   // that timeout, for the reason
	Now      time.Time       // when the outcome was known
	BackAt   time.Time       // when the relay came back from an outage; zero if it has not (a first connection is not a comeback)
	Grace    time.Duration   // delivery.relay_grace
	Jitter   float64         // a random number in [0, 1), spreading retries
}

// The anonymous path: what a level-1 publish leads to. Its reason stays
// the message's last error once it is handed off, so /v1/messages/{id}
// shows handed_off, path OFFLINE, and that it was also published INDIRECT.
const (
	causeUnconfirmed  = "unconfirmed"
	reasonUnconfirmed = "anonymous mode: also published INDIRECT at level 1, which gets no publish result; handed OFFLINE too"
)

// Retry rules for the answers worth another INDIRECT try.
const (
	// maxLostPublishes is how many INDIRECT publishes of one message may
	// end with the connection lost before it goes OFFLINE instead: a
	// relay that closes the connection over this very message (a frame
	// over its limit) or keeps going down; OFFLINE does not depend on it.
	maxLostPublishes = 3
	// maxRateLimited is how many publishes of one message the relay may
	// answer rate_limited before it goes OFFLINE instead.
	maxRateLimited = 6
	// rateLimitedWait is the first wait after a rate_limited answer; it
	// doubles with each further one.
	rateLimitedWait = 200 * time.Millisecond
	// comebackWait is the first wait after a queued answer within
	// relay_grace of the relay's comeback; it doubles with each further
	// one, so that a 3 s grace sees at most 6 publishes, not one every
	// half second.
	comebackWait = 250 * time.Millisecond
)

// backoff is base·2^(n-1), n ≥ 1, with equal jitter: between half of that
// and all of it.
func backoff(base time.Duration, n int, jitter float64) time.Duration {
	if n < 1 {
		n = 1
	}
	d := base << min(n-1, 20)
	return d/2 + time.Duration(jitter*float64(d/2))
}

// decide says what happens next to a message after one INDIRECT publish.
func decide(o publishOutcome) action {
	r := o.Result
	switch {
	case o.TimedOut:
		return action{Kind: nextOffline, Cause: "timeout", Reason: fmt.Sprintf("no publish result from the relay within %s", o.Timeout)}
	case r.Err == nil && r.Unconfirmed:
		// Anonymous mode: a level-1 publish gets no result, so nothing
		// can ever confirm it delivered. It is on the relay (the fast
		// path); OFFLINE now as well, and the recipient's node drops the
		// second copy by message ID.
		return action{Kind: nextOffline, Cause: causeUnconfirmed, Reason: reasonUnconfirmed}
	case r.Err != nil && o.Attempts >= maxLostPublishes:
		return action{Kind: nextOffline, Cause: "connection_lost",
			Reason: fmt.Sprintf("relay connection lost before the publish result, %d times: %v", o.Attempts, r.Err)}
	case r.Err != nil:
		// The relay may or may not have it; a republish is the same
		// message to it. The dispatcher sends it OFFLINE instead if the
		// relay stays away past the grace.
		return action{Kind: nextIndirect, At: o.Now, Reason: r.Err.Error()}
	case r.Status == wire.StatusDelivered:
		return action{Kind: nextDelivered}
	case r.Status == wire.StatusQueued && !o.BackAt.IsZero():
		// Within relay_grace of the relay's comeback a queued answer may
		// only mean that the recipient's sidecar has not reconnected yet.
		until := o.BackAt.Add(o.Grace)
		if o.Now.Before(until) {
			at := o.Now.Add(backoff(comebackWait, o.Attempts, o.Jitter))
			if at.After(until) {
				at = until // one last try as the window closes
			}
			return action{Kind: nextIndirect, At: at, Reason: "relay answered queued just after it came back; trying INDIRECT again"}
		}
	case r.Status == wire.StatusRejected && strings.HasPrefix(r.Reason, wire.ReasonRateLimited) && o.Attempts < maxRateLimited:
		return action{Kind: nextIndirect, At: o.Now.Add(backoff(rateLimitedWait, o.Attempts, o.Jitter)), Reason: "relay: " + r.Reason}
	}
	reason := "relay answered " + r.Status
	if r.Reason != "" {
		reason += ": " + r.Reason
	}
	cause := r.Status
	if cause == "" {
		cause = "unknown"
	}
	return action{Kind: nextOffline, Cause: cause, Reason: reason}
}

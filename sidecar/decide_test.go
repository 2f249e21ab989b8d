package sidecar

import (
	"errors"
	"strings"
	"testing"
	"time"

	"courier/upstream"
	"courier/wire"
)

func TestDecide(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	res := func(status, reason string) upstream.Result {
		return upstream.Result{PublishResult: wire.PublishResult{Status: status, Reason: reason}}
	}
	lost := upstream.Result{Err: upstream.ErrConnectionLost}
	const grace = 3 * time.Second
	cases := []struct {
		name   string
		o      publishOutcome
		kind   nextKind
		at     time.Time // for nextIndirect; zero: not checked
		cause  string
		reason string // contained in the action's reason
	}{
		{"delivered", publishOutcome{Attempts: 1, Result: res(wire.StatusDelivered, "")}, nextDelivered, time.Time{}, "", ""},
		{"queued, no comeback", publishOutcome{Attempts: 1, Result: res(wire.StatusQueued, "")}, nextOffline, time.Time{}, "queued", "relay answered queued"},
		{"queued, first connection (BackAt zero) even with a grace", publishOutcome{Attempts: 1, Result: res(wire.StatusQueued, ""), Grace: grace}, nextOffline, time.Time{}, "queued", "relay answered queued"},
		{"queued just after a comeback: first retry", publishOutcome{Attempts: 1, Result: res(wire.StatusQueued, ""), BackAt: now.Add(-time.Second), Grace: grace, Jitter: 0}, nextIndirect, now.Add(125 * time.Millisecond), "", "just after it came back"},
		{"queued just after a comeback: third retry, full jitter", publishOutcome{Attempts: 3, Result: res(wire.StatusQueued, ""), BackAt: now.Add(-time.Second), Grace: grace, Jitter: 1}, nextIndirect, now.Add(time.Second), "", "came back"},
		{"queued near the window's end: one last try at its end", publishOutcome{Attempts: 5, Result: res(wire.StatusQueued, ""), BackAt: now.Add(-2 * time.Second), Grace: grace}, nextIndirect, now.Add(time.Second), "", "came back"},
		{"queued after the window", publishOutcome{Attempts: 6, Result: res(wire.StatusQueued, ""), BackAt: now.Add(-grace), Grace: grace}, nextOffline, time.Time{}, "queued", "relay answered queued"},
		{"rate limited, first", publishOutcome{Attempts: 1, Result: res(wire.StatusRejected, wire.ReasonRateLimited+"slow down")}, nextIndirect, now.Add(100 * time.Millisecond), "", "rate_limited"},
		{"rate limited, budget spent", publishOutcome{Attempts: maxRateLimited, Result: res(wire.StatusRejected, wire.ReasonRateLimited+"slow down")}, nextOffline, time.Time{}, "rejected", "rate_limited"},
		{"over quota", publishOutcome{Attempts: 1, Result: res(wire.StatusRejected, "over_quota: full")}, nextOffline, time.Time{}, "rejected", "relay answered rejected: over_quota: full"},
		{"too large", publishOutcome{Attempts: 1, Result: res(wire.StatusRejected, "too_large: big")}, nextOffline, time.Time{}, "rejected", "too_large"},
		{"timeout", publishOutcome{Attempts: 1, TimedOut: true, Timeout: 300 * time.Millisecond}, nextOffline, time.Time{}, "timeout", "within 300ms"},
		{"connection lost, first", publishOutcome{Attempts: 1, Result: lost}, nextIndirect, now, "", "connection lost"},
		{"connection lost, third", publishOutcome{Attempts: maxLostPublishes, Result: lost}, nextOffline, time.Time{}, "connection_lost", "3 times"},
		{"unknown status", publishOutcome{Attempts: 1, Result: res("bogus", "")}, nextOffline, time.Time{}, "bogus", "relay answered bogus"},
		{"no status", publishOutcome{Attempts: 1, Result: res("", "")}, nextOffline, time.Time{}, "unknown", "relay answered"},
		// Anonymous mode: a level-1 publish is answered Unconfirmed and
		// goes OFFLINE as well, whatever else holds: within a comeback's
		// grace (no queued answer to retry on), at any attempt.
		{"anonymous: unconfirmed", publishOutcome{Attempts: 1, Result: upstream.Result{Unconfirmed: true}}, nextOffline, time.Time{}, "unconfirmed", "also published INDIRECT at level 1"},
		{"anonymous: unconfirmed just after a comeback", publishOutcome{Attempts: 1, Result: upstream.Result{Unconfirmed: true}, BackAt: now.Add(-time.Second), Grace: grace}, nextOffline, time.Time{}, "unconfirmed", "handed OFFLINE too"},
		{"anonymous: connection lost before the write", publishOutcome{Attempts: 1, Result: upstream.Result{Unconfirmed: true, Err: upstream.ErrConnectionLost}}, nextIndirect, now, "", "connection lost"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Now = now
			a := decide(tc.o)
			if a.Kind != tc.kind || a.Cause != tc.cause || !strings.Contains(a.Reason, tc.reason) {
				t.Errorf("decide = %+v (%s), want %s cause %q reason ~%q", a, a.Kind, tc.kind, tc.cause, tc.reason)
			}
			if !tc.at.IsZero() && !a.At.Equal(tc.at) {
				t.Errorf("retry at %s after now, want %s", a.At.Sub(now), tc.at.Sub(now))
			}
		})
	}
	if !errors.Is(lost.Err, upstream.ErrConnectionLost) {
		t.Fatal("unreachable")
	}
}

// After a comeback, queued answers in a row: the publishes, each at the
// time decide said, number at most 2 + log2(grace/125ms) whatever the
// jitter (a 3 s grace: at most 6; it was 7 with a fixed 500 ms), and the
// last one is at the window's end.
func TestDecideComebackPublishes(t *testing.T) {
	const grace = 3 * time.Second
	back := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, jitter := range []float64{0, 0.5, 0.999999} {
		now, publishes := back, 1
		for attempts := 1; ; attempts++ {
			a := decide(publishOutcome{Attempts: attempts, Result: upstream.Result{PublishResult: wire.PublishResult{Status: wire.StatusQueued}},
				Now: now, BackAt: back, Grace: grace, Jitter: jitter})
			if a.Kind == nextOffline {
				break
			}
			if a.Kind != nextIndirect || !a.At.After(now) {
				t.Fatalf("jitter %v, attempt %d: %+v", jitter, attempts, a)
			}
			now = a.At
			publishes++
		}
		if publishes > 6 || publishes < 5 {
			t.Errorf("jitter %v: %d publishes within a %s grace, want 5 or 6", jitter, publishes, grace)
		}
		if !now.Equal(back.Add(grace)) {
			t.Errorf("jitter %v: last publish %s after the comeback, want at the window's end", jitter, now.Sub(back))
		}
	}
}

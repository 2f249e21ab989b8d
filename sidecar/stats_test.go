package sidecar

import (
	"testing"
	"time"
)

func TestPathStats(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 30, 15, 0, time.UTC)
	var p pathStats
	// An old delivery, outside the hour: not counted.
	p.record(now.Add(-61*time.Minute), time.Hour)
	// 100 in the current minute: 98 at 2ms, 2 at 1s.
	for i := range 100 {
		d := 2 * time.Millisecond
		if i >= 98 {
			d = time.Second
		}
		p.record(now.Add(-time.Duration(i)*100*time.Millisecond), d)
	}
	// 5 ten minutes ago at 40ms.
	for range 5 {
		p.record(now.Add(-10*time.Minute), 40*time.Millisecond)
	}
	s := p.snapshot(now)
	if len(s.PerMinute) != statsMinutes || s.PerMinute[59] != 100 || s.PerMinute[49] != 5 || s.Count != 105 {
		t.Fatalf("per minute = %v, count %d", s.PerMinute, s.Count)
	}
	within := func(got, want time.Duration) bool { return got >= want && got <= want*119/100 }
	if !within(s.P50, 2*time.Millisecond) {
		t.Errorf("p50 = %s, want 2ms (+19%%)", s.P50)
	}
	if !within(s.P99, time.Second) {
		t.Errorf("p99 = %s, want 1s (+19%%)", s.P99)
	}
	// An hour on, all of it has aged out.
	if s := p.snapshot(now.Add(time.Hour)); s.Count != 0 || s.P50 != 0 {
		t.Errorf("an hour later: %+v", s)
	}
	// A bucket reused for a new minute starts from zero.
	p.record(now.Add(time.Hour), time.Millisecond)
	if s := p.snapshot(now.Add(time.Hour)); s.Count != 1 || s.PerMinute[59] != 1 {
		t.Errorf("after reuse: count %d, last minute %d", s.Count, s.PerMinute[59])
	}
	for _, d := range []time.Duration{0, time.Microsecond, latencyBase, time.Millisecond, time.Minute, 1000 * time.Hour} {
		i := latencyBucket(d)
		if i < 0 || i >= latencyBuckets || (i < latencyBuckets-1 && latencyBound(i) < d) {
			t.Errorf("latencyBucket(%s) = %d, bound %s", d, i, latencyBound(i))
		}
	}
}

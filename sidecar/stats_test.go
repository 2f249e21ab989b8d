package sidecar

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"courier/sidecar/queue"
)

// clock is a settable time for the recorder.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestStatsEmpty(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 1, 3, 0, 30, 0, time.UTC)}
	h := newDeliveryStats(c.now).lastHour()
	for _, p := range []queue.Path{queue.PathIndirect, queue.PathOffline} {
		got := h[p]
		if got.Delivered != 0 || got.P50Ms != 0 || got.P99Ms != 0 || len(got.PerMinute) != 60 || slices.Max(got.PerMinute) != 0 {
			t.Errorf("%s empty = %+v", p, got)
		}
	}
}

func TestStatsQuantilesPerPath(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 1, 3, 0, 30, 0, time.UTC)}
	s := newDeliveryStats(c.now)
	now := c.now()
	for i := 1; i <= 100; i++ { // 1ms … 100ms
		s.record(queue.PathIndirect, now.Add(-time.Duration(i)*time.Millisecond), now)
	}
	for range 10 {
		s.record(queue.PathOffline, now.Add(-3*time.Second), now)
	}
	s.record(queue.PathNone, now.Add(-time.Hour), now) // not a delivery path: ignored
	h := s.lastHour()
	in, off := h[queue.PathIndirect], h[queue.PathOffline]
	if in.Delivered != 100 || in.PerMinute[59] != 100 {
		t.Errorf("INDIRECT = %d delivered, %d this minute; want 100", in.Delivered, in.PerMinute[59])
	}
	within := func(name string, got, want float64) {
		if got < want || got > want*1.091 {
			t.Errorf("%s = %.3f ms, want %.3f ms rounded up by at most 9%%", name, got, want)
		}
	}
	within("INDIRECT p50", in.P50Ms, 50)
	within("INDIRECT p99", in.P99Ms, 99)
	if off.Delivered != 10 {
		t.Errorf("OFFLINE delivered = %d, want 10", off.Delivered)
	}
	within("OFFLINE p50", off.P50Ms, 3000)
	within("OFFLINE p99", off.P99Ms, 3000)
}

// The reported quantile is never below the true one and at most 9% above,
// over the whole range of latencies, tiny and huge included.
func TestStatsQuantileBound(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 1, 3, 0, 30, 0, time.UTC)}
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		s := newDeliveryStats(c.now)
		n := 1 + r.IntN(500)
		ds := make([]time.Duration, n)
		for i := range ds {
			// log-uniform from 150µs to about an hour
			ds[i] = time.Duration(150e3 * float64(uint64(1)<<r.IntN(34)) * (1 + r.Float64()))
			ds[i] = min(ds[i], time.Hour)
			s.record(queue.PathIndirect, c.now().Add(-ds[i]), c.now())
		}
		slices.Sort(ds)
		h := s.lastHour()[queue.PathIndirect]
		for _, q := range []struct {
			name string
			got  float64
			rank int
		}{{"p50", h.P50Ms, (n + 1) / 2}, {"p99", h.P99Ms, (99*n + 99) / 100}} {
			want := float64(ds[q.rank-1]) / 1e6
			if q.got < want*0.9999 || q.got > want*1.0906 {
				t.Fatalf("trial %d, %d values: %s = %.4f ms, true %.4f ms", trial, n, q.name, q.got, want)
			}
		}
	}
	// Below the smallest bucket and above the largest.
	s := newDeliveryStats(c.now)
	s.record(queue.PathOffline, c.now(), c.now())
	if h := s.lastHour()[queue.PathOffline]; h.P50Ms != 0.1 {
		t.Errorf("0 latency reported as %v ms, want the smallest bucket, 0.1", h.P50Ms)
	}
	s.record(queue.PathOffline, c.now().Add(-30*time.Hour), c.now())
	if h := s.lastHour()[queue.PathOffline]; h.P99Ms < float64(time.Hour/time.Millisecond) {
		t.Errorf("a 30 h latency reported as %v ms", h.P99Ms)
	}
}

// Each minute lands in its own entry; an hour later it is gone, and the
// ring's slot is reused for the new minute without the old counts.
func TestStatsWindow(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)}
	s := newDeliveryStats(c.now)
	for m := range 60 { // m deliveries in minute m
		for range m {
			s.record(queue.PathIndirect, c.now().Add(-time.Millisecond), c.now())
		}
		if m < 59 {
			c.add(time.Minute)
		}
	}
	h := s.lastHour()[queue.PathIndirect]
	for i, n := range h.PerMinute {
		if n != i {
			t.Fatalf("per minute = %v, want 0, 1, …, 59", h.PerMinute)
		}
	}
	if h.Delivered != 59*60/2 {
		t.Errorf("delivered = %d, want %d", h.Delivered, 59*60/2)
	}

	c.add(10 * time.Minute) // minutes 0..9 leave the window, 60..69 enter empty
	h = s.lastHour()[queue.PathIndirect]
	if want := append(seq(10, 60), make([]int, 10)...); !slices.Equal(h.PerMinute, want) {
		t.Errorf("10 minutes later, per minute = %v, want %v", h.PerMinute, want)
	}
	s.record(queue.PathIndirect, c.now().Add(-time.Millisecond), c.now()) // reuses minute 9's slot
	if h = s.lastHour()[queue.PathIndirect]; h.PerMinute[59] != 1 {
		t.Errorf("a reused slot holds %d, want 1 (the old minute's 9 dropped)", h.PerMinute[59])
	}
	// Outside the window (a clock step): ignored.
	s.record(queue.PathIndirect, c.now(), c.now().Add(2*time.Minute))
	s.record(queue.PathIndirect, c.now().Add(-2*time.Hour), c.now().Add(-2*time.Hour))
	if h2 := s.lastHour()[queue.PathIndirect]; h2.Delivered != h.Delivered {
		t.Errorf("records outside the window counted: %d, want %d", h2.Delivered, h.Delivered)
	}

	c.add(time.Hour)
	if h = s.lastHour()[queue.PathIndirect]; h.Delivered != 0 || h.P50Ms != 0 {
		t.Errorf("an hour later = %+v, want empty", h)
	}
}

func seq(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

func TestStatsConcurrent(t *testing.T) {
	s := newDeliveryStats(nil)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				now := time.Now()
				s.record(queue.PathOffline, now.Add(-time.Millisecond), now)
			}
		}()
	}
	for range 10 {
		_ = s.lastHour()
	}
	wg.Wait()
	if n := s.lastHour()[queue.PathOffline].Delivered; n != 8000 {
		t.Errorf("delivered = %d, want 8000", n)
	}
}

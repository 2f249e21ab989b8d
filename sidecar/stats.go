package sidecar

import (
	"math"
	"sync"
	"time"

	"courier/sidecar/queue"
)

// What the status page shows first: per delivery path, the deliveries in
// each of the last 60 minutes and the end-to-end latency (accepted by the
// sidecar → delivered INDIRECT or handed off OFFLINE) over the last hour.
// Kept in memory, per minute, in a small log-scale histogram: a restart
// starts them afresh (the Prometheus series are for the long view).

// statsMinutes is the window: one hour of one-minute buckets.
const statsMinutes = 60

// Latency histogram buckets: 4 per doubling from 100µs, up to about 28 h;
// an estimate is the upper bound of its bucket (within 19%).
const (
	latencyBase    = 100 * time.Microsecond
	latencyPerStep = 4
	latencyBuckets = 4 * 30
)

func latencyBucket(d time.Duration) int {
	if d <= latencyBase {
		return 0
	}
	i := int(math.Ceil(latencyPerStep * math.Log2(float64(d)/float64(latencyBase))))
	return min(i, latencyBuckets-1)
}

func latencyBound(i int) time.Duration {
	return time.Duration(float64(latencyBase) * math.Exp2(float64(i)/latencyPerStep))
}

type minuteBucket struct {
	minute int64 // Unix minute this bucket holds; buckets of older minutes are stale
	count  int
	hist   [latencyBuckets]int32
}

// pathStats is one path's last hour.
type pathStats struct {
	buckets [statsMinutes]minuteBucket
}

func (p *pathStats) record(at time.Time, latency time.Duration) {
	m := at.Unix() / 60
	b := &p.buckets[m%statsMinutes]
	if b.minute != m {
		*b = minuteBucket{minute: m}
	}
	b.count++
	b.hist[latencyBucket(latency)]++
}

// PathStats is one delivery path's last hour, as [Engine.DeliveryStats]
// reports it.
type PathStats struct {
	// PerMinute counts deliveries in each of the last 60 minutes, oldest
	// first; the last entry is the current minute, so far.
	PerMinute []int `json:"per_minute"`
	// Count is their sum.
	Count int `json:"count"`
	// P50 and P99 estimate the end-to-end latency over the hour (the
	// upper bound of a log-scale bucket, within 19%); zero without
	// deliveries.
	P50 time.Duration `json:"p50"`
	P99 time.Duration `json:"p99"`
}

func (p *pathStats) snapshot(now time.Time) PathStats {
	cur := now.Unix() / 60
	out := PathStats{PerMinute: make([]int, statsMinutes)}
	var hist [latencyBuckets]int
	for i := range statsMinutes {
		m := cur - int64(statsMinutes-1-i)
		b := &p.buckets[((m%statsMinutes)+statsMinutes)%statsMinutes]
		if b.minute != m {
			continue
		}
		out.PerMinute[i] = b.count
		out.Count += b.count
		for j, n := range b.hist {
			hist[j] += int(n)
		}
	}
	if out.Count > 0 {
		out.P50 = quantile(hist[:], out.Count, 0.50)
		out.P99 = quantile(hist[:], out.Count, 0.99)
	}
	return out
}

func quantile(hist []int, total int, q float64) time.Duration {
	rank := int(math.Ceil(q * float64(total)))
	seen := 0
	for i, n := range hist {
		seen += n
		if seen >= rank {
			return latencyBound(i)
		}
	}
	return latencyBound(len(hist) - 1)
}

// deliveryStats is the engine's part that keeps the last hour per path.
type deliveryStats struct {
	mu    sync.Mutex
	paths map[queue.Path]*pathStats
}

func (s *deliveryStats) record(path queue.Path, at time.Time, latency time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.paths == nil {
		s.paths = make(map[queue.Path]*pathStats)
	}
	p := s.paths[path]
	if p == nil {
		p = new(pathStats)
		s.paths[path] = p
	}
	p.record(at, latency)
}

// DeliveryStats returns, for INDIRECT and OFFLINE, the deliveries per
// minute over the last hour and the end-to-end latency's p50 and p99 over
// it, as of now (time.Now() in production).
func (e *Engine) DeliveryStats(now time.Time) map[queue.Path]PathStats {
	s := &e.stats
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[queue.Path]PathStats, 2)
	for _, path := range []queue.Path{queue.PathIndirect, queue.PathOffline} {
		p := s.paths[path]
		if p == nil {
			p = new(pathStats)
		}
		out[path] = p.snapshot(now)
	}
	return out
}

package sidecar

import (
	"math"
	"sync"
	"time"

	"courier/sidecar/queue"
)

// The status page's numbers for the last hour: deliveries per minute and
// the latency from acceptance to delivered (INDIRECT) or handed_off
// (OFFLINE), per path. They live in memory only (a restart starts them
// afresh; /metrics has the long-term series) in a fixed-size ring of one
// slot per minute, each slot a count and a log-scale latency histogram per
// path: about 100 KiB, whatever the traffic.

const (
	statsMinutes = 60 // the window: the current minute and the 59 before it

	// Latency buckets: bucket 0 holds up to latencyMin, bucket i up to
	// latencyMin·2^(i/bucketsPerDoubling), the last one everything above.
	// A quantile is reported as its bucket's upper bound: never below the
	// true value, at most 9% above it.
	latencyMin         = 100 * time.Microsecond
	bucketsPerDoubling = 8
	latencyBuckets     = 26*bucketsPerDoubling + 2 // up to 100µs·2^26 ≈ 1.9 h, then overflow
)

// statsPaths are the paths the recorder keeps, in slot order.
var statsPaths = [...]queue.Path{queue.PathIndirect, queue.PathOffline}

type pathMinute struct {
	count   uint32
	buckets [latencyBuckets]uint32
}

type minuteSlot struct {
	minute int64 // Unix minute the slot holds; another value: stale, empty
	paths  [len(statsPaths)]pathMinute
}

// deliveryStats records deliveries per minute and their latencies, per
// path, over the last hour. It is safe for concurrent use; record is cheap
// enough for every delivery (a lock, two increments).
type deliveryStats struct {
	now func() time.Time

	mu    sync.Mutex
	slots [statsMinutes]minuteSlot
}

func newDeliveryStats(now func() time.Time) *deliveryStats {
	if now == nil {
		now = time.Now
	}
	s := &deliveryStats{now: now}
	for i := range s.slots {
		s.slots[i].minute = math.MinInt64
	}
	return s
}

func unixMinute(t time.Time) int64 { return t.Unix() / 60 }

func pathIndex(p queue.Path) int {
	for i, sp := range statsPaths {
		if sp == p {
			return i
		}
	}
	return -1
}

func latencyBucket(d time.Duration) int {
	if d <= latencyMin {
		return 0
	}
	b := int(math.Ceil(math.Log2(float64(d)/float64(latencyMin)) * bucketsPerDoubling))
	return min(max(b, 1), latencyBuckets-1)
}

// bucketUpper is the largest latency bucket b holds (the last one is
// open-ended: its lower bound stands for it).
func bucketUpper(b int) time.Duration {
	if b == latencyBuckets-1 {
		b--
	}
	return time.Duration(float64(latencyMin) * math.Exp2(float64(b)/bucketsPerDoubling))
}

// record counts one message that reached delivered or handed_off at done,
// accepted at accepted. Other paths are ignored.
func (s *deliveryStats) record(path queue.Path, accepted, done time.Time) {
	p := pathIndex(path)
	if p < 0 {
		return
	}
	m := unixMinute(done)
	b := latencyBucket(done.Sub(accepted))
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := unixMinute(s.now()); m > cur || m <= cur-statsMinutes {
		return // outside the window (a clock step): not worth a wrong slot
	}
	slot := &s.slots[m%statsMinutes]
	if slot.minute != m {
		*slot = minuteSlot{minute: m}
	}
	slot.paths[p].count++
	slot.paths[p].buckets[b]++
}

// PathHour is one path's last hour, as /v1/status reports it.
type PathHour struct {
	// Delivered counts the messages that reached delivered (INDIRECT) or
	// handed_off (OFFLINE) in the last hour.
	Delivered int `json:"delivered"`
	// P50Ms and P99Ms are the median and 99th percentile of their latency,
	// from acceptance by the sidecar to that state, in milliseconds
	// (rounded up, by at most 9%); 0 when there were none.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	// PerMinute counts them per minute, oldest first; the last entry is the
	// current minute so far.
	PerMinute []int `json:"per_minute"`
}

// lastHour summarises the window ending in the current minute, per path.
func (s *deliveryStats) lastHour() map[queue.Path]PathHour {
	cur := unixMinute(s.now())
	var hist [len(statsPaths)][latencyBuckets]uint64
	out := make(map[queue.Path]PathHour, len(statsPaths))
	per := make([][]int, len(statsPaths))
	for p := range statsPaths {
		per[p] = make([]int, statsMinutes)
	}
	s.mu.Lock()
	for i := range statsMinutes {
		m := cur - statsMinutes + 1 + int64(i)
		slot := &s.slots[((m%statsMinutes)+statsMinutes)%statsMinutes]
		if slot.minute != m {
			continue
		}
		for p := range statsPaths {
			pm := &slot.paths[p]
			if pm.count == 0 {
				continue
			}
			per[p][i] = int(pm.count)
			for b, n := range pm.buckets {
				hist[p][b] += uint64(n)
			}
		}
	}
	s.mu.Unlock()
	for p, path := range statsPaths {
		h := PathHour{PerMinute: per[p]}
		for _, n := range per[p] {
			h.Delivered += n
		}
		h.P50Ms = quantileMs(hist[p][:], uint64(h.Delivered), 0.50)
		h.P99Ms = quantileMs(hist[p][:], uint64(h.Delivered), 0.99)
		out[path] = h
	}
	return out
}

// quantileMs is the q-quantile of a histogram holding total values, as its
// bucket's upper bound in milliseconds; 0 for an empty histogram.
func quantileMs(hist []uint64, total uint64, q float64) float64 {
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total))) // the rank-th smallest value
	rank = max(rank, 1)
	var seen uint64
	for b, n := range hist {
		if seen += n; seen >= rank {
			ms := float64(bucketUpper(b)) / float64(time.Millisecond)
			return math.Round(ms*1000) / 1000
		}
	}
	return float64(bucketUpper(len(hist)-1)) / float64(time.Millisecond)
}

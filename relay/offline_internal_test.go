package relay

import (
	"testing"
	"time"
)

// TestBackoffBounds: the n-th wait is random in (0, min(retry_max,
// retry_min·2ⁿ⁻¹)], for any n (no overflow), and spreads over its range
// (full jitter).
func TestBackoffBounds(t *testing.T) {
	b := &bridge{cfg: OfflineConfig{RetryMin: 1500 * time.Millisecond, RetryMax: 24 * time.Hour}}
	for _, n := range []int{1, 2, 3, 10, 17, 35, 40, 63, 64, 1000, 1 << 30} {
		ceil := b.cfg.RetryMax
		if n < 20 {
			ceil = min(ceil, b.cfg.RetryMin*time.Duration(1<<(n-1)))
		}
		lo, hi := ceil, time.Duration(0)
		for range 200 {
			d := b.backoff(n)
			if d <= 0 || d > ceil {
				t.Fatalf("backoff(%d) = %v, want in (0, %v]", n, d, ceil)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		if lo > ceil/4 || hi < ceil*3/4 {
			t.Errorf("backoff(%d) ranged %v..%v over 200 draws, want it spread over (0, %v]", n, lo, hi, ceil)
		}
	}
}

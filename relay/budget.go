package relay

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
)

// byteBudget is a semaphore counted in bytes: the publish path acquires a
// message's size before handing it to the store and releases it when the
// store's result arrives, so what waits for commit is bounded. Waiters are
// served in order (a large acquire is not starved by small ones). A
// request larger than the whole budget waits for all of it.
type byteBudget struct {
	max int64

	mu      sync.Mutex
	used    int64
	waiters []*budgetWaiter // FIFO
}

type budgetWaiter struct {
	n     int64
	ready chan struct{} // closed once the bytes are granted
}

func newByteBudget(max int64) *byteBudget { return &byteBudget{max: max} }

// clamp bounds a request to the budget.
func (b *byteBudget) clamp(n int64) int64 { return min(max(n, 0), b.max) }

// acquire takes n bytes (clamped to the budget), waiting for them in
// order. It fails only when ctx ends first; the caller then holds nothing.
// It returns the amount to release.
func (b *byteBudget) acquire(ctx context.Context, n int64) (int64, error) {
	n = b.clamp(n)
	b.mu.Lock()
	if len(b.waiters) == 0 && b.used+n <= b.max {
		b.used += n
		b.mu.Unlock()
		return n, nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return n, nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-w.ready: // granted meanwhile: give it back
			b.mu.Unlock()
			b.release(n)
		default:
			for i, x := range b.waiters {
				if x == w {
					b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
					break
				}
			}
			b.grantLocked() // the head may have changed
			b.mu.Unlock()
		}
		return 0, ctx.Err()
	}
}

// release gives back n bytes an acquire returned.
func (b *byteBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.grantLocked()
	b.mu.Unlock()
}

func (b *byteBudget) grantLocked() {
	for len(b.waiters) > 0 && b.used+b.waiters[0].n <= b.max {
		w := b.waiters[0]
		b.waiters[0] = nil
		b.waiters = b.waiters[1:]
		b.used += w.n
		close(w.ready)
	}
	if len(b.waiters) == 0 {
		b.waiters = nil
	}
}

// inUse reports the bytes held, for metrics and tests.
func (b *byteBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// defaultInflightBytes is the default of limits.max_inflight_bytes: a
// sixteenth of the machine's memory, between 64 MiB and 1 GiB (256 MiB
// when the memory cannot be read).
func defaultInflightBytes() int64 {
	mem := memTotal()
	if mem <= 0 {
		return 256 << 20
	}
	return min(max(mem/16, 64<<20), 1<<30)
}

// memTotal reads MemTotal from /proc/meminfo (Linux); 0 elsewhere.
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

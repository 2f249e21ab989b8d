package queue

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkEnqueueParallel measures durable enqueues of 1 KiB messages
// (synchronous full) from many goroutines at once: the group commit's
// throughput, reported as msgs/s.
func BenchmarkEnqueueParallel(b *testing.B) {
	q, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{Synchronous: "full", Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	var n atomic.Uint64
	ctx := context.Background()
	b.SetParallelism(32) // 32 enqueuers per CPU: an HTTP API under load
	b.SetBytes(1024)
	commits := q.commits.Load()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ct := make([]byte, 1024)
		for i := range ct {
			ct[i] = byte(i)
		}
		for pb.Next() {
			binary.BigEndian.PutUint64(ct, n.Add(1))
			if _, _, err := q.Enqueue(ctx, testRecipient, ct); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	if c := q.commits.Load() - commits; c > 0 {
		b.ReportMetric(float64(b.N)/float64(c), "msgs/commit")
	}
}

// BenchmarkDue measures one page of Due over an outbox of 100k messages,
// most of them not due.
func BenchmarkDue(b *testing.B) {
	q, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{Synchronous: "normal", Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	// Fill directly, in one transaction: the writer path is measured above.
	tx, err := q.wdb.Begin()
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	ct := make([]byte, 256)
	for i := range 100_000 {
		binary.BigEndian.PutUint64(ct, uint64(i))
		state, next := Delivered, int64(0)
		switch {
		case i%10 == 0:
			state, next = Sending, now.Add(time.Hour).UnixNano() // OFFLINE retries, later
		case i%1000 == 1:
			state = Sending // due
		}
		if _, err := tx.Exec(`INSERT INTO outbox (id, recipient, ciphertext, state, path, created_at, updated_at, next_attempt_at)
			VALUES (?, ?, ?, ?, 'OFFLINE', ?, ?, ?)`, i, testRecipient, ct, state, now.UnixNano(), now.UnixNano(), next); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		ms, err := q.Due(ctx, Sending, PathOffline, now, 0, 64)
		if err != nil || len(ms) != 64 {
			b.Fatalf("Due = %d, %v", len(ms), err)
		}
	}
}

package sqlitestore

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"courier/relay"
	"courier/relay/storetest"
	"courier/wire"
)

// benchSeq makes every benchmark message unique across runs.
var benchSeq atomic.Uint64

func benchMessage(p storetest.Peer, size int) relay.Message {
	ct := make([]byte, size)
	binary.BigEndian.PutUint64(ct, benchSeq.Add(1))
	binary.BigEndian.PutUint64(ct[8:], uint64(time.Now().UnixNano()))
	return relay.Message{ID: wire.MessageID(ct), Key: p.Key, Recipient: p.ID, Ciphertext: ct}
}

func benchPeers(n int) []storetest.Peer {
	ps := make([]storetest.Peer, n)
	for i := range ps {
		ps[i] = storetest.NewPeer(i)
	}
	return ps
}

// BenchmarkPut: many publishers putting 1 KiB messages at once, each
// waiting for its result, with synchronous=FULL on a real file: what group
// commit buys.
func BenchmarkPut(b *testing.B) {
	var commits, writes atomic.Int64
	s, _ := openTest(b, Options{OnCommit: func(n int, _ time.Duration) {
		commits.Add(1)
		writes.Add(int64(n))
	}})
	peers := benchPeers(64)
	b.SetBytes(1024)
	b.SetParallelism(32) // 32 × GOMAXPROCS publishers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			r := <-s.Put(benchMessage(peers[i%len(peers)], 1024), nil)
			if r.Err != nil {
				b.Error(r.Err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	if c := commits.Load(); c > 0 {
		b.ReportMetric(float64(writes.Load())/float64(c), "writes/commit")
	}
}

// BenchmarkPending: replay pages of 100 from a backlog of 10,000 1 KiB
// messages on one key.
func BenchmarkPending(b *testing.B) {
	const backlog, page = 10000, 100
	s, _ := openTest(b, Options{})
	a, other := storetest.PeersSharingKey()
	var chans []<-chan relay.PutResult
	for i := range backlog {
		to := a
		if i%2 == 1 {
			to = other
		}
		chans = append(chans, s.Put(benchMessage(to, 1024), nil))
	}
	var ids []string
	var maxSeq int64
	for _, ch := range chans {
		r := <-ch
		if r.Err != nil {
			b.Fatal(r.Err)
		}
		ids = append(ids, r.Message.ID)
		maxSeq = r.Message.Seq
	}
	// A subscriber that has acked the older half of the backlog.
	var acks []<-chan relay.AckResult
	for _, id := range ids[:backlog/2] {
		acks = append(acks, s.Ack(storetest.Anonymous("caught-up"), id))
	}
	for _, ch := range acks {
		if r := <-ch; r.Err != nil {
			b.Fatal(r.Err)
		}
	}

	cases := []struct {
		name string
		sub  relay.Subscriber
		// after picks where page i starts.
		after func(i int) int64
	}{
		{"anonymous", storetest.Anonymous("fresh"), func(i int) int64 { return int64(i*page) % (maxSeq - page) }},
		{"peer", a.Sub(), func(i int) int64 { return int64(i*page) % (maxSeq - page) }},
		{"anonymous-acked-5000-from-start", storetest.Anonymous("caught-up"), func(int) int64 { return 0 }},
	}
	ctx := context.Background()
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			read := 0
			for i := 0; b.Loop(); i++ {
				ms, err := s.Pending(ctx, c.sub, a.Key, c.after(i), page)
				if err != nil || len(ms) == 0 {
					b.Fatalf("Pending: %d messages, %v", len(ms), err)
				}
				read += len(ms)
			}
			b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkPutAck: what the relay's ack-each load asks of the store per
// message: a put, and the recipient's ack of it once its result is in,
// with up to 256 puts in flight (the relay's max_inflight), on one key
// and on 64 keys. Reports the writer goroutine's CPU share per message
// (the store-cpu-µs/msg that stands alone on a busy machine is in the
// relay's BenchmarkThroughput).
func BenchmarkPutAck(b *testing.B) {
	for _, keys := range []int{1, 64} {
		b.Run(fmt.Sprintf("keys-%d", keys), func(b *testing.B) {
			var commits, writes atomic.Int64
			s, _ := openTest(b, Options{OnCommit: func(n int, _ time.Duration) {
				commits.Add(1)
				writes.Add(int64(n))
			}})
			peers := benchPeers(keys)
			msgs := make([]relay.Message, b.N)
			for i := range msgs {
				msgs[i] = benchMessage(peers[i%len(peers)], 1024)
			}
			puts := make(chan (<-chan relay.PutResult), 256)
			acks := make(chan (<-chan relay.AckResult), 256)
			done := make(chan struct{})
			go func() { // the subscriber: acks each message once it is stored
				defer close(acks)
				for ch := range puts {
					r := <-ch
					if r.Err != nil {
						b.Error(r.Err)
						return
					}
					acks <- s.Ack(relay.Subscriber{Peer: true, ID: r.Message.Recipient}, r.Message.ID)
				}
			}()
			go func() {
				defer close(done)
				for ch := range acks {
					if r := <-ch; r.Err != nil || !r.ByRecipient {
						b.Errorf("ack: %+v", r)
					}
				}
			}()
			b.SetBytes(1024)
			b.ResetTimer()
			for _, m := range msgs {
				puts <- s.Put(m, nil)
			}
			close(puts)
			<-done
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			if c := commits.Load(); c > 0 {
				b.ReportMetric(float64(writes.Load())/float64(c), "writes/commit")
			}
		})
	}
}

package relay_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"courier/relay"
	"courier/relay/sqlitestore"
	"courier/wire"
)

// benchEnv is a relay with durability on (synchronous=full) and no
// publish rate limit.
func benchEnv(b *testing.B) *env {
	return newEnv(b, func(c *relay.Config) {
		c.Store.Synchronous = "full"
		c.Limits.PublishRate = 0
	})
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// BenchmarkPublishDeliverLatency: one level-2 publisher, one authenticated
// subscriber on loopback, 1 KiB messages, one at a time. p50/p99 are from
// the publisher's write to the subscriber's receipt; delivered-p50 adds
// the subscriber's ack (committed) and the publisher's PublishResult.
func BenchmarkPublishDeliverLatency(b *testing.B) {
	e := benchEnv(b)
	bob := newIdentity(b, 1)
	sub := e.dial()
	sub.auth2(bob, 0)
	pub := e.dial()
	pub.auth2(newIdentity(b, 2), 0)

	ct := make([]byte, 1024)
	lat := make([]time.Duration, 0, b.N)
	full := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		copy(ct, strconv.Itoa(i)+" latency")
		frame := wire.ClientFrameBytes(wire.TypePublish, wire.Publish{
			EncryptedMessage: base64.StdEncoding.EncodeToString(ct), Recipient: bob.ID(), Ref: "r",
		})
		start := time.Now()
		pub.send(frame)
		d := sub.expectDelivery()
		lat = append(lat, time.Since(start))
		sub.ack(d.ID)
		pub.expectResult(wire.StatusDelivered)
		full = append(full, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	slices.Sort(full)
	b.ReportMetric(micros(percentile(lat, 0.50)), "p50-µs")
	b.ReportMetric(micros(percentile(lat, 0.99)), "p99-µs")
	b.ReportMetric(micros(percentile(full, 0.50)), "delivered-p50-µs")
}

// BenchmarkThroughput: one level-2 publisher pipelining 1 KiB messages as
// fast as the relay takes them; msgs/s counts messages received by the
// subscriber. In ack-each the subscriber is authenticated and acks every
// message (two durable writes per message: the put and the ack; the
// publisher's results are "delivered"). In no-acks it is an anonymous
// level-1 subscriber that does not ack (one write per message; results are
// "queued"), with the per-key quota raised out of the way.
func BenchmarkThroughput(b *testing.B) {
	b.Run("ack-each", func(b *testing.B) { benchThroughput(b, true) })
	b.Run("no-acks", func(b *testing.B) { benchThroughput(b, false) })
}

func benchThroughput(b *testing.B, acking bool) {
	e := newEnv(b, func(c *relay.Config) {
		c.Store.Synchronous = "full"
		c.Limits.PublishRate = 0
		if !acking {
			c.Limits.MaxMessagesPerKey = 1 << 40
			c.Limits.MaxBytesPerKey = 1 << 50
		}
	})
	bob := newIdentity(b, 1)
	sub := e.dial()
	if acking {
		sub.auth2(bob, 0)
	} else {
		sub.subscribe1("bench", bob.Key())
	}
	pub := e.dial()
	pub.auth2(newIdentity(b, 2), 0)
	// The helpers' reader goroutines stay; the frames go through their
	// channels, which are deep enough not to push back.

	frames := make([][]byte, b.N)
	ct := make([]byte, 1024)
	for i := range frames {
		copy(ct, fmt.Sprintf("%d throughput %d %v", i, b.N, acking))
		frames[i] = wire.ClientFrameBytes(wire.TypePublish, wire.Publish{
			EncryptedMessage: base64.StdEncoding.EncodeToString(ct), Recipient: bob.ID(),
		})
	}
	ctx := context.Background()
	b.SetBytes(1024)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(2)
	errs := make(chan error, 3)
	go func() { // publisher
		defer wg.Done()
		for _, f := range frames {
			if err := pub.ws.Write(ctx, websocket.MessageText, f); err != nil {
				errs <- err
				return
			}
		}
	}()
	go func() { // its results
		defer wg.Done()
		for range b.N {
			select {
			case raw := <-pub.frames:
				f, err := wire.ParseServerFrame(raw)
				if err != nil || f.Kind != wire.KindPublishResult || f.PublishResult.Status == wire.StatusRejected {
					errs <- fmt.Errorf("publisher got %s", raw)
					return
				}
			case <-time.After(waitTimeout):
				errs <- fmt.Errorf("publisher: no result within %v", waitTimeout)
				return
			}
		}
	}()
	// The subscriber receives; acks are written by another goroutine so
	// that reading never waits for writing.
	acks := make(chan string, 4096)
	ackDone := make(chan struct{})
	go func() {
		defer close(ackDone)
		for id := range acks {
			if err := sub.ws.Write(ctx, websocket.MessageText, wire.ClientFrameBytes(wire.TypeAck, wire.Ack{MessageID: id})); err != nil {
				errs <- err
				return
			}
		}
	}()
	for range b.N {
		select {
		case raw := <-sub.frames:
			f, err := wire.ParseServerFrame(raw)
			if err != nil || f.Kind != wire.KindDelivery {
				b.Fatalf("subscriber got %s", raw)
			}
			if acking {
				acks <- f.Delivery.ID
			}
		case err := <-errs:
			b.Fatal(err)
		case <-time.After(waitTimeout):
			b.Fatalf("subscriber: nothing within %v", waitTimeout)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	close(acks)
	<-ackDone
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	if commits := e.metric("courier_relay_store_commit_seconds_count"); commits > 0 {
		b.ReportMetric(e.metric("courier_relay_store_commit_batch_sum")/commits, "writes/commit")
		b.ReportMetric(e.metric("courier_relay_store_commit_seconds_sum")/elapsed.Seconds(), "store-busy")
	}
}

// idleChildEnv makes the test binary a relay child for
// BenchmarkIdleConnections (see TestMain).
const idleChildEnv = "COURIER_RELAY_BENCH_IDLE_DB"

func runIdleChild(path string) error {
	cfg := relay.DefaultConfig()
	cfg.Store.Path = path
	cfg.Limits.MaxConnections = 0
	cfg.Limits.MaxConnectionsPerIP = 0 // every connection comes from 127.0.0.1
	cfg.Limits.SubscribeRate = 0
	return serveChild(cfg, sqlitestore.Options{})
}

func vmRSSKiB(b *testing.B, pid int) float64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkIdleConnections opens idleConns level-1 connections, each
// subscribed to a key of its own, to a relay in a child process, and
// reports the child's resident memory per connection (VmRSS delta), and the
// Go heap and goroutine stacks in use per connection from its /metrics
// (garbage not yet collected included). b.N is ignored: one measurement is
// one run.
func BenchmarkIdleConnections(b *testing.B) {
	const idleConns = 10000
	// Go raises the soft limit to the hard one at start; the child too.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < idleConns+1000 {
		b.Skipf("RLIMIT_NOFILE is %d: %d connections need more (raise the hard limit: ulimit -Hn)", lim.Cur, idleConns)
	}
	path := filepath.Join(b.TempDir(), "relay.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), idleChildEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("child: %v", err)
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "ADDR "))
	e := &env{t: b, url: "ws://" + addr + "/", http: "http://" + addr}
	pid := cmd.Process.Pid

	// Warm up (one connection), then take the baseline.
	warm := e.dialSilent()
	warm.Close(websocket.StatusNormalClosure, "")
	eventually(b, "warm-up connection gone", func() bool { return e.metric("courier_relay_connections") == 0 })
	rss0 := vmRSSKiB(b, pid)
	heap0, stack0 := e.metric("go_memstats_heap_inuse_bytes"), e.metric("go_memstats_stack_inuse_bytes")

	conns := make([]*websocket.Conn, idleConns)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				ws, _, err := websocket.Dial(ctx, e.url, nil)
				if err != nil {
					cancel()
					errs <- err
					return
				}
				key := newIdentity(b, i).Key()
				err = ws.Write(ctx, websocket.MessageText, wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{UserID: "idle", SubscriptionKey: key}))
				if err == nil {
					var msg []byte
					_, msg, err = ws.Read(ctx)
					if err == nil && string(msg) != string(wire.SubscribeOK) {
						err = fmt.Errorf("subscribe answer %s", msg)
					}
				}
				cancel()
				if err != nil {
					errs <- err
					return
				}
				conns[i] = ws
			}
		}()
	}
	b.ResetTimer()
	start := time.Now()
	for i := range idleConns {
		select {
		case next <- i:
		case err := <-errs:
			b.Fatal(err)
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	openTime := time.Since(start)
	b.StopTimer()
	defer func() {
		for _, ws := range conns {
			if ws != nil {
				ws.CloseNow()
			}
		}
	}()
	eventually(b, "all subscribed", func() bool {
		return e.metric(`courier_relay_subscriptions{level="1"}`) == idleConns
	})
	// Replays are short-lived goroutines: wait for them to end.
	eventually(b, "replays done", func() bool { return e.metric("go_goroutines") < 2*idleConns+50 })
	rss1 := vmRSSKiB(b, pid)
	heap1, stack1 := e.metric("go_memstats_heap_inuse_bytes"), e.metric("go_memstats_stack_inuse_bytes")
	b.ReportMetric((rss1-rss0)/idleConns, "rss-KiB/conn")
	b.ReportMetric((heap1-heap0)/1024/idleConns, "heap-KiB/conn")
	b.ReportMetric((stack1-stack0)/1024/idleConns, "stack-KiB/conn")
	b.ReportMetric(float64(idleConns)/openTime.Seconds(), "conns/s")
}

package relay_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
// fast as the relay takes them, to a relay in a child process (durability
// on: synchronous=full), so that the relay's CPU time is measured apart
// from the load clients': cpu-µs/msg is the child's user+system time over
// the run divided by the messages. msgs/s counts messages received by the
// subscriber. In ack-each the subscriber is authenticated and acks every
// message (two durable writes per message: the put and the ack) and every
// PublishResult must be "delivered"; in no-acks it is an anonymous level-1
// subscriber that does not ack (one write per message; results are
// "queued"), with the per-key quota raised out of the way. p50/p99 are
// from the publisher's write to the subscriber's receipt: under a flood
// they measure the queues, not the relay (see BenchmarkSustained).
func BenchmarkThroughput(b *testing.B) {
	b.Run("ack-each", func(b *testing.B) { benchLoad(b, true, 0) })
	b.Run("no-acks", func(b *testing.B) { benchLoad(b, false, 0) })
}

// BenchmarkSustained is BenchmarkThroughput's ack-each load at a steady
// rate (COURIER_BENCH_RATE messages per second, default 15000, the
// target), as a client that publishes evenly does: msgs/s is the rate
// achieved, p50/p99 the publish-to-delivery latency at that rate, and
// every result must be "delivered".
func BenchmarkSustained(b *testing.B) {
	rate := 15000.0
	if v := os.Getenv("COURIER_BENCH_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r <= 0 {
			b.Fatalf("COURIER_BENCH_RATE=%q: want a positive number of messages per second", v)
		}
		rate = r
	}
	b.Run(fmt.Sprintf("ack-each-%.0f", rate), func(b *testing.B) { benchLoad(b, true, rate) })
}

// benchChildEnv makes the test binary the relay child of benchLoad (see
// TestMain); benchNoQuotaEnv raises its per-key quota out of the way;
// benchProfileEnv names a file for the child's CPU profile, written when
// it gets SIGTERM (go tool pprof reads it with the test binary).
const (
	benchChildEnv   = "COURIER_RELAY_BENCH_DB"
	benchNoQuotaEnv = "COURIER_RELAY_BENCH_NOQUOTA"
	benchProfileEnv = "COURIER_RELAY_BENCH_CPUPROFILE"
)

func runBenchChild(path string) error {
	cfg := relay.DefaultConfig()
	cfg.PublicHost = testHost
	cfg.Store.Path = path
	cfg.Store.Synchronous = "full"
	cfg.Limits.PublishRate = 0
	// The subscriber reads as fast as it can and acks from another
	// goroutine: under load it can fall further behind in its acks than
	// the relay remembers messages as sent on the connection, and acks of
	// older ones would meet limits.ack_rate.
	cfg.Limits.AckRate = 0
	if os.Getenv(benchNoQuotaEnv) != "" {
		cfg.Limits.MaxMessagesPerKey = 1 << 40
		cfg.Limits.MaxBytesPerKey = 1 << 50
	}
	if prof := os.Getenv(benchProfileEnv); prof != "" {
		f, err := os.Create(prof)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		go func() {
			<-sig
			pprof.StopCPUProfile()
			f.Close()
			os.Exit(0)
		}()
	}
	return serveChild(cfg, sqlitestore.Options{Synchronous: "full", Quota: cfg.Limits.Quota()})
}

// cpuTicks returns the user+system CPU time of process pid so far, in
// clock ticks (USER_HZ: 100 per second on Linux).
func cpuTicks(b *testing.B, pid int) int64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	return utime + stime
}

const userHZ = 100

// startBenchChild starts a relay child for benchLoad and returns an env
// pointing at it and its process id.
func startBenchChild(b *testing.B, noQuota bool) (*env, int) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "relay.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"="+path)
	if noQuota {
		cmd.Env = append(cmd.Env, benchNoQuotaEnv+"=1")
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// SIGTERM lets a profiling child write its profile.
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("child relay did not start: %v", err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	if !ok {
		b.Fatalf("child said %q", line)
	}
	return &env{t: b, url: "ws://" + addr + "/", http: "http://" + addr}, cmd.Process.Pid
}

// benchLoad runs b.N 1 KiB messages from one level-2 publisher to one
// subscriber through a child relay, as fast as it goes (rate 0) or evenly
// at rate messages per second, and reports msgs/s, the relay's CPU per
// message and the publish-to-delivery latency.
func benchLoad(b *testing.B, acking bool, rate float64) {
	e, pid := startBenchChild(b, !acking)
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
	index := make(map[string]int, b.N)
	ct := make([]byte, 1024)
	for i := range frames {
		copy(ct, fmt.Sprintf("%d load %d %v %v %d", i, b.N, acking, rate, time.Now().UnixNano()))
		index[wire.MessageID(ct)] = i
		frames[i] = wire.ClientFrameBytes(wire.TypePublish, wire.Publish{
			EncryptedMessage: base64.StdEncoding.EncodeToString(ct), Recipient: bob.ID(),
		})
	}
	sent := make([]atomic.Int64, b.N) // unix nanoseconds of each write
	lat := make([]time.Duration, 0, b.N)
	ctx := context.Background()
	b.SetBytes(1024)
	cpu0 := cpuTicks(b, pid)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(2)
	errs := make(chan error, 3)
	var notDelivered atomic.Int64
	go func() { // publisher
		defer wg.Done()
		for i, f := range frames {
			if rate > 0 {
				if d := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); d > 0 {
					time.Sleep(d)
				}
			}
			sent[i].Store(time.Now().UnixNano())
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
				if acking && f.PublishResult.Status != wire.StatusDelivered {
					notDelivered.Add(1)
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
			now := time.Now().UnixNano()
			f, err := wire.ParseServerFrame(raw)
			if err != nil || f.Kind != wire.KindDelivery {
				b.Fatalf("subscriber got %s", raw)
			}
			i, ok := index[f.Delivery.ID]
			if !ok {
				b.Fatalf("subscriber got unknown message %s", f.Delivery.ID)
			}
			lat = append(lat, time.Duration(now-sent[i].Load()))
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
	close(acks)
	<-ackDone
	wg.Wait()
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	// The relay's CPU up to the last result (the acks' commits included).
	cpu := cpuTicks(b, pid) - cpu0
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu)*1e6/userHZ/float64(b.N), "cpu-µs/msg")
	b.ReportMetric(micros(percentile(lat, 0.50)), "p50-µs")
	b.ReportMetric(micros(percentile(lat, 0.99)), "p99-µs")
	if acking {
		b.ReportMetric(float64(notDelivered.Load()), "not-delivered")
	}
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

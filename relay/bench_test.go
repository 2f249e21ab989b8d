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
	if err := profileChild(); err != nil {
		return err
	}
	return serveChild(cfg, sqlitestore.Options{Synchronous: "full", Quota: cfg.Limits.Quota()})
}

// profileChild starts the CPU profile of a bench child that
// benchProfileEnv asks for ("%d" in its value becomes the child's process
// ID, for benchmarks of several children); the profile is written when
// the child gets SIGTERM, and the child exits.
func profileChild() error {
	prof := os.Getenv(benchProfileEnv)
	if prof == "" {
		return nil
	}
	prof = strings.ReplaceAll(prof, "%d", strconv.Itoa(os.Getpid()))
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
	return nil
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
	vars := []string{benchChildEnv + "=" + filepath.Join(b.TempDir(), "relay.db")}
	if noQuota {
		vars = append(vars, benchNoQuotaEnv+"=1")
	}
	return startBenchProcess(b, vars...)
}

// startBenchProcess runs the test binary as the child relay that vars
// ("NAME=value", see TestMain) select, stopped (SIGTERM, so that a
// profiling child writes its profile) when the benchmark ends, and returns
// an env pointing at it and its process id.
func startBenchProcess(b *testing.B, vars ...string) (*env, int) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), vars...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
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

// benchProc is a process whose CPU time a load benchmark reports per
// message, as the metric unit.
type benchProc struct {
	unit string
	pid  int
}

// benchLoad runs b.N 1 KiB messages from one level-2 publisher to one
// subscriber through a child relay, as fast as it goes (rate 0) or evenly
// at rate messages per second, and reports msgs/s, the relay's CPU per
// message and the publish-to-delivery latency.
func benchLoad(b *testing.B, acking bool, rate float64) {
	e, pid := startBenchChild(b, !acking)
	loadRun(b, e, e, []benchProc{{"cpu-µs/msg", pid}}, acking, rate, 0)
}

// loadRun runs b.N 1 KiB messages from one level-2 publisher on pubEnv to
// one subscriber on subEnv (the same relay, or another instance of it), as
// fast as it goes (rate 0) or evenly at rate messages per second, with at
// most window publishes awaiting their result (0: no bound). It reports
// msgs/s, each proc's CPU per message, the publish-to-delivery latency
// and, when the subscriber acks, the publish-to-result latency.
func loadRun(b *testing.B, pubEnv, subEnv *env, procs []benchProc, acking bool, rate float64, window int) {
	bob := newIdentity(b, 1)
	sub := subEnv.dial()
	if acking {
		sub.auth2(bob, 0)
	} else {
		sub.subscribe1("bench", bob.Key())
	}
	pub := pubEnv.dial()
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
	resLat := make([]time.Duration, 0, b.N) // publish to result
	var slots chan struct{}
	if window > 0 {
		slots = make(chan struct{}, window)
	}
	ctx := context.Background()
	b.SetBytes(1024)
	cpu0 := make([]int64, len(procs))
	for i, p := range procs {
		cpu0[i] = cpuTicks(b, p.pid)
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(2)
	errs := make(chan error, 3)
	stop := make(chan struct{})
	defer close(stop)
	var notDelivered atomic.Int64
	go func() { // publisher
		defer wg.Done()
		for i, f := range frames {
			if rate > 0 {
				if d := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); d > 0 {
					time.Sleep(d)
				}
			}
			if slots != nil {
				select {
				case slots <- struct{}{}:
				case <-stop:
					return
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
				now := time.Now().UnixNano()
				f, err := wire.ParseServerFrame(raw)
				if err != nil || f.Kind != wire.KindPublishResult || f.PublishResult.Status == wire.StatusRejected {
					errs <- fmt.Errorf("publisher got %s", raw)
					return
				}
				if slots != nil {
					<-slots
				}
				if acking && f.PublishResult.Status != wire.StatusDelivered {
					notDelivered.Add(1)
				}
				if i, ok := index[f.PublishResult.ID]; ok {
					resLat = append(resLat, time.Duration(now-sent[i].Load()))
				}
			case <-time.After(waitTimeout):
				errs <- fmt.Errorf("publisher: no result within %v", waitTimeout)
				return
			case <-stop:
				return
			}
		}
	}()
	// The subscriber receives; acks are written by another goroutine so
	// that reading never waits for writing.
	acks := make(chan string, b.N)
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
	slices.Sort(lat)
	slices.Sort(resLat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	// The processes' CPU up to the last result (the acks' commits included).
	for i, p := range procs {
		b.ReportMetric(float64(cpuTicks(b, p.pid)-cpu0[i])*1e6/userHZ/float64(b.N), p.unit)
	}
	b.ReportMetric(micros(percentile(lat, 0.50)), "p50-µs")
	b.ReportMetric(micros(percentile(lat, 0.99)), "p99-µs")
	if acking {
		b.ReportMetric(float64(notDelivered.Load()), "not-delivered")
		b.ReportMetric(micros(percentile(resLat, 0.50)), "result-p50-µs")
		b.ReportMetric(micros(percentile(resLat, 0.99)), "result-p99-µs")
	}
	var commits, batched, busy float64
	for _, e := range []*env{pubEnv, subEnv} {
		commits += e.metric("courier_relay_store_commit_seconds_count")
		batched += e.metric("courier_relay_store_commit_batch_sum")
		busy += e.metric("courier_relay_store_commit_seconds_sum")
		if subEnv == pubEnv {
			break
		}
	}
	if commits > 0 {
		b.ReportMetric(batched/commits, "writes/commit")
		b.ReportMetric(busy/elapsed.Seconds(), "store-busy")
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
	checkNoFile(b, idleConns)
	e, pid := startBenchProcess(b, idleChildEnv+"="+filepath.Join(b.TempDir(), "relay.db"))
	idleRun(b, []*env{e}, []int{pid}, idleConns)
}

// checkNoFile skips the benchmark unless this process (and so its
// children) may open n connections.
func checkNoFile(b *testing.B, n int) {
	// Go raises the soft limit to the hard one at start; the child too.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < uint64(n)+1000 {
		b.Skipf("RLIMIT_NOFILE is %d: %d connections need more (raise the hard limit: ulimit -Hn)", lim.Cur, n)
	}
}

// idleRun opens n level-1 connections, each subscribed to a key of its
// own, spread evenly over the relay instances es (child processes pids),
// and reports per instance the resident memory, Go heap, goroutine stacks
// and goroutines per connection it holds (with several instances, each
// unit is prefixed "i<instance>-"), and the connections opened per second.
func idleRun(b *testing.B, es []*env, pids []int, n int) {
	type base struct{ rss, heap, stack, gor float64 }
	before := make([]base, len(es))
	for i, e := range es {
		// Warm up (one connection), then take the baseline.
		warm := e.dialSilent()
		warm.Close(websocket.StatusNormalClosure, "")
		eventually(b, "warm-up connection gone", func() bool { return e.metric("courier_relay_connections") == 0 })
		before[i] = base{vmRSSKiB(b, pids[i]), e.metric("go_memstats_heap_inuse_bytes"), e.metric("go_memstats_stack_inuse_bytes"), e.metric("go_goroutines")}
	}

	conns := make([]*websocket.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				ws, _, err := websocket.Dial(ctx, es[i%len(es)].url, nil)
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
	defer func() {
		for _, ws := range conns {
			if ws != nil {
				ws.CloseNow()
			}
		}
	}()
	b.ResetTimer()
	start := time.Now()
	for i := range n {
		select {
		case next <- i:
		case err := <-errs:
			close(next)
			wg.Wait()
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
	for i, e := range es {
		held := float64(n / len(es))
		if i < n%len(es) {
			held++
		}
		eventually(b, "all subscribed", func() bool {
			return e.metric(`courier_relay_subscriptions{level="1"}`) == held
		})
		// Replays are short-lived goroutines: wait for them to end.
		eventually(b, "replays done", func() bool { return e.metric("go_goroutines") < before[i].gor+2*held+50 })
		prefix := ""
		if len(es) > 1 {
			prefix = fmt.Sprintf("i%d-", i+1)
		}
		b.ReportMetric((vmRSSKiB(b, pids[i])-before[i].rss)/held, prefix+"rss-KiB/conn")
		b.ReportMetric((e.metric("go_memstats_heap_inuse_bytes")-before[i].heap)/1024/held, prefix+"heap-KiB/conn")
		b.ReportMetric((e.metric("go_memstats_stack_inuse_bytes")-before[i].stack)/1024/held, prefix+"stack-KiB/conn")
		b.ReportMetric((e.metric("go_goroutines")-before[i].gor)/held, prefix+"goroutines/conn")
	}
	b.ReportMetric(float64(n)/openTime.Seconds(), "conns/s")
}

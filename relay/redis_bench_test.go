package relay_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"courier/relay"
	"courier/relay/redisstore"
	"courier/relay/redisstore/redistest"
	"courier/wire"
)

// The multi-instance benchmarks (issue 9): relay instances as child
// processes (their CPU measured apart from the load clients') on one
// redis-server the benchmark starts (appendonly yes, appendfsync always;
// see redistest), whose CPU is measured too.

// redisBenchChildEnv makes the test binary a relay instance on the Redis
// at its value (a redis URL; see TestMain), in namespace "bench", without
// the limits that a benchmark's load from one address would meet.
const redisBenchChildEnv = "COURIER_RELAY_BENCH_REDIS"

func runRedisBenchChild(url string) error {
	cfg := relay.DefaultConfig()
	cfg.PublicHost = testHost
	cfg.Store = relay.StoreConfig{Driver: "redis", URL: url, Namespace: "bench"}
	cfg.Limits.PublishRate = 0
	cfg.Limits.AckRate = 0 // see runBenchChild
	cfg.Limits.MaxConnections = 0
	cfg.Limits.MaxConnectionsPerIP = 0 // every connection comes from 127.0.0.1
	cfg.Limits.SubscribeRate = 0
	if err := profileChild(); err != nil {
		return err
	}
	return serveChildOn(cfg, func(onCommit func(int, time.Duration)) (relay.Store, error) {
		rdb, err := redisstore.NewClient(cfg.Store)
		if err != nil {
			return nil, err
		}
		return redisstore.Open(context.Background(), rdb, redisstore.Options{
			Quota: cfg.Limits.Quota(), Namespace: cfg.Store.Namespace,
			OnCommit: onCommit, Logger: slog.New(slog.DiscardHandler),
		})
	})
}

// redisInstances starts a redis-server and n relay instances on it as
// child processes; procs are the instances' and the server's processes,
// for CPU per message: "relay<i>-cpu-µs/msg" and "redis-cpu-µs/msg".
func redisInstances(b *testing.B, n int) ([]*env, []benchProc, *redistest.Server) {
	b.Helper()
	fsync := "always"
	if v := os.Getenv(redisFsyncEnv); v != "" {
		fsync = v // a diagnosis: what appendfsync always costs
	}
	rs := redistest.Start(b, redistest.Options{Fsync: fsync})
	if os.Getenv(redisInfoEnv) != "" {
		c := rs.Client()
		err := c.ConfigSet(context.Background(), "latency-monitor-threshold", "1").Err()
		c.Close()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { logRedisInfo(b, rs) })
	}
	var es []*env
	var procs []benchProc
	for i := range n {
		e, pid := startBenchProcess(b, redisBenchChildEnv+"="+rs.URL())
		es = append(es, e)
		procs = append(procs, benchProc{"relay" + strconv.Itoa(i+1) + "-cpu-µs/msg", pid})
	}
	return es, append(procs, benchProc{"redis-cpu-µs/msg", rs.Pid()}), rs
}

// redisInfoEnv, when set, makes the Redis benchmarks log the server's
// command statistics and slow log at the end (go test -v): what Redis
// spent its time on.
const redisInfoEnv = "COURIER_BENCH_REDIS_INFO"

// redisFsyncEnv, when set, is the benchmarks' appendfsync instead of
// "always" ("everysec", "no"): to see what the fsyncs cost.
const redisFsyncEnv = "COURIER_BENCH_REDIS_FSYNC"

func logRedisInfo(b *testing.B, rs *redistest.Server) {
	c := rs.Client()
	defer c.Close()
	ctx := context.Background()
	info, err := c.Info(ctx, "commandstats", "persistence", "stats").Result()
	if err != nil {
		b.Logf("INFO: %v", err)
		return
	}
	b.Logf("redis INFO:\n%s", info)
	lat, err := c.Do(ctx, "LATENCY", "LATEST").Result()
	b.Logf("LATENCY LATEST (event, last, last ms, max ms): %v %v", lat, err)
	slow, err := c.SlowLogGet(ctx, 10).Result()
	if err != nil {
		b.Logf("SLOWLOG: %v", err)
		return
	}
	for _, e := range slow {
		args := fmt.Sprint(e.Args)
		if len(args) > 200 {
			args = args[:200] + "…"
		}
		b.Logf("slowlog: %v %s", e.Duration, args)
	}
}

// redisCommands returns the commands the server has processed so far.
func redisCommands(b *testing.B, rs *redistest.Server) float64 {
	c := rs.Client()
	defer c.Close()
	info, err := c.Info(context.Background(), "stats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_commands_processed:"); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no total_commands_processed in INFO stats")
	return 0
}

// crossRate is the steady rate of BenchmarkCrossInstance/rate: the
// target, or COURIER_BENCH_CROSS_RATE messages per second.
func crossRate(b *testing.B) float64 {
	v := os.Getenv("COURIER_BENCH_CROSS_RATE")
	if v == "" {
		return 10000
	}
	r, err := strconv.ParseFloat(v, 64)
	if err != nil || r <= 0 {
		b.Fatalf("COURIER_BENCH_CROSS_RATE=%q: want a positive number of messages per second", v)
	}
	return r
}

// BenchmarkCrossInstance: two relay instances on one Redis (appendfsync
// always), a level-2 publisher on instance 1, its recipient on instance 2
// acking every message, 1 KiB ciphertexts; every result must be
// "delivered" (not-delivered counts those that were not). window-256
// publishes as fast as results come back with at most 256 awaiting theirs
// (the most the relay sustains); rate-10000 publishes evenly at the
// target rate (COURIER_BENCH_CROSS_RATE sets another). msgs/s is the rate achieved; p50/p99 are publish to
// delivery, result-p50/p99 publish to the "delivered" result; CPU per
// message of each instance and of redis-server.
func BenchmarkCrossInstance(b *testing.B) {
	b.Run("window-256", func(b *testing.B) {
		es, procs, rs := redisInstances(b, 2)
		c0 := redisCommands(b, rs)
		loadRun(b, es[0], es[1], procs, true, 0, 256)
		b.ReportMetric((redisCommands(b, rs)-c0)/float64(b.N), "redis-cmds/msg")
	})
	rate := crossRate(b)
	b.Run(fmt.Sprintf("rate-%.0f", rate), func(b *testing.B) {
		es, procs, rs := redisInstances(b, 2)
		c0 := redisCommands(b, rs)
		loadRun(b, es[0], es[1], procs, true, rate, 0)
		b.ReportMetric((redisCommands(b, rs)-c0)/float64(b.N), "redis-cmds/msg")
	})
}

// BenchmarkCrossInstancePush is the cost of one push across instances:
// one message at a time (publish, delivery, ack, "delivered" result) from
// a publisher on instance 1 to a recipient on instance 1 (same) or on
// instance 2 (cross), on one Redis. p50/p99 are publish to delivery,
// result-p50/p99 publish to the result; CPU per message of each instance
// and of redis-server.
func BenchmarkCrossInstancePush(b *testing.B) {
	for _, mode := range []string{"same", "cross"} {
		b.Run(mode, func(b *testing.B) {
			es, procs, rs := redisInstances(b, 2)
			subEnv := es[0]
			if mode == "cross" {
				subEnv = es[1]
			}
			bob := newIdentity(b, 1)
			sub := subEnv.dial()
			sub.auth2(bob, 0)
			pub := es[0].dial()
			pub.auth2(newIdentity(b, 2), 0)
			ct := make([]byte, 1024)
			lat := make([]time.Duration, 0, b.N)
			full := make([]time.Duration, 0, b.N)
			c0 := redisCommands(b, rs)
			cpu0 := make([]int64, len(procs))
			for i, p := range procs {
				cpu0[i] = cpuTicks(b, p.pid)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				copy(ct, fmt.Sprintf("%d push %s %d", i, mode, time.Now().UnixNano()))
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
			b.ReportMetric((redisCommands(b, rs)-c0)/float64(b.N), "redis-cmds/msg")
			for i, p := range procs {
				b.ReportMetric(float64(cpuTicks(b, p.pid)-cpu0[i])*1e6/userHZ/float64(b.N), p.unit)
			}
			slices.Sort(lat)
			slices.Sort(full)
			b.ReportMetric(micros(percentile(lat, 0.50)), "p50-µs")
			b.ReportMetric(micros(percentile(lat, 0.99)), "p99-µs")
			b.ReportMetric(micros(percentile(full, 0.50)), "result-p50-µs")
			b.ReportMetric(micros(percentile(full, 0.99)), "result-p99-µs")
		})
	}
}

// BenchmarkCrossInstanceIdle: 10,000 idle level-1 subscribers (a key
// each) spread over two instances on one Redis: per instance, resident
// memory, heap, stacks and goroutines per connection at rest. b.N is
// ignored: one measurement is one run.
func BenchmarkCrossInstanceIdle(b *testing.B) {
	const idleConns = 10000
	checkNoFile(b, idleConns)
	es, procs, _ := redisInstances(b, 2)
	idleRun(b, es, []int{procs[0].pid, procs[1].pid}, idleConns)
}

package bench

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"courier/internal/cluster"
)

// Flags that size the experiments; pass them after -args.
var (
	flagSamples = flag.Int("e2e.samples", 2000, "messages timed by BenchmarkEndToEndLatency, after the warm-up")
	flagWarmup  = flag.Int("e2e.warmup", 200, "messages sent one by one before BenchmarkEndToEndLatency starts timing")
	flagWindow  = flag.Duration("e2e.window", 10*time.Second, "how long BenchmarkEndToEndThroughput posts")
	flagPosters = flag.Int("e2e.posters", 32, "concurrent posters (node A connections) in BenchmarkEndToEndThroughput")
	// Only for finding out what durability costs: quote numbers for "full".
	flagSynchronous = flag.String("e2e.synchronous", "full", "SQLite synchronous mode of the relay and both sidecars: full or normal (an experiment)")
)

// drainTimeout bounds the wait, after the throughput window, for every
// accepted message to reach node B.
const drainTimeout = 3 * time.Minute

// bins are built once, without the race detector, when a benchmark of this
// package is selected.
var bins cluster.Binaries

// benchmarkNames are this package's benchmarks: TestMain builds the
// binaries only when -bench selects one of them.
var benchmarkNames = []string{"BenchmarkEndToEndLatency", "BenchmarkEndToEndThroughput"}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if !benchmarksSelected() {
		return m.Run() // `go test ./...`: nothing to build, nothing to run
	}
	root, err := cluster.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "courier-bench-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	bins, err = cluster.Build(ctx, root, dir, false)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return m.Run()
}

// benchmarksSelected reports whether -test.bench selects one of
// benchmarkNames (matching its first, top-level element, as the testing
// package does). An invalid pattern counts as selected: the testing
// package then reports it.
func benchmarksSelected() bool {
	f := flag.Lookup("test.bench")
	if f == nil || f.Value.String() == "" {
		return false
	}
	top, _, _ := strings.Cut(f.Value.String(), "/")
	re, err := regexp.Compile(top)
	if err != nil {
		return true
	}
	for _, name := range benchmarkNames {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}

// BenchmarkEndToEndLatency sends one message at a time from node A to node
// B and times each from node A's POST until node B's inbound endpoint has
// it. One experiment of -e2e.samples messages whatever b.N: run it with
// -benchtime 1x.
func BenchmarkEndToEndLatency(b *testing.B) {
	s := newSystem(b, 10*time.Minute)
	client := newClient(b, 1)
	rng := newRand()
	type sample struct{ total, post, relay, sideB time.Duration }
	one := func() sample {
		id, body := message(rng, s.nodeB.peerID)
		arrived := s.nodeB.expect(id)
		start := time.Now()
		if err := post(s.ctx, client, s.sideA.URL(), id, body); err != nil {
			b.Fatal(err)
		}
		posted := time.Now()
		t := time.NewTimer(10 * time.Second)
		defer t.Stop()
		select {
		case a := <-arrived:
			// received is sidecar B's wall clock: same machine, same clock.
			return sample{total: a.at.Sub(start), post: posted.Sub(start), relay: a.received.Sub(posted), sideB: a.at.Sub(a.received)}
		case <-t.C:
			m, err := s.sideA.Message(s.ctx, id)
			b.Fatalf("message %s did not reach node B within 10s; sidecar A says %+v (%v)", id, m, err)
		case <-s.ctx.Done():
			b.Fatal(s.ctx.Err())
		}
		panic("unreachable")
	}
	for range *flagWarmup {
		one()
	}
	n := *flagSamples
	total := make([]time.Duration, 0, n)
	posts := make([]time.Duration, 0, n)
	relays := make([]time.Duration, 0, n)
	sideBs := make([]time.Duration, 0, n)
	b.ResetTimer()
	for range n {
		x := one()
		total = append(total, x.total)
		posts = append(posts, x.post)
		relays = append(relays, x.relay)
		sideBs = append(sideBs, x.sideB)
	}
	b.StopTimer()
	p50, p99, pmax := quantiles(total)
	post50, post99, _ := quantiles(posts)
	relay50, relay99, _ := quantiles(relays)
	sideB50, sideB99, _ := quantiles(sideBs)
	s.checkClean(b)
	b.Logf("latency over %d sequential messages of %d bytes: p50 %.2fms p99 %.2fms max %.2fms; legs p50/p99: post %.2f/%.2fms, relay %.2f/%.2fms, sidecarB %.2f/%.2fms; load before %s, after %s",
		n, messageBytes, ms(p50), ms(p99), ms(pmax), ms(post50), ms(post99), ms(relay50), ms(relay99), ms(sideB50), ms(sideB99), s.loadBefore, loadavg())
	b.Log("program metrics:\n" + s.programMetrics())
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(p50), "p50_ms")
	b.ReportMetric(ms(p99), "p99_ms")
	b.ReportMetric(ms(pmax), "max_ms")
	b.ReportMetric(ms(post50), "post_p50_ms")
	b.ReportMetric(ms(relay50), "relay_p50_ms")
	b.ReportMetric(ms(sideB50), "sidecarB_p50_ms")
	b.ReportMetric(load1(s.loadBefore), "load1_before")
	s.reportRSS(b)
}

// sent is one message node A posted and the sidecar accepted.
type sent struct {
	id    string
	start time.Time     // when node A began the POST
	post  time.Duration // until sidecar A answered 202
}

// postUntil posts new messages from posters concurrent connections until
// end, each poster finishing the POST it has begun. It returns the
// accepted messages; a failed POST stops its poster and is returned.
func postUntil(ctx context.Context, client *http.Client, sidecarURL, recipient string, posters int, end time.Time) ([]sent, error) {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		all      []sent
		firstErr error
		failed   int
	)
	for range posters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := newRand()
			var mine []sent
			defer func() {
				mu.Lock()
				all = append(all, mine...)
				mu.Unlock()
			}()
			for ctx.Err() == nil {
				start := time.Now()
				if !start.Before(end) {
					return
				}
				id, body := message(rng, recipient)
				if err := post(ctx, client, sidecarURL, id, body); err != nil {
					mu.Lock()
					failed++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				mine = append(mine, sent{id: id, start: start, post: time.Since(start)})
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return all, fmt.Errorf("%d posters stopped on a failed POST; the first: %w", failed, firstErr)
	}
	return all, ctx.Err()
}

// waitArrived waits until node B has want distinct messages or the
// deadline passes.
func waitArrived(ctx context.Context, n *node, want int64, deadline time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	return cluster.WaitFor(ctx, "arrivals", func(context.Context) (bool, error) {
		return n.unique.Load() >= want, nil
	}) == nil
}

// BenchmarkEndToEndThroughput posts from -e2e.posters concurrent
// connections for -e2e.window, then waits until every accepted message
// reached node B, exactly once. One experiment whatever b.N: run it with
// -benchtime 1x.
func BenchmarkEndToEndThroughput(b *testing.B) {
	window := *flagWindow
	s := newSystem(b, window+10*time.Minute)
	client := newClient(b, *flagPosters)
	recipient, sideA := s.nodeB.peerID, s.sideA.URL()

	// Warm-up: connections, caches, SQLite pages; then an empty pipeline.
	warm, err := postUntil(s.ctx, client, sideA, recipient, *flagPosters, time.Now().Add(2*time.Second))
	if err != nil {
		b.Fatalf("warm-up: %v", err)
	}
	if !waitArrived(s.ctx, s.nodeB, int64(len(warm)), drainTimeout) {
		b.Fatalf("warm-up: %d of %d messages reached node B within %s", s.nodeB.unique.Load(), len(warm), drainTimeout)
	}

	cpu0, err := s.cpuSeconds(s.ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	end := start.Add(window)
	accepted, err := postUntil(s.ctx, client, sideA, recipient, *flagPosters, end)
	postersDone := time.Now()
	cpu1, cpuErr := s.cpuSeconds(s.ctx)
	if err != nil {
		b.Fatalf("posting: %v (%d accepted before)", err, len(accepted))
	}
	if cpuErr != nil {
		b.Fatal(cpuErr)
	}
	want := int64(len(warm) + len(accepted))
	drained := waitArrived(s.ctx, s.nodeB, want, drainTimeout)
	b.StopTimer()

	ids := make([]string, len(accepted))
	for i, m := range accepted {
		ids[i] = m.id
	}
	found, missing := s.nodeB.lookup(ids)
	if len(missing) > 0 {
		m, err := s.sideA.Message(s.ctx, missing[0])
		b.Log(s.programMetrics())
		b.Fatalf("LOST: %d of %d accepted messages did not reach node B within %s of the window's end; the first, %s: sidecar A says %+v (%v)",
			len(missing), len(accepted), drainTimeout, missing[0], m, err)
	}
	if !drained {
		b.Fatalf("node B has %d distinct messages, want %d: every accepted one arrived, so some warm-up one did not", s.nodeB.unique.Load(), want)
	}
	s.checkClean(b)

	inWindow := 0
	var last time.Time
	lat := make([]time.Duration, len(found))
	posts := make([]time.Duration, len(found))
	perSecond := make([]int, int(window/time.Second)+1)
	for i, a := range found {
		lat[i] = a.at.Sub(accepted[i].start)
		posts[i] = accepted[i].post
		if a.at.After(last) {
			last = a.at
		}
		if !a.at.After(end) {
			inWindow++
			perSecond[int(a.at.Sub(start)/time.Second)]++
		}
	}
	perSecond = perSecond[:int(window/time.Second)] // whole seconds only
	minSec, maxSec := inWindow, 0
	for _, n := range perSecond {
		minSec, maxSec = min(minSec, n), max(maxSec, n)
	}
	p50, p99, pmax := quantiles(lat)
	post50, post99, _ := quantiles(posts)
	rate := float64(inWindow) / window.Seconds()
	drain := max(0, last.Sub(end))
	elapsed := postersDone.Sub(start).Seconds()

	var cpuLine strings.Builder
	totalCPU := 0.0
	for _, name := range []string{"sidecarA", "sidecarB", "relay", "bench"} {
		cores := (cpu1[name] - cpu0[name]) / elapsed
		totalCPU += cores
		fmt.Fprintf(&cpuLine, "%s %.2f, ", name, cores)
		b.ReportMetric(cores, name+"_cores")
		if name == "sidecarA" || name == "sidecarB" {
			// The target is per sidecar: <= 150 µs of CPU per message.
			usPerMsg := 1e6 * (cpu1[name] - cpu0[name]) / float64(len(accepted))
			fmt.Fprintf(&cpuLine, "(%.0fµs/msg), ", usPerMsg)
			b.ReportMetric(usPerMsg, name+"_us/msg")
		}
	}
	// CPU per message: every process's CPU while posting, over the
	// messages accepted meanwhile (the pipeline is near steady state).
	cpuPerMsg := 1000 * totalCPU * elapsed / float64(len(accepted))
	b.Logf("throughput: %d posters, %s window: %d accepted (%.0f/s), %d reached node B within the window (%.0f/s; per second min %d max %d), all %d within %.2fs after it; latency under load p50 %.1fms p99 %.1fms max %.1fms (of which node A's POST p50 %.1fms p99 %.1fms); CPU in cores: %stotal %.2f of %d, %.2fms per message; load before %s, after %s",
		*flagPosters, window, len(accepted), float64(len(accepted))/window.Seconds(), inWindow, rate, minSec, maxSec,
		len(accepted), drain.Seconds(), ms(p50), ms(p99), ms(pmax), ms(post50), ms(post99), cpuLine.String(), totalCPU, runtime.NumCPU(), cpuPerMsg, s.loadBefore, loadavg())
	b.Log("program metrics:\n" + s.programMetrics())
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rate, "msg/s")
	b.ReportMetric(float64(len(accepted))/window.Seconds(), "accepted_msg/s")
	b.ReportMetric(ms(p50), "loaded_p50_ms")
	b.ReportMetric(ms(p99), "loaded_p99_ms")
	b.ReportMetric(ms(post50), "loaded_post_p50_ms")
	b.ReportMetric(drain.Seconds(), "drain_s")
	b.ReportMetric(cpuPerMsg, "cpu_ms/msg")
	b.ReportMetric(0, "lost")
	b.ReportMetric(0, "dup")
	b.ReportMetric(load1(s.loadBefore), "load1_before")
	s.reportRSS(b)
}

package bench

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"courier/internal/cluster"
	"courier/wire"
)

// messageBytes is the size of every benchmark message's ciphertext.
const messageBytes = 1024

// relayExtra is appended to the relay's TOML right after the line
// `[store] path = …`, so its first line lands in [store]: durability is
// set explicitly, to -e2e.synchronous ("full", the default of both
// programs, unless an experiment asks otherwise). The limits let one connection
// publish as fast as the benchmark can, and hold as much as it can.
const relayExtra = `synchronous = %q

[limits]
publish_rate = 1000000
publish_burst = 1000000
max_messages_per_key = 100000000
max_bytes_per_key = 1099511627776
`

// sidecarExtra is appended to each sidecar's TOML right after
// `[store] path = …`, so it lands in [store]. Everything else is the
// default configuration.
const sidecarExtra = `synchronous = %q
`

// system is a relay, two sidecars and their two in-process nodes.
type system struct {
	ctx          context.Context
	relay        *cluster.Relay
	sideA, sideB *cluster.Sidecar
	nodeA, nodeB *node
	loadBefore   string // /proc/loadavg before anything started
}

// newSystem starts a fresh system for one benchmark; b's cleanup stops it.
func newSystem(b *testing.B, timeout time.Duration) *system {
	b.Helper()
	if bins.Relay == "" {
		b.Fatal("the binaries were not built: TestMain builds them only when -bench selects a benchmark of this package (see benchmarkNames)")
	}
	s := &system{loadBefore: loadavg()}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	b.Cleanup(cancel)
	s.ctx = ctx
	// Cleanups run last-registered first: the cluster stops before the
	// nodes its sidecars call.
	s.nodeA = newNode(b, "nodeA")
	s.nodeB = newNode(b, "nodeB")
	c := cluster.New(b.TempDir(), bins)
	var started []*cluster.Proc
	b.Cleanup(func() {
		if err := c.Close(); err != nil {
			b.Errorf("stopping the cluster: %v", err)
		}
		if b.Failed() {
			for _, p := range started {
				b.Logf("---- %s (last lines of %s)\n%s", p.Name, p.Log, p.Tail(40))
			}
		}
	})
	var err error
	if *flagSynchronous != "full" {
		b.Logf("EXPERIMENT: synchronous=%s in the relay and both sidecars; the targets are for synchronous=full", *flagSynchronous)
	}
	if s.relay, err = c.StartRelay(ctx, "relay", fmt.Sprintf(relayExtra, *flagSynchronous)); err != nil {
		b.Fatal(err)
	}
	started = append(started, s.relay.Proc)
	for _, x := range []struct {
		name string
		n    *node
		out  **cluster.Sidecar
	}{{"sidecarA", s.nodeA, &s.sideA}, {"sidecarB", s.nodeB, &s.sideB}} {
		sc, err := c.StartSidecar(ctx, x.name, cluster.SidecarConfig{RelayURL: s.relay.URL(), NodeURL: x.n.URL(), Extra: fmt.Sprintf(sidecarExtra, *flagSynchronous)})
		if err != nil {
			b.Fatal(err)
		}
		started = append(started, sc.Proc)
		*x.out = sc
	}
	for _, sc := range []*cluster.Sidecar{s.sideA, s.sideB} {
		err := cluster.WaitFor(ctx, sc.Name+" connected to the relay", func(ctx context.Context) (bool, error) {
			st, err := sc.RelayState(ctx)
			return st == "connected", err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// newClient is node A's HTTP client: keep-alive, one idle connection kept
// per concurrent poster.
func newClient(b *testing.B, conns int) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 2 * conns
	t.MaxIdleConnsPerHost = 2 * conns
	t.DisableCompression = true
	b.Cleanup(t.CloseIdleConnections)
	return &http.Client{Transport: t, Timeout: 30 * time.Second}
}

// newRand returns a fast random source seeded from crypto/rand, for
// ciphertexts: one per goroutine.
func newRand() *rand.ChaCha8 {
	var seed [32]byte
	_, _ = crand.Read(seed[:])
	return rand.NewChaCha8(seed)
}

// message is a random ciphertext as node A would seal it (the relay and
// the sidecars treat it as opaque), its ID and the POST body carrying it.
func message(rng *rand.ChaCha8, recipient string) (id string, body []byte) {
	ct := make([]byte, messageBytes)
	_, _ = rng.Read(ct)
	body = make([]byte, 0, 64+len(recipient)+base64.StdEncoding.EncodedLen(len(ct)))
	body = append(body, `{"recipient":"`...)
	body = append(body, recipient...)
	body = append(body, `","ciphertext":"`...)
	body = base64.StdEncoding.AppendEncode(body, ct)
	body = append(body, `"}`...)
	return wire.MessageID(ct), body
}

// post is node A's POST /v1/messages. It wants 202 (a new message, durably
// queued) with the message's ID.
func post(ctx context.Context, c *http.Client, sidecarURL, id string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, sidecarURL+"/v1/messages", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST /v1/messages: %s: %s", resp.Status, bytes.TrimSpace(out))
	}
	var ans struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	if err := json.Unmarshal(out, &ans); err != nil {
		return fmt.Errorf("POST /v1/messages: decode answer: %w", err)
	}
	if ans.ID != id {
		return fmt.Errorf("POST /v1/messages: answered id %q, want %q", ans.ID, id)
	}
	return nil
}

// percentile returns the p-quantile (0..1) of sorted, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// quantiles sorts ds in place and returns its p50, p99 and max.
func quantiles(ds []time.Duration) (p50, p99, maxd time.Duration) {
	slices.Sort(ds)
	if len(ds) == 0 {
		return 0, 0, 0
	}
	return percentile(ds, 0.50), percentile(ds, 0.99), ds[len(ds)-1]
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// load1 is the 1-minute load average in a loadavg string.
func load1(s string) float64 {
	f, _ := strconv.ParseFloat(strings.Fields(s + " ?")[0], 64)
	return f
}

// reportRSS reports each process's peak RSS in MiB as <name>_peak_MiB.
func (s *system) reportRSS(b *testing.B) {
	b.Helper()
	for _, p := range []*cluster.Proc{s.sideA.Proc, s.sideB.Proc, s.relay.Proc} {
		rss, err := p.PeakRSS()
		if err != nil {
			b.Fatalf("peak RSS of %s: %v", p.Name, err)
		}
		b.ReportMetric(float64(rss)/(1<<20), p.Name+"_peak_MiB")
	}
}

// checkClean fails b if any message went OFFLINE, arrived twice or arrived
// altered.
func (s *system) checkClean(b *testing.B) {
	b.Helper()
	dups, corrupt := s.nodeB.counts()
	offA, offB := s.nodeA.offline.Load(), s.nodeB.offline.Load()
	b.ReportMetric(float64(offA+offB), "offline")
	if dups != 0 || corrupt != 0 || offA != 0 || offB != 0 {
		b.Fatalf("node B saw %d duplicate and %d corrupt posts; OFFLINE hand-offs: node A %d, node B %d (all must be 0)", dups, corrupt, offA, offB)
	}
}

// cpuSeconds returns the CPU time (user+system) each process has used so
// far: the three programs from their process_cpu_seconds_total, the
// benchmark process (both nodes and the posters) from getrusage.
func (s *system) cpuSeconds(ctx context.Context) (map[string]float64, error) {
	out := make(map[string]float64, 4)
	for _, x := range []struct{ name, url string }{
		{"sidecarA", s.sideA.URL()}, {"sidecarB", s.sideB.URL()}, {"relay", s.relay.HTTPURL()},
	} {
		m, err := scrape(ctx, x.url+"/metrics")
		if err != nil {
			return nil, err
		}
		out[x.name] = m["process_cpu_seconds_total"]
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return nil, err
	}
	out["bench"] = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	return out, nil
}

// programMetrics says, in a few lines, what the programs' own metrics
// tell about where the time went: sidecar A's
// courier_delivery_latency_seconds (accepted → the relay's "delivered"),
// the relay's group commits, and every non-zero counter of results,
// fallbacks, disconnects and rejections.
func (s *system) programMetrics() string {
	pages := map[string]map[string]float64{}
	var sb strings.Builder
	for _, x := range []struct{ name, url string }{
		{"sidecarA", s.sideA.URL()}, {"sidecarB", s.sideB.URL()}, {"relay", s.relay.HTTPURL()},
	} {
		m, err := scrape(s.ctx, x.url+"/metrics")
		if err != nil {
			fmt.Fprintf(&sb, "scrape %s: %v\n", x.name, err)
			continue
		}
		pages[x.name] = m
	}
	if m := pages["sidecarA"]; m != nil {
		h := histogram(m, "courier_delivery_latency_seconds", `path="INDIRECT"`)
		fmt.Fprintf(&sb, "sidecarA courier_delivery_latency_seconds{INDIRECT} (accepted → relay says delivered): n=%.0f mean=%.2fms p50≈%.2fms p99≈%.2fms\n",
			h.count, 1000*h.mean(), 1000*h.quantile(0.5), 1000*h.quantile(0.99))
	}
	if m := pages["relay"]; m != nil {
		c := histogram(m, "courier_relay_store_commit_seconds", "")
		n := histogram(m, "courier_relay_store_commit_batch", "")
		fmt.Fprintf(&sb, "relay group commits: n=%.0f mean=%.2fms p50≈%.2fms p99≈%.2fms, writes per commit mean=%.1f p99≈%.0f\n",
			c.count, 1000*c.mean(), 1000*c.quantile(0.5), 1000*c.quantile(0.99), n.mean(), n.quantile(0.99))
	}
	for _, name := range []string{"sidecarA", "sidecarB", "relay"} {
		m := pages[name]
		var keys []string
		for k, v := range m {
			if v == 0 {
				continue
			}
			for _, p := range []string{"courier_fallbacks_total", "courier_publish_results_total", "courier_messages_failed_total",
				"courier_relay_disconnects_total", "courier_relay_rejected_frames_total", "courier_relay_publish_results_total",
				"courier_relay_messages_republished_total", "courier_inbound_received_total", "courier_inbound_pushed_total"} {
				if strings.HasPrefix(k, p) {
					keys = append(keys, fmt.Sprintf("%s=%g", k, v))
				}
			}
		}
		slices.Sort(keys)
		fmt.Fprintf(&sb, "%s counters: %s\n", name, strings.Join(keys, " "))
	}
	return strings.TrimSuffix(sb.String(), "\n")
}

// scrape reads a Prometheus text page into "name{labels}" → value.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// hist is one Prometheus histogram: cumulative buckets by upper bound.
type hist struct {
	les    []float64
	counts []float64
	count  float64
	sum    float64
}

// histogram picks the histogram name out of a scraped page; labels, when
// set, is one label="value" its series must carry.
func histogram(m map[string]float64, name, labels string) hist {
	var h hist
	type bucket struct{ le, n float64 }
	var bs []bucket
	for k, v := range m {
		if labels != "" && !strings.Contains(k, labels) {
			continue
		}
		switch {
		case strings.HasPrefix(k, name+"_bucket{"):
			_, rest, ok := strings.Cut(k, `le="`)
			if !ok {
				continue
			}
			le, _, _ := strings.Cut(rest, `"`)
			f, err := strconv.ParseFloat(le, 64)
			if err != nil {
				continue
			}
			bs = append(bs, bucket{f, v})
		case k == name+"_count" || strings.HasPrefix(k, name+"_count{"):
			h.count = v
		case k == name+"_sum" || strings.HasPrefix(k, name+"_sum{"):
			h.sum = v
		}
	}
	slices.SortFunc(bs, func(a, b bucket) int { return cmpFloat(a.le, b.le) })
	for _, x := range bs {
		h.les = append(h.les, x.le)
		h.counts = append(h.counts, x.n)
	}
	return h
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (h hist) mean() float64 {
	if h.count == 0 {
		return 0
	}
	return h.sum / h.count
}

// quantile estimates the q-quantile as Prometheus's histogram_quantile
// does: linear within the bucket that holds it.
func (h hist) quantile(q float64) float64 {
	if h.count == 0 || len(h.les) == 0 {
		return 0
	}
	rank := q * h.count
	prevLE, prevN := 0.0, 0.0
	for i, le := range h.les {
		if h.counts[i] >= rank {
			if math.IsInf(le, 1) {
				return prevLE
			}
			if h.counts[i] == prevN {
				return le
			}
			return prevLE + (le-prevLE)*(rank-prevN)/(h.counts[i]-prevN)
		}
		prevLE, prevN = le, h.counts[i]
	}
	return prevLE
}

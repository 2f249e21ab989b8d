// Package bench holds Courier's end-to-end benchmarks: the whole outbound
// and inbound path of one message, measured from the node's side.
//
// Node A posts a 1 KiB ciphertext to sidecar A's POST /v1/messages; sidecar
// A stores it (SQLite, synchronous=full) and publishes it through
// courier-relay (SQLite, synchronous=full) to sidecar B, which stores it
// durably, acks the relay and pushes it to node B's inbound endpoint. The
// relay and the two sidecars are the built binaries (without -race), each
// in a process of its own on loopback, started by internal/cluster; the
// two nodes are in-process httptest servers that sign with an Ed25519
// identity (POST /ob/signmessage), count OFFLINE hand-offs (POST
// /courier/offline, which must stay at 0) and record when each message ID
// reaches node B (POST /courier/inbound), counting duplicates.
//
// BenchmarkEndToEndLatency posts one message at a time and waits for it at
// node B before the next: after a warm-up it reports p50_ms, p99_ms and
// max_ms of that round trip over -e2e.samples messages (default 2000), and
// the p50 of its three legs: post_p50_ms (node A's POST until sidecar A
// answers 202, durably queued), relay_p50_ms (from the 202 until sidecar B
// takes the message from the relay, its received_at) and sidecarB_p50_ms
// (from there until node B's inbound endpoint has it).
//
// BenchmarkEndToEndThroughput posts from -e2e.posters concurrent node
// connections (default 32, keep-alive) for a fixed window, -e2e.window
// (default 10s), then waits until every accepted message reached node B.
// It reports msg/s (messages that reached node B within the window, per
// second), accepted_msg/s, the latency under that load (loaded_p50_ms,
// loaded_p99_ms; loaded_post_p50_ms is the part node A waited for its
// 202), how long the backlog took to reach node B after the window
// (drain_s), the peak RSS (VmHWM) of each process (sidecarA_peak_MiB,
// sidecarB_peak_MiB, relay_peak_MiB), the CPU each used while posting, in
// cores (sidecarA_cores, sidecarB_cores, relay_cores, and bench_cores for
// both nodes and the posters), each sidecar's CPU per accepted message in
// microseconds (sidecarA_us/msg, sidecarB_us/msg), and all that CPU per
// accepted message
// (cpu_ms/msg: what bounds msg/s on a machine with few cores). It fails if
// a single accepted message is lost, duplicated, altered or handed to the
// OFFLINE path.
//
// Each benchmark is one fixed experiment, independent of b.N, on a fresh
// relay and fresh sidecars: run it with -benchtime 1x, a few times, and
// quote the median:
//
//	go test -run '^$' -bench EndToEnd -benchtime 1x -count 3 -timeout 30m ./bench/
//
// Flags after -args size the experiments: -e2e.samples, -e2e.warmup,
// -e2e.window, -e2e.posters; -e2e.synchronous=normal turns durability off
// in all three programs, only to find out what the fsyncs cost (the
// targets are for full).
//
// Both also report load1_before, the machine's 1-minute load average just
// before the processes started: these numbers mean little on a machine
// busy with something else. ns/op is suppressed: it would be the length of
// the whole experiment.
//
// Without -bench (or with a pattern that selects none of these) TestMain
// builds nothing and starts nothing, so `go test ./...` stays fast.
package bench

# benchmedian.awk: medians of `go test -bench` metrics over -count runs,
# each next to its target where the issues set one (issue 7: the relay;
# issue 8: end to end through the sidecars; issue 9: several relay
# instances on Redis). Input: go test -bench output, any benchmarks.
#   awk -f scripts/benchmedian.awk bench-output.txt
/^Benchmark/ && $2 ~ /^[0-9]+$/ {
	name = $1
	sub(/-[0-9]+$/, "", name) # the GOMAXPROCS suffix
	if (!(name in seen)) { seen[name] = 1; order[++nnames] = name }
	runs[name]++
	for (i = 3; i + 1 <= NF; i += 2) {
		key = name SUBSEP $(i + 1)
		if (!(key in count)) { units[name] = units[name] SUBSEP $(i + 1) }
		count[key]++
		vals[key, count[key]] = $i + 0
	}
}

function median(key,    n, i, j, t, a) {
	n = count[key]
	for (i = 1; i <= n; i++) a[i] = vals[key, i]
	for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
	if (n % 2) return a[(n + 1) / 2]
	return (a[n / 2] + a[n / 2 + 1]) / 2
}

function target(name, unit) {
	# Issue 7: one relay on SQLite.
	if (name ~ /^BenchmarkThroughput\/ack-each$|^BenchmarkSustained\/ack-each/) {
		if (unit == "msgs/s") return ">= 15000 (goal 20000)"
		if (unit == "cpu-µs/msg") return "<= 60"
		if (unit == "not-delivered") return "0"
	}
	if (name ~ /^BenchmarkSustained\/ack-each/) {
		if (unit == "p50-µs") return "<= 500"
		if (unit == "p99-µs") return "<= 2000"
	}
	# Issue 8: node A -> sidecar A -> relay -> sidecar B -> node B.
	if (name == "BenchmarkEndToEndThroughput") {
		if (unit == "msg/s" || unit == "accepted_msg/s") return ">= 5000"
		if (unit == "drain_s") return "<= 2"
		if (unit == "lost" || unit == "dup" || unit == "offline") return "0"
	}
	if (name == "BenchmarkEndToEndLatency") {
		if (unit == "p50_ms") return "<= 1.5"
		if (unit == "p99_ms") return "<= 5"
	}
	if (unit ~ /^sidecar[AB]_us\/msg$/) return "<= 150"
	if (unit ~ /^sidecar[AB]_peak_MiB$/) return "<= 50"
	# Issue 9: two instances on one Redis (appendfsync always); Centrifugo
	# 6.9.1 did 6,628 msg/s at p50 1.08 / p99 3.24 ms with one instance.
	if (name ~ /^BenchmarkCrossInstance\/(window|rate)-/) {
		if (unit == "msgs/s") return ">= 10000 (Centrifugo 6628)"
		if (unit == "not-delivered") return "0"
	}
	if (name ~ /^BenchmarkCrossInstance\/rate-|^BenchmarkCrossInstancePush\//) {
		if (unit == "p50-µs" || unit == "result-p50-µs") return "Centrifugo 1080"
		if (unit == "p99-µs" || unit == "result-p99-µs") return "<= 5000 (Centrifugo 3240)"
	}
	return ""
}

END {
	for (k = 1; k <= nnames; k++) {
		name = order[k]
		print ""
		print "Medians of " runs[name] " run(s) of " name ":"
		n = split(units[name], us, SUBSEP)
		for (i = 2; i <= n; i++) {
			u = us[i]
			if (u == "ns/op" || u == "MB/s") continue
			t = target(name, u)
			printf "  %-20s %12.6g   %s\n", u, median(name SUBSEP u), (t == "" ? "" : "target " t)
		}
	}
}

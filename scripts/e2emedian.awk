# e2emedian.awk: medians of the end-to-end benchmarks' metrics (package
# bench) over -count runs, next to the sidecar's targets (issue 8).
# Input: go test -bench output.
#   awk -f scripts/e2emedian.awk e2e-output.txt
/^BenchmarkEndToEnd/ && $2 ~ /^[0-9]+$/ {
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
	return ""
}

END {
	print ""
	for (k = 1; k <= nnames; k++) {
		name = order[k]
		print "Medians of " runs[name] " run(s) of " name ":"
		n = split(units[name], us, SUBSEP)
		for (i = 2; i <= n; i++) {
			u = us[i]
			if (u == "ns/op") continue
			t = target(name, u)
			printf "  %-22s %12.4g   %s\n", u, median(name SUBSEP u), (t == "" ? "" : "target " t)
		}
	}
}

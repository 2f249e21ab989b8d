# benchmedian.awk: medians of `go test -bench` metrics over -count runs,
# next to the relay's targets (issue 7). Input: go test -bench output.
#   awk -f scripts/benchmedian.awk bench-output.txt
/^Benchmark/ && $2 ~ /^[0-9]+$/ && $4 == "ns/op" {
	name = $1
	sub(/-[0-9]+$/, "", name) # the GOMAXPROCS suffix
	if (!(name in seen)) { seen[name] = 1; order[++nnames] = name }
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
	if (name ~ /^BenchmarkThroughput\/ack-each$|^BenchmarkSustained\/ack-each/) {
		if (unit == "msgs/s") return ">= 15000 (goal 20000)"
		if (unit == "cpu-µs/msg") return "<= 60"
		if (unit == "not-delivered") return "0"
	}
	if (name ~ /^BenchmarkSustained\/ack-each/) {
		if (unit == "p50-µs") return "<= 500"
		if (unit == "p99-µs") return "<= 2000"
	}
	return ""
}

END {
	print ""
	print "Medians of " (nnames ? count[order[1] SUBSEP "ns/op"] : 0) " run(s) per benchmark:"
	for (k = 1; k <= nnames; k++) {
		name = order[k]
		n = split(units[name], us, SUBSEP)
		for (i = 2; i <= n; i++) {
			u = us[i]
			if (u == "ns/op" || u == "MB/s") continue
			t = target(name, u)
			printf "  %-40s %12.10g %-16s %s\n", name, median(name SUBSEP u), u, (t == "" ? "" : "target " t)
		}
	}
}

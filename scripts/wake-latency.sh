#!/usr/bin/env bash
# How long the threads that wake most wait between being woken and running,
# during a short run of bin/dsmbench (bench/dsm: item 2's and 5's fetch
# loops are most of its wake-ups): the README's wake-up figures for a DSM
# fetch. Records sched_waking and sched_switch on every CPU (perf, as root)
# and prints, for the four threads woken most: wake-ups, the median and
# mean from sched_waking to the sched_switch that runs the thread, and the
# share of wake-ups that ran on another CPU than the waker's and that found
# the CPU idle. About 15 s.
set -euo pipefail
cd "$(dirname "$0")/.."
GOFLAGS=${GOFLAGS:--mod=mod} scripts/go build -o bin/dsmbench ./bench/dsm
tmp=$(mktemp -d /tmp/wake-latency.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
perf record -q -e sched:sched_waking,sched:sched_switch -a -o "$tmp/perf.data" -- \
	bin/dsmbench -out "$tmp/dsm.md" -port "${DSM_BENCH_PORT:-24100}" \
	-reps 5 -reps3 1 -reps4 1 -reps5 5 -rounds5 1 -warm 1 -iters 5 -iters4 5 >"$tmp/out" 2>&1
perf script -i "$tmp/perf.data" -F cpu,time,event,trace 2>/dev/null | awk '
# One line per wake-up that ran: thread, microseconds, on another CPU, from idle.
function cpu(s) { gsub(/[^0-9]/, "", s); return s + 0 }
{ c = cpu($1); t = $2 + 0 }
/sched_waking:/ { if (match($0, / pid=[0-9]+/)) { p = substr($0, RSTART + 5, RLENGTH - 5); wt[p] = t; wc[p] = c }; next }
/sched_switch:/ {
	if (!match($0, / next_pid=[0-9]+/)) next
	p = substr($0, RSTART + 10, RLENGTH - 10)
	if (!(p in wt)) next
	printf "%s %.3f %d %d\n", p, (t - wt[p]) * 1e6, wc[p] != c, $0 ~ / prev_pid=0 /
	delete wt[p]
}' | sort -k1,1n -k2,2g | awk '
{ n[$1]++; lat[$1, n[$1]] = $2; sum[$1] += $2; cross[$1] += $3; idle[$1] += $4 }
END {
	for (k = 1; k <= 4; k++) {
		best = ""; for (p in n) if (!(p in shown) && (best == "" || n[p] > n[best])) best = p
		if (best == "") break
		shown[best] = 1; m = n[best]
		printf "tid %s: %d wake-ups, woken to running median %.1f us, mean %.1f us, on another CPU %.0f%%, from idle %.0f%%\n",
			best, m, lat[best, int((m + 1) / 2)], sum[best] / m, 100 * cross[best] / m, 100 * idle[best] / m
	}
}'

#!/usr/bin/env bash
# Soak: processes keep running, listed, exactly once, with intact memory and
# an unbroken output sequence, while their daemons are killed with SIGKILL at
# random moments of migrations. Not part of make test (its kills race the
# migrations on purpose; the tests use fault points instead):
#
#   scripts/soak-kills.sh [ROUNDS] [PROCS]     (as root; default 30 rounds, 3 processes)
#
# Each round migrates every process to the other host while, after a random
# delay of 0-400 ms, one of the two daemons (chosen at random) is killed; the
# cluster's supervisor restarts it. After each round every process must be
# listed running on exactly one host, have exactly one live copy, and its
# log must count on without a gap or a repeat with its memory checks intact.
set -euo pipefail
cd "$(dirname "$0")/.."
C=test/integration/cluster.sh
ROUNDS=${1:-30}
PROCS=${2:-3}
"${GO:-scripts/go}" build -o bin/ ./cmd/... ./test/integration/migtest
# KEEP_CLUSTER=1 leaves the cluster up when a round fails, to look into.
trap 'if [ $? != 0 ] && [ -n "${KEEP_CLUSTER:-}" ]; then echo "soak: cluster left up" >&2; else $C down >/dev/null 2>&1 || true; fi' EXIT
$C up 2 >/dev/null

where() { # id -> the host that lists it running, "" if not exactly one lists it
	local id=$1 k n=0 h= st
	for k in 1 2; do
		st=$($C exec h$k migrated ps | awk -v id="$id" '$1 == id { print $4 }')
		[ -z "$st" ] && continue
		n=$((n + 1))
		[ "$st" = running ] && h=$k
	done
	[ $n = 1 ] && echo "$h"
}
copies() { # host marker -> live copies
	$C exec "h$1" sh -c 'for p in $(pgrep -x migtest); do grep -qaF -- "$1" /proc/$p/cmdline 2>/dev/null || continue; s=$(awk "{print \$3}" /proc/$p/stat); [ "$s" != Z ] && echo $p; done; true' x "$2" | wc -l
}
check_log() { # host id -> ok or the reason
	$C exec "h$1" migrated logs "$2" | awk '
		/^mem BAD/ { print "memory changed"; bad=1; exit }
		/^count / { if ($2 != n) { printf "count %d after %d\n", $2, n-1; bad=1; exit } n++ }
		END { if (!bad) print (n > 0 ? "ok" : "no counts") }'
}
wait_up() {
	for k in 1 2; do
		for _ in $(seq 200); do $C exec "h$k" migrated ps >/dev/null 2>&1 && break; sleep 0.1; done
	done
}

declare -a ids marks
for i in $(seq 0 $((PROCS - 1))); do
	marks[i]="soak-$i-$RANDOM$RANDOM"
	ids[i]=$($C exec h1 migrated run --name "soak$i" -- migtest memcount 16 "${marks[i]}")
done
sleep 1
moves=0 failed=0 kills=0
for r in $(seq "$ROUNDS"); do
	pids=()
	for i in "${!ids[@]}"; do
		id=${ids[i]} from=$(where "$id")
		[ -n "$from" ] || { echo "round $r: ${id} is not settled on one host" >&2; exit 1; }
		to=$((3 - from))
		($C exec "h$from" migrated migrate "$id" --to "10.77.0.$to:7077" >/dev/null 2>&1) 2>/dev/null &
		pids+=($!)
	done
	sleep "0.$(printf '%03d' $((RANDOM % 400)))"
	victim=$((RANDOM % 2 + 1))
	$C exec "h$victim" pkill -KILL -x migrated && kills=$((kills + 1))
	for p in "${pids[@]}"; do
		if wait "$p"; then moves=$((moves + 1)); else failed=$((failed + 1)); fi
	done
	wait_up
	for i in "${!ids[@]}"; do
		id=${ids[i]} h=
		for _ in $(seq 600); do h=$(where "$id") && [ -n "$h" ] && break; sleep 0.1; done
		if [ -z "$h" ]; then
			echo "round $r: ${id} never settled:" >&2
			for k in 1 2; do echo "h$k:" >&2; $C exec "h$k" migrated ps >&2 || true; done
			exit 1
		fi
		c1=$(copies 1 "${marks[i]}") c2=$(copies 2 "${marks[i]}")
		if [ $((c1 + c2)) != 1 ]; then echo "round $r: ${id} has $c1 copies on h1 and $c2 on h2" >&2; exit 1; fi
		sleep 0.3
		res=$(check_log "$h" "$id")
		[ "$res" = ok ] || { echo "round $r: ${id} on h$h: $res" >&2; exit 1; }
	done
	echo "round $r: daemon h$victim killed; every process runs once, intact"
done
echo "soak: $ROUNDS rounds, $kills daemon kills, $moves migrations went, $failed were called off; every process ran exactly once throughout"

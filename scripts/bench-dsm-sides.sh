#!/usr/bin/env bash
# DSM fetches and Jacobi, two builds side by side: ROUNDS (3) rounds, each
# running bin/dsmbench (bench/dsm, the DSM part of make bench, shortened by
# ARGS) of every build in turn, on 127.0.0.1 ports from DSM_BENCH_PORT
# (24100). Prints one line per run: a fetch per fault (row 2), the C round
# trip (2b's baseline), 5a's and 5b's fetches, Stats.FetchTime per fetch,
# Jacobi on 4 ranks per iteration (5d's baseline) and 4a/4b's bytes and
# messages per iteration. About 30 s a run on 2 cores.
#
#   scripts/bench-dsm-sides.sh /tmp/old .    /tmp/old first, then this tree
#
# Each argument is a checkout (for an older commit: git worktree add
# /tmp/old REV); the script builds its bench/dsm. The runs' reports stay in
# bench-out/dsm-sides/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
ARGS=${ARGS:-"-reps 9 -reps3 3 -reps4 5 -reps5 7 -rounds5 1 -warm 2"}
[ $# -gt 0 ] || set -- .
out=bench-out/dsm-sides
rm -rf "$out" && mkdir -p "$out"
here=$PWD
for i in $(seq $#); do
	(cd "${!i}" && GOFLAGS=${GOFLAGS:--mod=mod} "$here/scripts/go" build -o "$here/$out/dsmbench-$i" ./bench/dsm)
done
cell() { # report row column -> the cell's first word, µs and spaces dropped
	grep -E "^\| $2 " "$1" | awk -F'|' -v c="$3" '{ split($c, w, " "); print w[1] }'
}
for round in $(seq "$ROUNDS"); do
	for i in $(seq $#); do
		f=$out/$i-$round.md
		# shellcheck disable=SC2086 # ARGS is a list of flags
		"$out/dsmbench-$i" -out "$f" -port "${DSM_BENCH_PORT:-24100}" $ARGS >"$out/$i-$round.log" 2>&1
		ft=$(grep -o 'Stats.FetchTime (the socket round trip inside the handler) is [0-9.]* µs' "$f" | awk '{ print $(NF-1) }')
		printf "round %s %s: fetch %s µs, round trip %s µs, 5a %s µs, 5b %s µs, FetchTime %s µs, Jacobi 4 ranks %s ms, %s B, %s messages\n" \
			"$round" "${!i}" "$(cell "$f" 2b 4)" "$(cell "$f" 2b 5)" "$(cell "$f" 5a 4)" "$(cell "$f" 5b 4)" "$ft" \
			"$(cell "$f" 5d 5)" "$(cell "$f" 4a 4)" "$(cell "$f" 4b 4)"
	done
done

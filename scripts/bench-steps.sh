#!/usr/bin/env bash
# Where a small plain move's time goes, step by step, and two builds side by
# side: rounds of N back-and-forth moves of a MIB MiB process between two
# namespace hosts, each build in turn, with the daemons' step times
# (MIGRATED_LOG_LEVEL=debug). Prints, per build, the medians of the client's
# wall time, the downtime and every step of either side.
#
#   scripts/bench-steps.sh                 this tree only
#   scripts/bench-steps.sh /tmp/old .      /tmp/old first, then this tree
#
# Each argument is a built checkout (for an older commit:
# git worktree add /tmp/old REV && (cd /tmp/old && scripts/go build -o bin/
# ./cmd/... ./test/integration/migtest)). ROUNDS (3), MOVES (6), MIB (16).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} MOVES=${MOVES:-6} MIB=${MIB:-16}
[ $# -gt 0 ] || set -- .
out=$(mktemp -d /tmp/bench-steps.XXXXXX)
trap 'rm -rf "$out"' EXIT

moves() { # repo tag
	local C=$1/test/integration/cluster.sh id from=h1 to=2 t0 t1 i
	MIGRATED_LOG_LEVEL=debug $C up 2 >/dev/null 2>&1
	id=$($C exec h1 migrated run --name steps -- migtest mem "$MIB")
	for _ in $(seq 600); do $C exec h1 migrated logs "$id" | grep -q "mem ok" && break; sleep 0.1; done
	for i in $(seq "$MOVES"); do
		t0=$(date +%s%N)
		$C exec $from migrated migrate "$id" --to 10.77.0.$to:7077 >"$out/last" 2>&1
		t1=$(date +%s%N)
		printf "%s\twall\t%s\n" "$2" $(((t1 - t0) / 1000000)) >>"$out/times"
		sed -n "s/.*downtime \([0-9.]*\) ms.*/$2\tdowntime\t\1/p" "$out/last" >>"$out/times"
		if [ $from = h1 ]; then from=h2 to=1; else from=h1 to=2; fi
		sleep 0.5
	done
	for h in h1 h2; do
		sed -n "s/.* side=\([a-z]*\) step=\([a-z-]*\) journal_ms=[0-9.]* ms=\([0-9.]*\).*/$2\t\1-\2\t\3/p" \
			"${CLUSTER_DIR:-/run/dsmigrate-cluster}/$h/daemon.log" >>"$out/times"
	done
	$C down >/dev/null 2>&1
}

# Each build's figures are tagged with its position among the arguments (a
# path would not do: sed takes a slash in it for the end of its pattern).
for _ in $(seq "$ROUNDS"); do
	i=0
	for repo in "$@"; do i=$((i + 1)); moves "$repo" "b$i"; done
done
i=0
for repo in "$@"; do
	i=$((i + 1))
	echo "== $repo ($ROUNDS rounds of $MOVES moves of $MIB MiB; medians, ms)"
	awk -F'\t' -v r="b$i" '$1 == r { print $2 "\t" $3 }' "$out/times" | sort -k1,1 -k2n |
		awk -F'\t' '{ n[$1]++; v[$1, n[$1]] = $2 } END { for (k in n) printf "  %-22s %8.1f  (n=%d)\n", k, v[k, int((n[k] + 1) / 2)], n[k] }' | sort
done

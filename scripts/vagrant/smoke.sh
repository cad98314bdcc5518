#!/usr/bin/env bash
# A smoke test on the Vagrantfile's VMs (up already: scripts/vagrant/cluster.sh up N):
#  1. `migrated ps` answers on every node;
#  2. a counter started with `migrated run` on node1 moves to node2
#     (`migrated migrate ID --to node2:7077`), is gone from node1, and its
#     output goes on counting on node2 from where it was, nothing lost or repeated.
# Usage: scripts/vagrant/smoke.sh [N]   (N nodes, default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
V=scripts/vagrant/cluster.sh
n=${1:-3}

say() { printf '== %s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }

for k in $(seq "$n"); do
	$V exec "node$k" migrated ps >/dev/null || fail "migrated ps on node$k"
	say "node$k: migrated ps answers ($($V exec "node$k" hostname), $($V exec "node$k" migrate-criu --version | head -1))"
done

id=$($V exec node1 migrated run --name smoke-counter -- migtest counter)
[ -n "$id" ] || fail "migrated run printed no ID"
say "node1: started counter $id"
# Guests run ~5-20x slower than the host: give it time to count.
sleep 3
before=$($V exec node1 migrated logs "$id" | tail -n 1)
say "node1: last line before the move: $before"
[[ $before =~ ^count\ [0-9]+$ ]] || fail "counter on node1 prints '$before'"

t0=$(date +%s.%N)
$V exec node1 migrated migrate "$id" --to node2:7077 || fail "migrate $id to node2"
t1=$(date +%s.%N)
say "migrated $id node1 -> node2 in $(echo "$t1 - $t0" | bc 2>/dev/null || echo "?") s (as seen from the host, ssh included)"

if $V exec node1 migrated ps | awk -v id="$id" '$1 == id && $4 == "running"' | grep -q .; then
	fail "$id still running on node1 after the move"
fi
$V exec node2 migrated ps | awk -v id="$id" '$1 == id && $4 == "running"' | grep -q . || {
	$V exec node2 migrated ps
	fail "$id is not running on node2"
}
sleep 3
logs=$($V exec node2 migrated logs "$id")
after=$(tail -n 1 <<<"$logs")
say "node2: last line after the move: $after"
b=${before#count } a=${after#count }
[ "$a" -gt "$b" ] 2>/dev/null || fail "the count did not go on on node2 ($before -> $after)"
# Every count from 0 to the last exactly once: no line lost or repeated by the move.
if ! awk '/^count / { if ($2 != want) { print "line " NR ": " $0 " (want count " want ")"; bad = 1; exit } want++ }
	END { exit bad }' want=0 <<<"$logs"; then
	fail "the output has a gap or a repeat"
fi
say "the counter went on on node2 ($before -> $after), every count once"
$V exec node2 migrated kill "$id" >/dev/null || true
say "smoke test passed"

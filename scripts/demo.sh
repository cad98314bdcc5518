#!/usr/bin/env bash
# The demo, on four namespace hosts:
#  1. a TCP client on h1 talks to an echo server on h3 from its own address
#     10.77.0.100; the client moves to h2 with its address while the
#     connection carries traffic, and the connection lives on; then h2's
#     daemon is killed with SIGKILL and the client runs on, found again by
#     the restarted daemon;
#  2. a DSM job (Jacobi, 3 ranks on h1-h3) runs while its rank 1 moves to h4,
#     and then h4 is drained: placement moves the rank on to the host with
#     the fewest processes; the job verifies its result as an unmigrated run
#     does.
set -euo pipefail
cd "$(dirname "$0")/.."
C=test/integration/cluster.sh
"${GO:-scripts/go}" build -o bin/ ./cmd/... ./test/integration/migtest ./examples/...

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
trap 'say "tearing down"; $C down' EXIT

say "bringing up hosts h1 h2 h3 h4"
$C up 4
$C exec h1 ip addr add 10.77.0.100/24 dev eth0

say "h3: echo server; h1: client from 10.77.0.100 sending a numbered line every 10 ms"
srv=$($C exec h3 migrated run --name echo-server -- migtest tcp-server 0.0.0.0:7000)
sleep 0.3
cli=$($C exec h1 migrated run --name echo-client -- migtest tcp-client 10.77.0.100 10.77.0.3:7000)
sleep 1
$C exec h1 migrated ps
echo "client log so far:"; $C exec h1 migrated logs "$cli" | tail -n 3

say "migrating the client h1 -> h2 with its address"
$C exec h1 migrated migrate "$cli" --to 10.77.0.2:7077 --move-ip 10.77.0.100/24

sleep 1
say "after the move"
echo "h2 ps:"; $C exec h2 migrated ps
echo "h1 ps (empty):"; $C exec h1 migrated ps
echo "client log (continues on the same connection, every echo checked):"
$C exec h2 migrated logs "$cli" | head -n 1
$C exec h2 migrated logs "$cli" | tail -n 3
echo "server log:"; $C exec h3 migrated logs "$srv" | tail -n 1
if $C exec h2 migrated logs "$cli" | grep -q FAIL || $C exec h3 migrated logs "$srv" | grep -q closed; then
	say "the connection did NOT survive"; exit 1
fi
say "the connection survived: same socket, no reset, no lost or repeated byte"

say "h2's daemon killed with SIGKILL: the client runs on under its shim; the restarted daemon finds it"
before=$($C exec h2 migrated ps | awk -v id="$cli" '$1 == id {print $3}')
$C exec h2 pkill -KILL -x migrated
for _ in $(seq 100); do $C exec h2 migrated ps >/dev/null 2>&1 && break; sleep 0.1; done
$C exec h2 migrated ps
after=$($C exec h2 migrated ps | awk -v id="$cli" '$1 == id {print $3}')
sleep 0.5
$C exec h2 migrated logs "$cli" | tail -n 2
if [ -z "$after" ] || [ "$before" != "$after" ] || $C exec h2 migrated logs "$cli" | grep -q FAIL; then
	say "the process did NOT live through its daemon's death"; exit 1
fi
say "same pid ($after), still counting, every echo checked: nothing was lost with the daemon"

say "a DSM job: Jacobi 1024x1024 on 3 ranks (h1 h2 h3); rank 1 moves to h4, then h4 is drained while it runs"
eval "$($C env)"
export MIGRATED_HOSTS MIGRATED_TOKEN_FILE
out=$(mktemp -d)
MIGRATED_HOSTS=10.77.0.1:7077,10.77.0.2:7077,10.77.0.3:7077 bin/dsmrun run -n 3 --policy round-robin -- "$PWD/bin/jacobi" -n 1024 -iters 800 >"$out/job.out" 2>"$out/job.err" &
jobpid=$!
job=
for _ in $(seq 100); do
	job=$(sed -n 's/^job: //p' "$out/job.err"); [ -n "$job" ] && break; sleep 0.05
done
[ -n "$job" ] || { cat "$out/job.err"; exit 1; }
sleep 1
bin/dsmrun ps
bin/dsmrun migrate "$job" 1 --to 10.77.0.4:7077
bin/dsmrun ps
sleep 0.5
say "draining h4: its processes go where placement finds the fewest processes and the most room"
$C exec h4 migrated hosts
$C exec h4 migrated drain
$C exec h4 migrated undrain
bin/dsmrun ps
wait $jobpid || { say "the DSM job failed"; cat "$out/job.err"; tail "$out/job.out"; exit 1; }
grep -E '^\[[0-9]+\] (rank|result)' "$out/job.out"
say "every migration of the job, as the daemons recorded it"
bin/dsmrun history "$job"
grep -q '^\[0\] result: .* verified$' "$out/job.out" || { say "no verified result"; exit 1; }
say "the job verified its result with its rank moved twice, the second time by a drain"

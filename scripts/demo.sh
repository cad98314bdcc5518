#!/usr/bin/env bash
# The demo: three namespace hosts; a TCP client on h1 talks to an echo server on
# h3 from its own address 10.77.0.100; the client moves to h2 with its address
# while the connection carries traffic, and the connection lives on.
set -euo pipefail
cd "$(dirname "$0")/.."
C=test/integration/cluster.sh
go build -o bin/ ./cmd/... ./test/integration/migtest

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
trap 'say "tearing down"; $C down' EXIT

say "bringing up hosts h1 h2 h3"
$C up 3
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

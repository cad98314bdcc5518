#!/usr/bin/env bash
# A cluster of namespace hosts on this machine, for tests and the demo.
#
#   cluster.sh up N            create hosts h1..hN (1 <= N <= 40), each running migrated
#   cluster.sh down            remove everything up made (idempotent)
#   cluster.sh exec HOST CMD.. run CMD inside HOST (exit status is CMD's)
#   cluster.sh env             print `export MIGRATED_HOSTS=...;` and MIGRATED_TOKEN_FILE for
#                              eval (dsmrun's settings), and CLUSTER_STATE_DIRS and
#                              CLUSTER_TOKEN_FILE (paths on the hosts), one a line
#
# Host hK is a network namespace named hK whose eth0 (10.77.0.K/24) is one end of a
# veth pair; the other end, mig0-hK, is a port of the bridge mig0 (10.77.0.254/24)
# in the root namespace, so the root namespace reaches every host. Each host also
# has its own PID namespace (tini is PID 1; every host hands out pids from the
# same range, as real hosts do: migrated's own pid namespace per process keeps
# them from colliding), mount
# namespace (a private tmpfs on /run) and UTS namespace (hostname hK). Inside runs
#   migrated serve --listen 10.77.0.K:7077 --state-dir $DIR/hK/state --token-file $DIR/token \
#                  --metrics 10.77.0.K:9477 --peers 10.77.0.1:7077,...,10.77.0.N:7077 \
#                  --http 127.0.0.1:8077 (the live view, on each host's own loopback)
# with stdout and stderr in $DIR/hK/daemon.log. All hosts share one token.
#
# State lives in $DIR = $CLUSTER_DIR (default /run/dsmigrate-cluster): size (N),
# token (0600, 32 random bytes, base64), hK/{state/,daemon.log,tini.pid}.
# Must run as root. Send traffic only to the hosts or loopback.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
DIR=$(realpath -m "${CLUSTER_DIR:-/run/dsmigrate-cluster}")
BRIDGE=mig0
NET=10.77.0          # host K is $NET.K, the bridge $NET.254
PORT=7077
METRICS_PORT=9477    # each daemon's --metrics, on its host's address (docs/metrics.md)
MAX_HOSTS=40
CRIU=/usr/local/sbin/migrate-criu
READY_TIMEOUT=20     # seconds for every daemon to accept TCP

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

usage() {
	sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
	exit 2
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

# hosts_present lists the hosts that exist in any form: namespaces named hK and
# state directories, so that down cleans up after a partial up or a crash.
hosts_present() {
	local d
	{
		ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^h[0-9]+$' || true
		for d in "$DIR"/h*; do
			if [ -d "$d" ]; then basename "$d"; fi
		done
	} | sort -u
}

# find_tini prints the pid of tini among the descendants of $1 (setsid, ip netns
# exec and unshare exec each other; unshare forks what becomes tini).
find_tini() {
	local level=$1 next c _
	for _ in 1 2 3; do
		next=
		for c in $(pgrep -d ' ' -P "${level// /,}" 2>/dev/null || true); do
			if [ "$(cat "/proc/$c/comm" 2>/dev/null)" = tini ]; then
				echo "$c"
				return 0
			fi
			next+=${next:+ }$c
		done
		[ -n "$next" ] || return 1
		level=$next
	done
	return 1
}

# is_host_tini reports whether pid $1 is still the tini of host $2 (pids get
# reused): its command line names the host's state directory.
is_host_tini() {
	[ "$(cat "/proc/$1/comm" 2>/dev/null)" = tini ] &&
		tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF "$DIR/$2/state"
}

# ---------------------------------------------------------------------------
# up

ensure_binaries() {
	local need=0
	for c in tini nft arping nsenter unshare ip; do
		command -v "$c" >/dev/null || need=1
	done
	[ -x "$CRIU" ] || need=1
	if [ $need = 1 ]; then
		log "installing dependencies (scripts/install-deps.sh)"
		"$REPO/scripts/install-deps.sh"
	fi
	# scripts/go: PATH's go or the one scripts/install-go.sh installed, if
	# new enough for go.mod.
	local go=$REPO/scripts/go
	# The go command needs a cache directory; sudo or env -i may drop HOME.
	[ -n "${HOME:-}" ] || export HOME=/root
	if DSMIGRATE_GO_INSTALL=0 "$go" version >/dev/null 2>&1; then
		# Cheap when nothing changed: the build cache makes this a no-op.
		(cd "$REPO" && "$go" build -o "$REPO/bin/" ./cmd/...) || die "build failed"
	elif [ -x "$REPO/bin/migrated" ]; then
		log "warning: no go toolchain; using the existing $REPO/bin/migrated"
	else
		die "no go toolchain and no $REPO/bin/migrated"
	fi
	[ -x "$REPO/bin/migrated" ] || die "$REPO/bin/migrated was not built"
}

# host_init runs as PID 1 of host K's new PID namespace, inside its new mount
# and UTS namespaces, and becomes tini. Arguments: K DIR REPO NET PORT MPORT PEERS.
# shellcheck disable=SC2016 # expanded by the inner bash
HOST_INIT='
set -eu
k=$1 dir=$2 repo=$3 net=$4 port=$5 mport=$6 peers=$7
hostname "h$k"
# A private /run. The cluster directory may live under /run: keep it visible
# by bind-mounting it, through a descriptor opened before the tmpfs hides it.
exec 3<"$dir"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
case $dir in
/run/*)
	mkdir -p "$dir"
	mount --no-canonicalize --bind /proc/self/fd/3 "$dir"
	;;
esac
exec 3<&-
# stdio opened inside this mount namespace, no other descriptors: CRIU cannot
# dump a descriptor that points into another mount namespace.
exec </dev/null >>"$dir/h$k/daemon.log" 2>&1
for fd in /proc/$$/fd/*; do
	fd=${fd##*/}
	if [ "$fd" -gt 2 ]; then eval "exec $fd<&-"; fi
done
cd /
export PATH="$repo/bin:$PATH"
# The daemon runs under a supervisor loop, as systemd (Restart=always) runs
# it: killed or stopped, it comes back (tests kill it at every step of a
# migration, and restart it as an upgrade would); one that fails by itself
# (not killed: status 137 is SIGKILL) within 2 s of starting five times in a
# row is broken, and the host stops.
exec tini -s -- bash -c '"'"'
quick=0
while :; do
	start=$SECONDS
	"$@"
	rc=$?
	echo "cluster: the daemon exited ($rc)" >&2
	if [ $rc != 137 ] && [ $((SECONDS - start)) -lt 2 ]; then quick=$((quick + 1)); else quick=0; fi
	[ $quick -lt 5 ] || exit 1
	sleep 0.2
done'"'"' supervise "$repo/bin/migrated" serve --listen "$net.$k:$port" \
	--state-dir "$dir/h$k/state" --token-file "$dir/token" --config "" --metrics "$net.$k:$mport" \
	--peers "$peers" --http 127.0.0.1:8077
'

start_host() {
	local k=$1 h=h$1 pid tini _
	ip netns add "$h"
	# The peer is created inside the namespace, already named eth0.
	ip link add "$BRIDGE-$h" type veth peer name eth0 netns "$h"
	ip link set "$BRIDGE-$h" master "$BRIDGE"
	sysctl -qw "net.ipv6.conf.$BRIDGE-$h.disable_ipv6=1"
	ip link set "$BRIDGE-$h" up
	# No IPv6 duplicate address detection: its tentative phase only delays.
	ip netns exec "$h" sysctl -qw net.ipv6.conf.eth0.accept_dad=0
	ip -n "$h" addr add "$NET.$k/24" dev eth0
	ip -n "$h" link set lo up
	ip -n "$h" link set eth0 up

	mkdir -p "$DIR/$h/state"
	: >"$DIR/$h/daemon.log"
	# Detached: own session, stdin from /dev/null, output to the log, so
	# nothing holds the caller's terminal or descriptors.
	setsid ip netns exec "$h" unshare --pid --fork --mount-proc --mount --uts --propagation private \
		bash -c "$HOST_INIT" "host-init-$h" "$k" "$DIR" "$REPO" "$NET" "$PORT" "$METRICS_PORT" "$PEERS" \
		</dev/null >>"$DIR/$h/daemon.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		if tini=$(find_tini "$pid"); then
			echo "$tini" >"$DIR/$h/tini.pid"
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	cat "$DIR/$h/daemon.log" >&2
	die "$h: tini did not start"
}

# wait_ready waits until every host's daemon accepts TCP connections.
wait_ready() {
	local n=$1 k deadline=$((SECONDS + READY_TIMEOUT)) pending
	while :; do
		pending=()
		for k in $(seq "$n"); do
			nc -z -w 1 "$NET.$k" "$PORT" 2>/dev/null || pending+=("$k")
		done
		[ ${#pending[@]} = 0 ] && return 0
		for k in "${pending[@]}"; do
			if ! kill -0 "$(cat "$DIR/h$k/tini.pid")" 2>/dev/null; then
				log "h$k: the daemon exited; its log:"
				cat "$DIR/h$k/daemon.log" >&2
				die "h$k failed to start (cluster.sh down cleans up)"
			fi
		done
		if [ $SECONDS -ge $deadline ]; then
			for k in "${pending[@]}"; do
				log "h$k: no daemon on $NET.$k:$PORT after ${READY_TIMEOUT}s; its log:"
				cat "$DIR/h$k/daemon.log" >&2
			done
			die "daemons not ready (cluster.sh down cleans up)"
		fi
		sleep 0.1
	done
}

cmd_up() {
	[ $# = 1 ] || usage
	local n=$1 k
	if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt $MAX_HOSTS ]; then
		die "up: N must be 1..$MAX_HOSTS, got '$n'"
	fi
	need_root
	cmd_down
	ensure_binaries

	mkdir -p "$DIR"
	chmod 0700 "$DIR"
	echo "$n" >"$DIR/size"
	(umask 077 && head -c 32 /dev/urandom | base64 >"$DIR/token")

	# Post-copy (migrate --post-copy) needs CRIU's 4 MiB pipes; the
	# setting is the machine's, shared by every namespace host.
	if [ "$(cat /proc/sys/fs/pipe-max-size)" -lt 4194304 ]; then
		log "raising fs.pipe-max-size to 4194304 for post-copy"
		sysctl -qw fs.pipe-max-size=4194304
	fi
	ip link add "$BRIDGE" type bridge forward_delay 0
	sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1"
	ip addr add "$NET.254/24" dev "$BRIDGE"
	ip link set "$BRIDGE" up
	# Every daemon knows them all (--peers), for placement.
	PEERS=$(for k in $(seq "$n"); do printf '%s:%s,' "$NET.$k" "$PORT"; done)
	PEERS=${PEERS%,}
	for k in $(seq "$n"); do
		start_host "$k"
	done
	wait_ready "$n"
	log "up: $n hosts, $NET.1..$NET.$n port $PORT, state in $DIR"
}

# ---------------------------------------------------------------------------
# down

# KILLED collects the pids down killed, to wait for them at the end.
KILLED=()

# is_ns_init reports whether pid $1 is PID 1 of a PID namespace below ours.
is_ns_init() {
	awk '$1 == "NSpid:" { exit !(NF > 2 && $NF == 1) }' "/proc/$1/status" 2>/dev/null
}

# kill_netns kills everything in namespace $1: first each host's PID 1
# (tini), which takes its PID namespace with it and is reaped by its parent,
# unshare; then whatever is left, until nothing is.
kill_netns() {
	local h=$1 pids pid inits=() _
	for pid in $(ip netns pids "$h" 2>/dev/null || true); do
		if is_ns_init "$pid"; then inits+=("$pid"); fi
	done
	if [ ${#inits[@]} -gt 0 ]; then
		KILLED+=("${inits[@]}")
		kill -KILL "${inits[@]}" 2>/dev/null || true
		# Let unshare reap tini before anything kills unshare, or tini
		# would be left a zombie of this machine's non-reaping PID 1.
		for _ in $(seq 40); do
			for pid in "${inits[@]}"; do [ -e "/proc/$pid" ] && break; done
			[ -e "/proc/$pid" ] || break
			sleep 0.05
		done
	fi
	for _ in $(seq 100); do
		pids=$(ip netns pids "$h" 2>/dev/null || true)
		[ -z "$pids" ] && return 0
		# shellcheck disable=SC2206 # pids are numbers
		KILLED+=($pids)
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
		sleep 0.05
	done
	log "warning: processes still in $h: $pids"
}

# wait_killed waits until every killed process has exited. A dying PID 1 of a
# PID namespace leaves its network namespace before it has reaped the rest,
# so the namespace looks empty early. Zombies count as gone: unshare, the
# parent of a host's tini, exits after reaping it and only this machine's
# PID 1 can reap unshare.
wait_killed() {
	local pid _ alive
	for _ in $(seq 100); do
		alive=0
		for pid in "${KILLED[@]}"; do
			if [ -e "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
				alive=1
				break
			fi
		done
		[ $alive = 0 ] && return 0
		sleep 0.05
	done
	log "warning: process $pid did not exit"
}

cmd_down() {
	need_root
	local h pid
	for h in $(hosts_present); do
		# A tini whose namespace lost its name is found by its pid file.
		pid=$(cat "$DIR/$h/tini.pid" 2>/dev/null || true)
		if [ ! -e "/run/netns/$h" ] && [ -n "$pid" ] && is_host_tini "$pid" "$h"; then
			KILLED+=("$pid")
			kill -KILL "$pid" 2>/dev/null || true
		fi
		if [ -e "/run/netns/$h" ]; then
			kill_netns "$h"
			# CRIU's locks live inside the host's namespace and go with
			# it; remove them anyway so none outlives a stuck namespace.
			ip netns exec "$h" nft list tables 2>/dev/null | awk '$3 ~ /^CRIU-/ {print $2, $3}' |
				while read -r fam name; do
					ip netns exec "$h" nft delete table "$fam" "$name" 2>/dev/null || true
				done
			ip netns del "$h" 2>/dev/null || true
		fi
		ip link del "$BRIDGE-$h" 2>/dev/null || true
	done
	ip link del "$BRIDGE" 2>/dev/null || true
	# ip netns add makes /run/netns a mount point and never undoes it. Undo
	# it when no namespace is left (umount fails, harmlessly, if one is).
	if [ -z "$(ip netns list 2>/dev/null)" ] && mountpoint -q /run/netns; then
		umount /run/netns 2>/dev/null || true
	fi
	[ ${#KILLED[@]} = 0 ] || wait_killed
	rm -rf "$DIR"
}

# ---------------------------------------------------------------------------
# exec and env

cmd_exec() {
	[ $# -ge 2 ] || usage
	local h=$1 tini fd
	shift
	need_root
	[[ $h =~ ^h[0-9]+$ ]] || die "exec: bad host '$h' (want hK)"
	tini=$(cat "$DIR/$h/tini.pid" 2>/dev/null) || die "exec: no host $h (cluster.sh up N first)"
	is_host_tini "$tini" "$h" || die "exec: host $h is not running"
	# No inherited descriptors above 2 (the command may be dumped by CRIU).
	# Bash's own script descriptor is close-on-exec.
	for fd in "/proc/$$/fd/"*; do
		fd=${fd##*/}
		case $fd in 0 | 1 | 2 | 255) ;; *) eval "exec $fd<&-" || true ;; esac
	done
	# nsenter forks into the PID namespace and exits with the command's
	# status. The working directory is kept if the host can see it.
	# shellcheck disable=SC2016 # expanded by sh inside the host
	exec nsenter -t "$tini" -p -m -n -u -- env PATH="$REPO/bin:$PATH" \
		sh -c 'if [ -d "$1" ]; then cd "$1"; else cd /; fi; shift; exec "$@"' cluster-exec "$PWD" "$@"
}

# cmd_env prints the settings of migrated and dsmrun for this cluster (eval
# them), and for test/integration's harness where each host keeps its state
# and the token, as the hosts see them (the same paths as here).
cmd_env() {
	[ $# = 0 ] || usage
	local n k hosts="" dirs=""
	n=$(cat "$DIR/size" 2>/dev/null) || die "env: no cluster in $DIR (cluster.sh up N first)"
	for k in $(seq "$n"); do
		hosts+=${hosts:+,}$NET.$k:$PORT
		dirs+=${dirs:+,}$DIR/h$k/state
	done
	# Exported, so that what eval sets reaches dsmrun; each line ends its
	# command, so that `eval $(cluster.sh env)` (newlines become spaces) works too.
	printf 'export %s=%s;\n' MIGRATED_HOSTS "$hosts" MIGRATED_TOKEN_FILE "$DIR/token" \
		CLUSTER_STATE_DIRS "$dirs" CLUSTER_TOKEN_FILE "$DIR/token"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
up) cmd_up "$@" ;;
down) [ $# = 0 ] || usage; cmd_down ;;
exec) cmd_exec "$@" ;;
env) cmd_env "$@" ;;
-h | --help | help) usage ;;
*) usage ;;
esac

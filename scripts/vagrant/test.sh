#!/usr/bin/env bash
# make test-vagrant: the Vagrantfile's VMs, brought up on this machine and
# tested, then destroyed.
#  1. scripts/vagrant/setup-host.sh: Vagrant, vagrant-libvirt, libvirt, QEMU
#     from Debian's packages; virtlogd and libvirtd started if not running;
#  2. scripts/vagrant/build-box.sh: the box, from Debian's packages (cached);
#  3. bin/ and the test binaries, built here (the guests have no Go);
#  4. vagrant up of MIGRATE_NODES (default 3) VMs with libvirt's qemu driver (TCG);
#  5. scripts/vagrant/smoke.sh: migrated ps on every node, a process moved
#     node1 -> node2;
#  6. the integration tests against the VMs, when the harness takes its
#     cluster from the environment (MIGRATED_CLUSTER); skipped, saying so, otherwise;
#  7. always: vagrant destroy -f, libvirt networks removed, net.ipv4.ip_forward
#     as it was, and the libvirt daemons stopped if this script started them.
# Prints how long each step took. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
V=scripts/vagrant/cluster.sh
export MIGRATE_NODES=${MIGRATE_NODES:-3}
# This machine kind's KVM runs only specially built guest kernels: TCG.
export MIGRATE_LIBVIRT_DRIVER=${MIGRATE_LIBVIRT_DRIVER:-qemu}
export PATH=/usr/local/go/bin:$PATH
GO=${GO:-go}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "test-vagrant: must run as root" >&2; exit 1; }

times=()
step() { # step NAME CMD...: runs CMD, records its time
	local name=$1 t0=$SECONDS rc=0
	shift
	say "$name"
	"$@" || rc=$?
	times+=("$(printf '%-34s %4d s%s' "$name" $((SECONDS - t0)) "$([ $rc = 0 ] || echo "  (FAILED, exit $rc)")")")
	return $rc
}
report() {
	say "times"
	printf '%s\n' "${times[@]}" | tee /tmp/dsmigrate-test-vagrant.times
}

started_daemons=()
for d in virtlogd libvirtd; do pgrep -x $d >/dev/null || started_daemons+=("$d"); done
step "setup host (packages, libvirtd)" scripts/vagrant/setup-host.sh

fwd=$(sysctl -n net.ipv4.ip_forward)
cleanup() {
	local rc=$? t0=$SECONDS
	set +e
	say "vagrant destroy"
	$V down
	times+=("$(printf '%-34s %4d s' "destroy" $((SECONDS - t0)))")
	if [ "$(sysctl -n net.ipv4.ip_forward)" != "$fwd" ]; then
		echo "restoring net.ipv4.ip_forward=$fwd (libvirt changed it)"
		sysctl -qw net.ipv4.ip_forward="$fwd"
	fi
	if [ -z "${MIGRATE_KEEP_LIBVIRTD:-}" ]; then
		for d in "${started_daemons[@]}"; do
			local pid
			pid=$(cat "/run/$d.pid" 2>/dev/null || true)
			if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$d" ]; then
				kill "$pid" && echo "stopped $d (pid $pid), which this run started"
			fi
		done
	fi
	local left
	left=$(pgrep -a -f '^/usr/bin/qemu-system.*dsmigrate_node' || true)
	[ -z "$left" ] || { echo "LEFT RUNNING: $left"; rc=1; }
	left=$(ip -br link | awk '$1 ~ /^(virbr|vnet)/' || true)
	[ -z "$left" ] || { echo "LEFT BEHIND: $left"; rc=1; }
	report
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "box (build-box.sh; cached)" scripts/vagrant/build-box.sh
step "build bin/ and test binaries" "$GO" build -o bin/ ./cmd/... ./test/integration/migtest ./examples/...
step "vagrant up ($MIGRATE_NODES VMs)" $V up "$MIGRATE_NODES"
step "smoke test (smoke.sh)" scripts/vagrant/smoke.sh "$MIGRATE_NODES"

if grep -q MIGRATED_CLUSTER test/integration/*.go; then
	step "integration tests on the VMs" env MIGRATED_CLUSTER="$REPO/$V" \
		"$GO" test -count=1 -timeout 60m -v ./test/integration/ ${MIGRATE_TEST_RUN:+-run "$MIGRATE_TEST_RUN"}
else
	say "integration tests on the VMs: SKIPPED"
	echo "The Go integration tests still make their own namespace cluster (test/integration/cluster.sh);"
	echo "they run against the VMs once they take it from the environment: MIGRATED_CLUSTER=$V,"
	echo "a script with cluster.sh's verbs (up N, env, exec hK CMD..., down)."
	times+=("$(printf '%-34s %s' "integration tests on the VMs" "skipped (no MIGRATED_CLUSTER in the harness)")")
fi

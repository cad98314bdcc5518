#!/usr/bin/env bash
# test/integration/cluster.sh's verbs on the Vagrantfile's VMs, so that what
# runs against namespace hosts can run against the VMs:
#
#   cluster.sh up N            vagrant up node1..nodeN (MIGRATE_NODES=N), each running migrated
#   cluster.sh down            vagrant destroy -f, and remove any libvirt network or domain left
#   cluster.sh exec HOST CMD.. run CMD as root on HOST (nodeK or hK), in /work/main's bin on PATH;
#                              exit status is CMD's
#   cluster.sh env             print `export MIGRATED_HOSTS=...;` and MIGRATED_TOKEN_FILE for
#                              eval, and CLUSTER_STATE_DIRS and CLUSTER_TOKEN_FILE (paths in
#                              the VMs), one a line
#   cluster.sh ip K            print node K's address on the private network
#
# Settings are the Vagrantfile's (MIGRATE_NET, MIGRATE_FIRST, MIGRATE_LIBVIRT_DRIVER...).
# exec uses an ssh configuration cached from `vagrant ssh-config` in
# .vagrant/dsmigrate-ssh-config (vagrant ssh itself costs ~2 s a call), and one
# shared ssh connection per node (ControlMaster; it ends 60 s after its last use,
# or at down): 0.4 s a call under TCG instead of 1.6.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
NET=${MIGRATE_NET:-10.78.0}
FIRST=${MIGRATE_FIRST:-11}
PORT=7077
SSHCFG=$REPO/.vagrant/dsmigrate-ssh-config
SSHMUX=(-o ControlMaster=auto -o "ControlPath=/tmp/dsmigrate-ssh-%C" -o ControlPersist=60)
VIRSH=(virsh -q -c qemu:///system)

log() { echo "vagrant-cluster: $*" >&2; }
die() { log "$*"; exit 1; }
usage() {
	sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
	exit 2
}

nodes() { # the number of nodes up (from the ssh config), or MIGRATE_NODES
	if [ -f "$SSHCFG" ]; then grep -c '^Host ' "$SSHCFG"; else echo "${MIGRATE_NODES:-3}"; fi
}

cmd_up() {
	[ $# = 1 ] || usage
	local n=$1
	if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ]; then die "up: N must be a number >= 1, got '$n'"; fi
	cd "$REPO"
	rm -f "$SSHCFG"
	# Side by side, TCG guests boot no faster than one after the other on a
	# 2-core machine; libvirt's own parallel start is kept.
	# Each line with the seconds since the start; the box upload's progress
	# meter (one line per percent) left out.
	local t0=$SECONDS
	MIGRATE_NODES=$n vagrant up --provider=libvirt 2>&1 |
		sed -u 's/\x1b\[KProgress: [0-9]*%//g' |
		while IFS= read -r l; do printf '[%4d s] %s\n' $((SECONDS - t0)) "$l"; done
	MIGRATE_NODES=$n vagrant ssh-config >"$SSHCFG.tmp"
	mv "$SSHCFG.tmp" "$SSHCFG"
}

# down destroys the VMs and then checks that nothing of them is left: no
# domain, no network of the Vagrantfile's, no volume of a node.
cmd_down() {
	[ $# = 0 ] || usage
	cd "$REPO"
	local n d
	n=${MIGRATE_NODES:-$(nodes)}
	[ "$n" -ge 3 ] || n=3
	if [ -f "$SSHCFG" ]; then # the shared ssh connections of exec
		awk '$1 == "Host" {print $2}' "$SSHCFG" | while read -r d; do
			ssh -F "$SSHCFG" "${SSHMUX[@]}" -o LogLevel=QUIET -O exit "$d" </dev/null 2>/dev/null || true
		done
	fi
	MIGRATE_NODES=$n vagrant destroy -f >/dev/null 2>&1 || MIGRATE_NODES=$n vagrant destroy -f || true
	rm -f "$SSHCFG"
	command -v virsh >/dev/null || return 0
	"${VIRSH[@]}" version >/dev/null 2>&1 || return 0
	local prefix=dsmigrate_node
	for d in $("${VIRSH[@]}" list --all --name 2>/dev/null | grep "^${prefix}[0-9]*$" || true); do
		log "removing leftover domain $d"
		"${VIRSH[@]}" destroy "$d" >/dev/null 2>&1 || true
		"${VIRSH[@]}" undefine "$d" --remove-all-storage >/dev/null 2>&1 || true
	done
	for d in dsmigrate-net dsmigrate-mgmt; do
		if "${VIRSH[@]}" net-info "$d" >/dev/null 2>&1; then
			log "removing leftover network $d"
			"${VIRSH[@]}" net-destroy "$d" >/dev/null 2>&1 || true
			"${VIRSH[@]}" net-undefine "$d" >/dev/null 2>&1 || true
		fi
	done
	for d in $("${VIRSH[@]}" vol-list default 2>/dev/null | awk -v p="$prefix" 'index($1, p) == 1 {print $1}'); do
		log "removing leftover volume $d"
		"${VIRSH[@]}" vol-delete --pool default "$d" >/dev/null 2>&1 || true
	done
}

cmd_exec() {
	[ $# -ge 2 ] || usage
	local h=$1 q
	shift
	case $h in
	node[0-9]*) ;;
	h[0-9]*) h=node${h#h} ;;
	*) die "exec: bad host '$h' (want nodeK or hK)" ;;
	esac
	[ -f "$SSHCFG" ] || die "exec: no VMs up (cluster.sh up N first)"
	grep -qx "Host $h" "$SSHCFG" || die "exec: no VM $h"
	# One shell word per argument, run under sudo in /work/main/bin's PATH,
	# in the working directory when the guest has it (the repository is at
	# the same path there), with no descriptors above 2.
	q=$(printf '%q ' "$@")
	# shellcheck disable=SC2029 # expanded on the guest, on purpose
	exec ssh -F "$SSHCFG" "${SSHMUX[@]}" -o LogLevel=ERROR "$h" \
		"sudo env PATH=/work/main/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		sh -c 'if [ -d \"\$1\" ]; then cd \"\$1\"; else cd /; fi; shift; exec \"\$@\"' vagrant-exec $(printf '%q' "$PWD") $q"
}

# cmd_env prints the settings of migrated and dsmrun for the VMs (eval them),
# and for test/integration's harness where each VM's daemon keeps its state and
# the token, inside the VM (the Vagrantfile's provisioning puts them there).
cmd_env() {
	[ $# = 0 ] || usage
	local n k hosts="" dirs=""
	n=$(nodes)
	for k in $(seq "$n"); do
		hosts+=${hosts:+,}$NET.$((FIRST + k - 1)):$PORT
		dirs+=${dirs:+,}/var/lib/migrated
	done
	# Exported (eval must hand them to dsmrun), one command a line.
	printf 'export %s=%s;\n' MIGRATED_HOSTS "$hosts" MIGRATED_TOKEN_FILE "$REPO/.vagrant/token" \
		CLUSTER_STATE_DIRS "$dirs" CLUSTER_TOKEN_FILE /etc/migrated/token
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
up) cmd_up "$@" ;;
down) cmd_down "$@" ;;
exec) cmd_exec "$@" ;;
env) cmd_env "$@" ;;
ip) [ $# = 1 ] || usage; echo "$NET.$((FIRST + $1 - 1))" ;;
-h | --help | help) usage ;;
*) usage ;;
esac

#!/usr/bin/env bash
# Installs what the project needs on a Debian host: CRIU >= 4.2 (system one if it
# works, otherwise Debian testing's criu in a private prefix with a wrapper), tini,
# nftables, iptables, iproute2, arping, netcat, procps, gcc, and a Go toolchain new enough
# for go.mod (scripts/install-go.sh). Idempotent and quiet when done.
# Usage: scripts/install-deps.sh [PREFIX]   (default PREFIX=/opt/migrate-criu)
set -euo pipefail

PREFIX=${1:-${CRIU_PREFIX:-/opt/migrate-criu}}
WRAPPER=/usr/local/sbin/migrate-criu
log() { echo "install-deps: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
	log "must run as root (it installs packages and sets sysctls)"; exit 1
fi

# --- Debian packages --------------------------------------------------------
need=()
command -v tini >/dev/null || need+=(tini)
command -v nft >/dev/null || need+=(nftables)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v arping >/dev/null || need+=(iputils-arping)
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v nsenter >/dev/null || need+=(util-linux)
command -v sysctl >/dev/null && command -v pgrep >/dev/null || need+=(procps)
command -v gcc >/dev/null || need+=(gcc) # cgo (dsmshm)
command -v chromium >/dev/null || need+=(chromium) # the live view's test (TestLiveView)
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- Go new enough for go.mod (PATH's or /usr/local/go; GO_PREFIX moves it) ---
bash "$(dirname "${BASH_SOURCE[0]}")/install-go.sh"

# --- sysctls CRIU needs (post-copy page pipes) -------------------------------
cur=$(sysctl -n fs.pipe-max-size)
if [ "$cur" -lt 4194304 ]; then sysctl -q -w fs.pipe-max-size=4194304; fi

# --- CRIU ---------------------------------------------------------------------
criu_ok() { # $1 = criu binary; ok when version >= 4.2 and `criu check` passes
	local v
	v=$("$1" --version 2>/dev/null | sed -n 's/^Version: *//p') || return 1
	[ -n "$v" ] || return 1
	local maj=${v%%.*} rest=${v#*.}; local min=${rest%%.*}
	{ [ "$maj" -gt 4 ] || { [ "$maj" -eq 4 ] && [ "$min" -ge 2 ]; }; } || return 1
	"$1" check >/dev/null 2>&1
}

if [ -x "$WRAPPER" ] && criu_ok "$WRAPPER"; then exit 0; fi
if command -v criu >/dev/null && criu_ok "$(command -v criu)"; then
	ln -sf "$(command -v criu)" "$WRAPPER"; exit 0
fi

log "system criu missing or too old; installing Debian testing's criu into $PREFIX"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/debs"
cat >"$work/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian forky main
SRC
aptopts=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
	-o Dir::State::Lists="$work/lists" -o Dir::State::Status=/dev/null
	-o Dir::Cache::Archives="$work/archives" -o Dir::Cache="$work" -o APT::Get::List-Cleanup=0
	-o Debug::NoLocking=1 -o Acquire::Languages=none -o APT::Architecture=amd64
	-o APT::Architectures=amd64)
if ! out=$(apt-get "${aptopts[@]}" update -qq 2>&1); then
	# A mirror may serve testing's Release file after its Valid-Until (seen on a
	# fresh machine here: "is expired"): use it, its signature is still checked.
	grep -q 'is expired' <<<"$out" || { echo "$out" >&2; exit 1; }
	log "the mirror's forky Release file is past its Valid-Until date; using it (its signature is checked)"
	aptopts+=(-o Acquire::Check-Valid-Until=false)
	apt-get "${aptopts[@]}" update -qq >/dev/null 2>&1 || apt-get "${aptopts[@]}" update
fi
pkgs=$(apt-cache "${aptopts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
	--no-breaks --no-replaces --no-enhances criu | { grep -v -e '^ ' -e '^<' || true; } | sort -u)
(cd "$work/debs" && apt-get "${aptopts[@]}" download $pkgs >/dev/null 2>&1) || (cd "$work/debs" && apt-get "${aptopts[@]}" download $pkgs)
rm -rf "$PREFIX.new"; mkdir -p "$PREFIX.new"
for d in "$work"/debs/*.deb; do dpkg -x "$d" "$PREFIX.new"; done
rm -rf "$PREFIX"; mv "$PREFIX.new" "$PREFIX"
mkdir -p "$(dirname "$WRAPPER")"
cat >"$WRAPPER" <<WRAP
#!/bin/sh
# CRIU from Debian testing, run with its own libraries (installed by scripts/install-deps.sh).
exec $PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path $PREFIX/usr/lib/x86_64-linux-gnu:$PREFIX/lib/x86_64-linux-gnu $PREFIX/usr/sbin/criu "\$@"
WRAP
chmod 755 "$WRAPPER"
if ! criu_ok "$WRAPPER"; then
	log "installed CRIU does not pass 'criu check':"; "$WRAPPER" --version || true; "$WRAPPER" check || true; exit 1
fi
log "CRIU ready: $("$WRAPPER" --version | head -1) at $WRAPPER"

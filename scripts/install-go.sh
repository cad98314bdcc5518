#!/usr/bin/env bash
# Installs a Go toolchain new enough for go.mod's `go` line into PREFIX, unless
# one is there already (the `go` on PATH or PREFIX/bin/go). Run by
# scripts/install-deps.sh (make deps) and by scripts/go when it finds no Go.
#
# Usage: scripts/install-go.sh [PREFIX]   install if needed (default PREFIX:
#                                         $GO_PREFIX, else /usr/local/go)
#        scripts/install-go.sh --find     print the path of a Go new enough
#                                         (PATH's first, then PREFIX's); exit 1
#                                         and print nothing if there is none
#
# Where from: Go's own toolchain module, golang.org/toolchain@v0.0.1-goX.Y.Z.OS-ARCH,
# from the Go module proxy ($GOPROXY's first http(s) entry, else
# https://proxy.golang.org): the zip `go` itself downloads when it switches
# toolchains, a complete GOROOT. Once unpacked, and before it is installed, its
# hash (go.sum's h1:) must be the one the checksum database lists for it
# (sum.golang.org, read through the proxy, else directly; go also verifies
# the database's signed tree, this script does not; GOSUMDB=off skips the
# check, as it does for go). Needs only curl and unzip (installed with apt-get when
# missing, which needs root).
#
# The version: $GO_VERSION if set (e.g. 1.26.8); else go.mod's `toolchain`
# line if it has one; else the newest release of go.mod's major.minor that the
# proxy lists (e.g. go 1.26.0 -> the newest 1.26.x), else the go line's own.
# A PREFIX that exists must be empty or a Go installation (it is replaced
# whole); nothing else is touched. Idempotent and quiet when nothing is to do.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
SELF_GO=$REPO/scripts/go # the wrapper: never a candidate
log() { echo "install-go: $*" >&2; }
die() {
	log "$*"
	exit 1
}

find_only=0
if [ "${1:-}" = --find ]; then
	find_only=1
	shift
fi
[ $# -le 1 ] || die "usage: scripts/install-go.sh [PREFIX] | --find"
PREFIX=${1:-${GO_PREFIX:-/usr/local/go}}
[ -n "$PREFIX" ] || die "empty PREFIX"
PREFIX=$(realpath -m "$PREFIX")
[ "$PREFIX" != / ] || die "PREFIX / refused: give the directory Go goes in, e.g. /usr/local/go"

# need is go.mod's go line (1.26.0), want_tc its toolchain line (go1.26.8) if any.
need=$(awk '$1 == "go" { print $2; exit }' "$REPO/go.mod")
[ -n "$need" ] || die "no go line in $REPO/go.mod"
want_tc=$(awk '$1 == "toolchain" { sub(/^go/, "", $2); print $2; exit }' "$REPO/go.mod")

# ver_ge A B: version A >= B (1.26.8, 1.26, 1.26rc1; an rc or beta comes
# before the .0 release of its minor).
ver_ge() {
	local a b
	a=$(ver_key "$1") && b=$(ver_key "$2") || return 1
	[ "$(printf '%s\n%s\n' "$a" "$b" | sort -n -t. -k1,1 -k2,2 -k3,3 -k4,4 | head -1)" = "$b" ]
}
# ver_key prints MAJOR.MINOR.STAGE.PATCH (STAGE 0 beta, 1 rc, 2 release).
ver_key() {
	local v=${1#go} re='^([0-9]+)\.([0-9]+)(\.([0-9]+)|(rc|beta)([0-9]+))?$'
	[[ $v =~ $re ]] || return 1
	local stage=2 patch=${BASH_REMATCH[4]:-0}
	case ${BASH_REMATCH[5]} in rc) stage=1 patch=${BASH_REMATCH[6]} ;; beta) stage=0 patch=${BASH_REMATCH[6]} ;; esac
	echo "${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.$stage.$patch"
}

# go_ok GO: GO runs and is new enough for go.mod (asked outside the module, so
# that no toolchain switch happens).
go_ok() {
	local v
	[ -x "$1" ] || return 1
	v=$(cd / && GOTOOLCHAIN=local "$1" version 2>/dev/null | awk '{ print $3 }') || return 1
	ver_ge "$v" "$need"
}

# find_go prints the first Go new enough: PATH's, then PREFIX's.
find_go() {
	local g self
	self=$(realpath -m "$SELF_GO")
	g=$(command -v go 2>/dev/null || true)
	if [ -n "$g" ] && [ "$(realpath -m "$g")" != "$self" ] && go_ok "$g"; then
		echo "$g"
		return 0
	fi
	if go_ok "$PREFIX/bin/go"; then
		echo "$PREFIX/bin/go"
		return 0
	fi
	return 1
}

if [ $find_only = 1 ]; then
	find_go
	exit
fi
if find_go >/dev/null; then exit 0; fi

# --- what the download needs ---------------------------------------------------
pkgs=()
command -v curl >/dev/null || pkgs+=(curl)
command -v unzip >/dev/null || pkgs+=(unzip)
[ -e /etc/ssl/certs/ca-certificates.crt ] || pkgs+=(ca-certificates)
if [ ${#pkgs[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "needs ${pkgs[*]} (run as root to have them installed, or install them)"
	log "installing ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# --- one installer at a time per PREFIX: a lock on its parent directory ----------
parent=$(dirname "$PREFIX")
mkdir -p "$parent"
exec 9<"$parent"
flock 9
if find_go >/dev/null; then exit 0; fi # another one just did it

if [ -e "$PREFIX" ] && [ -n "$(ls -A "$PREFIX" 2>/dev/null)" ] && ! { [ -f "$PREFIX/VERSION" ] && [ -d "$PREFIX/src/runtime" ]; }; then
	die "$PREFIX exists and is not a Go installation: give an empty or new directory (GO_PREFIX or the argument)"
fi

case $(uname -m) in
x86_64) arch=amd64 ;;
aarch64 | arm64) arch=arm64 ;;
i?86) arch=386 ;;
armv6* | armv7*) arch=armv6l ;;
*) die "no Go toolchain known for machine $(uname -m)" ;;
esac
os=$(uname -s | tr '[:upper:]' '[:lower:]')

proxy=https://proxy.golang.org
IFS=',|' read -ra entries <<<"${GOPROXY:-}"
for e in "${entries[@]}"; do
	case $e in http://* | https://*)
		proxy=${e%/}
		break
		;;
	esac
done
fetch() { curl -fsSL --retry 3 --connect-timeout 20 "$@"; }

# --- which version -----------------------------------------------------------------
if [ -n "${GO_VERSION:-}" ]; then
	ver=${GO_VERSION#go}
elif [ -n "$want_tc" ] && ver_ge "$want_tc" "$need"; then
	ver=$want_tc
else
	mm=$(ver_key "$need") || die "go.mod's go line '$need' is not a version"
	mm=${mm%.*.*}
	ver=$(fetch "$proxy/golang.org/toolchain/@v/list" 2>/dev/null |
		sed -n "s/^v0\.0\.1-go\(${mm//./\\.}\(\.[0-9][0-9]*\)\{0,1\}\)\.$os-$arch\$/\1/p" |
		sort -t. -k1,1n -k2,2n -k3,3n | tail -1) || true
	ver=${ver:-$need}
fi
ver_ge "$ver" "$need" || die "Go $ver is older than go.mod's go $need"
mod=golang.org/toolchain@v0.0.1-go$ver.$os-$arch

log "installing Go $ver into $PREFIX (from $proxy)"
work=$(mktemp -d "$parent/.install-go.XXXXXX")
trap 'rm -rf "$work"' EXIT
fetch -o "$work/go.zip" "$proxy/golang.org/toolchain/@v/v0.0.1-go$ver.$os-$arch.zip" ||
	die "cannot download $mod from $proxy (is the Go module proxy reachable? GOPROXY names another)"
unzip -q "$work/go.zip" -d "$work/x"
rm -f "$work/go.zip"

# go.sum's h1: SHA-256 over the sorted lines "SHA256-HEX  PATH" of every file.
if [ "${GOSUMDB:-}" = off ]; then
	log "GOSUMDB=off: the download is not checked against the checksum database"
else
	sums=$(fetch "$proxy/sumdb/sum.golang.org/lookup/$mod" 2>/dev/null ||
		fetch "https://sum.golang.org/lookup/$mod" 2>/dev/null) ||
		die "cannot read $mod's checksum from sum.golang.org (through $proxy or directly); GOSUMDB=off skips the check"
	want=$(awk -v m="${mod%@*}" -v v="${mod#*@}" '$1 == m && $2 == v { sub(/^h1:/, "", $3); print $3 }' <<<"$sums")
	[ -n "$want" ] || die "the checksum database has no hash for $mod"
	got=$(cd "$work/x" && find . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 sha256sum |
		sha256sum | cut -d' ' -f1)
	want_hex=$(base64 -d <<<"$want" | od -An -v -tx1 | tr -d ' \n')
	[ "$got" = "$want_hex" ] || die "$mod from $proxy does not match the checksum database: not installed"
fi

root=$work/x/$mod
[ -x "$root/bin/go" ] || die "$mod holds no bin/go"
# Module zips need not keep file modes: the tools must be executable.
chmod 0755 "$root"/bin/* "$root"/pkg/tool/*/*
if [ -e "$PREFIX" ]; then
	mv "$PREFIX" "$work/old"
fi
mv "$root" "$PREFIX"
go_ok "$PREFIX/bin/go" || die "the Go installed at $PREFIX does not run"
log "Go ready: $(GOTOOLCHAIN=local "$PREFIX/bin/go" version) at $PREFIX/bin/go"

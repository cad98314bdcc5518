#!/usr/bin/env bash
# The dsmshm part of make bench (run by scripts/bench.sh when executable;
# also runs alone). Builds bin/dsmbench (bench/dsm) and runs it: each item
# is measured side by side with its baseline in one run, on 127.0.0.1 ports
# below 32768 (from DSM_BENCH_PORT, default 24100), and the table of ratios
# goes to bench-out/dsm.md and stdout. Takes about a minute on 2 cores.
# Extra flags for bin/dsmbench can be given in DSM_BENCH_ARGS (see
# bin/dsmbench -h), e.g. DSM_BENCH_ARGS="-reps 5" for a quicker run.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=${GOFLAGS:--mod=mod}
mkdir -p bin bench-out
# Item 5c compiles dsmshm/aead.c into bench/dsm (an #include): the go command
# does not see a file included from another directory, so the source's hash
# goes into the C flags, and an edit to it rebuilds bench/dsm (and the other
# cgo packages, once) instead of timing a stale copy from the build cache.
aead_src=$(cat dsmshm/aead.c dsmshm/aead.h | sha256sum | cut -c1-16)
CGO_CFLAGS="$("${GO:-scripts/go}" env CGO_CFLAGS) -DDSMBENCH_AEAD_SRC=$aead_src" "${GO:-scripts/go}" build -o bin/dsmbench ./bench/dsm
# shellcheck disable=SC2086 # DSM_BENCH_ARGS is a list of flags
exec bin/dsmbench -out bench-out/dsm.md -port "${DSM_BENCH_PORT:-24100}" ${DSM_BENCH_ARGS:-}

#!/usr/bin/env bash
# The paper's measurement (Zoraja, Bode, Sunderam, EURO-PDP 2000: migrating a
# TreadMarks process cost ~10% over Condor's single-process transfer at 8
# nodes, growing almost linearly with nodes), reproduced on 4 namespace hosts
# for a Jacobi job of 2, 4, 6 and 8 ranks (run by scripts/bench.sh; also runs
# alone, as root, in ~6 minutes on 2 cores):
#
#  (a) a DSM-aware move of rank 1 (`dsmrun migrate`, "done: total" as
#      printed) next to a bare move of a plain process of the same memory
#      size (`migrated migrate` of `migtest mem N`, same source and target
#      host, same running job around it, right before or after, order
#      alternating): N is rank 1's resident anonymous and shared memory
#      (RssAnon + RssShmem in its host's /proc/PID/status; the DSM segments
#      are shared mappings; file pages are not dumped), measured once per
#      rank count in a probe job, less what migtest holds with no buffer, so
#      both moves carry about the same pages (the table shows the MiB each
#      moved); the plain process is started before the job (rank 1's host
#      and the target follow from --policy round-robin). Both totals come from the same daemon code: connect, freeze,
#      dump streaming pages to the target, transfer, restore, resume; the
#      DSM-aware one adds prepare (quiesce the rank's peers), the rank's TCP
#      connections to its peers, and rebind.
#  (a') the IP-preserving move of rank 1 (`dsmrun migrate --move-ip
#      10.77.0.101/24`) in a separate job started with `dsmrun run --rank-ips
#      10.77.0.100/24` (rank r owns 10.77.0.(100+r); CRIU's TCP repair carries
#      its connections: no prepare/rebind, a "network" phase instead), same
#      target choice, next to a bare move of a same-size plain process in that
#      same job, as in (a); no move back.
#  (b) the job's wall time (`dsmrun run` start to exit) without migrations and
#      with two moves of rank 1 (to the host with fewest ranks, and back).
#
# RANK_IPS: the --rank-ips base. Median of REPS (3) for each. Raw rows: bench-out/paper.tsv, every move's
# output: bench-out/paper-moves.log, every job's output: bench-out/paper-jobs/, table: bench-out/paper.md and stdout,
# plot: docs/paper-bench.svg. Failed jobs and moves are recorded as such.
set -euo pipefail
cd "$(dirname "$0")/.."
C=test/integration/cluster.sh
RANKS=${RANKS:-"2 4 6 8"}
REPS=${REPS:-3}
JN=${JACOBI_N:-1024}         # grid
# Sweeps: chosen per rank count so that a run lasts about TARGET_S seconds,
# from two calibration runs (1 and CALIB sweeps: T = a + b*sweeps), since
# dsmshm's speed changes from one commit to the next; JACOBI_ITERS fixes them.
TARGET_S=${TARGET_S:-7.5}
CALIB=${CALIB:-300}
JITERS=${JACOBI_ITERS:-}
MOVE_AT=${MOVE_AT:-0.15}     # first move at this fraction of the expected run
BACK_AT=${BACK_AT:-0.35}     # the move back at this fraction (rank 1 must still be sweeping: rank 0 verifies alone at the end, ~half the run at 2 ranks)
JOB_TIMEOUT=${JOB_TIMEOUT:-120}
RANK_IPS=${RANK_IPS:-10.77.0.100/24} # rank r: base + r
ip_of() { awk -v b="${RANK_IPS%/*}" -v r="$1" -v p="${RANK_IPS#*/}" 'BEGIN { n = split(b, o, "."); printf "%s.%s.%s.%d/%s", o[1], o[2], o[3], o[4] + r, p }'; } # rank -> CIDR
out=bench-out; mkdir -p $out docs
tsv=$out/paper.tsv moves=$out/paper-moves.log
tmp=$(mktemp -d /tmp/bench-paper.XXXXXX)
"${GO:-scripts/go}" build -o bin/ ./cmd/... ./test/integration/migtest ./examples/jacobi
# Every job's output is kept in bench-out/paper-jobs/.
trap '$C down >/dev/null 2>&1 || true; rm -rf $out/paper-jobs; mv "$tmp" $out/paper-jobs 2>/dev/null || rm -rf "$tmp"' EXIT
$C down >/dev/null 2>&1 || true
$C up 4 >/dev/null 2>&1
eval "$($C env)"
export MIGRATED_HOSTS MIGRATED_TOKEN_FILE
read -ra HOSTS <<<"${MIGRATED_HOSTS//,/ }"

fields() { local i s=$1; for ((i = 1; i < $2; i++)); do s+=$'\t'$1; done; echo "$s"; } # VALUE COUNT
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.0f", (b-a)*1000}'; }
hname() { sed 's/^10\.77\.0\.\([0-9]*\):.*/h\1/' <<<"$1"; }
# done_fields FILE -> "total downtime mib" from "done: total X ms, downtime Y ms, Z MiB moved",
# or "FAIL FAIL FAIL" when the command failed, printed no summary or warned.
done_fields() {
	local f
	f=$(sed -n 's/^done: total \([0-9.]*\) ms, downtime \([0-9.]*\) ms\(, \([0-9.]*\) MiB moved\)\{0,1\}.*/\1 \2 \4/p' "$1")
	if [ -z "$f" ] || grep -q '^warning:' "$1"; then echo "FAIL FAIL FAIL"; return; fi
	set -- $f
	echo "$1 $2 ${3:--}"
}

sleep_until() { sleep "$(awk -v t="$1" -v n="$(now)" 'BEGIN { d = t - n; printf "%.3f", (d > 0 ? d : 0) }')"; }
at() { awk -v t="$1" -v f="$2" -v s="$3" 'BEGIN { printf "%.3f", t + f * s }'; } # T0 FRACTION SECONDS

# Jobs. start_job RANKS TAG SWEEPS [DSMRUN RUN ARGS...] sets JPID, JOB, JT0; finish_job sets J to
# "rc ms verified", ms from the start to dsmrun's exit as the job's own
# subshell saw it (not in a command substitution: only this shell can wait).
start_job() {
	local extra=("${@:4}")
	JT0=$(now)
	(
		rc=0
		timeout -k 10 "$JOB_TIMEOUT" bin/dsmrun run "${extra[@]}" -n "$1" --policy round-robin -- "$PWD/bin/jacobi" -n "$JN" -iters "$3" \
			>"$tmp/$2.out" 2>"$tmp/$2.err" || rc=$?
		echo "$rc $(now)" >"$tmp/$2.end"
	) &
	JPID=$! JOB=
	for _ in $(seq 200); do
		JOB=$(sed -n 's/^job: //p' "$tmp/$2.err" 2>/dev/null)
		[ -n "$JOB" ] && break
		kill -0 $JPID 2>/dev/null || break
		sleep 0.05
	done
}
finish_job() { # tag
	local rc=0 v=no t1
	wait "$JPID" || true
	read -r rc t1 <"$tmp/$1.end" || { rc=-1; t1=$(now); }
	grep -q '^\[0\] result: .* verified$' "$tmp/$1.out" && v=yes
	if [ $rc != 0 ] || [ $v = no ]; then
		{ echo "== job $JOB ($1) rc=$rc verified=$v"; tail -5 "$tmp/$1.out"; tail -5 "$tmp/$1.err"; } >>"$moves"
	fi
	J="$rc $(ms "$JT0" "$t1") $v"
}
job_ps() { bin/dsmrun ps --json 2>/dev/null | jq -c --arg j "$JOB" '[.[] | select(.id == $j) | .ranks[]]'; }
rank1() { job_ps | jq -r '.[] | select(.rank == 1) | "\(.host) \(.pid)"'; } # -> "host pid"
wait_running() { # ranks
	for _ in $(seq 200); do
		[ "$(job_ps | jq '[.[] | select(.state == "running")] | length')" = "$1" ] && return 0
		kill -0 "$JPID" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

# Moves. Each prints "total downtime mib wall_ms" and logs the command's output.
dsm_move() { # rank to [--move-ip CIDR]
	local t0 t1 rc=0
	t0=$(now)
	bin/dsmrun migrate "$JOB" "$1" --to "$2" "${@:3}" >"$tmp/move.txt" 2>&1 || rc=$?
	t1=$(now)
	{ echo "== dsmrun migrate $JOB $* (rc $rc, at $(ms "$JT0" "$t0") ms of the job, for $(ms "$t0" "$t1") ms)"; cat "$tmp/move.txt"; } >>"$moves"
	if [ $rc != 0 ]; then echo "FAIL FAIL FAIL $(ms "$t0" "$t1")"; else echo "$(done_fields "$tmp/move.txt") $(ms "$t0" "$t1")"; fi
}
bare_move() { # srchost id to
	local t0 t1 rc=0
	t0=$(now)
	$C exec "$1" migrated migrate "$2" --to "$3" >"$tmp/move.txt" 2>&1 || rc=$?
	t1=$(now)
	{ echo "== migrated migrate $2 --to $3 (plain process, rc $rc, at $(ms "$JT0" "$t0") ms of the job, for $(ms "$t0" "$t1") ms)"; cat "$tmp/move.txt"; } >>"$moves"
	if [ $rc != 0 ]; then echo "FAIL FAIL FAIL $(ms "$t0" "$t1")"; else echo "$(done_fields "$tmp/move.txt") $(ms "$t0" "$t1")"; fi
}
start_plain() { # host mib -> id, once its memory is filled and checked
	local id
	id=$($C exec "$1" migrated run --name paper-bare -- migtest mem "$2")
	for _ in $(seq 300); do
		$C exec "$1" migrated logs "$id" 2>/dev/null | grep -q "mem ok" && break
		sleep 0.05
	done
	echo "$id"
}
plain_pid() { $C exec "$1" migrated ps --json | jq -r --arg i "$2" '.[] | select(.id == $i) | .pid'; }
kill_plain() { # id: wherever it is
	local h
	for h in "${HOSTS[@]}"; do $C exec "$(hname "$h")" migrated kill "$1" >/dev/null 2>&1 || true; done
}

# status3 HOST PID -> "VmRSS RssAnon RssShmem" (kB) in one command.
status3() {
	$C exec "$1" awk '$1 == "VmRSS:" {r = $2} $1 == "RssAnon:" {a = $2} $1 == "RssShmem:" {s = $2} END {print r + 0, a + 0, s + 0}' "/proc/$2/status" 2>/dev/null || echo "0 0 0"
}
# With --policy round-robin rank r runs on host r mod 4 (dsmrun run --help), so
# rank 1's host and the target (the host with fewest ranks, ties to the next
# after the source) are known before the job starts: the same-size plain
# process is started and filled before it too, and nothing but one dsmrun ps
# and one status read stands between the job's start and its moves (under a 6-
# or 8-rank job on 2 cores each command takes a few hundred ms; done after the
# job started, that work put the moves back after rank 1's last sweep).
target_of() { # ranks -> target host index for rank 1 (on host 1)
	local i c best=1 bestc=999
	for i in 1 2 3; do
		c=$(( ($1 + 3 - (1 + i) % 4) / 4 )) # ranks r < $1 with r mod 4 == (1+i) mod 4
		if [ "$c" -lt "$bestc" ]; then bestc=$c best=$(( (1 + i) % 4 )); fi
	done
	echo "$best"
}

# The migtest process's own anonymous memory with no buffer to speak of.
id=$(start_plain h1 1)
read -r _ base_kb _ < <(status3 h1 "$(plain_pid h1 "$id")")
base_kb=$((base_kb - 1024))
kill_plain "$id"

# mig_job RANKS REP [ip]: the job with two moves of rank 1 and, next to the first,
# the bare move of the same-size plain process. Prints the fields of its row.
# With "ip": the job runs with --rank-ips, rank 1 moves once with --move-ip
# (its own address goes with it), no move back (dsm2 fields SKIP).
mig_job() {
	local n=$1 rep=$2 kind=${3:-mig} src srch pid dst dsth rss anon shm mib pid2 prss panon order d1 b d2 j
	local jargs=() margs=()
	if [ "$kind" = ip ]; then jargs=(--rank-ips "$RANK_IPS"); margs=(--move-ip "$(ip_of 1)"); fi
	src=${HOSTS[1]} srch=$(hname "${HOSTS[1]}") dst=${HOSTS[$(target_of "$n")]} dsth=$(hname "$dst")
	mib=${MIB[$n]}
	id=$(start_plain "$srch" "$mib")
	pid2=$(plain_pid "$srch" "$id")
	read -r prss panon _ < <(status3 "$srch" "$pid2")
	start_job "$n" "$kind-$n-$rep" "${ITERS[$n]}" "${jargs[@]}"
	if [ -z "$JOB" ] || ! wait_running "$n"; then
		kill_plain "$id"
		finish_job "$kind-$n-$rep"; j=$J
		echo "${JOB:--}	${j// /	}	$(fields - 9)	$(fields FAIL 12)	job did not start"
		return
	fi
	local where=
	read -r where pid < <(rank1) || true
	if [ "${where:-}" != "$src" ]; then
		kill_plain "$id"
		finish_job "$kind-$n-$rep"; j=$J
		echo "$JOB	${j// /	}	$(fields - 9)	$(fields FAIL 12)	rank 1 not on host 1 (round-robin) but on ${where:-none}"
		return
	fi
	# rank 1 must be sweeping (its DSM segment mapped), or the move and the
	# same-size plain process carry next to nothing: wait, at most until BACK_AT.
	local note=-
	read -r rss anon shm < <(status3 "$srch" "$pid")
	until [ "${shm:-0}" -gt 0 ] 2>/dev/null; do
		if ! kill -0 "$JPID" 2>/dev/null || [ "$(awk -v t="$(at "$JT0" "$BACK_AT" "${TEXP[$n]}")" -v n="$(now)" 'BEGIN { print (n > t) }')" = 1 ]; then
			note="rank 1 had no DSM memory yet at the move"; break
		fi
		sleep 0.05
		read -r rss anon shm < <(status3 "$srch" "$pid")
	done
	[ "$note" = - ] || echo "== $JOB: $note" >>"$moves"
	sleep_until "$(at "$JT0" "$MOVE_AT" "${TEXP[$n]}")"
	if [ $((rep % 2)) = 1 ]; then
		order=dsm-first; d1=$(dsm_move 1 "$dst" "${margs[@]}"); b=$(bare_move "$srch" "$id" "$dst")
	else
		order=bare-first; b=$(bare_move "$srch" "$id" "$dst"); d1=$(dsm_move 1 "$dst" "${margs[@]}")
	fi
	# The plain process is where its move left it: one command, not one per host.
	local kh=$dsth; [ "${b%% *}" != FAIL ] || kh=$srch
	$C exec "$kh" migrated kill "$id" >/dev/null 2>&1 || kill_plain "$id"
	sleep_until "$(at "$JT0" "$BACK_AT" "${TEXP[$n]}")"
	if [ "$kind" = ip ]; then d2="SKIP SKIP SKIP -"
	elif [ "${d1%% *}" = FAIL ]; then d2="SKIP SKIP SKIP -"; echo "== first move failed: no move back" >>"$moves"
	elif kill -0 "$JPID" 2>/dev/null; then d2=$(dsm_move 1 "$src"); else d2="FAIL FAIL FAIL -"; echo "== job ended before the move back" >>"$moves"; fi
	finish_job "$kind-$n-$rep"; j=$J
	echo "$JOB	${j// /	}	$srch	$dsth	$order	$rss	$anon	$shm	$mib	$prss	$panon	${d1// /	}	${b// /	}	${d2// /	}	$note"
}
nomig_job() {
	local n=$1 rep=$2 j
	start_job "$n" "nomig-$n-$rep" "${ITERS[$n]}"
	finish_job "nomig-$n-$rep"; j=$J
	echo "${JOB:--}	${j// /	}	$(fields - 21)	-"
}

: >"$moves"
# Unrecorded warm-up: binaries and CRIU in the page cache, first restores.
# Calibration (also warms up): per rank count, sweeps for a TARGET_S run.
declare -A ITERS TEXP
for n in $RANKS; do
	start_job "$n" "calib-$n-1" 1; finish_job "calib-$n-1"; read -r _ t1 _ <<<"$J"
	start_job "$n" "calib-$n-$CALIB" "$CALIB"; finish_job "calib-$n-$CALIB"; read -r _ tc _ <<<"$J"
	ITERS[$n]=${JITERS:-$(awk -v a="$t1" -v c="$tc" -v k="$CALIB" -v t="$TARGET_S" 'BEGIN {
		b = (c - a) / (k - 1); if (b <= 0) b = 1; i = int((t * 1000 - a) / b + 0.5)
		print (i < 100 ? 100 : i > 20000 ? 20000 : i) }')}
	TEXP[$n]=$(awk -v a="$t1" -v c="$tc" -v k="$CALIB" -v i="${ITERS[$n]}" 'BEGIN { printf "%.2f", (a + (c - a) / (k - 1) * (i - 1)) / 1000 }')
	echo "calibration: $n ranks: 1 sweep ${t1} ms, $CALIB sweeps ${tc} ms -> ${ITERS[$n]} sweeps, expected ${TEXP[$n]} s" >>"$moves"
done
# rank 1's resident anonymous and shared memory per rank count (what its
# moves carry), measured once in a job of CALIB sweeps, less what migtest
# holds with no buffer: the size of the plain process its bare moves carry.
declare -A MIB
for n in $RANKS; do
	start_job "$n" "size-$n" "$CALIB"
	kb=0
	if [ -n "$JOB" ] && wait_running "$n"; then
		read -r _ pid < <(rank1) || true
		for _ in $(seq 100); do
			read -r _ anon shm < <(status3 "$(hname "${HOSTS[1]}")" "${pid:-0}")
			if [ "${shm:-0}" -gt 0 ]; then sleep 0.3; read -r _ anon shm < <(status3 "$(hname "${HOSTS[1]}")" "$pid"); kb=$((anon + shm)); break; fi
			kill -0 "$JPID" 2>/dev/null || break
			sleep 0.05
		done
	fi
	finish_job "size-$n"
	MIB[$n]=$(( (kb - base_kb + 512) / 1024 )); [ "${MIB[$n]}" -ge 1 ] || MIB[$n]=1
	echo "size: $n ranks: rank 1 holds $kb kB anonymous + shared -> plain process of ${MIB[$n]} MiB" >>"$moves"
done
# Unrecorded warm-up of both kinds of move.
mig_job "${RANKS%% *}" 0 >/dev/null
mig_job "${RANKS%% *}" 0 ip >/dev/null
echo "== end of warm-up" >>"$moves"

printf "ranks\trep\tkind\tjob\tjob_rc\tjob_ms\tverified\tsrc\tdst\torder\trank_vmrss_kb\trank_anon_kb\trank_shmem_kb\tplain_mib_arg\tplain_vmrss_kb\tplain_anon_kb\tdsm1_total_ms\tdsm1_downtime_ms\tdsm1_mib\tdsm1_wall_ms\tbare_total_ms\tbare_downtime_ms\tbare_mib\tbare_wall_ms\tdsm2_total_ms\tdsm2_downtime_ms\tdsm2_mib\tdsm2_wall_ms\tnote\n" >"$tsv"
for n in $RANKS; do
	for rep in $(seq "$REPS"); do
		if [ $((rep % 2)) = 1 ]; then
			printf "%s\t%s\tnomig\t%s\n" "$n" "$rep" "$(nomig_job "$n" "$rep")" >>"$tsv"
			printf "%s\t%s\tmig\t%s\n" "$n" "$rep" "$(mig_job "$n" "$rep")" >>"$tsv"
			printf "%s\t%s\tip\t%s\n" "$n" "$rep" "$(mig_job "$n" "$rep" ip)" >>"$tsv"
		else
			printf "%s\t%s\tip\t%s\n" "$n" "$rep" "$(mig_job "$n" "$rep" ip)" >>"$tsv"
			printf "%s\t%s\tmig\t%s\n" "$n" "$rep" "$(mig_job "$n" "$rep")" >>"$tsv"
			printf "%s\t%s\tnomig\t%s\n" "$n" "$rep" "$(nomig_job "$n" "$rep")" >>"$tsv"
		fi
	done
done

# Table, verdict and the numbers the plot needs.
sweeps=; for n in $RANKS; do sweeps+="${sweeps:+, }$n ranks: ${ITERS[$n]} (expected ${TEXP[$n]} s)"; done
awk -F'\t' -v reps="$REPS" -v jn="$JN" -v sweeps="$sweeps" -v sum="$tmp/summary" '
function med(s,   v, c, i, j, t) { c = split(s, v, " "); if (c == 0) return "";
	for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
	return c % 2 ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2 }
function num(x) { return x ~ /^[0-9.]+$/ }
function add(a, k, x) { a[k] = a[k] (a[k] == "" ? "" : " ") x }
NR == 1 { next }
{ k = $1; if (!(k in seen)) { seen[k] = 1; order[++nk] = k } }
$3 == "nomig" { if ($5 == 0 && $7 == "yes") add(nm, k, $6); else nmf[k]++ }
$3 == "mig" {
	if ($5 == 0 && $7 == "yes") add(mj, k, $6); else mjf[k]++
	if (num($17)) { add(dt, k, $17); add(dd, k, $18); add(dm, k, $19) } else df[k]++
	if (num($21)) { add(bt, k, $21); add(bd, k, $22); add(bm, k, $23) } else bf[k]++
	if (num($25)) add(d2, k, $25); else if ($25 != "SKIP") d2f[k]++
	if (num($17) && num($21)) add(rt, k, $17 / $21)
	add(ra, k, ($12 + $13) / 1024); add(pa, k, $16 / 1024)
}
$3 == "ip" {
	if (!($5 == 0 && $7 == "yes")) ijf[k]++
	if (num($17)) { add(it, k, $17); add(id, k, $18); add(im, k, $19) } else iff[k]++
	if (num($21)) add(ib, k, $21); else ibf[k]++
	if (num($17) && num($21)) add(ir, k, $17 / $21)
	if ($29 ~ /no DSM memory/) inm[k]++
}
function cell(s, f, fmt) { return (s == "" ? "—" : sprintf(fmt, med(s))) (f ? sprintf(" (%d failed)", f) : "") }
END {
	printf "Paper reproduction: Jacobi %dx%d on 4 namespace hosts, median of %d runs (ms); sweeps per rank count, for a run of 6-10 s: %s\n\n", jn, jn, reps, sweeps
	printf "Bare = `migrated migrate` of a plain process (migtest mem N) with the same resident anonymous + shared memory as rank 1, same source and target host, right before or after the DSM-aware move in the same running job. Overhead = median over runs of (DSM-aware total / bare total) - 1. IP-preserving = `dsmrun migrate --move-ip` of rank 1 with its own address (job started with --rank-ips, TCP repair, no prepare/rebind), in a separate job, with its own bare move of a same-size plain process in that job (median shown in brackets); its overhead = median over runs of (IP-preserving total / bare total in the same job) - 1. A failed job around a move is counted in its cell.\n\n"
	printf "| ranks | DSM-aware move (dsmrun migrate) | bare move (same-size plain process) | overhead | IP-preserving move (dsmrun migrate --move-ip) | IP-preserving overhead vs bare [bare in its job] | IP-preserving downtime | DSM-aware downtime | bare downtime | MiB moved DSM / bare / IP-preserving | rank 1 RssAnon+RssShmem / plain RssAnon (MiB) | move back (DSM) | job, no migration | job, 2 moves | job slowdown |\n"
	printf "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
	for (i = 1; i <= nk; i++) { k = order[i]
		ov = (rt[k] == "") ? "" : (med(rt[k]) - 1) * 100
		sl = (nm[k] == "" || mj[k] == "") ? "" : (med(mj[k]) / med(nm[k]) - 1) * 100
		io = (ir[k] == "") ? "" : (med(ir[k]) - 1) * 100
		printf "| %s | %s | %s | %s | %s%s | %s [%s] | %s | %s | %s | %s / %s / %s | %s / %s | %s | %s | %s | %s |\n", k,
			cell(dt[k], df[k], "%.1f"), cell(bt[k], bf[k], "%.1f"), (ov == "" ? "—" : sprintf("%+.1f%%", ov)),
			cell(it[k], iff[k], "%.1f"), (ijf[k] ? sprintf(" (job failed: %d)", ijf[k]) : "") (inm[k] ? sprintf(" (%d of %d: rank 1 not yet sweeping, ~1 MiB moved)", inm[k], reps) : ""),
			(io == "" ? "—" : sprintf("%+.1f%%", io)), cell(ib[k], ibf[k], "%.1f"), cell(id[k], 0, "%.1f"),
			cell(dd[k], 0, "%.1f"), cell(bd[k], 0, "%.1f"), cell(dm[k], 0, "%.1f"), cell(bm[k], 0, "%.1f"), cell(im[k], 0, "%.1f"),
			cell(ra[k], 0, "%.1f"), cell(pa[k], 0, "%.1f"), cell(d2[k], d2f[k], "%.1f"),
			cell(nm[k], nmf[k], "%.0f"), cell(mj[k], mjf[k], "%.0f"), (sl == "" ? "—" : sprintf("%+.1f%%", sl))
		printf "%s %s %s %s %s %s\n", k, (dt[k] == "" ? "nan" : med(dt[k])), (bt[k] == "" ? "nan" : med(bt[k])), (ov == "" ? "nan" : ov),
			(it[k] == "" ? "nan" : med(it[k])), (io == "" ? "nan" : io) >sum
		if (ov != "") { m++; sx += k; sy += ov; sxx += k * k; sxy += k * ov; if (lo == "" || ov < lo) lo = ov; if (hi == "" || ov > hi) hi = ov; last = k; lastov = ov }
	}
	printf "\n"
	if (m >= 2) {
		slope = (m * sxy - sx * sy) / (m * sxx - sx * sx)
		printf "Goal (at most 5%% over the bare move at 8 ranks, nearly flat in ranks; the paper: ~10%% at 8 nodes, growing almost linearly):\n"
		printf "- at %s ranks: %+.1f%% → %s\n", last, lastov, (last == 8 && lastov <= 5) ? "met" : "**not met**"
		printf "- across ranks: overhead %+.1f%% .. %+.1f%% (spread %.1f points), least-squares slope %+.2f points per added rank → %s (flat = spread ≤ 5 points)\n",
			lo, hi, hi - lo, slope, (hi - lo <= 5) ? "flat" : "**not flat**"
	}
}' "$tsv" | tee $out/paper.md

# The plot: x = ranks, left axis ms (DSM-aware, bare), right axis overhead %.
awk '
BEGIN { W = 720; H = 440; L = 70; R = 70; T = 50; B = 60; pw = W - L - R; ph = H - T - B }
{ n++; x[n] = $1; d[n] = $2; b[n] = $3; o[n] = $4; ip[n] = $5; io[n] = $6
  if ($2 != "nan" && $2 + 0 > ymax) ymax = $2 + 0; if ($3 != "nan" && $3 + 0 > ymax) ymax = $3 + 0; if ($5 != "nan" && $5 + 0 > ymax) ymax = $5 + 0
  if ($4 != "nan") { if ($4 + 0 > omax) omax = $4 + 0; if ($4 + 0 < omin) omin = $4 + 0 }
  if ($6 != "nan") { if ($6 + 0 > omax) omax = $6 + 0; if ($6 + 0 < omin) omin = $6 + 0 } }
function nice(v,   p, f) { if (v <= 0) return 1; p = 10 ^ int(log(v) / log(10)); f = v / p; return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p }
function px(v) { return L + (v - xmin) / (xmax - xmin) * pw }
function py(v) { return T + ph - v / ymax * ph }
function po(v) { return T + ph - (v - omin) / (omax - omin) * ph }
function line(a, col, dash, scale,   i, s, first) { s = ""; for (i = 1; i <= n; i++) if (a[i] != "nan") s = s sprintf("%s%.1f,%.1f ", (s == "" ? "M" : "L"), px(x[i]), scale ? po(a[i]) : py(a[i]))
	if (s != "") printf "<path d=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2.5\" %s/>\n", s, col, dash ? "stroke-dasharray=\"6,4\"" : ""
	for (i = 1; i <= n; i++) if (a[i] != "nan") printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/><text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"%s\" text-anchor=\"middle\">%s</text>\n",
		px(x[i]), scale ? po(a[i]) : py(a[i]), col, px(x[i]), (scale ? po(a[i]) : py(a[i])) - 8, col, scale ? sprintf("%+.1f%%", a[i]) : sprintf("%.0f", a[i]) }
END {
	xmin = x[1]; xmax = x[n]; if (xmax == xmin) { xmin -= 1; xmax += 1 }
	ymax = nice(ymax * 1.15)
	# Right axis: 5 ticks of a round step, starting at a multiple of it.
	omax = (omax < 5 ? 5 : omax); omin = (omin > 0 ? 0 : omin); step = nice((omax - omin) * 1.15 / 5)
	for (;;) { lo = -step * int(-omin / step + 0.999999); if (lo + 5 * step >= omax * 1.05) break; step = nice(step * 1.5) }
	omin = lo; omax = lo + 5 * step
	printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n", W, H, W, H
	printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
	printf "<text x=\"%d\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">Rank migration of a Jacobi job: DSM-aware, IP-preserving and bare moves</text>\n", W / 2
	for (i = 0; i <= 5; i++) { v = ymax * i / 5; printf "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%d\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%g</text>\n", L, L + pw, py(v), py(v), L - 6, py(v) + 4, v
		w = omin + (omax - omin) * i / 5; printf "<text x=\"%d\" y=\"%.1f\" font-size=\"11\" fill=\"#c0392b\">%g%%</text>\n", L + pw + 6, po(w) + 4, w }
	for (i = 1; i <= n; i++) printf "<text x=\"%.1f\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">%s</text>\n", px(x[i]), T + ph + 18, x[i]
	printf "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"black\"/><line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"black\"/><line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"#c0392b\"/>\n", L, L + pw, T + ph, T + ph, L, L, T, T + ph, L + pw, L + pw, T, T + ph
	printf "<text x=\"%d\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\">ranks (4 hosts)</text>\n", L + pw / 2, H - 18
	printf "<text transform=\"translate(18,%d) rotate(-90)\" font-size=\"13\" text-anchor=\"middle\">migration time, median (ms)</text>\n", T + ph / 2
	printf "<text transform=\"translate(%d,%d) rotate(90)\" font-size=\"13\" text-anchor=\"middle\" fill=\"#c0392b\">overhead over bare (%%)</text>\n", W - 14, T + ph / 2
	printf "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#c0392b\" stroke-dasharray=\"2,3\"/><text x=\"%d\" y=\"%.1f\" font-size=\"11\" fill=\"#c0392b\">goal 5%%</text>\n", L, L + pw, po(5), po(5), L + 4, po(5) - 4
	if (omin < 0) printf "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#c0392b\" stroke-width=\"0.5\"/>\n", L, L + pw, po(0), po(0)
	line(b, "#7f8c8d", 0, 0); line(d, "#2c6fbb", 0, 0); line(ip, "#27ae60", 0, 0); line(o, "#c0392b", 1, 1); line(io, "#e67e22", 1, 1)
	lx = L + 12; ly = T + 8
	printf "<rect x=\"%d\" y=\"%d\" width=\"330\" height=\"90\" fill=\"white\" stroke=\"#bbb\"/>\n", lx, ly
	printf "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"#2c6fbb\" stroke-width=\"2.5\"/><text x=\"%d\" y=\"%d\" font-size=\"12\">DSM-aware (dsmrun migrate, total)</text>\n", lx + 8, lx + 34, ly + 14, ly + 14, lx + 40, ly + 18
	printf "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"#7f8c8d\" stroke-width=\"2.5\"/><text x=\"%d\" y=\"%d\" font-size=\"12\">bare (migrated migrate, same-size process)</text>\n", lx + 8, lx + 34, ly + 30, ly + 30, lx + 40, ly + 34
	printf "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"#c0392b\" stroke-width=\"2.5\" stroke-dasharray=\"6,4\"/><text x=\"%d\" y=\"%d\" font-size=\"12\">overhead %% of DSM-aware (right axis)</text>\n", lx + 8, lx + 34, ly + 46, ly + 46, lx + 40, ly + 50
	printf "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"#27ae60\" stroke-width=\"2.5\"/><text x=\"%d\" y=\"%d\" font-size=\"12\">IP-preserving (dsmrun migrate --move-ip, total)</text>\n", lx + 8, lx + 34, ly + 62, ly + 62, lx + 40, ly + 66
	printf "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"#e67e22\" stroke-width=\"2.5\" stroke-dasharray=\"6,4\"/><text x=\"%d\" y=\"%d\" font-size=\"12\">overhead %% of IP-preserving (right axis)</text>\n", lx + 8, lx + 34, ly + 78, ly + 78, lx + 40, ly + 82
	printf "</svg>\n"
}' "$tmp/summary" >docs/paper-bench.svg
echo "raw rows: $tsv, moves: $moves, job outputs: $out/paper-jobs/, plot: docs/paper-bench.svg"

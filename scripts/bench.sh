#!/usr/bin/env bash
# make bench: measured side by side in one run on a namespace cluster.
#  1. migrated migrate, with and without --post-copy, versus the same move by
#     hand (criu dump to disk, copy the image directory, criu restore) for 16,
#     256 and 1024 MiB processes: time, downtime and CPU; and the daemons'
#     relay CPU per GiB next to a plain socket copy's.
#  2. dsmshm micro- and Jacobi benchmarks, when built (scripts/bench-dsm.sh).
# Results go to bench-out/ and stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
C=test/integration/cluster.sh
SIZES=${SIZES:-"16 256 1024"}
REPS=${REPS:-3}
CRIU=${CRIU:-/usr/local/sbin/migrate-criu}
out=bench-out; mkdir -p $out
"${GO:-scripts/go}" build -o bin/ ./cmd/... ./test/integration/migtest ./examples/jacobi
trap '$C down >/dev/null 2>&1 || true' EXIT
$C up 2 >/dev/null 2>&1
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.0f", (b-a)*1000}'; }

wait_ready() { # host id
	for _ in $(seq 600); do
		$C exec "$1" migrated logs "$2" | grep -q "mem ok" && return 0; sleep 0.1
	done; echo "workload $2 never got ready" >&2; return 1
}

HZ=$(getconf CLK_TCK)
# ticks HOST PATTERN self|all: CPU ticks of the newest process on HOST whose
# command line matches PATTERN: its own (user+system), or with the children
# it has reaped (CRIU runs as the daemons' and shims' children).
ticks() {
	$C exec "$1" sh -c 'p=$(pgrep -n -f "$1") && cut -d")" -f2- /proc/$p/stat' ticks "$2" |
		awk -v w="$3" '{ s = $12 + $13; if (w == "all") s += $14 + $15; print s }'
}
# own PID: CPU ticks of shell PID's reaped children (the commands it ran);
# the caller passes its $BASHPID (a $(...) has a pid of its own).
own() { cut -d")" -f2- /proc/$1/stat | awk '{ print $14 + $15 }'; }
secs() { awk -v t="$1" -v hz="$HZ" 'BEGIN{printf "%.2f", t/hz}'; }

results=$out/migrate.tsv
printf "size_mib\trep\tmethod\ttotal_ms\tdowntime_ms\tlast_page_ms\tcpu_s\tdaemons_self_cpu_s\n" >$results
# Fresh memory is slow to touch the first time in this VM, and each method
# frees memory the next one reuses: so each size starts with an unrecorded
# warm-up of every method, and the order rotates between repetitions.
# CPU: migrated counts both daemons (with the CRIU runs they reap), the shim
# that restores and the client; by hand the criu, cp and nsenter it runs.
# The workload's own CPU counts in neither.
by_migrated() { # size [--post-copy] -> "total downtime last_page cpu daemons_self"
	local id t0 t1 a1 a2 s1 s2 o0 b1 b2 z1 z2 o1 shim me=$BASHPID
	id=$($C exec h1 migrated run --name bench -- migtest mem "$1")
	wait_ready h1 "$id"
	a1=$(ticks h1 "[m]igrated serve" all); a2=$(ticks h2 "[m]igrated serve" all)
	s1=$(ticks h1 "[m]igrated serve" self); s2=$(ticks h2 "[m]igrated serve" self); o0=$(own $me)
	t0=$(now)
	$C exec h1 migrated migrate "$id" --to 10.77.0.2:7077 ${2:-} >/dev/null 2>$out/last-migrate.txt
	t1=$(now)
	b1=$(ticks h1 "[m]igrated serve" all); b2=$(ticks h2 "[m]igrated serve" all)
	z1=$(ticks h1 "[m]igrated serve" self); z2=$(ticks h2 "[m]igrated serve" self); o1=$(own $me)
	shim=$(ticks h2 "[m]igrated-shim" all)
	$C exec h2 migrated kill "$id"
	local down last
	if [ -n "${2:-}" ]; then
		# What the target's daemon says of its post-copy pages: how many of
		# lazy-pages's requests it answered from pages it had prefetched
		# and how many went to the source (internal/daemon/prefetch.go).
		{ grep 'msg="post-copy pages"' "${CLUSTER_DIR:-/run/dsmigrate-cluster}/h2/daemon.log" || true; } | tail -1 |
			sed -n 's/.*answered_from_prefetch=\([0-9]*\) relayed=\([0-9]*\).*faults=\([0-9]*\) faults_answered_from_prefetch=\([0-9]*\).*/\1\t\2\t\3\t\4/p' |
			sed "s/^/$1\t/" >>$out/prefetch.tsv
	fi
	down=$(sed -n 's/.*downtime \([0-9.]*\) ms.*/\1/p' $out/last-migrate.txt)
	last=$(sed -n 's/.*last page arrived \([0-9.]*\) ms.*/\1/p' $out/last-migrate.txt)
	echo "$(ms "$t0" "$t1") ${down:-0} ${last:-0} $(secs $((b1 - a1 + b2 - a2 + shim + o1 - o0))) $(secs $((z1 - s1 + z2 - s2)))"
}
by_hand() { # size -> "total downtime(=total) 0 cpu 0", dump/copy/restore ms in hand.tsv
	local img=/var/tmp/dsmigrate-bench pid t0 t1 t2 t3 o0 o1 me=$BASHPID
	rm -rf $img $img.copy; mkdir -p $img
	: >$img.log
	pid=$($C exec h1 sh -c "setsid migtest mem $1 >$img.log 2>&1 </dev/null & echo \$!")
	for _ in $(seq 600); do grep -q "mem ok" $img.log && break; sleep 0.1; done
	o0=$(own $me)
	t0=$(now)
	# As a real move must, the source stays (stopped) until the restore
	# has succeeded, and goes only then.
	$C exec h1 $CRIU dump -t "$pid" -D $img -o dump.log --leave-stopped >/dev/null 2>&1
	t1=$(now)
	cp -r $img $img.copy
	t2=$(now)
	$C exec h2 $CRIU restore -d -D $img.copy -o restore.log >/dev/null 2>&1
	$C exec h1 kill -9 "$pid"
	t3=$(now)
	o1=$(own $me)
	if ! $C exec h2 kill -9 "$pid"; then
		echo "by-hand restore of $1 MiB failed:" >&2; tail -5 $img.copy/restore.log >&2; exit 1
	fi
	rm -rf $img $img.copy
	printf "%s\t%s\t%s\t%s\n" "$1" "$(ms "$t0" "$t1")" "$(ms "$t1" "$t2")" "$(ms "$t2" "$t3")" >>$out/hand.tsv
	echo "$(ms "$t0" "$t3") $(ms "$t0" "$t3") 0 $(secs $((o1 - o0))) 0"
}
run_method() { # method size
	case $1 in
	migrated) by_migrated "$2" ;;
	post-copy) by_migrated "$2" --post-copy ;;
	hand) by_hand "$2" ;;
	esac
}
printf "size_mib\tdump_ms\tcopy_ms\trestore_ms\n" >$out/hand.tsv
printf "size_mib\tanswered_from_prefetch\trelayed\tfaults\tfaults_answered_from_prefetch\n" >$out/prefetch.tsv
methods=(migrated post-copy hand)
for size in $SIZES; do
	for m in "${methods[@]}"; do run_method "$m" "$size" >/dev/null; done
	for rep in $(seq "$REPS"); do
		for i in 0 1 2; do
			m=${methods[$(((i + rep) % 3))]}
			r=$(run_method "$m" "$size")
			printf "%s\t%s\t%s\t%s\n" "$size" "$rep" "$m" "${r// /$'\t'}" >>$results
		done
	done
done

# A plain socket copy of 1 GiB between the same two hosts: the yardstick of
# the daemons' relay (their own CPU per GiB moved, next to the copy's).
sock=$out/sockcopy.tsv
printf "rep\tcpu_s_per_gib\n" >$sock
for rep in $(seq "$REPS"); do
	$C exec h2 migtest sink 10.77.0.2:7300 >$out/sink.txt &
	sp=$!
	for _ in $(seq 200); do grep -q listening $out/sink.txt && break; sleep 0.05; done
	$C exec h1 migtest send 10.77.0.2:7300 1024 >$out/send.txt
	wait $sp
	printf "%s\t%s\n" "$rep" "$(cat $out/sink.txt $out/send.txt | awk '$3 == "cpu" { s += $4 } END { printf "%.2f", s }')" >>$sock
done

# A DSM rank's image: rank 1 of a 4-rank Jacobi 1024x1024 (2 ranks a host)
# moves once mid-run; its image is what the move sent, and what it holds
# beyond its home pages and private memory is the cache it had to keep
# (dirty pages homed elsewhere and their twins; clean copies and twins
# were dropped before the dump: without that they would be in it too).
eval "$($C env)"
export MIGRATED_HOSTS MIGRATED_TOKEN_FILE
img=$out/rank-image.tsv
printf "rep\tmoved_bytes\tdropped_pages\tkept_pages\n" >$img
for rep in $(seq "$REPS"); do
	bin/dsmrun run -n 4 --policy round-robin -- "$PWD/bin/jacobi" -n 1024 -iters 600 >$out/jacobi.out 2>$out/jacobi.err &
	jp=$!
	job=
	for _ in $(seq 300); do job=$(sed -n 's/^job: //p' $out/jacobi.err); [ -n "$job" ] && break; sleep 0.05; done
	sleep 1
	from=$(bin/dsmrun ps --json | jq -r --arg j "$job" '.[] | select(.id == $j) | .ranks[] | select(.rank == 1) | .host')
	to=10.77.0.1:7077; [ "$from" = "$to" ] && to=10.77.0.2:7077
	bin/dsmrun migrate "$job" 1 --to "$to" >$out/rank-move.txt 2>&1
	wait $jp
	moved=$(sed -n 's/.*downtime [0-9.]* ms, \([0-9.]*\) MiB moved.*/\1/p' $out/rank-move.txt)
	read -r dropped kept < <(sed -n 's/^\[1\] rank 1:.*cache dropped at moves \([0-9]*\) kept \([0-9]*\).*/\1 \2/p' $out/jacobi.out)
	printf "%s\t%s\t%s\t%s\n" "$rep" "$(awk -v m="$moved" 'BEGIN{printf "%.0f", m*1048576}')" "$dropped" "$kept" >>$img
done

echo "Process migration, median of $REPS runs (ms, CPU seconds); by hand = criu dump to disk (source left stopped) + cp -r + criu restore + kill the source"
awk -F'\t' '
FNR == 1 { file++; next }
file == 1 { k = $1 SUBSEP $3; n[k]++; tot[k, n[k]] = $4; dn[k, n[k]] = $5; lp[k, n[k]] = $6; cpu[k, n[k]] = $7; self[k, n[k]] = $8 }
file == 2 { ns++; sc[ns] = $2 }
file == 3 { ni++; im[ni] = $2 / ($2 - 2 * $4 * 4096); imb[ni] = ($2 + $3 * 4096) / ($2 - 2 * $4 * 4096) }
function med(a, k, c,   i, j, t, v) { for (i=1;i<=c;i++) v[i]=a[k,i]; for (i=1;i<=c;i++) for (j=i+1;j<=c;j++) if (v[j]<v[i]) {t=v[i];v[i]=v[j];v[j]=t}; return v[int((c+1)/2)] }
function m(a, s, meth,   k) { k = s SUBSEP meth; return med(a, k, n[k]) }
function goal(name, v, lim) { printf "| %s | %.2f | %s %.1f | %s |\n", name, v, "<=", lim, (v <= lim ? "met" : "not met") }
END {
	printf "| size | method | total | downtime | last page | CPU s |\n|---|---|---|---|---|---|\n"
	no = split(sizes, order, " ")
	split("migrated post-copy hand", meths, " ")
	for (i = 1; i <= no; i++) for (j = 1; j <= 3; j++) { s = order[i]; mm = meths[j]
		printf "| %s MiB | %s | %d | %d | %s | %.2f |\n", s, (mm == "hand" ? "by hand" : (mm == "post-copy" ? "migrated --post-copy" : "migrated")),
			m(tot, s, mm), m(dn, s, mm), (mm == "post-copy" ? sprintf("%d", m(lp, s, mm)) : "-"), m(cpu, s, mm) }
	for (i = 1; i <= ns; i++) v[i] = sc[i]
	for (i = 1; i <= ns; i++) for (j = i + 1; j <= ns; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
	sockc = v[int((ns + 1) / 2)]
	big = order[no]; small = order[1]
	printf "\nGoals (issue 12), from the medians above:\n\n| goal | ratio | limit | |\n|---|---|---|---|\n"
	for (i = 1; i <= no; i++) goal(sprintf("plain total / by hand, %s MiB", order[i]), m(tot, order[i], "migrated") / m(tot, order[i], "hand"), 1.0)
	goal(sprintf("post-copy downtime %s MiB / %s MiB", big, small), m(dn, big, "post-copy") / m(dn, small, "post-copy"), 3)
	goal(sprintf("post-copy downtime / by-hand downtime, %s MiB", big), m(dn, big, "post-copy") / m(dn, big, "hand"), 0.1)
	goal(sprintf("post-copy total / plain total, %s MiB", big), m(tot, big, "post-copy") / m(tot, big, "migrated"), 1.5)
	relay = m(self, big, "migrated") / (big / 1024)
	goal(sprintf("relay CPU per GiB (daemons, %.2f s) / socket copy (%.2f s)", relay, sockc), relay / sockc, 2)
	for (i = 1; i <= ni; i++) for (j = i + 1; j <= ni; j++) { if (im[j] < im[i]) { t = im[i]; im[i] = im[j]; im[j] = t }; if (imb[j] < imb[i]) { t = imb[i]; imb[i] = imb[j]; imb[j] = t } }
	goal(sprintf("DSM rank image / (home pages + private memory) (%.2f without dropping its cache)", imb[int((ni + 1) / 2)]), im[int((ni + 1) / 2)], 1.1)
}' sizes="$SIZES" $results $sock $img | tee $out/migrate.md
awk -F'\t' 'NR > 1 { n[$1]++; a[$1] += $2; r[$1] += $3; f[$1] += $4; fh[$1] += $5 }
END {
	print "\nPost-copy round trips (all post-copy moves of this run, warm-ups too; sums): lazy-pages'"'"'s requests the"
	print "target answered from prefetched pages, and those that went to the source\n"
	print "| size | moves | answered here | went to the source | of them faults: answered here / all |\n|---|---|---|---|---|"
	for (s in n) printf "| %s MiB | %d | %d | %d | %d / %d |\n", s, n[s], a[s], r[s], fh[s], f[s]
}' $out/prefetch.tsv | tee -a $out/migrate.md
[ -n "${MIGRATE_ONLY:-}" ] && exit 0 # MIGRATE_ONLY=1: this first part alone
if [ -x scripts/bench-dsm.sh ]; then bash scripts/bench-dsm.sh; fi
bash scripts/bench-paper.sh

#!/usr/bin/env bash
# make bench: measured side by side in one run on a namespace cluster.
#  1. migrated migrate versus the same move by hand (criu dump to disk, copy
#     the image directory, criu restore) for 16, 256 and 1024 MiB processes.
#  2. dsmshm micro- and Jacobi benchmarks, when built (scripts/bench-dsm.sh).
# Results go to bench-out/ and stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
C=test/integration/cluster.sh
SIZES=${SIZES:-"16 256 1024"}
REPS=${REPS:-3}
CRIU=${CRIU:-/usr/local/sbin/migrate-criu}
out=bench-out; mkdir -p $out
go build -o bin/ ./cmd/... ./test/integration/migtest
trap '$C down >/dev/null 2>&1 || true' EXIT
$C up 2 >/dev/null 2>&1
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.0f", (b-a)*1000}'; }

wait_ready() { # host id
	for _ in $(seq 600); do
		$C exec "$1" migrated logs "$2" | grep -q "mem ok" && return 0; sleep 0.1
	done; echo "workload $2 never got ready" >&2; return 1
}

results=$out/migrate.tsv
printf "size_mib\trep\tmigrated_total_ms\tmigrated_downtime_ms\thand_total_ms\thand_dump_ms\thand_copy_ms\thand_restore_ms\n" >$results
# Fresh memory is slow to touch the first time in this VM, and each method
# frees memory the next one reuses: so each size starts with an unrecorded
# warm-up of both, and the order alternates between repetitions.
by_migrated() { # size -> "total_ms downtime_ms"
	local id t0 t1
	id=$($C exec h1 migrated run --name bench -- migtest mem "$1")
	wait_ready h1 "$id"
	t0=$(now)
	$C exec h1 migrated migrate "$id" --to 10.77.0.2:7077 >/dev/null 2>$out/last-migrate.txt
	t1=$(now)
	$C exec h2 migrated kill "$id"
	echo "$(ms "$t0" "$t1") $(sed -n 's/.*downtime \([0-9.]*\) ms.*/\1/p' $out/last-migrate.txt)"
}
by_hand() { # size -> "total_ms dump_ms copy_ms restore_ms"
	local img=/var/tmp/dsmigrate-bench pid t0 t1 t2 t3
	rm -rf $img $img.copy; mkdir -p $img
	: >$img.log
	pid=$($C exec h1 sh -c "setsid migtest mem $1 >$img.log 2>&1 </dev/null & echo \$!")
	for _ in $(seq 600); do grep -q "mem ok" $img.log && break; sleep 0.1; done
	t0=$(now)
	$C exec h1 $CRIU dump -t "$pid" -D $img -o dump.log >/dev/null 2>&1
	t1=$(now)
	cp -r $img $img.copy
	t2=$(now)
	$C exec h2 $CRIU restore -d -D $img.copy -o restore.log >/dev/null 2>&1
	t3=$(now)
	if ! $C exec h2 kill -9 "$pid"; then
		echo "by-hand restore of $1 MiB failed:" >&2; tail -5 $img.copy/restore.log >&2; exit 1
	fi
	rm -rf $img $img.copy
	echo "$(ms "$t0" "$t3") $(ms "$t0" "$t1") $(ms "$t1" "$t2") $(ms "$t2" "$t3")"
}
for size in $SIZES; do
	by_migrated "$size" >/dev/null; by_hand "$size" >/dev/null
	for rep in $(seq "$REPS"); do
		if [ $((rep % 2)) = 1 ]; then m=$(by_migrated "$size"); h=$(by_hand "$size")
		else h=$(by_hand "$size"); m=$(by_migrated "$size"); fi
		printf "%s\t%s\t%s\t%s\n" "$size" "$rep" "${m// /$'\t'}" "${h// /$'\t'}" >>$results
	done
done

echo "Process migration, median of $REPS runs (ms); by hand = criu dump to disk + cp -r + criu restore"
awk -F'\t' 'NR>1 { k=$1; n[k]++; mt[k,n[k]]=$3; md[k,n[k]]=$4; ht[k,n[k]]=$5 }
function med(a, k, c,   i, j, t, v) { for (i=1;i<=c;i++) v[i]=a[k,i]; for (i=1;i<=c;i++) for (j=i+1;j<=c;j++) if (v[j]<v[i]) {t=v[i];v[i]=v[j];v[j]=t}; return v[int((c+1)/2)] }
END {
	printf "| size | migrated total | migrated downtime | by hand (= downtime) | total ratio | downtime ratio |\n|---|---|---|---|---|---|\n"
	no = split(sizes, order, " ")
	for (i = 1; i <= no; i++) { k = order[i]; a=med(mt,k,n[k]); d=med(md,k,n[k]); h=med(ht,k,n[k]);
		printf "| %s MiB | %d | %d | %d | %.2f | %.2f |\n", k, a, d, h, a/h, d/h }
}' sizes="$SIZES" $results | tee $out/migrate.md
if [ -x scripts/bench-dsm.sh ]; then bash scripts/bench-dsm.sh; fi
bash scripts/bench-paper.sh

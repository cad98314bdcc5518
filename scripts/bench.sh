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
$C up 2 >/dev/null
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.0f", (b-a)*1000}'; }

wait_ready() { # host id
	for _ in $(seq 600); do
		$C exec "$1" migrated logs "$2" | grep -q "mem ok" && return 0; sleep 0.1
	done; echo "workload $2 never got ready" >&2; return 1
}

results=$out/migrate.tsv
printf "size_mib\trep\tmigrated_total_ms\tmigrated_downtime_ms\thand_total_ms\thand_dump_ms\thand_copy_ms\thand_restore_ms\n" >$results
for size in $SIZES; do
	for rep in $(seq "$REPS"); do
		# migrated: the daemon's pipeline, timed end to end by the client.
		id=$($C exec h1 migrated run --name bench -- migtest mem "$size")
		wait_ready h1 "$id"
		t0=$(now)
		$C exec h1 migrated migrate "$id" --to 10.77.0.2:7077 >/dev/null 2>$out/last-migrate.txt
		t1=$(now)
		mtotal=$(ms "$t0" "$t1")
		mdown=$(sed -n 's/.*downtime \([0-9.]*\) ms.*/\1/p' $out/last-migrate.txt)
		$C exec h2 migrated kill "$id"

		# By hand: the same workload, dumped to disk, copied, restored.
		img=/var/tmp/dsmigrate-bench; rm -rf $img $img.copy; mkdir -p $img
		pid=$($C exec h1 sh -c "setsid migtest mem $size >/var/tmp/dsmigrate-bench.log 2>&1 </dev/null & echo \$!")
		for _ in $(seq 600); do grep -q "mem ok" /var/tmp/dsmigrate-bench.log && break; sleep 0.1; done
		t0=$(now)
		$C exec h1 $CRIU dump -t "$pid" -D $img -o dump.log >/dev/null 2>&1
		t1=$(now)
		cp -r $img $img.copy && sync -f $img.copy
		t2=$(now)
		$C exec h2 $CRIU restore -d -D $img.copy -o restore.log >/dev/null 2>&1
		t3=$(now)
		$C exec h2 sh -c "kill -9 $pid" || true
		rm -rf $img $img.copy
		printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$size" "$rep" "$mtotal" "$mdown" "$(ms "$t0" "$t3")" \
			"$(ms "$t0" "$t1")" "$(ms "$t1" "$t2")" "$(ms "$t2" "$t3")" >>$results
	done
done

echo "Process migration, median of $REPS runs (ms); by hand = criu dump to disk + cp -r + criu restore"
awk -F'\t' 'NR>1 { k=$1; n[k]++; mt[k,n[k]]=$3; md[k,n[k]]=$4; ht[k,n[k]]=$5; order[k]=NR }
function med(a, k, c,   i, j, t, v) { for (i=1;i<=c;i++) v[i]=a[k,i]; for (i=1;i<=c;i++) for (j=i+1;j<=c;j++) if (v[j]<v[i]) {t=v[i];v[i]=v[j];v[j]=t}; return v[int((c+1)/2)] }
END {
	printf "| size | migrated total | migrated downtime | by hand (= downtime) | total ratio | downtime ratio |\n|---|---|---|---|---|---|\n"
	for (k in n) { a=med(mt,k,n[k]); d=med(md,k,n[k]); h=med(ht,k,n[k]);
		printf "| %s MiB | %d | %d | %d | %.2f | %.2f |\n", k, a, d, h, a/h, d/h }
}' $results | sort -t'|' -k2 -n | tee $out/migrate.md
if [ -x scripts/bench-dsm.sh ]; then bash scripts/bench-dsm.sh; fi

#!/bin/bash
# usage: waldump.sh fn n k
fn=$1; n=$2; k=$3
arr="(SELECT array_agg(gen_random_uuid()) FROM generate_series(1,$n)), (SELECT array_agg('T1'::text) FROM generate_series(1,$n)), (SELECT array_agg(1) FROM generate_series(1,$n)), (SELECT array_agg(NULL::uuid) FROM generate_series(1,$n)), (SELECT array_agg(NULL::uuid) FROM generate_series(1,$n)), (SELECT array_agg(mz.payload()) FROM generate_series(1,$n)), (SELECT array_agg(NULL::jsonb) FROM generate_series(1,$n))"
if [ $fn = bare ]; then
 stmt="INSERT INTO mz_bare.events (stream_id, stream_version, category, event_type, schema_version, event_id, correlation_id, causation_id, timestamp_micros, payload) SELECT 'order-$k', -1000000::bigint*$k - g, 'order', 'T1', 1, gen_random_uuid(), NULL, NULL, 1, mz.payload() FROM generate_series(1,$n) g"
else
 stmt="SELECT * FROM mz.f_$fn('order-$k', 'order', -1, $arr)"
fi
out=$(psql -h 127.0.0.1 -U root -d test -Atq -v ON_ERROR_STOP=1 -c "SET synchronous_commit=off" -c "SELECT pg_current_wal_insert_lsn()" -c "BEGIN" -c "$stmt" -c "SELECT pg_current_xact_id()" -c "COMMIT" -c "SELECT pg_current_wal_insert_lsn()")
s=$(echo "$out" | sed -n 1p); x=$(echo "$out" | tail -2 | head -1); e=$(echo "$out" | tail -1)
[ $fn = bare ] && x=$(echo "$out" | tail -2 | head -1)
sleep 0.3
/usr/lib/postgresql/15/bin/pg_waldump -p /var/lib/postgresql/15/main/pg_wal -s $s -e $e 2>/dev/null | awk '{ printf "%s tx=%s tot=%s ", $2, $8, $6; for (i=13;i<=NF;i++) printf "%s ", $i; print "" }' | cut -c1-140

CREATE OR REPLACE FUNCTION mz.micro(p_what text, p_n int) RETURNS double precision LANGUAGE plpgsql AS $f$
DECLARE t0 bigint; t1 bigint; v bigint; a bigint[]; x xid8; s text; st text := 'order-17';
BEGIN
  t0 := mz.cpu_ns();
  IF p_what = 'empty' THEN
    FOR i IN 1..p_n LOOP v := i; END LOOP;
  ELSIF p_what = 'lockpair' THEN
    FOR i IN 1..p_n LOOP PERFORM pg_advisory_lock(987654321); PERFORM pg_advisory_unlock(987654321); END LOOP;
  ELSIF p_what = 'xactlock' THEN
    FOR i IN 1..p_n LOOP PERFORM pg_advisory_xact_lock(12345, hashtext(st)); END LOOP;
  ELSIF p_what = 'excblock' THEN
    FOR i IN 1..p_n LOOP BEGIN v := i; EXCEPTION WHEN OTHERS OR query_canceled THEN RAISE; END; END LOOP;
  ELSIF p_what = 'excblock_stmt' THEN
    FOR i IN 1..p_n LOOP BEGIN PERFORM pg_current_xact_id(); EXCEPTION WHEN OTHERS OR query_canceled THEN RAISE; END; END LOOP;
  ELSIF p_what = 'stmt' THEN
    FOR i IN 1..p_n LOOP PERFORM pg_current_xact_id(); END LOOP;
  ELSIF p_what = 'xidnext' THEN
    FOR i IN 1..p_n LOOP SELECT pg_current_xact_id(), nextval('mz.positions') INTO x, v; END LOOP;
  ELSIF p_what = 'setval_pos' THEN
    FOR i IN 1..p_n LOOP PERFORM setval('mz.positions', nextval('mz.positions') + 1); END LOOP;
  ELSIF p_what = 'nextval2' THEN
    FOR i IN 1..p_n LOOP PERFORM nextval('mz.positions'); PERFORM nextval('mz.positions') FROM generate_series(2, 3); END LOOP;
  ELSIF p_what = 'clock' THEN
    FOR i IN 1..p_n LOOP SELECT setval('mz.clock', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint, c.last_value)) INTO v FROM mz.clock c; END LOOP;
  ELSIF p_what = 'clock_fn' THEN
    FOR i IN 1..p_n LOOP v := setval('mz.clock', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint, pg_sequence_last_value('mz.clock'))); END LOOP;
  ELSIF p_what = 'clock_snap' THEN
    FOR i IN 1..p_n LOOP SELECT setval('mz.clock', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint, c.last_value)), n.s::text INTO v, s FROM mz.clock c, pg_current_snapshot() AS n(s); END LOOP;
  ELSIF p_what = 'clock_fn_snap' THEN
    FOR i IN 1..p_n LOOP SELECT setval('mz.clock', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint, pg_sequence_last_value('mz.clock'))), pg_current_snapshot()::text INTO v, s; END LOOP;
  ELSIF p_what = 'snap_only' THEN
    FOR i IN 1..p_n LOOP s := pg_current_snapshot()::text; END LOOP;
  ELSIF p_what = 'uclock' THEN
    FOR i IN 1..p_n LOOP SELECT setval('mz.clock_u', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint, c.last_value)) INTO v FROM mz.clock_u c; END LOOP;
  ELSIF p_what = 'noclock' THEN
    FOR i IN 1..p_n LOOP v := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint; END LOOP;
  ELSIF p_what = 'older' THEN
    x := pg_current_xact_id();
    FOR i IN 1..p_n LOOP SELECT ARRAY(SELECT x2::text::bigint FROM pg_snapshot_xip(n.s) AS x2 WHERE x2 < x
                     UNION ALL SELECT generate_series(pg_snapshot_xmax(n.s)::text::bigint, x::text::bigint - 1)) INTO a FROM pg_current_snapshot() AS n(s); END LOOP;
  ELSIF p_what = 'oldertext' THEN
    FOR i IN 1..p_n LOOP SELECT n.s::text INTO s FROM pg_current_snapshot() AS n(s); END LOOP;
  ELSIF p_what = 'version' THEN
    FOR i IN 1..p_n LOOP SELECT coalesce(max(e.stream_version), 0) INTO v FROM mz.events e WHERE e.stream_id = 'order-' || (i % 10000); END LOOP;
  END IF;
  t1 := mz.cpu_ns();
  RETURN (t1 - t0)::float8 / p_n / 1000;
END $f$;

LOCK = 987654321
def simp(name, exc=True, table='mz.events', clock=True):
    ts = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
    clock_stmt = (f"v_now := setval('mz.clock', greatest({ts}, pg_sequence_last_value('mz.clock')));" if clock else f"v_now := {ts};")
    locked = f"""
        v_xid := pg_current_xact_id();
        o_first := nextval('mz.positions');
        IF v_n > 1 THEN
            v_last := setval('mz.positions', o_first + v_n - 1);
        END IF;
        {clock_stmt}
        o_snapshot := pg_current_snapshot()::text;"""
    if exc:
        locked = f"""
    BEGIN{locked}
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({LOCK});
        RAISE;
    END;"""
    return f"""
CREATE OR REPLACE FUNCTION mz.{name}(
    p_stream text, p_category text, p_expected bigint,
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[], p_metadata jsonb[],
    OUT o_actual bigint, OUT o_first bigint, OUT o_xid text, OUT o_snapshot text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_n      bigint := cardinality(p_ids);
    v_xid    xid8;
    v_now    bigint;
    v_last   bigint;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    IF NOT pg_try_advisory_xact_lock(12345, hashtext(p_stream)) THEN
        PERFORM pg_advisory_xact_lock(12345, hashtext(p_stream));
    END IF;
    SELECT coalesce(max(e.stream_version), 0) INTO o_actual
        FROM {table} e WHERE e.stream_id = p_stream;
    IF p_expected >= 0 AND o_actual <> p_expected THEN
        RETURN;
    END IF;
    IF NOT pg_try_advisory_lock({LOCK}) THEN
        PERFORM pg_advisory_lock({LOCK});
    END IF;{locked}
    IF NOT pg_advisory_unlock({LOCK}) THEN
        RAISE EXCEPTION 'tidings: the positions lock was not held';
    END IF;
    INSERT INTO {table} (position, xid, stream_id, stream_version, category, event_type,
                            schema_version, event_id, correlation_id, causation_id,
                            timestamp_micros, payload, metadata)
    SELECT o_first + i - 1, v_xid, p_stream, o_actual + i, p_category, p_types[i],
           p_schema_versions[i], p_ids[i], p_correlation_ids[i], p_causation_ids[i],
           v_now, p_payloads[i], p_metadata[i]
    FROM generate_subscripts(p_ids, 1) AS i;
    o_actual := o_actual + v_n;
    o_xid := v_xid::text;
END
$fn$;
"""


# Generates variant append functions and benchmark procedures in schema mz.
import itertools, sys
LOCK = 987654321
def fn(name, exc=True, clock='setval', older='array', pos='setval', merged=False, table='mz.events'):
    # clock expression
    ts = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
    if clock == 'setval':
        clock_sel = f"setval('mz.clock', greatest({ts}, c.last_value))"; clock_from = "mz.clock c,"
    elif clock == 'unlogged':
        clock_sel = f"setval('mz.clock_u', greatest({ts}, c.last_value))"; clock_from = "mz.clock_u c,"
    elif clock == 'none':
        clock_sel = ts; clock_from = ""
    if older == 'array':
        older_sel = """ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(n.s) AS x WHERE x < v_xid
                     UNION ALL
                     SELECT generate_series(pg_snapshot_xmax(n.s)::text::bigint,
                                            v_xid::text::bigint - 1))"""
        older_var = "o_older"
    elif older == 'none':
        older_sel = "NULL::bigint[]"; older_var = "o_older"
    elif older == 'text':
        older_sel = "n.s::text"; older_var = "v_snap"
    if pos == 'setval':
        pos_stmt = "IF v_n > 1 THEN PERFORM setval('mz.positions', o_first + v_n - 1); END IF;"
    else:
        pos_stmt = "IF v_n > 1 THEN PERFORM nextval('mz.positions') FROM generate_series(2, v_n); END IF;"
    if not merged:
        locked = f"""
        SELECT pg_current_xact_id(), nextval('mz.positions') INTO v_xid, o_first;
        {pos_stmt}
        SELECT {clock_sel}, {older_sel}
            INTO v_now, {older_var}
            FROM {clock_from} pg_current_snapshot() AS n(s);"""
        take = f"PERFORM pg_advisory_lock({LOCK});"
        release = f"PERFORM pg_advisory_unlock({LOCK});"
    else:
        take = ""
        locked = f"""
        SELECT pg_current_xact_id(), nextval('mz.positions') INTO v_xid, o_first
            FROM (SELECT pg_advisory_lock({LOCK})) AS l;
        {pos_stmt}
        SELECT {clock_sel}, {older_sel}, pg_advisory_unlock({LOCK})
            INTO v_now, {older_var}
            FROM {clock_from} pg_current_snapshot() AS n(s);"""
        release = ""
    if exc:
        body = f"""{take}
    BEGIN{locked}
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({LOCK});
        RAISE;
    END;
    {release}"""
    else:
        body = f"{take}{locked}\n    {release}"
    return f"""
CREATE OR REPLACE FUNCTION mz.{name}(
    p_stream text, p_category text, p_expected bigint,
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[], p_metadata jsonb[],
    OUT o_actual bigint, OUT o_first bigint, OUT o_xid text, OUT o_older bigint[])
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_n      bigint := cardinality(p_ids);
    v_xid    xid8;
    v_now    bigint;
    v_snap   text;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    PERFORM pg_advisory_xact_lock(12345, hashtext(p_stream));
    SELECT coalesce(max(e.stream_version), 0) INTO o_actual
        FROM {table} e WHERE e.stream_id = p_stream;
    IF p_expected >= 0 AND o_actual <> p_expected THEN
        RETURN;
    END IF;
    {body}
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

def proc(name, call):
    # k-th append: stream k % 10000, 1 + k % 3 events of 200 bytes, as W1.
    return f"""
CREATE OR REPLACE PROCEDURE mz.run_{name}(p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint;
BEGIN
    FOR j IN 1..p_calls LOOP
        v_k := p_off + j;
        v_n := 1 + (v_k % 3)::int;
        v_stream := 'order-' || (v_k % 10000);
        SELECT array_agg(gen_random_uuid()), array_agg('T' || ((3 * v_k + i) % 10)), array_agg(1),
               array_agg(NULL::uuid), array_agg(mz.payload()), array_agg(NULL::jsonb),
               array_agg(v_k * 3 + i)
          INTO v_ids, v_types, v_sv, v_nul, v_pl, v_md, v_vs
          FROM generate_series(1, v_n) AS i;
        {call}
        COMMIT;
    END LOOP;
END
$p$;
"""

variants = {
 'v7':      dict(),
 'noexc':   dict(exc=False),
 'noclock': dict(clock='none'),
 'uclock':  dict(clock='unlogged'),
 'noolder': dict(older='none'),
 'txtolder':dict(older='text'),
 'posnext': dict(pos='nextval'),
 'merged':  dict(merged=True),
 'noidx':   dict(table='mz_noidx.events'),
}
out = ["""
CREATE OR REPLACE FUNCTION mz.payload() RETURNS bytea LANGUAGE sql IMMUTABLE AS
$$ SELECT convert_to(repeat('x', 200), 'UTF8') $$;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS mz.clock_u AS bigint MINVALUE 0 START 0 CACHE 1;
"""]
combos = dict(a for a in [x.split('=') for x in sys.argv[1:]]) if len(sys.argv) > 1 else {}
for name, kw in variants.items():
    out.append(fn('f_' + name, **kw))
    out.append(proc(name, f"PERFORM * FROM mz.f_{name}(v_stream, 'order', -1, v_ids, v_types, v_sv, v_nul, v_nul, v_pl, v_md);"))
# the proposed v8 candidates
cands = {
 'cand1': dict(exc=False, merged=True),
 'cand2': dict(exc=False, merged=True, clock='unlogged', older='text', pos='nextval'),
 'cand3': dict(exc=True, merged=True, clock='unlogged', older='text', pos='nextval'),
 'v8a': dict(exc=True, merged=True, older='text'),
 'v8b': dict(exc=False, merged=True, older='text'),
 'v8c': dict(exc=False, merged=True, older='text', clock='none'),
}
for name, kw in cands.items():
    variants[name] = kw
    out.append(fn('f_' + name, **kw))
    out.append(proc(name, f"PERFORM * FROM mz.f_{name}(v_stream, 'order', -1, v_ids, v_types, v_sv, v_nul, v_nul, v_pl, v_md);"))
out.append(proc('bare', """INSERT INTO mz_bare.events (stream_id, stream_version, category, event_type,
                 schema_version, event_id, correlation_id, causation_id, timestamp_micros, payload)
             SELECT v_stream, v, 'order', t, sv, id, cor, cau, 1, pl
             FROM unnest(v_vs, v_types, v_sv, v_ids, v_nul, v_nul, v_pl) AS u(v, t, sv, id, cor, cau, pl);"""))
print('\n'.join(out))
print(proc('none', "PERFORM 1;"))

CREATE UNLOGGED TABLE IF NOT EXISTS mz.wal (run text, variant text, k bigint, n int, recs bigint, bytes bigint, fpi bigint);

CREATE OR REPLACE PROCEDURE mz.wal_bare(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) INSERT INTO mz_bare.events (stream_id, stream_version, category, event_type,
                 schema_version, event_id, correlation_id, causation_id, timestamp_micros, payload)
             SELECT $1, v, ''order'', t, sv, id, cor, cau, 1, pl
             FROM unnest($2, $3, $4, $5, $6, $6, $7) AS u(v, t, sv, id, cor, cau, pl)' INTO v_j USING v_stream, v_vs, v_types, v_sv, v_ids, v_nul, v_pl;
        INSERT INTO mz.wal VALUES (p_run, 'bare', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_v7(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_v7($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'v7', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_noexc(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_noexc($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'noexc', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_noclock(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_noclock($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'noclock', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_uclock(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_uclock($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'uclock', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_noolder(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_noolder($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'noolder', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_txtolder(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_txtolder($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'txtolder', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_posnext(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_posnext($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'posnext', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_merged(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_merged($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'merged', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_noidx(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_noidx($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'noidx', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_cand1(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_cand1($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'cand1', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_cand2(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_cand2($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'cand2', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_cand3(p_run text, p_calls int, p_off int) LANGUAGE plpgsql AS $p$
DECLARE
    v_ids uuid[]; v_types text[]; v_sv int[]; v_nul uuid[]; v_pl bytea[]; v_md jsonb[]; v_vs bigint[];
    v_n int; v_stream text; v_k bigint; v_j json;
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
        EXECUTE 'EXPLAIN (ANALYZE, WAL, TIMING OFF, FORMAT JSON) SELECT * FROM mz.f_cand3($1, ''order'', -1, $2, $3, $4, $5, $5, $6, $7)' INTO v_j USING v_stream, v_ids, v_types, v_sv, v_nul, v_pl, v_md;
        INSERT INTO mz.wal VALUES (p_run, 'cand3', v_k, v_n, (v_j->0->'Plan'->>'WAL Records')::bigint,
            (v_j->0->'Plan'->>'WAL Bytes')::bigint, (v_j->0->'Plan'->>'WAL FPI')::bigint);
        COMMIT;
    END LOOP;
END
$p$;

CREATE OR REPLACE PROCEDURE mz.wal_interleave(p_run text, p_variants text[], p_blocks int, p_per int, p_off bigint)
LANGUAGE plpgsql AS $p$
DECLARE v_off bigint := p_off; v text;
BEGIN
  FOR b IN 1..p_blocks LOOP
    FOREACH v IN ARRAY p_variants LOOP
      IF v = 'bare' THEN CALL mz.wal_bare(p_run, p_per, v_off::int);
      ELSIF v = 'v7' THEN CALL mz.wal_v7(p_run, p_per, v_off::int);
      ELSIF v = 'noexc' THEN CALL mz.wal_noexc(p_run, p_per, v_off::int);
      ELSIF v = 'noclock' THEN CALL mz.wal_noclock(p_run, p_per, v_off::int);
      ELSIF v = 'uclock' THEN CALL mz.wal_uclock(p_run, p_per, v_off::int);
      ELSIF v = 'noolder' THEN CALL mz.wal_noolder(p_run, p_per, v_off::int);
      ELSIF v = 'txtolder' THEN CALL mz.wal_txtolder(p_run, p_per, v_off::int);
      ELSIF v = 'posnext' THEN CALL mz.wal_posnext(p_run, p_per, v_off::int);
      ELSIF v = 'merged' THEN CALL mz.wal_merged(p_run, p_per, v_off::int);
      ELSIF v = 'noidx' THEN CALL mz.wal_noidx(p_run, p_per, v_off::int);
      ELSIF v = 'cand1' THEN CALL mz.wal_cand1(p_run, p_per, v_off::int);
      ELSIF v = 'cand2' THEN CALL mz.wal_cand2(p_run, p_per, v_off::int);
      ELSIF v = 'cand3' THEN CALL mz.wal_cand3(p_run, p_per, v_off::int);
      END IF;
      v_off := v_off + p_per;
    END LOOP;
  END LOOP;
END $p$;
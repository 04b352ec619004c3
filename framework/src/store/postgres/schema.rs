//! The tables, indexes and functions of a PostgreSQL store, created and migrated at open.
//!
//! Everything lives in one schema that the user names. Migrations are numbered; each runs once,
//! in its own transaction, under a transaction-level advisory lock, so two processes that open
//! the same schema at once apply each migration exactly once (the second waits, then finds it
//! applied). A schema migrated by a newer build than this one is refused.

use deadpool_postgres::Client;

use super::errors::pg_error;
use super::keys::Keys;
use crate::store::{Result, StoreError};

/// The newest migration this build knows (the schema version it reads and writes).
pub const SCHEMA_VERSION: i32 = 8;

/// The statements of migration `version`, for the schema `s` (already quoted) with lock `keys`.
fn migration(version: i32, s: &str, keys: &Keys) -> String {
    match version {
        1 => format!(
            r#"
CREATE SEQUENCE {s}.positions AS bigint MINVALUE 1 START 1 CACHE 1;

CREATE TABLE {s}.events (
    position         bigint  PRIMARY KEY,
    xid              xid8    NOT NULL,
    stream_id        text    COLLATE "C" NOT NULL,
    stream_version   bigint  NOT NULL,
    category         text    COLLATE "C" NOT NULL,
    event_type       text    COLLATE "C" NOT NULL,
    schema_version   integer NOT NULL,
    event_id         uuid    NOT NULL,
    correlation_id   uuid,
    causation_id     uuid,
    timestamp_micros bigint  NOT NULL,
    payload          bytea   NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream_id, stream_version)
);
CREATE INDEX events_category ON {s}.events (category, position);
CREATE INDEX events_event_type ON {s}.events (event_type, position);

CREATE TABLE {s}.checkpoints (
    name           text   COLLATE "C" PRIMARY KEY,
    position       bigint NOT NULL,
    updated_micros bigint NOT NULL
);

CREATE TABLE {s}.state (
    consumer text  COLLATE "C" NOT NULL,
    key      bytea NOT NULL,
    value    bytea NOT NULL,
    PRIMARY KEY (consumer, key)
);

CREATE TABLE {s}.snapshots (
    stream_id      text    COLLATE "C" PRIMARY KEY,
    stream_version bigint  NOT NULL,
    schema_version integer NOT NULL,
    payload        bytea   NOT NULL
);

-- Appends events to one stream, atomically, in the calling statement's transaction, which must
-- not have written anything before (so that its transaction id is taken below).
--
-- 1. The stream's lock (transaction-level advisory lock, held to commit) serializes writers of
--    one stream, so the expected-version check below is exact and a refused append takes no
--    position. The unique (stream_id, stream_version) constraint stays as the last word.
-- 2. Under a short session-level lock shared by every writer of the schema, the transaction
--    takes its id (xid8) and a contiguous block of positions, then lets go. So positions are in
--    the order of transaction ids: if position p < q then xid(p) <= xid(q). A reader that
--    returns only rows whose xid is older than every running transaction therefore never
--    passes a position whose writer is still open (docs/postgres.md, "Global order").
CREATE FUNCTION {s}.append(
    p_stream text, p_category text, p_expected bigint,
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[])
RETURNS TABLE (o_actual bigint, o_first bigint, o_xid text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_actual bigint;
    v_n      bigint := cardinality(p_ids);
    v_first  bigint;
    v_xid    xid8;
    v_now    bigint;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    PERFORM pg_advisory_xact_lock({class}, hashtext(p_stream));
    SELECT coalesce(max(e.stream_version), 0) INTO v_actual
        FROM {s}.events e WHERE e.stream_id = p_stream;
    IF p_expected >= 0 AND v_actual <> p_expected THEN
        RETURN QUERY SELECT v_actual, NULL::bigint, NULL::text;
        RETURN;
    END IF;
    PERFORM pg_advisory_lock({positions});
    v_xid := pg_current_xact_id();
    v_first := nextval('{s}.positions');
    IF v_n > 1 THEN
        PERFORM setval('{s}.positions', v_first + v_n - 1);
    END IF;
    -- Timestamps never go down with position, even if the server's clock steps back.
    v_now := greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                      coalesce((SELECT e.timestamp_micros FROM {s}.events e
                                ORDER BY e.position DESC LIMIT 1), 0));
    PERFORM pg_advisory_unlock({positions});
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
                            schema_version, event_id, correlation_id, causation_id,
                            timestamp_micros, payload)
    SELECT v_first + i - 1, v_xid, p_stream, v_actual + i, p_category, p_types[i],
           p_schema_versions[i], p_ids[i], p_correlation_ids[i], p_causation_ids[i],
           v_now, p_payloads[i]
    FROM generate_subscripts(p_ids, 1) AS i;
    PERFORM pg_notify('{channel}', (v_first + v_n - 1)::text);
    RETURN QUERY SELECT v_actual + v_n, v_first, v_xid::text;
END
$fn$;
"#,
            class = keys.stream_class,
            positions = keys.positions,
            channel = keys.channel,
        ),
        2 => format!(
            r#"
-- Leases: one holder at a time per name (a subscription), with a generation that goes up with
-- each new holder (the fencing token). Times are the server's clock, never a client's.
CREATE TABLE {s}.leases (
    name        text        COLLATE "C" PRIMARY KEY,
    generation  bigint      NOT NULL,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    instance    uuid        NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
"#
        ),
        3 => format!(
            r#"
-- The clock: the highest timestamp handed out, so that timestamps never go down with position
-- without reading the events table under the positions lock. A sequence, because setval is
-- immediate and takes no row lock; a rolled-back append leaves it advanced, which is harmless.
CREATE SEQUENCE {s}.clock AS bigint MINVALUE 0 START 0 CACHE 1;
SELECT setval('{s}.clock',
              coalesce((SELECT e.timestamp_micros FROM {s}.events e
                        ORDER BY e.position DESC LIMIT 1), 0), false);

-- Version 1's append, with three changes:
-- * no NOTIFY inside the append's transaction (it takes a database-wide lock from its commit
--   until the end of the commit's WAL flush, so every append of the server waited for every
--   other; the store now sends one coalesced notification after commits, outside);
-- * the timestamp comes from the clock sequence instead of the newest event;
-- * an error while the positions lock is held releases it before it is raised again (the lock
--   is a session lock: a caller outside tidings would otherwise keep it until it disconnects).
CREATE OR REPLACE FUNCTION {s}.append(
    p_stream text, p_category text, p_expected bigint,
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[])
RETURNS TABLE (o_actual bigint, o_first bigint, o_xid text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_actual bigint;
    v_n      bigint := cardinality(p_ids);
    v_first  bigint;
    v_xid    xid8;
    v_now    bigint;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    PERFORM pg_advisory_xact_lock({class}, hashtext(p_stream));
    SELECT coalesce(max(e.stream_version), 0) INTO v_actual
        FROM {s}.events e WHERE e.stream_id = p_stream;
    IF p_expected >= 0 AND v_actual <> p_expected THEN
        RETURN QUERY SELECT v_actual, NULL::bigint, NULL::text;
        RETURN;
    END IF;
    PERFORM pg_advisory_lock({positions});
    BEGIN
        v_xid := pg_current_xact_id();
        v_first := nextval('{s}.positions');
        IF v_n > 1 THEN
            PERFORM setval('{s}.positions', v_first + v_n - 1);
        END IF;
        -- Timestamps never go down with position, even if the server's clock steps back.
        SELECT greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                        c.last_value) INTO v_now
            FROM {s}.clock c;
        PERFORM setval('{s}.clock', v_now);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({positions});
        RAISE;
    END;
    PERFORM pg_advisory_unlock({positions});
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
                            schema_version, event_id, correlation_id, causation_id,
                            timestamp_micros, payload)
    SELECT v_first + i - 1, v_xid, p_stream, v_actual + i, p_category, p_types[i],
           p_schema_versions[i], p_ids[i], p_correlation_ids[i], p_causation_ids[i],
           v_now, p_payloads[i]
    FROM generate_subscripts(p_ids, 1) AS i;
    RETURN QUERY SELECT v_actual + v_n, v_first, v_xid::text;
END
$fn$;
"#,
            class = keys.stream_class,
            positions = keys.positions,
        ),
        4 => format!(
            r#"
-- Appends of several streams in one transaction: what the store's committers send when
-- appends queue up (see ops.rs, "Group commit"). Each append is checked against its stream's
-- version on its own; those that pass take ONE block of positions together, under the same
-- short positions lock as a single append, so position order stays transaction-id order. The
-- streams must differ (the store never sends one twice; a caller that does gets a unique
-- violation and nothing is written). Returns, per append, the stream's version before it and
-- its first position (NULL: refused, nothing written for it), and the transaction's id.
CREATE FUNCTION {s}.append_batch(
    p_streams text[], p_categories text[], p_expected bigint[], p_counts integer[],
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[])
RETURNS TABLE (o_actual bigint[], o_first bigint[], o_xid text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_n      integer := cardinality(p_streams);
    v_actual bigint[] := array_fill(0::bigint, ARRAY[cardinality(p_streams)]);
    v_first  bigint[] := array_fill(NULL::bigint, ARRAY[cardinality(p_streams)]);
    v_total  bigint := 0;
    v_one    bigint;
    v_base   bigint;
    v_xid    xid8;
    v_now    bigint;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    -- The streams' locks, taken in one order so that batches never wait on each other in a
    -- cycle (a single append takes one lock, which cannot close a cycle either).
    PERFORM pg_advisory_xact_lock({class}, l.h)
        FROM (SELECT DISTINCT hashtext(t.s) AS h FROM unnest(p_streams) AS t(s) ORDER BY 1) AS l;
    FOR v_i IN 1..v_n LOOP
        SELECT coalesce(max(e.stream_version), 0) INTO v_one
            FROM {s}.events e WHERE e.stream_id = p_streams[v_i];
        v_actual[v_i] := v_one;
        IF p_expected[v_i] < 0 OR v_one = p_expected[v_i] THEN
            v_first[v_i] := v_total;
            v_total := v_total + p_counts[v_i];
        END IF;
    END LOOP;
    IF v_total = 0 THEN
        RETURN QUERY SELECT v_actual, v_first, NULL::text;
        RETURN;
    END IF;
    PERFORM pg_advisory_lock({positions});
    BEGIN
        v_xid := pg_current_xact_id();
        v_base := nextval('{s}.positions');
        IF v_total > 1 THEN
            PERFORM setval('{s}.positions', v_base + v_total - 1);
        END IF;
        SELECT greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                        c.last_value) INTO v_now
            FROM {s}.clock c;
        PERFORM setval('{s}.clock', v_now);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({positions});
        RAISE;
    END;
    PERFORM pg_advisory_unlock({positions});
    FOR v_i IN 1..v_n LOOP
        IF v_first[v_i] IS NOT NULL THEN
            v_first[v_i] := v_base + v_first[v_i];
        END IF;
    END LOOP;
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
                            schema_version, event_id, correlation_id, causation_id,
                            timestamp_micros, payload)
    SELECT v_first[a.ai] + k.k - 1, v_xid, p_streams[a.ai], v_actual[a.ai] + k.k,
           p_categories[a.ai], p_types[a.off + k.k], p_schema_versions[a.off + k.k],
           p_ids[a.off + k.k], p_correlation_ids[a.off + k.k], p_causation_ids[a.off + k.k],
           v_now, p_payloads[a.off + k.k]
    FROM (SELECT g.ai, (sum(p_counts[g.ai]) OVER (ORDER BY g.ai) - p_counts[g.ai])::integer AS off
          FROM generate_subscripts(p_streams, 1) AS g(ai)) AS a
    CROSS JOIN LATERAL generate_series(1, p_counts[a.ai]) AS k(k)
    WHERE v_first[a.ai] IS NOT NULL;
    RETURN QUERY SELECT v_actual, v_first, v_xid::text;
END
$fn$;
"#,
            class = keys.stream_class,
            positions = keys.positions,
        ),
        5 => format!(
            r#"
-- append and append_batch again, as append_v5 and append_batch_v5, each also returning whether
-- its transaction was the oldest one running when it took its id (`o_alone`): the snapshot
-- taken right after counts this transaction's own id in its xmin, so xmin >= its id means no
-- older transaction was running, and no transaction can take an older id later. Such an
-- append's events are below every reader's horizon once it commits, so the store answers it
-- without reading the horizon again after the commit (before, a second statement pipelined
-- after every append). The two reads of the locked section are merged into one statement. New
-- names, so that processes of the previous build keep calling the functions they know until
-- they are restarted.
CREATE FUNCTION {s}.append_v5(
    p_stream text, p_category text, p_expected bigint,
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[])
RETURNS TABLE (o_actual bigint, o_first bigint, o_xid text, o_alone boolean)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_actual bigint;
    v_n      bigint := cardinality(p_ids);
    v_first  bigint;
    v_xid    xid8;
    v_now    bigint;
    v_alone  boolean;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    PERFORM pg_advisory_xact_lock({class}, hashtext(p_stream));
    SELECT coalesce(max(e.stream_version), 0) INTO v_actual
        FROM {s}.events e WHERE e.stream_id = p_stream;
    IF p_expected >= 0 AND v_actual <> p_expected THEN
        RETURN QUERY SELECT v_actual, NULL::bigint, NULL::text, NULL::boolean;
        RETURN;
    END IF;
    PERFORM pg_advisory_lock({positions});
    BEGIN
        SELECT pg_current_xact_id(), nextval('{s}.positions') INTO v_xid, v_first;
        IF v_n > 1 THEN
            PERFORM setval('{s}.positions', v_first + v_n - 1);
        END IF;
        -- Timestamps never go down with position, even if the server's clock steps back. In
        -- the same statement (a snapshot taken after this transaction took its id): whether any
        -- older transaction is still running.
        SELECT setval('{s}.clock', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                                            c.last_value)),
               pg_snapshot_xmin(pg_current_snapshot()) >= v_xid
            INTO v_now, v_alone
            FROM {s}.clock c;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({positions});
        RAISE;
    END;
    PERFORM pg_advisory_unlock({positions});
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
                            schema_version, event_id, correlation_id, causation_id,
                            timestamp_micros, payload)
    SELECT v_first + i - 1, v_xid, p_stream, v_actual + i, p_category, p_types[i],
           p_schema_versions[i], p_ids[i], p_correlation_ids[i], p_causation_ids[i],
           v_now, p_payloads[i]
    FROM generate_subscripts(p_ids, 1) AS i;
    RETURN QUERY SELECT v_actual + v_n, v_first, v_xid::text, v_alone;
END
$fn$;

CREATE FUNCTION {s}.append_batch_v5(
    p_streams text[], p_categories text[], p_expected bigint[], p_counts integer[],
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[])
RETURNS TABLE (o_actual bigint[], o_first bigint[], o_xid text, o_alone boolean)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_n      integer := cardinality(p_streams);
    v_actual bigint[] := array_fill(0::bigint, ARRAY[cardinality(p_streams)]);
    v_first  bigint[] := array_fill(NULL::bigint, ARRAY[cardinality(p_streams)]);
    v_total  bigint := 0;
    v_one    bigint;
    v_base   bigint;
    v_xid    xid8;
    v_now    bigint;
    v_alone  boolean;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    -- The streams' locks, taken in one order so that batches never wait on each other in a
    -- cycle (a single append takes one lock, which cannot close a cycle either).
    PERFORM pg_advisory_xact_lock({class}, l.h)
        FROM (SELECT DISTINCT hashtext(t.s) AS h FROM unnest(p_streams) AS t(s) ORDER BY 1) AS l;
    FOR v_i IN 1..v_n LOOP
        SELECT coalesce(max(e.stream_version), 0) INTO v_one
            FROM {s}.events e WHERE e.stream_id = p_streams[v_i];
        v_actual[v_i] := v_one;
        IF p_expected[v_i] < 0 OR v_one = p_expected[v_i] THEN
            v_first[v_i] := v_total;
            v_total := v_total + p_counts[v_i];
        END IF;
    END LOOP;
    IF v_total = 0 THEN
        RETURN QUERY SELECT v_actual, v_first, NULL::text, NULL::boolean;
        RETURN;
    END IF;
    PERFORM pg_advisory_lock({positions});
    BEGIN
        SELECT pg_current_xact_id(), nextval('{s}.positions') INTO v_xid, v_base;
        IF v_total > 1 THEN
            PERFORM setval('{s}.positions', v_base + v_total - 1);
        END IF;
        SELECT setval('{s}.clock', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                                            c.last_value)),
               pg_snapshot_xmin(pg_current_snapshot()) >= v_xid
            INTO v_now, v_alone
            FROM {s}.clock c;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({positions});
        RAISE;
    END;
    PERFORM pg_advisory_unlock({positions});
    FOR v_i IN 1..v_n LOOP
        IF v_first[v_i] IS NOT NULL THEN
            v_first[v_i] := v_base + v_first[v_i];
        END IF;
    END LOOP;
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
                            schema_version, event_id, correlation_id, causation_id,
                            timestamp_micros, payload)
    SELECT v_first[a.ai] + k.k - 1, v_xid, p_streams[a.ai], v_actual[a.ai] + k.k,
           p_categories[a.ai], p_types[a.off + k.k], p_schema_versions[a.off + k.k],
           p_ids[a.off + k.k], p_correlation_ids[a.off + k.k], p_causation_ids[a.off + k.k],
           v_now, p_payloads[a.off + k.k]
    FROM (SELECT g.ai, (sum(p_counts[g.ai]) OVER (ORDER BY g.ai) - p_counts[g.ai])::integer AS off
          FROM generate_subscripts(p_streams, 1) AS g(ai)) AS a
    CROSS JOIN LATERAL generate_series(1, p_counts[a.ai]) AS k(k)
    WHERE v_first[a.ai] IS NOT NULL;
    RETURN QUERY SELECT v_actual, v_first, v_xid::text, v_alone;
END
$fn$;
"#,
            class = keys.stream_class,
            positions = keys.positions,
        ),
        6 => format!(
            r#"
-- Events carry a metadata map (string headers: tenant, user, W3C trace context; decision 56):
-- a jsonb object of strings, NULL when the event has none. Adding a nullable column without a
-- default changes only the catalog, so this migration does not rewrite the table, and every
-- event written before reads as having no metadata.
ALTER TABLE {s}.events ADD COLUMN metadata jsonb;

-- append_v5 and append_batch_v5 again, as append_v6 and append_batch_v6, each taking one
-- metadata object (or NULL) per event. New names, so that processes of the previous build
-- keep calling the functions they know (their events have no metadata) until they are
-- restarted.
CREATE FUNCTION {s}.append_v6(
    p_stream text, p_category text, p_expected bigint,
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[], p_metadata jsonb[])
RETURNS TABLE (o_actual bigint, o_first bigint, o_xid text, o_alone boolean)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_actual bigint;
    v_n      bigint := cardinality(p_ids);
    v_first  bigint;
    v_xid    xid8;
    v_now    bigint;
    v_alone  boolean;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    PERFORM pg_advisory_xact_lock({class}, hashtext(p_stream));
    SELECT coalesce(max(e.stream_version), 0) INTO v_actual
        FROM {s}.events e WHERE e.stream_id = p_stream;
    IF p_expected >= 0 AND v_actual <> p_expected THEN
        RETURN QUERY SELECT v_actual, NULL::bigint, NULL::text, NULL::boolean;
        RETURN;
    END IF;
    PERFORM pg_advisory_lock({positions});
    BEGIN
        SELECT pg_current_xact_id(), nextval('{s}.positions') INTO v_xid, v_first;
        IF v_n > 1 THEN
            PERFORM setval('{s}.positions', v_first + v_n - 1);
        END IF;
        -- Timestamps never go down with position, even if the server's clock steps back. In
        -- the same statement (a snapshot taken after this transaction took its id): whether any
        -- older transaction is still running.
        SELECT setval('{s}.clock', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                                            c.last_value)),
               pg_snapshot_xmin(pg_current_snapshot()) >= v_xid
            INTO v_now, v_alone
            FROM {s}.clock c;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({positions});
        RAISE;
    END;
    PERFORM pg_advisory_unlock({positions});
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
                            schema_version, event_id, correlation_id, causation_id,
                            timestamp_micros, payload, metadata)
    SELECT v_first + i - 1, v_xid, p_stream, v_actual + i, p_category, p_types[i],
           p_schema_versions[i], p_ids[i], p_correlation_ids[i], p_causation_ids[i],
           v_now, p_payloads[i], p_metadata[i]
    FROM generate_subscripts(p_ids, 1) AS i;
    RETURN QUERY SELECT v_actual + v_n, v_first, v_xid::text, v_alone;
END
$fn$;

CREATE FUNCTION {s}.append_batch_v6(
    p_streams text[], p_categories text[], p_expected bigint[], p_counts integer[],
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[], p_metadata jsonb[])
RETURNS TABLE (o_actual bigint[], o_first bigint[], o_xid text, o_alone boolean)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_n      integer := cardinality(p_streams);
    v_actual bigint[] := array_fill(0::bigint, ARRAY[cardinality(p_streams)]);
    v_first  bigint[] := array_fill(NULL::bigint, ARRAY[cardinality(p_streams)]);
    v_total  bigint := 0;
    v_one    bigint;
    v_base   bigint;
    v_xid    xid8;
    v_now    bigint;
    v_alone  boolean;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    -- The streams' locks, taken in one order so that batches never wait on each other in a
    -- cycle (a single append takes one lock, which cannot close a cycle either).
    PERFORM pg_advisory_xact_lock({class}, l.h)
        FROM (SELECT DISTINCT hashtext(t.s) AS h FROM unnest(p_streams) AS t(s) ORDER BY 1) AS l;
    FOR v_i IN 1..v_n LOOP
        SELECT coalesce(max(e.stream_version), 0) INTO v_one
            FROM {s}.events e WHERE e.stream_id = p_streams[v_i];
        v_actual[v_i] := v_one;
        IF p_expected[v_i] < 0 OR v_one = p_expected[v_i] THEN
            v_first[v_i] := v_total;
            v_total := v_total + p_counts[v_i];
        END IF;
    END LOOP;
    IF v_total = 0 THEN
        RETURN QUERY SELECT v_actual, v_first, NULL::text, NULL::boolean;
        RETURN;
    END IF;
    PERFORM pg_advisory_lock({positions});
    BEGIN
        SELECT pg_current_xact_id(), nextval('{s}.positions') INTO v_xid, v_base;
        IF v_total > 1 THEN
            PERFORM setval('{s}.positions', v_base + v_total - 1);
        END IF;
        SELECT setval('{s}.clock', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                                            c.last_value)),
               pg_snapshot_xmin(pg_current_snapshot()) >= v_xid
            INTO v_now, v_alone
            FROM {s}.clock c;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({positions});
        RAISE;
    END;
    PERFORM pg_advisory_unlock({positions});
    FOR v_i IN 1..v_n LOOP
        IF v_first[v_i] IS NOT NULL THEN
            v_first[v_i] := v_base + v_first[v_i];
        END IF;
    END LOOP;
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
                            schema_version, event_id, correlation_id, causation_id,
                            timestamp_micros, payload, metadata)
    SELECT v_first[a.ai] + k.k - 1, v_xid, p_streams[a.ai], v_actual[a.ai] + k.k,
           p_categories[a.ai], p_types[a.off + k.k], p_schema_versions[a.off + k.k],
           p_ids[a.off + k.k], p_correlation_ids[a.off + k.k], p_causation_ids[a.off + k.k],
           v_now, p_payloads[a.off + k.k], p_metadata[a.off + k.k]
    FROM (SELECT g.ai, (sum(p_counts[g.ai]) OVER (ORDER BY g.ai) - p_counts[g.ai])::integer AS off
          FROM generate_subscripts(p_streams, 1) AS g(ai)) AS a
    CROSS JOIN LATERAL generate_series(1, p_counts[a.ai]) AS k(k)
    WHERE v_first[a.ai] IS NOT NULL;
    RETURN QUERY SELECT v_actual, v_first, v_xid::text, v_alone;
END
$fn$;
"#,
            class = keys.stream_class,
            positions = keys.positions,
        ),
        7 => format!(
            r#"
-- append_v6 and append_batch_v6 again, as append_v7 and append_batch_v7, each returning,
-- instead of whether its transaction was the oldest one running when it took its id, the ids
-- of the older transactions that were still running then (`o_older`; empty: the oldest). The
-- store answers an append once each of them has finished: when they are its own appends (the
-- other committer's, whose commits it sees end), at once, without reading the horizon from the
-- server (decision 57). The snapshot that lists them is taken after this transaction took its
-- id, so every older transaction not listed had already finished, and none can take an older
-- id later. Also: the functions return one row through OUT parameters (no result set to
-- materialize), and append_batch_v7 reads the versions of all its streams in one statement
-- instead of one per stream. New names, so that processes of the previous build keep calling
-- the functions they know until they are restarted.
CREATE FUNCTION {s}.append_v7(
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
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    PERFORM pg_advisory_xact_lock({class}, hashtext(p_stream));
    SELECT coalesce(max(e.stream_version), 0) INTO o_actual
        FROM {s}.events e WHERE e.stream_id = p_stream;
    IF p_expected >= 0 AND o_actual <> p_expected THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_lock({positions});
    BEGIN
        SELECT pg_current_xact_id(), nextval('{s}.positions') INTO v_xid, o_first;
        IF v_n > 1 THEN
            PERFORM setval('{s}.positions', o_first + v_n - 1);
        END IF;
        -- Timestamps never go down with position, even if the server's clock steps back. In
        -- the same statement (a snapshot taken after this transaction took its id): the older
        -- transactions still running. Those are the ones the snapshot lists below this one, and
        -- every id from its xmax (one past the newest transaction that had finished) up to this
        -- one: the snapshot does not list those, it counts them all as running.
        SELECT setval('{s}.clock', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                                            c.last_value)),
               ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(n.s) AS x WHERE x < v_xid
                     UNION ALL
                     SELECT generate_series(pg_snapshot_xmax(n.s)::text::bigint,
                                            v_xid::text::bigint - 1))
            INTO v_now, o_older
            FROM {s}.clock c, pg_current_snapshot() AS n(s);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({positions});
        RAISE;
    END;
    PERFORM pg_advisory_unlock({positions});
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
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

CREATE FUNCTION {s}.append_batch_v7(
    p_streams text[], p_categories text[], p_expected bigint[], p_counts integer[],
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[], p_metadata jsonb[],
    OUT o_actual bigint[], OUT o_first bigint[], OUT o_xid text, OUT o_older bigint[])
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_n      integer := cardinality(p_streams);
    v_total  bigint := 0;
    v_base   bigint;
    v_xid    xid8;
    v_now    bigint;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    -- The streams' locks, taken in one order so that batches never wait on each other in a
    -- cycle (a single append takes one lock, which cannot close a cycle either).
    PERFORM pg_advisory_xact_lock({class}, l.h)
        FROM (SELECT DISTINCT hashtext(t.s) AS h FROM unnest(p_streams) AS t(s) ORDER BY 1) AS l;
    -- Every stream's version in one statement (its snapshot is taken after the locks).
    SELECT array_agg(coalesce(m.v, 0) ORDER BY t.i) INTO o_actual
        FROM unnest(p_streams) WITH ORDINALITY AS t(s, i)
        LEFT JOIN LATERAL (SELECT max(e.stream_version) AS v FROM {s}.events e
                           WHERE e.stream_id = t.s) AS m ON true;
    o_first := array_fill(NULL::bigint, ARRAY[v_n]);
    FOR v_i IN 1..v_n LOOP
        IF p_expected[v_i] < 0 OR o_actual[v_i] = p_expected[v_i] THEN
            o_first[v_i] := v_total;
            v_total := v_total + p_counts[v_i];
        END IF;
    END LOOP;
    IF v_total = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_lock({positions});
    BEGIN
        SELECT pg_current_xact_id(), nextval('{s}.positions') INTO v_xid, v_base;
        IF v_total > 1 THEN
            PERFORM setval('{s}.positions', v_base + v_total - 1);
        END IF;
        SELECT setval('{s}.clock', greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                                            c.last_value)),
               ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(n.s) AS x WHERE x < v_xid
                     UNION ALL
                     SELECT generate_series(pg_snapshot_xmax(n.s)::text::bigint,
                                            v_xid::text::bigint - 1))
            INTO v_now, o_older
            FROM {s}.clock c, pg_current_snapshot() AS n(s);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({positions});
        RAISE;
    END;
    PERFORM pg_advisory_unlock({positions});
    FOR v_i IN 1..v_n LOOP
        IF o_first[v_i] IS NOT NULL THEN
            o_first[v_i] := v_base + o_first[v_i];
        END IF;
    END LOOP;
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
                            schema_version, event_id, correlation_id, causation_id,
                            timestamp_micros, payload, metadata)
    SELECT o_first[a.ai] + k.k - 1, v_xid, p_streams[a.ai], o_actual[a.ai] + k.k,
           p_categories[a.ai], p_types[a.off + k.k], p_schema_versions[a.off + k.k],
           p_ids[a.off + k.k], p_correlation_ids[a.off + k.k], p_causation_ids[a.off + k.k],
           v_now, p_payloads[a.off + k.k], p_metadata[a.off + k.k]
    FROM (SELECT g.ai, (sum(p_counts[g.ai]) OVER (ORDER BY g.ai) - p_counts[g.ai])::integer AS off
          FROM generate_subscripts(p_streams, 1) AS g(ai)) AS a
    CROSS JOIN LATERAL generate_series(1, p_counts[a.ai]) AS k(k)
    WHERE o_first[a.ai] IS NOT NULL;
    o_xid := v_xid::text;
END
$fn$;
"#,
            class = keys.stream_class,
            positions = keys.positions,
        ),
        8 => format!(
            r#"
-- append_v7 and append_batch_v7 again, as append_v8 and append_batch_v8, doing the same work
-- with less of the server's time (decision 61):
-- * Every step of the locked section is a plain expression (`v := f(...)`), which PL/pgSQL
--   evaluates without running a query; v7 ran each as a query (PERFORM or SELECT ... INTO,
--   each a plan's start and end) and read the clock by scanning its sequence as a table.
--   The advisory locks are first tried the same way, and waited for by a query only when
--   another session holds them.
-- * The functions return the snapshot taken after this transaction took its id, as text
--   (`o_snapshot`, 'xmin:xmax:xip,...'), instead of building the array of the older
--   transactions still running: the store works that list out from it (ops.rs,
--   `older_than`): those the snapshot lists below this transaction's id, and every id from
--   its xmax up to it. Each plain expression takes a new snapshot (in read committed, as the
--   store's sessions run), so this one is taken after the id; an older one would only list
--   more transactions (every id from its xmax on), never fewer.
-- What is unchanged: the order of the steps (the stream locks and the version read, then,
-- under the positions lock, the transaction id, the block of positions, the timestamp from the
-- clock and the snapshot, then the INSERT after the lock is released), so position order is
-- still transaction-id order (migration 1), a refused append takes no position, and the
-- exception block still releases the positions lock when anything fails while it is held.
-- New names, so that processes of the previous build keep calling the functions they know
-- until they are restarted.
--
-- The clock is now read with pg_sequence_last_value, which is NULL until the sequence has been
-- set as called: migration 3 seeded it without, so a schema with no append since then would
-- lose its seed (the newest imported timestamp). Set it as called, under the positions lock
-- (appends of the previous build may be running, and each sets the clock under that lock).
SELECT pg_advisory_xact_lock({positions});
SELECT setval('{s}.clock', c.last_value) FROM {s}.clock c WHERE NOT c.is_called;

CREATE FUNCTION {s}.append_v8(
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
    IF NOT pg_try_advisory_xact_lock({class}, hashtext(p_stream)) THEN
        PERFORM pg_advisory_xact_lock({class}, hashtext(p_stream));
    END IF;
    SELECT coalesce(max(e.stream_version), 0) INTO o_actual
        FROM {s}.events e WHERE e.stream_id = p_stream;
    IF p_expected >= 0 AND o_actual <> p_expected THEN
        RETURN;
    END IF;
    IF NOT pg_try_advisory_lock({positions}) THEN
        PERFORM pg_advisory_lock({positions});
    END IF;
    BEGIN
        v_xid := pg_current_xact_id();
        o_first := nextval('{s}.positions');
        IF v_n > 1 THEN
            v_last := setval('{s}.positions', o_first + v_n - 1);
        END IF;
        -- Timestamps never go down with position, even if the server's clock steps back.
        v_now := setval('{s}.clock',
                        greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                                 pg_sequence_last_value('{s}.clock')));
        o_snapshot := pg_current_snapshot()::text;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({positions});
        RAISE;
    END;
    IF NOT pg_advisory_unlock({positions}) THEN
        RAISE EXCEPTION 'tidings: the positions lock was not held';
    END IF;
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
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

CREATE FUNCTION {s}.append_batch_v8(
    p_streams text[], p_categories text[], p_expected bigint[], p_counts integer[],
    p_ids uuid[], p_types text[], p_schema_versions integer[],
    p_correlation_ids uuid[], p_causation_ids uuid[], p_payloads bytea[], p_metadata jsonb[],
    OUT o_actual bigint[], OUT o_first bigint[], OUT o_xid text, OUT o_snapshot text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_n      integer := cardinality(p_streams);
    v_total  bigint := 0;
    v_base   bigint;
    v_xid    xid8;
    v_now    bigint;
    v_last   bigint;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'tidings: an append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    -- The streams' locks, taken in one order so that batches never wait on each other in a
    -- cycle (a single append takes one lock, which cannot close a cycle either).
    PERFORM pg_advisory_xact_lock({class}, l.h)
        FROM (SELECT DISTINCT hashtext(t.s) AS h FROM unnest(p_streams) AS t(s) ORDER BY 1) AS l;
    -- Every stream's version in one statement (its snapshot is taken after the locks).
    SELECT array_agg(coalesce(m.v, 0) ORDER BY t.i) INTO o_actual
        FROM unnest(p_streams) WITH ORDINALITY AS t(s, i)
        LEFT JOIN LATERAL (SELECT max(e.stream_version) AS v FROM {s}.events e
                           WHERE e.stream_id = t.s) AS m ON true;
    o_first := array_fill(NULL::bigint, ARRAY[v_n]);
    FOR v_i IN 1..v_n LOOP
        IF p_expected[v_i] < 0 OR o_actual[v_i] = p_expected[v_i] THEN
            o_first[v_i] := v_total;
            v_total := v_total + p_counts[v_i];
        END IF;
    END LOOP;
    IF v_total = 0 THEN
        RETURN;
    END IF;
    IF NOT pg_try_advisory_lock({positions}) THEN
        PERFORM pg_advisory_lock({positions});
    END IF;
    BEGIN
        v_xid := pg_current_xact_id();
        v_base := nextval('{s}.positions');
        IF v_total > 1 THEN
            v_last := setval('{s}.positions', v_base + v_total - 1);
        END IF;
        v_now := setval('{s}.clock',
                        greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                                 pg_sequence_last_value('{s}.clock')));
        o_snapshot := pg_current_snapshot()::text;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({positions});
        RAISE;
    END;
    IF NOT pg_advisory_unlock({positions}) THEN
        RAISE EXCEPTION 'tidings: the positions lock was not held';
    END IF;
    FOR v_i IN 1..v_n LOOP
        IF o_first[v_i] IS NOT NULL THEN
            o_first[v_i] := v_base + o_first[v_i];
        END IF;
    END LOOP;
    INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, event_type,
                            schema_version, event_id, correlation_id, causation_id,
                            timestamp_micros, payload, metadata)
    SELECT o_first[a.ai] + k.k - 1, v_xid, p_streams[a.ai], o_actual[a.ai] + k.k,
           p_categories[a.ai], p_types[a.off + k.k], p_schema_versions[a.off + k.k],
           p_ids[a.off + k.k], p_correlation_ids[a.off + k.k], p_causation_ids[a.off + k.k],
           v_now, p_payloads[a.off + k.k], p_metadata[a.off + k.k]
    FROM (SELECT g.ai, (sum(p_counts[g.ai]) OVER (ORDER BY g.ai) - p_counts[g.ai])::integer AS off
          FROM generate_subscripts(p_streams, 1) AS g(ai)) AS a
    CROSS JOIN LATERAL generate_series(1, p_counts[a.ai]) AS k(k)
    WHERE o_first[a.ai] IS NOT NULL;
    o_xid := v_xid::text;
END
$fn$;
"#,
            class = keys.stream_class,
            positions = keys.positions,
        ),
        other => unreachable!("no migration {other}"),
    }
}

/// Creates the schema or brings it up to [`SCHEMA_VERSION`]. Safe to run from several
/// processes at once.
pub async fn migrate(client: &mut Client, schema: &str, keys: &Keys) -> Result<()> {
    let s = super::quote(schema);
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&keys.migrate])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(pg_error)?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {s}.migrations"),
            &[],
        )
        .await
        .map_err(pg_error)?;
    let current: i32 = row.get(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::UnsupportedFormat {
            path: format!("postgres schema {schema}").into(),
            found: current as u32,
            supported: SCHEMA_VERSION as u32,
        });
    }
    for version in current + 1..=SCHEMA_VERSION {
        tx.batch_execute(&migration(version, &s, keys))
            .await
            .map_err(pg_error)?;
        tx.execute(
            &format!("INSERT INTO {s}.migrations (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)
}

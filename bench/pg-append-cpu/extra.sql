DROP SCHEMA IF EXISTS mz_noidx CASCADE; CREATE SCHEMA mz_noidx;
CREATE TABLE mz_noidx.events (LIKE mz.events INCLUDING ALL);
DROP INDEX mz_noidx.events_category_position_idx; DROP INDEX mz_noidx.events_event_type_position_idx;
DROP SCHEMA IF EXISTS mz_bare CASCADE; CREATE SCHEMA mz_bare;
CREATE TABLE mz_bare.events (
     position         bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
     xid              xid8    NOT NULL DEFAULT pg_current_xact_id(),
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
     UNIQUE (stream_id, stream_version));

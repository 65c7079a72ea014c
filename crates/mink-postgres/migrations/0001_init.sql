-- mink-postgres, migration 1: streams, events, snapshots, checkpoints.
-- `{schema}` is replaced by the quoted schema name.

-- One row per stream: its current version. Appends update it with a compare-and-set,
-- which serializes writers of one stream (and only of that stream). `last_tx` is the
-- feed transaction id of the stream's last append: an append stamps its events with
-- the greater of its own transaction id and `last_tx`, so that a stream's events are
-- in version order in the feed even when a transaction that took its id earlier appends
-- after a younger one.
CREATE TABLE {schema}.streams (
    stream_id  text        COLLATE "C" PRIMARY KEY,
    category   text        COLLATE "C" NOT NULL,
    version    bigint      NOT NULL CHECK (version > 0),
    last_tx    xid8        NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
) WITH (fillfactor = 80); -- room for HOT updates of the version

-- Names are compared byte for byte (COLLATE "C"): equality is all the store needs, it
-- is the fastest comparison, and indexes cannot be broken by an operating-system
-- collation update.
--
-- The events. The feed order is (tx, position): `tx` is the id of the writing
-- transaction, `position` comes from a sequence at insert time. A reader only returns
-- rows whose transaction is below its snapshot's xmin (every such transaction has
-- finished), so a late commit is never skipped.
--
-- `payload` holds the encoded event as given, whatever its codec (`codec`); JSON
-- payloads are queryable through the `events_json` view below.
CREATE TABLE {schema}.events (
    tx             xid8        NOT NULL DEFAULT pg_current_xact_id(),
    position       bigint      GENERATED ALWAYS AS IDENTITY,
    event_id       uuid        NOT NULL,
    stream_id      text        COLLATE "C" NOT NULL,
    category       text        COLLATE "C" NOT NULL,
    version        bigint      NOT NULL CHECK (version > 0),
    event_type     text        COLLATE "C" NOT NULL,
    schema_version integer     NOT NULL CHECK (schema_version > 0),
    codec          text        NOT NULL,
    payload        bytea       NOT NULL,
    metadata       jsonb,
    recorded_at    timestamptz NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (tx, position),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

-- Filtered feed reads (by category, event type) walk the feed index and skip what does
-- not match, so a filtered catch-up costs a read of the feed, not of the matches. Where
-- a filter selects a small part of a large store, add an index for it (it costs every
-- append one more index insert): PgEventStore::create_category_index and
-- create_event_type_index.

-- The latest snapshot of each stream.
CREATE TABLE {schema}.snapshots (
    stream_id      text        COLLATE "C" PRIMARY KEY,
    aggregate_type text        NOT NULL,
    version        bigint      NOT NULL,
    schema_version integer     NOT NULL,
    codec          text        NOT NULL,
    payload        bytea       NOT NULL,
    taken_at       timestamptz NOT NULL
);

-- Named checkpoints of feed consumers. `position` is the 16-byte form of a mink
-- Position (big-endian tx, then position), which sorts like positions do.
CREATE TABLE {schema}.checkpoints (
    name       text        COLLATE "C" PRIMARY KEY,
    position   bytea       NOT NULL CHECK (octet_length(position) = 16),
    updated_at timestamptz NOT NULL
);

-- The payload of a JSON event as jsonb; NULL for other codecs and for payloads that
-- are not valid JSON. Immutable, so it can back expression indexes, e.g.
--   CREATE INDEX ON mink.events ((mink.json_payload(codec, payload) ->> 'orderId'))
--     WHERE codec = 'json';
CREATE FUNCTION {schema}.json_payload(codec text, payload bytea) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN
    IF codec <> 'json' THEN
        RETURN NULL;
    END IF;
    RETURN convert_from(payload, 'UTF8')::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$fn$;

-- The events with JSON payloads decoded, for ad-hoc queries:
--   SELECT data ->> 'total' FROM mink.events_json WHERE event_type = 'OrderPlaced';
CREATE VIEW {schema}.events_json AS
SELECT tx, position, event_id, stream_id, category, version, event_type, schema_version,
       codec, {schema}.json_payload(codec, payload) AS data, metadata, recorded_at
FROM {schema}.events;

-- mink-postgres, migration 4: projection control (statuses, requests, parked events,
-- leases) and the durable marks of blue/green rebuilds. Checkpoints stay in
-- `checkpoints` (migration 1). Read-model tables (`rm_<model>`) are created by the read-
-- model store when a model is first ensured, not here.
-- `{schema}` is replaced by the quoted schema name.

-- The last status each projection (or partition) worker reported.
CREATE TABLE {schema}.mink_projection_status (
    name         text        COLLATE "C" PRIMARY KEY,
    state        text        NOT NULL,
    checkpoint   bytea       CHECK (octet_length(checkpoint) = 16),
    owner        text,
    last_error   text,
    parked       bigint      NOT NULL,
    rebuild_at   bytea       CHECK (octet_length(rebuild_at) = 16),
    rebuild_to   bytea       CHECK (octet_length(rebuild_to) = 16),
    updated_at   timestamptz NOT NULL
);

-- Operators' requests (pause, resume, rebuild, reset, replay parked), picked up by the
-- worker holding the projection. `command` is the JSON form of mink_es Command.
CREATE TABLE {schema}.mink_projection_requests (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        COLLATE "C" NOT NULL,
    command      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    completed_at timestamptz,
    error        text
);
CREATE INDEX mink_projection_requests_pending
    ON {schema}.mink_projection_requests (name, id) WHERE completed_at IS NULL;

-- Events a projection could not apply, with the error, in feed order per projection.
CREATE TABLE {schema}.mink_projection_parked (
    name           text        COLLATE "C" NOT NULL,
    position       bytea       NOT NULL CHECK (octet_length(position) = 16),
    event_id       uuid        NOT NULL,
    stream_id      text        COLLATE "C" NOT NULL,
    version        bigint      NOT NULL,
    event_type     text        COLLATE "C" NOT NULL,
    schema_version integer     NOT NULL,
    codec          text        NOT NULL,
    payload        bytea       NOT NULL,
    metadata       jsonb,
    recorded_at    timestamptz NOT NULL,
    error          text        NOT NULL,
    parked_at      timestamptz NOT NULL,
    PRIMARY KEY (name, position)
);

-- One lease per projection (or partition): the process holding it is the only active
-- one. Taken atomically when free, expired or already its own; the server's clock
-- decides expiry.
CREATE TABLE {schema}.mink_projection_leases (
    name       text        COLLATE "C" PRIMARY KEY,
    owner      text        NOT NULL,
    expires_at timestamptz NOT NULL
);

-- A row per projection rebuilding blue/green: its writes go to the shadow tables
-- (`<table>__next`) until the rebuild reaches `target` (the head of the feed when it
-- started) or finishes, and the shadow tables are swapped in. Durable, so that a
-- process that crashed mid-rebuild resumes into the shadow tables and swaps them in.
CREATE TABLE {schema}.mink_projection_rebuilds (
    name       text        COLLATE "C" PRIMARY KEY,
    tables     text[]      NOT NULL,
    target     bytea       NOT NULL CHECK (octet_length(target) = 16),
    started_at timestamptz NOT NULL DEFAULT statement_timestamp()
);

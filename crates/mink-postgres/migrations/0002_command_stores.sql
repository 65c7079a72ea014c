-- mink-postgres, migration 2: the command bus's stores (idempotency keys, audit log).
-- `{schema}` is replaced by the quoted schema name.

-- One row per idempotency key: a reservation (`reserved`, held by the attempt that
-- knows `token`) or the stored result of a command that succeeded (`completed`, with
-- `output`). A row past `expires_at` is free: the next claim takes it over, and
-- `purge_expired` deletes it. Expiry is decided by the server's clock only; a
-- time-to-live too long to count is kept as 'infinity'.
CREATE TABLE {schema}.idempotency_keys (
    key        text        COLLATE "C" PRIMARY KEY,
    state      text        NOT NULL CHECK (state IN ('reserved', 'completed')),
    token      uuid        NOT NULL,
    output     bytea,
    expires_at timestamptz NOT NULL,
    CONSTRAINT idempotency_keys_output_check CHECK ((state = 'completed') = (output IS NOT NULL))
);

-- `purge_expired` finds expired rows without reading the others.
CREATE INDEX idempotency_keys_expires_at_idx ON {schema}.idempotency_keys (expires_at);

-- The audit log: one row per entry, append-only. `seq` is the append order, which
-- breaks ties between entries equal on (started_at, id). `error_kind` and
-- `error_message` are set exactly for `failed` entries.
CREATE TABLE {schema}.audit_log (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             uuid        NOT NULL,
    command_id     uuid        NOT NULL,
    command        text        COLLATE "C" NOT NULL,
    aggregate_id   text        COLLATE "C",
    user_id        text        COLLATE "C",
    tenant_id      text        COLLATE "C",
    correlation_id text        COLLATE "C",
    outcome        text        NOT NULL CHECK (outcome IN ('started', 'succeeded', 'failed')),
    error_kind     text,
    error_message  text,
    started_at     timestamptz NOT NULL,
    duration_us    bigint      NOT NULL CHECK (duration_us >= 0),
    CONSTRAINT audit_log_error_check CHECK (
        CASE outcome
            WHEN 'failed' THEN error_kind IS NOT NULL AND error_message IS NOT NULL
            ELSE error_kind IS NULL AND error_message IS NULL
        END)
);

-- Queries filter by time, by user or by command type, and return entries in
-- (started_at, id, seq) order, either way: each index serves one filter in that order,
-- so no query sorts.
CREATE INDEX audit_log_by_time_idx ON {schema}.audit_log (started_at, id, seq);
CREATE INDEX audit_log_by_user_idx ON {schema}.audit_log (user_id, started_at, id, seq);
CREATE INDEX audit_log_by_command_idx ON {schema}.audit_log (command, started_at, id, seq);

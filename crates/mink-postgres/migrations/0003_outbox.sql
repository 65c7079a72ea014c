-- mink-postgres, migration 3: the transactional outbox.
-- `{schema}` is replaced by the quoted schema name.

-- One row per message to deliver to one destination, written by an append in the same
-- transaction as its event (see PgEventStoreBuilder::outbox). `seq` is the order of
-- writing: the messages of one stream get their `seq` while the append holds the
-- stream's row, so a stream's messages are in version order. A message is deliverable
-- when it is the oldest `pending` message (lowest `seq`) of its (destination, stream),
-- is due (`next_attempt_at`), and is not leased (`lease_until` in the future); `dead`
-- messages (the dead-letter queue) hold nothing back. `id` is derived from the event
-- id and the destination, and is not unique: two routes to one destination give one
-- event two messages with the same id, as every mink store does.
--
-- `tx` and `position` are the event's feed position; `payload` and `codec` are the
-- message body (the event's, or a route's transform of it); `metadata` is the event's.
-- Times are the server's clock.
CREATE TABLE {schema}.outbox (
    seq             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              uuid        NOT NULL,
    destination     text        COLLATE "C" NOT NULL,
    stream_id       text        COLLATE "C" NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        COLLATE "C" NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    tx              xid8        NOT NULL,
    position        bigint      NOT NULL,
    codec           text        NOT NULL,
    payload         bytea       NOT NULL,
    metadata        jsonb,
    created_at      timestamptz NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    lease_owner     text,
    lease_until     timestamptz,
    last_error      text,
    finished_at     timestamptz,
    CONSTRAINT outbox_lease_check CHECK ((lease_owner IS NULL) = (lease_until IS NULL)),
    CONSTRAINT outbox_finished_check CHECK ((status = 'pending') = (finished_at IS NULL))
) WITH (fillfactor = 80); -- room for HOT updates of leases and attempts

-- Claims walk the pending messages in `seq` order ...
CREATE INDEX outbox_pending_idx ON {schema}.outbox (seq) WHERE status = 'pending';
-- ... and check that each is the first pending message of its (destination, stream).
CREATE INDEX outbox_pending_streams_idx ON {schema}.outbox (destination, stream_id, seq)
    WHERE status = 'pending';
-- Acknowledgements, failures, status, replays and purges of one message.
CREATE INDEX outbox_id_idx ON {schema}.outbox (id);
-- The dead-letter queue, oldest first.
CREATE INDEX outbox_dead_idx ON {schema}.outbox (seq) WHERE status = 'dead';
-- Deleting delivered messages past their retention.
CREATE INDEX outbox_delivered_idx ON {schema}.outbox (finished_at) WHERE status = 'delivered';

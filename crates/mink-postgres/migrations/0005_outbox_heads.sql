-- mink-postgres, migration 5: outbox heads, so that a claim reads the messages it may
-- take rather than every pending one.
-- `{schema}` is replaced by the quoted schema name.

-- The head of each (destination, stream): the message a claim may take next. One row
-- per (destination, stream) that ever had a message, created by the append that wrote
-- its first one. `seq` is NULL when the stream has no pending message; otherwise it is
-- at most the `seq` of the oldest one: equal to it, or naming a message finished
-- (acknowledged, dead-lettered, perhaps purged since) whose stream is being repaired or
-- is listed in `outbox_stale`.
--
-- The row's lock serializes whatever can give its stream a new head: appends (which
-- set `seq` when it is NULL, and hold the lock until they commit), repairs (after an
-- acknowledgement or a failure, by a claim, by a replay), which move `seq` to the
-- oldest pending message.
CREATE TABLE {schema}.outbox_heads (
    destination text   COLLATE "C" NOT NULL,
    stream_id   text   COLLATE "C" NOT NULL,
    seq         bigint,
    PRIMARY KEY (destination, stream_id)
);
-- Claims walk the heads in `seq` order.
CREATE INDEX outbox_heads_seq_idx ON {schema}.outbox_heads (seq) WHERE seq IS NOT NULL;

-- Streams whose head may be stale and could not be repaired at once (their row in
-- `outbox_heads` was held); claims repair them first, and delete their entries.
CREATE TABLE {schema}.outbox_stale (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination text   COLLATE "C" NOT NULL,
    stream_id   text   COLLATE "C" NOT NULL
);

-- Existing messages: every (destination, stream) gets its row, headed by its oldest
-- pending message. Writers wait until this migration commits.
LOCK TABLE {schema}.outbox IN EXCLUSIVE MODE;
INSERT INTO {schema}.outbox_heads (destination, stream_id, seq)
SELECT destination, stream_id, min(seq) FILTER (WHERE status = 'pending')
FROM {schema}.outbox GROUP BY destination, stream_id;

-- The usage log (afs-store-postgres schema 1). Times are bigint microseconds since the
-- epoch, UTC. Owned by src/usage.rs.
CREATE TABLE afs_usage (
    -- Insertion order: breaks ties between records of the same microsecond.
    seq bigint GENERATED ALWAYS AS IDENTITY,
    id text NOT NULL,
    ts_us bigint NOT NULL,
    query text NOT NULL,
    response text NOT NULL,
    model text NOT NULL,
    expert text,
    latency_ms double precision,
    token_count bigint,
    quality_score double precision,
    -- -1 negative, 0 neutral, 1 positive (FeedbackValue::as_i64).
    user_feedback smallint,
    feedback_text text,
    feedback_at_us bigint,
    unit_id text,
    context_hash text,
    dedupe_hash text,
    created_at_us bigint
);
CREATE UNIQUE INDEX afs_usage_id ON afs_usage (id);
CREATE INDEX afs_usage_ts ON afs_usage (ts_us, seq);

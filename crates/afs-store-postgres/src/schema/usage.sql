-- The usage log (afs-store-postgres schema 1). Times are bigint microseconds since the
-- epoch, UTC. Owned by src/usage.rs, whose module docs explain the design.
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
    created_at_us bigint,
    -- The 32-byte BLAKE3 key of the normalised query and response (afs_store::key).
    pair_key bytea
) PARTITION BY RANGE (ts_us);
-- The log is partitioned by calendar month (UTC) so retention drops whole months
-- (src/usage_partitions.rs makes `afs_usage_pYYYYMM` around the current month); records of
-- months without a partition of their own (old imports) live in the default partition.
CREATE TABLE afs_usage_default PARTITION OF afs_usage DEFAULT;
-- Ids are ULIDs made by afs (unique by construction); a unique index on a partitioned
-- table must hold the partition key, so this one is a plain look-up index.
CREATE INDEX afs_usage_id ON afs_usage (id);
-- Time order, the keyset of every stream.
CREATE UNIQUE INDEX afs_usage_ts ON afs_usage (ts_us, seq);
-- Records with feedback in time order: what training data reads.
CREATE INDEX afs_usage_feedback_ts ON afs_usage (ts_us, seq) WHERE user_feedback IS NOT NULL;
-- A unit's records in time order: queries by unit, `forget --unit`.
CREATE INDEX afs_usage_unit_ts ON afs_usage (unit_id, ts_us, seq) WHERE unit_id IS NOT NULL;

-- Rollups: per (minute, model) and per (hour, model), the counts and sums of the records
-- in the bucket. `bucket` is minutes (hours) since the epoch. Kept by the statement-level
-- triggers below in the transaction of every write of afs_usage.
CREATE TABLE afs_usage_minute (
    bucket bigint NOT NULL,
    model text NOT NULL,
    n bigint NOT NULL,
    fb_pos bigint NOT NULL,
    fb_neg bigint NOT NULL,
    fb_neutral bigint NOT NULL,
    n_quality bigint NOT NULL,
    sum_q double precision NOT NULL,
    sum_q2 double precision NOT NULL,
    n_latency bigint NOT NULL,
    sum_lat double precision NOT NULL,
    sum_lat2 double precision NOT NULL,
    tokens bigint NOT NULL,
    PRIMARY KEY (bucket, model)
);
CREATE TABLE afs_usage_hour (LIKE afs_usage_minute INCLUDING ALL);

-- The statement that adds the signed contributions of the rows of `src` to the bucket rows
-- of `tbl` (width `w` microseconds), one upsert per bucket, in key order (so concurrent
-- writers lock bucket rows in the same order). `src` is the SQL of the signed rows:
-- (ts_us, model, s, user_feedback, quality_score, latency_ms, token_count). Used by the
-- rebuild, and written into the insert and update triggers' bodies below.
CREATE FUNCTION afs_usage_rollup_sql(tbl text, w bigint, src text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    RETURN format(
        'INSERT INTO %1$I AS t (bucket, model, n, fb_pos, fb_neg, fb_neutral, n_quality,
             sum_q, sum_q2, n_latency, sum_lat, sum_lat2, tokens)
         SELECT ts_us / %2$s, model, sum(s),
             coalesce(sum(s) FILTER (WHERE user_feedback = 1), 0),
             coalesce(sum(s) FILTER (WHERE user_feedback = -1), 0),
             coalesce(sum(s) FILTER (WHERE user_feedback = 0), 0),
             coalesce(sum(s) FILTER (WHERE quality_score IS NOT NULL), 0),
             coalesce(sum(s * quality_score), 0),
             coalesce(sum(s * quality_score * quality_score), 0),
             coalesce(sum(s) FILTER (WHERE latency_ms IS NOT NULL), 0),
             coalesce(sum(s * latency_ms), 0),
             coalesce(sum(s * latency_ms * latency_ms), 0),
             coalesce(sum(s * token_count), 0)
         FROM (%3$s) AS d
         GROUP BY 1, 2 ORDER BY 1, 2
         ON CONFLICT (bucket, model) DO UPDATE SET
             n = t.n + EXCLUDED.n,
             fb_pos = t.fb_pos + EXCLUDED.fb_pos,
             fb_neg = t.fb_neg + EXCLUDED.fb_neg,
             fb_neutral = t.fb_neutral + EXCLUDED.fb_neutral,
             n_quality = t.n_quality + EXCLUDED.n_quality,
             sum_q = t.sum_q + EXCLUDED.sum_q,
             sum_q2 = t.sum_q2 + EXCLUDED.sum_q2,
             n_latency = t.n_latency + EXCLUDED.n_latency,
             sum_lat = t.sum_lat + EXCLUDED.sum_lat,
             sum_lat2 = t.sum_lat2 + EXCLUDED.sum_lat2,
             tokens = t.tokens + EXCLUDED.tokens',
        tbl, w, src);
END
$fn$;

-- Inserts and updates add their rows' signed contributions with static SQL: PL/pgSQL plans
-- it once per session and reuses the plan (a dynamic EXECUTE was planned again for every
-- statement, about a millisecond of server CPU per single-record commit). The statements
-- are still written once, by afs_usage_rollup_sql: this block puts them, per rollup table,
-- into the bodies of the two trigger functions it creates.
DO $do$
DECLARE
    -- An insert: each new row counts once.
    inserted text := 'SELECT ts_us, model, 1::bigint AS s, user_feedback, quality_score,
        latency_ms, token_count FROM afs_usage_new';
    -- An update: only rows whose contribution changed count, the new values added and the
    -- old subtracted.
    changed text := 'SELECT n.ts_us, n.model, 1::bigint AS s, n.user_feedback,
            n.quality_score, n.latency_ms, n.token_count
        FROM afs_usage_new n JOIN afs_usage_old o ON o.seq = n.seq
        WHERE (n.ts_us, n.model, n.user_feedback, n.quality_score, n.latency_ms, n.token_count)
            IS DISTINCT FROM
            (o.ts_us, o.model, o.user_feedback, o.quality_score, o.latency_ms, o.token_count)
        UNION ALL
        SELECT o.ts_us, o.model, -1::bigint, o.user_feedback, o.quality_score, o.latency_ms,
            o.token_count
        FROM afs_usage_new n JOIN afs_usage_old o ON o.seq = n.seq
        WHERE (n.ts_us, n.model, n.user_feedback, n.quality_score, n.latency_ms, n.token_count)
            IS DISTINCT FROM
            (o.ts_us, o.model, o.user_feedback, o.quality_score, o.latency_ms, o.token_count)';
    body text := 'CREATE FUNCTION %I() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    %s;
    %s;
    RETURN NULL;
END
$fn$';
BEGIN
    EXECUTE format(body, 'afs_usage_rollup_on_insert',
        afs_usage_rollup_sql('afs_usage_minute', 60000000, inserted),
        afs_usage_rollup_sql('afs_usage_hour', 3600000000, inserted));
    EXECUTE format(body, 'afs_usage_rollup_on_update',
        afs_usage_rollup_sql('afs_usage_minute', 60000000, changed),
        afs_usage_rollup_sql('afs_usage_hour', 3600000000, changed));
END
$do$;

-- Deletes recompute every bucket they touched from what remains, so float residue never
-- accumulates: the minute rows are locked first (in key order, waiting out writers of the
-- same buckets), then summed again from the log with a snapshot taken after the lock; the
-- hours the same way from their minutes.
CREATE FUNCTION afs_usage_rollup_on_delete() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM 1 FROM afs_usage_minute m
        JOIN (SELECT DISTINCT ts_us / 60000000 AS bucket, model FROM afs_usage_old) t
        USING (bucket, model)
        ORDER BY m.bucket, m.model FOR UPDATE OF m;
    WITH sums AS (
        SELECT t.bucket, t.model, count(u.ts_us) AS n,
            count(*) FILTER (WHERE u.user_feedback = 1) AS fb_pos,
            count(*) FILTER (WHERE u.user_feedback = -1) AS fb_neg,
            count(*) FILTER (WHERE u.user_feedback = 0) AS fb_neutral,
            count(u.quality_score) AS n_quality,
            coalesce(sum(u.quality_score), 0) AS sum_q,
            coalesce(sum(u.quality_score * u.quality_score), 0) AS sum_q2,
            count(u.latency_ms) AS n_latency,
            coalesce(sum(u.latency_ms), 0) AS sum_lat,
            coalesce(sum(u.latency_ms * u.latency_ms), 0) AS sum_lat2,
            coalesce(sum(u.token_count), 0)::bigint AS tokens
        FROM (SELECT DISTINCT ts_us / 60000000 AS bucket, model FROM afs_usage_old) t
        LEFT JOIN afs_usage u ON u.model = t.model
            AND u.ts_us >= t.bucket * 60000000 AND u.ts_us < (t.bucket + 1) * 60000000
        GROUP BY t.bucket, t.model
    ), gone AS (
        DELETE FROM afs_usage_minute m USING sums s
        WHERE m.bucket = s.bucket AND m.model = s.model AND s.n = 0
    )
    UPDATE afs_usage_minute m SET n = s.n, fb_pos = s.fb_pos, fb_neg = s.fb_neg,
        fb_neutral = s.fb_neutral, n_quality = s.n_quality, sum_q = s.sum_q,
        sum_q2 = s.sum_q2, n_latency = s.n_latency, sum_lat = s.sum_lat,
        sum_lat2 = s.sum_lat2, tokens = s.tokens
    FROM sums s WHERE m.bucket = s.bucket AND m.model = s.model AND s.n > 0;

    PERFORM 1 FROM afs_usage_hour h
        JOIN (SELECT DISTINCT ts_us / 3600000000 AS bucket, model FROM afs_usage_old) t
        USING (bucket, model)
        ORDER BY h.bucket, h.model FOR UPDATE OF h;
    WITH sums AS (
        SELECT t.bucket, t.model, coalesce(sum(m.n), 0) AS n,
            coalesce(sum(m.fb_pos), 0) AS fb_pos, coalesce(sum(m.fb_neg), 0) AS fb_neg,
            coalesce(sum(m.fb_neutral), 0) AS fb_neutral,
            coalesce(sum(m.n_quality), 0) AS n_quality, coalesce(sum(m.sum_q), 0) AS sum_q,
            coalesce(sum(m.sum_q2), 0) AS sum_q2, coalesce(sum(m.n_latency), 0) AS n_latency,
            coalesce(sum(m.sum_lat), 0) AS sum_lat, coalesce(sum(m.sum_lat2), 0) AS sum_lat2,
            coalesce(sum(m.tokens), 0) AS tokens
        FROM (SELECT DISTINCT ts_us / 3600000000 AS bucket, model FROM afs_usage_old) t
        LEFT JOIN afs_usage_minute m ON m.model = t.model
            AND m.bucket >= t.bucket * 60 AND m.bucket < (t.bucket + 1) * 60
        GROUP BY t.bucket, t.model
    ), gone AS (
        DELETE FROM afs_usage_hour h USING sums s
        WHERE h.bucket = s.bucket AND h.model = s.model AND s.n = 0
    )
    UPDATE afs_usage_hour h SET n = s.n, fb_pos = s.fb_pos, fb_neg = s.fb_neg,
        fb_neutral = s.fb_neutral, n_quality = s.n_quality, sum_q = s.sum_q,
        sum_q2 = s.sum_q2, n_latency = s.n_latency, sum_lat = s.sum_lat,
        sum_lat2 = s.sum_lat2, tokens = s.tokens
    FROM sums s WHERE h.bucket = s.bucket AND h.model = s.model AND s.n > 0;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER afs_usage_rollup_insert AFTER INSERT ON afs_usage
    REFERENCING NEW TABLE AS afs_usage_new
    FOR EACH STATEMENT EXECUTE FUNCTION afs_usage_rollup_on_insert();
CREATE TRIGGER afs_usage_rollup_update AFTER UPDATE ON afs_usage
    REFERENCING OLD TABLE AS afs_usage_old NEW TABLE AS afs_usage_new
    FOR EACH STATEMENT EXECUTE FUNCTION afs_usage_rollup_on_update();
CREATE TRIGGER afs_usage_rollup_delete AFTER DELETE ON afs_usage
    REFERENCING OLD TABLE AS afs_usage_old
    FOR EACH STATEMENT EXECUTE FUNCTION afs_usage_rollup_on_delete();

-- Re-derives both rollup tables from the log (the log is the source of truth); the caller
-- holds a lock that keeps writers of afs_usage out.
CREATE FUNCTION afs_usage_rollup_rebuild() RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM afs_usage_minute;
    DELETE FROM afs_usage_hour;
    EXECUTE afs_usage_rollup_sql('afs_usage_minute', 60000000,
        'SELECT ts_us, model, 1::bigint AS s, user_feedback, quality_score, latency_ms,
             token_count FROM afs_usage');
    INSERT INTO afs_usage_hour
        SELECT bucket / 60, model, sum(n), sum(fb_pos), sum(fb_neg), sum(fb_neutral),
            sum(n_quality), sum(sum_q), sum(sum_q2), sum(n_latency), sum(sum_lat),
            sum(sum_lat2), sum(tokens)
        FROM afs_usage_minute GROUP BY 1, 2;
END
$fn$;

-- Schema version 3: single-record logging adds its rollup contributions to an append-only
-- table of pending deltas instead of upserting the hot minute and hour rows in every group
-- commit; the logging connection folds them into both rollup tables a few times a second.
-- Invariant: for every bucket, its rollup row plus the pending deltas of its minutes is the
-- truth of the log. Readers add the pending deltas of the minutes their buckets cover.

-- Per group commit and model: the contribution of the group's records to one minute. Same
-- columns as afs_usage_minute (`minute` is its `bucket`); no key, rows are only inserted
-- (by a logging connection's statement trigger) and deleted (by a fold).
CREATE TABLE afs_usage_pending (LIKE afs_usage_minute INCLUDING DEFAULTS);
ALTER TABLE afs_usage_pending RENAME COLUMN bucket TO minute;

CREATE FUNCTION afs_usage_pending_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO afs_usage_pending
    SELECT ts_us / 60000000, model, count(*),
        count(*) FILTER (WHERE user_feedback = 1),
        count(*) FILTER (WHERE user_feedback = -1),
        count(*) FILTER (WHERE user_feedback = 0),
        count(quality_score), coalesce(sum(quality_score), 0),
        coalesce(sum(quality_score * quality_score), 0),
        count(latency_ms), coalesce(sum(latency_ms), 0),
        coalesce(sum(latency_ms * latency_ms), 0), coalesce(sum(token_count), 0)
    FROM afs_usage_new GROUP BY 1, 2;
    RETURN NULL;
END
$fn$;

-- A session that set `afs.defer_rollups` to `on` (the logging connection) leaves its
-- inserts' contributions pending; every other insert (COPY of an import, restore) keeps
-- upserting the rollup rows in its own transaction.
DROP TRIGGER afs_usage_rollup_insert ON afs_usage;
CREATE TRIGGER afs_usage_rollup_insert AFTER INSERT ON afs_usage
    REFERENCING NEW TABLE AS afs_usage_new
    FOR EACH STATEMENT
    WHEN (current_setting('afs.defer_rollups', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION afs_usage_rollup_on_insert();
CREATE TRIGGER afs_usage_pending_insert AFTER INSERT ON afs_usage
    REFERENCING NEW TABLE AS afs_usage_new
    FOR EACH STATEMENT
    WHEN (current_setting('afs.defer_rollups', true) = 'on')
    EXECUTE FUNCTION afs_usage_pending_on_insert();

-- Moves every visible pending delta into the minute and hour rows, in one statement: a
-- reader's snapshot sees each delta either pending or folded, never both. Pending rows are
-- all locked (deleted) before any rollup row, and rollup rows are upserted in key order,
-- minutes before hours, as every other writer of them does (the hours' insert reads the
-- minutes' outcome first, so it cannot start before every minute row is locked). Returns the
-- number of deltas folded.
CREATE FUNCTION afs_usage_fold_pending() RETURNS bigint
LANGUAGE sql AS $fn$
    WITH d AS (
        DELETE FROM afs_usage_pending RETURNING *
    ), by_minute AS (
        SELECT minute AS bucket, model, sum(n) AS n, sum(fb_pos) AS fb_pos,
            sum(fb_neg) AS fb_neg, sum(fb_neutral) AS fb_neutral,
            sum(n_quality) AS n_quality, sum(sum_q) AS sum_q, sum(sum_q2) AS sum_q2,
            sum(n_latency) AS n_latency, sum(sum_lat) AS sum_lat,
            sum(sum_lat2) AS sum_lat2, sum(tokens) AS tokens, count(*) AS deltas
        FROM d GROUP BY minute, model
    ), minutes AS (
        INSERT INTO afs_usage_minute AS t (bucket, model, n, fb_pos, fb_neg, fb_neutral,
            n_quality, sum_q, sum_q2, n_latency, sum_lat, sum_lat2, tokens)
        SELECT bucket, model, n, fb_pos, fb_neg, fb_neutral, n_quality, sum_q, sum_q2,
            n_latency, sum_lat, sum_lat2, tokens
        FROM by_minute ORDER BY bucket, model
        ON CONFLICT (bucket, model) DO UPDATE SET
            n = t.n + EXCLUDED.n, fb_pos = t.fb_pos + EXCLUDED.fb_pos,
            fb_neg = t.fb_neg + EXCLUDED.fb_neg,
            fb_neutral = t.fb_neutral + EXCLUDED.fb_neutral,
            n_quality = t.n_quality + EXCLUDED.n_quality, sum_q = t.sum_q + EXCLUDED.sum_q,
            sum_q2 = t.sum_q2 + EXCLUDED.sum_q2, n_latency = t.n_latency + EXCLUDED.n_latency,
            sum_lat = t.sum_lat + EXCLUDED.sum_lat, sum_lat2 = t.sum_lat2 + EXCLUDED.sum_lat2,
            tokens = t.tokens + EXCLUDED.tokens
        RETURNING 1
    ), hours AS (
        INSERT INTO afs_usage_hour AS t (bucket, model, n, fb_pos, fb_neg, fb_neutral,
            n_quality, sum_q, sum_q2, n_latency, sum_lat, sum_lat2, tokens)
        SELECT bucket / 60, model, sum(n), sum(fb_pos), sum(fb_neg), sum(fb_neutral),
            sum(n_quality), sum(sum_q), sum(sum_q2), sum(n_latency), sum(sum_lat),
            sum(sum_lat2), sum(tokens)
        FROM by_minute WHERE (SELECT count(*) FROM minutes) >= 0
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (bucket, model) DO UPDATE SET
            n = t.n + EXCLUDED.n, fb_pos = t.fb_pos + EXCLUDED.fb_pos,
            fb_neg = t.fb_neg + EXCLUDED.fb_neg,
            fb_neutral = t.fb_neutral + EXCLUDED.fb_neutral,
            n_quality = t.n_quality + EXCLUDED.n_quality, sum_q = t.sum_q + EXCLUDED.sum_q,
            sum_q2 = t.sum_q2 + EXCLUDED.sum_q2, n_latency = t.n_latency + EXCLUDED.n_latency,
            sum_lat = t.sum_lat + EXCLUDED.sum_lat, sum_lat2 = t.sum_lat2 + EXCLUDED.sum_lat2,
            tokens = t.tokens + EXCLUDED.tokens
    )
    SELECT coalesce(sum(deltas), 0)::bigint FROM by_minute;
$fn$;

-- A delete sums its buckets again from the records that remain, which already counts the
-- records whose deltas are pending: so it first waits for the logging transactions in
-- flight (and keeps new ones out until it commits) and folds every pending delta. Deletes
-- (dedupe, prune, forget) are rare; single-record logging waits for one of them at most.
CREATE FUNCTION afs_usage_fold_before_delete() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    LOCK TABLE afs_usage_pending IN SHARE ROW EXCLUSIVE MODE;
    PERFORM afs_usage_fold_pending();
    RETURN NULL;
END
$fn$;
CREATE TRIGGER afs_usage_fold_before_delete BEFORE DELETE ON afs_usage
    FOR EACH STATEMENT EXECUTE FUNCTION afs_usage_fold_before_delete();

CREATE OR REPLACE FUNCTION afs_usage_rollup_rebuild() RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM afs_usage_pending;
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

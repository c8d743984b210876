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
-- number of deltas folded. Planned at each call (a fold runs twice a second at most).
CREATE FUNCTION afs_usage_fold_pending() RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    cols text[] := ARRAY['n', 'fb_pos', 'fb_neg', 'fb_neutral', 'n_quality', 'sum_q',
        'sum_q2', 'n_latency', 'sum_lat', 'sum_lat2', 'tokens'];
    sums text;
    adds text;
    folded bigint;
BEGIN
    SELECT string_agg(format('sum(%I)', c), ', '),
           string_agg(format('%1$I = t.%1$I + EXCLUDED.%1$I', c), ', ')
        INTO sums, adds FROM unnest(cols) AS c;
    EXECUTE format($q$
        WITH d AS (
            DELETE FROM afs_usage_pending RETURNING *
        ), minutes AS (
            INSERT INTO afs_usage_minute AS t (bucket, model, %1$s)
            SELECT minute, model, %2$s FROM d GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (bucket, model) DO UPDATE SET %3$s
            RETURNING 1
        ), hours AS (
            INSERT INTO afs_usage_hour AS t (bucket, model, %1$s)
            SELECT minute / 60, model, %2$s FROM d WHERE (SELECT count(*) FROM minutes) >= 0
            GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (bucket, model) DO UPDATE SET %3$s
        )
        SELECT count(*) FROM d$q$, array_to_string(cols, ', '), sums, adds)
        INTO folded;
    RETURN folded;
END
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

-- Schema version 5: less server work per insert.
--
-- 1. An insert's records are summed per minute and model once. The minute rows get those
--    sums, and the hour rows get the sums of those sums, instead of the records being read
--    and aggregated again for the hours. On a 2,000-record COPY of the bench's import
--    (records ~6.5 s apart: ~740 minutes), the two upserts took 6.1 ms instead of 8.9 ms
--    (psql, dev cluster, medians of 15 interleaved runs). The hours' floating-point sums are
--    now sums of minute sums, which is how afs_usage_rollup_rebuild always made them.
-- 2. The per-unit experiment triggers on inserts and updates are enabled only while an
--    experiment runs (afs_units_follow_live, called by the transactions that start and end
--    one). Disabled, they cost nothing; enabled with no experiment running, each statement
--    paid a PL/pgSQL call to find that out: ~20 us of server CPU on a single-record insert
--    of ~220 us (pgbench, dev cluster, medians of 8 interleaved runs).

-- The select of `src`'s records (columns ts_us, model, user_feedback, quality_score,
-- latency_ms, token_count) summed per minute and model, in the rollup tables' columns.
CREATE FUNCTION afs_usage_minute_sums_sql(src text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format(
    'SELECT ts_us / 60000000 AS bucket, model, count(*) AS n,
         count(*) FILTER (WHERE user_feedback = 1) AS fb_pos,
         count(*) FILTER (WHERE user_feedback = -1) AS fb_neg,
         count(*) FILTER (WHERE user_feedback = 0) AS fb_neutral,
         count(quality_score) AS n_quality, coalesce(sum(quality_score), 0) AS sum_q,
         coalesce(sum(quality_score * quality_score), 0) AS sum_q2,
         count(latency_ms) AS n_latency, coalesce(sum(latency_ms), 0) AS sum_lat,
         coalesce(sum(latency_ms * latency_ms), 0) AS sum_lat2,
         coalesce(sum(token_count), 0) AS tokens
     FROM (%s) AS r GROUP BY 1, 2', src);
$fn$;

-- The rollup tables' value columns as SQL lists: their names, their sums (`sum(n), ...`)
-- and an upsert's additions (`n = t.n + EXCLUDED.n, ...`), in the tables' order.
CREATE FUNCTION afs_usage_rollup_lists(OUT cols text, OUT sums text, OUT adds text)
LANGUAGE sql IMMUTABLE AS $fn$
SELECT string_agg(quote_ident(c), ', ' ORDER BY i),
       string_agg(format('sum(%I)', c), ', ' ORDER BY i),
       string_agg(format('%1$I = t.%1$I + EXCLUDED.%1$I', c), ', ' ORDER BY i)
FROM unnest(ARRAY['n', 'fb_pos', 'fb_neg', 'fb_neutral', 'n_quality', 'sum_q', 'sum_q2',
    'n_latency', 'sum_lat', 'sum_lat2', 'tokens']) WITH ORDINALITY AS v(c, i);
$fn$;

-- The statement adding the records of `src` to both rollup tables: their minute sums
-- upserted into the minute rows, then the sums of those into the hour rows, each in key
-- order (so concurrent writers lock rows in the same order), minutes before hours (the
-- hours' select waits for the minutes' outcome), as every other writer of them does.
CREATE FUNCTION afs_usage_insert_rollup_sql(src text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format(
    'WITH m AS (%1$s), minutes AS (
         INSERT INTO afs_usage_minute AS t (bucket, model, %2$s)
         SELECT * FROM m ORDER BY 1, 2
         ON CONFLICT (bucket, model) DO UPDATE SET %4$s
         RETURNING 1
     )
     INSERT INTO afs_usage_hour AS t (bucket, model, %2$s)
     SELECT bucket / 60, model, %3$s FROM m WHERE (SELECT count(*) FROM minutes) >= 0
     GROUP BY 1, 2 ORDER BY 1, 2
     ON CONFLICT (bucket, model) DO UPDATE SET %4$s',
    afs_usage_minute_sums_sql(src), l.cols, l.sums, l.adds)
FROM afs_usage_rollup_lists() AS l;
$fn$;

-- Both insert triggers' bodies, static SQL as before (planned once per session).
DO $do$
DECLARE
    inserted text := 'SELECT ts_us, model, user_feedback, quality_score, latency_ms,
        token_count FROM afs_usage_new';
BEGIN
    EXECUTE format('CREATE OR REPLACE FUNCTION afs_usage_rollup_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    %s;
    RETURN NULL;
END
$fn$', afs_usage_insert_rollup_sql(inserted));
    EXECUTE format('CREATE OR REPLACE FUNCTION afs_usage_pending_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO afs_usage_pending %s;
    RETURN NULL;
END
$fn$', afs_usage_minute_sums_sql(inserted));
END
$do$;

-- Enables the per-unit triggers of inserts and updates while afs_experiment_live has rows
-- (an experiment runs), and disables them otherwise. The transactions that write
-- afs_experiment_live call it after the write, holding a lock that keeps the log's writers
-- out until they commit (src/units.rs), so no write runs between the two. (The delete
-- trigger stays enabled: forgetting a unit also clears it from ended experiments.)
CREATE FUNCTION afs_units_follow_live() RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    how text := CASE WHEN EXISTS (SELECT 1 FROM afs_experiment_live)
        THEN 'ENABLE' ELSE 'DISABLE' END;
BEGIN
    EXECUTE format('ALTER TABLE afs_usage %s TRIGGER afs_units_insert', how);
    EXECUTE format('ALTER TABLE afs_usage %s TRIGGER afs_units_update', how);
END
$fn$;
SELECT afs_units_follow_live();

-- Model versions, experiments, periods, events, sequential states, per-unit experiment
-- statistics, retrain runs and controller state (afs-store-postgres schema 1). Owned by
-- src/experiments.rs, src/units.rs and src/runs.rs. Times are bigint microseconds since the
-- epoch, UTC.

-- Model versions (src/experiments.rs). Ids are max + 1, given under the experiment lock.
CREATE TABLE afs_model_version (
    id bigint PRIMARY KEY,
    name text NOT NULL UNIQUE,
    model_path text NOT NULL,
    status text NOT NULL CHECK (status IN ('champion', 'challenger', 'retired')),
    traffic_weight double precision NOT NULL,
    created_at_us bigint NOT NULL,
    promoted_at_us bigint,
    retired_at_us bigint,
    dataset text,
    run_id text
);
CREATE UNIQUE INDEX afs_model_version_one_champion ON afs_model_version (status)
    WHERE status = 'champion';
CREATE UNIQUE INDEX afs_model_version_one_challenger ON afs_model_version (status)
    WHERE status = 'challenger';

CREATE TABLE afs_experiment (
    id bigint PRIMARY KEY,
    champion_id bigint NOT NULL REFERENCES afs_model_version (id),
    challenger_id bigint NOT NULL REFERENCES afs_model_version (id),
    status text NOT NULL CHECK (status IN ('running', 'promoted', 'rolled_back')),
    -- The u64 seed, bit for bit.
    seed bigint NOT NULL,
    challenger_weight double precision NOT NULL,
    started_at_us bigint NOT NULL,
    ended_at_us bigint
);
CREATE UNIQUE INDEX afs_experiment_one_running ON afs_experiment (status)
    WHERE status = 'running';

CREATE TABLE afs_experiment_period (
    experiment_id bigint NOT NULL REFERENCES afs_experiment (id),
    idx integer NOT NULL,
    started_us bigint NOT NULL,
    ended_us bigint,
    challenger_weight double precision NOT NULL,
    source text NOT NULL CHECK (source IN ('initial', 'manual', 'bandit')),
    PRIMARY KEY (experiment_id, idx)
);

CREATE TABLE afs_experiment_sequential_state (
    experiment_id bigint NOT NULL REFERENCES afs_experiment (id),
    metric text NOT NULL,
    n_looks bigint NOT NULL,
    baseline double precision NOT NULL,
    tau double precision NOT NULL,
    theta0 double precision NOT NULL,
    p_better double precision NOT NULL,
    p_worse double precision NOT NULL,
    cs_lower double precision NOT NULL,
    cs_upper double precision NOT NULL,
    started_at_us bigint NOT NULL,
    updated_at_us bigint NOT NULL,
    -- A judge's own state, opaque text given back byte for byte (text, not jsonb, which
    -- would reorder keys and respell numbers); NULL for the default judge.
    state text,
    PRIMARY KEY (experiment_id, metric)
);

CREATE TABLE afs_experiment_event (
    id bigint PRIMARY KEY,
    at_us bigint NOT NULL,
    experiment_id bigint REFERENCES afs_experiment (id),
    kind text NOT NULL,
    model text,
    decision text,
    weight double precision,
    reason text NOT NULL,
    statistics text
);
CREATE INDEX afs_experiment_event_by_experiment ON afs_experiment_event (experiment_id, id);
CREATE INDEX afs_experiment_event_by_kind ON afs_experiment_event (kind, id);

-- Per-unit experiment statistics (src/units.rs).
--
-- The running experiment's two models (arm false: champion, true: challenger) and its
-- start: what the triggers on afs_usage look a record's model up in.
CREATE TABLE afs_experiment_live (
    model text PRIMARY KEY,
    experiment_id bigint NOT NULL REFERENCES afs_experiment (id),
    arm boolean NOT NULL,
    started_us bigint NOT NULL
);

-- Per experiment, unit and arm: the sums of the unit's records and its first record's time.
CREATE TABLE afs_experiment_unit (
    experiment_id bigint NOT NULL REFERENCES afs_experiment (id),
    unit_id text NOT NULL,
    arm boolean NOT NULL,
    first_us bigint NOT NULL,
    n bigint NOT NULL,
    n_q bigint NOT NULL,
    sum_q double precision NOT NULL,
    n_lat bigint NOT NULL,
    sum_lat double precision NOT NULL,
    n_fb bigint NOT NULL,
    n_pos bigint NOT NULL,
    n_neg bigint NOT NULL,
    PRIMARY KEY (experiment_id, unit_id, arm)
);
CREATE INDEX afs_experiment_unit_by_unit ON afs_experiment_unit (unit_id);

-- Per experiment, period and arm: the sums (and sums of squares) of the records without a
-- unit id, each a unit of its own.
CREATE TABLE afs_experiment_loose (
    experiment_id bigint NOT NULL REFERENCES afs_experiment (id),
    period integer NOT NULL,
    arm boolean NOT NULL,
    n bigint NOT NULL,
    n_q bigint NOT NULL,
    sum_q double precision NOT NULL,
    sum_q2 double precision NOT NULL,
    n_lat bigint NOT NULL,
    sum_lat double precision NOT NULL,
    sum_lat2 double precision NOT NULL,
    n_fb bigint NOT NULL,
    n_pos bigint NOT NULL,
    n_neg bigint NOT NULL,
    PRIMARY KEY (experiment_id, period, arm)
);

-- Per experiment and unit: the sums of its records in the covariate look-back window.
CREATE TABLE afs_experiment_unit_pre (
    experiment_id bigint NOT NULL REFERENCES afs_experiment (id),
    unit_id text NOT NULL,
    n bigint NOT NULL,
    n_q bigint NOT NULL,
    sum_q double precision NOT NULL,
    n_lat bigint NOT NULL,
    sum_lat double precision NOT NULL,
    n_fb bigint NOT NULL,
    n_pos bigint NOT NULL,
    n_neg bigint NOT NULL,
    PRIMARY KEY (experiment_id, unit_id)
);
CREATE INDEX afs_experiment_unit_pre_by_unit ON afs_experiment_unit_pre (unit_id);

-- What the triggers and reads need of the log, a unit's records in time order (its next
-- first record after a delete, whether a unit has any record left) and the records with
-- feedback in time order (the maturity cut), are usage.sql's indexes afs_usage_unit_ts and
-- afs_usage_feedback_ts.

-- Adds (sign 1) or takes out (sign -1) one record's values in the running experiment's
-- statistics; `counted` says whether the record itself comes or goes (false: only its values
-- change). Records of other models, or logged before the experiment started, change nothing.
CREATE FUNCTION afs_units_adjust(
    p_model text, p_ts bigint, p_unit text, p_q double precision, p_lat double precision,
    p_fb smallint, p_sign integer, p_counted boolean
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    e bigint;
    a boolean;
    s bigint;
    p integer;
    dn bigint := CASE WHEN p_counted THEN p_sign ELSE 0 END;
    dq bigint := p_sign * (p_q IS NOT NULL)::integer;
    dlat bigint := p_sign * (p_lat IS NOT NULL)::integer;
    dfb bigint := p_sign * (p_fb IS NOT NULL AND p_fb IN (-1, 0, 1))::integer;
    dpos bigint := p_sign * (p_fb IS NOT DISTINCT FROM 1)::integer;
    dneg bigint := p_sign * (p_fb IS NOT DISTINCT FROM -1)::integer;
    rn bigint;
    rfirst bigint;
BEGIN
    SELECT l.experiment_id, l.arm, l.started_us INTO e, a, s
        FROM afs_experiment_live l WHERE l.model = p_model;
    IF NOT FOUND OR p_ts IS NULL OR p_ts < s THEN
        RETURN;
    END IF;
    IF p_unit IS NULL THEN
        SELECT COALESCE(max(idx), 0) INTO p FROM afs_experiment_period
            WHERE experiment_id = e AND started_us <= p_ts;
        INSERT INTO afs_experiment_loose AS t VALUES (
            e, p, a, dn, dq, p_sign * COALESCE(p_q, 0.0), p_sign * COALESCE(p_q * p_q, 0.0),
            dlat, p_sign * COALESCE(p_lat, 0.0), p_sign * COALESCE(p_lat * p_lat, 0.0),
            dfb, dpos, dneg)
        ON CONFLICT (experiment_id, period, arm) DO UPDATE SET
            n = t.n + excluded.n, n_q = t.n_q + excluded.n_q, sum_q = t.sum_q + excluded.sum_q,
            sum_q2 = t.sum_q2 + excluded.sum_q2, n_lat = t.n_lat + excluded.n_lat,
            sum_lat = t.sum_lat + excluded.sum_lat, sum_lat2 = t.sum_lat2 + excluded.sum_lat2,
            n_fb = t.n_fb + excluded.n_fb, n_pos = t.n_pos + excluded.n_pos,
            n_neg = t.n_neg + excluded.n_neg
        RETURNING t.n INTO rn;
        IF rn <= 0 THEN
            DELETE FROM afs_experiment_loose
                WHERE experiment_id = e AND period = p AND arm = a AND n <= 0;
        END IF;
        RETURN;
    END IF;
    INSERT INTO afs_experiment_unit AS t VALUES (
        e, p_unit, a, p_ts, dn, dq, p_sign * COALESCE(p_q, 0.0), dlat,
        p_sign * COALESCE(p_lat, 0.0), dfb, dpos, dneg)
    ON CONFLICT (experiment_id, unit_id, arm) DO UPDATE SET
        first_us = CASE WHEN excluded.n > 0 THEN least(t.first_us, excluded.first_us)
                        ELSE t.first_us END,
        n = t.n + excluded.n, n_q = t.n_q + excluded.n_q, sum_q = t.sum_q + excluded.sum_q,
        n_lat = t.n_lat + excluded.n_lat, sum_lat = t.sum_lat + excluded.sum_lat,
        n_fb = t.n_fb + excluded.n_fb, n_pos = t.n_pos + excluded.n_pos,
        n_neg = t.n_neg + excluded.n_neg
    RETURNING t.n, t.first_us INTO rn, rfirst;
    IF rn <= 0 THEN
        DELETE FROM afs_experiment_unit
            WHERE experiment_id = e AND unit_id = p_unit AND arm = a AND n <= 0;
    ELSIF dn < 0 AND rfirst = p_ts THEN
        -- The unit's first record went: it starts at its next one in this arm.
        UPDATE afs_experiment_unit SET first_us = COALESCE((
            SELECT min(u.ts_us) FROM afs_usage u
            WHERE u.unit_id = p_unit AND u.model = p_model AND u.ts_us >= s), first_us)
        WHERE experiment_id = e AND unit_id = p_unit AND arm = a;
    END IF;
END
$$;

-- Inserted records (one statement, COPY included), summed per unit or period and arm.
CREATE FUNCTION afs_units_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM afs_experiment_live) THEN
        RETURN NULL;
    END IF;
    INSERT INTO afs_experiment_unit AS t
    SELECT l.experiment_id, r.unit_id, l.arm, min(r.ts_us), count(*),
        count(r.quality_score), COALESCE(sum(r.quality_score), 0.0),
        count(r.latency_ms), COALESCE(sum(r.latency_ms), 0.0),
        count(*) FILTER (WHERE r.user_feedback IN (-1, 0, 1)),
        count(*) FILTER (WHERE r.user_feedback = 1),
        count(*) FILTER (WHERE r.user_feedback = -1)
    FROM afs_units_new r JOIN afs_experiment_live l
        ON l.model = r.model AND r.ts_us >= l.started_us
    WHERE r.unit_id IS NOT NULL
    GROUP BY l.experiment_id, r.unit_id, l.arm
    ORDER BY l.experiment_id, r.unit_id, l.arm
    ON CONFLICT (experiment_id, unit_id, arm) DO UPDATE SET
        first_us = least(t.first_us, excluded.first_us),
        n = t.n + excluded.n, n_q = t.n_q + excluded.n_q, sum_q = t.sum_q + excluded.sum_q,
        n_lat = t.n_lat + excluded.n_lat, sum_lat = t.sum_lat + excluded.sum_lat,
        n_fb = t.n_fb + excluded.n_fb, n_pos = t.n_pos + excluded.n_pos,
        n_neg = t.n_neg + excluded.n_neg;
    INSERT INTO afs_experiment_loose AS t
    SELECT x.experiment_id, x.period, x.arm, count(*),
        count(x.quality_score), COALESCE(sum(x.quality_score), 0.0),
        COALESCE(sum(x.quality_score * x.quality_score), 0.0),
        count(x.latency_ms), COALESCE(sum(x.latency_ms), 0.0),
        COALESCE(sum(x.latency_ms * x.latency_ms), 0.0),
        count(*) FILTER (WHERE x.user_feedback IN (-1, 0, 1)),
        count(*) FILTER (WHERE x.user_feedback = 1),
        count(*) FILTER (WHERE x.user_feedback = -1)
    FROM (
        SELECT l.experiment_id, l.arm, r.quality_score, r.latency_ms, r.user_feedback,
            COALESCE((SELECT max(p.idx) FROM afs_experiment_period p
                      WHERE p.experiment_id = l.experiment_id AND p.started_us <= r.ts_us),
                     0) AS period
        FROM afs_units_new r JOIN afs_experiment_live l
            ON l.model = r.model AND r.ts_us >= l.started_us
        WHERE r.unit_id IS NULL
    ) x
    GROUP BY x.experiment_id, x.period, x.arm
    ORDER BY x.experiment_id, x.period, x.arm
    ON CONFLICT (experiment_id, period, arm) DO UPDATE SET
        n = t.n + excluded.n, n_q = t.n_q + excluded.n_q, sum_q = t.sum_q + excluded.sum_q,
        sum_q2 = t.sum_q2 + excluded.sum_q2, n_lat = t.n_lat + excluded.n_lat,
        sum_lat = t.sum_lat + excluded.sum_lat, sum_lat2 = t.sum_lat2 + excluded.sum_lat2,
        n_fb = t.n_fb + excluded.n_fb, n_pos = t.n_pos + excluded.n_pos,
        n_neg = t.n_neg + excluded.n_neg;
    RETURN NULL;
END
$$;
CREATE TRIGGER afs_units_insert AFTER INSERT ON afs_usage
    REFERENCING NEW TABLE AS afs_units_new
    FOR EACH STATEMENT EXECUTE FUNCTION afs_units_after_insert();

-- Updated records (one statement: feedback, quality, a batch of quality scores): per unit
-- (or period) and arm, one update adds the changes of the values the statistics read. A
-- record whose time, model or unit changed (afs never does that) leaves and comes back
-- through afs_units_adjust. Old and new rows are paired by `seq`.
CREATE FUNCTION afs_units_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    m record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM afs_experiment_live) THEN
        RETURN NULL;
    END IF;
    FOR m IN
        SELECT o.model AS o_model, o.ts_us AS o_ts, o.unit_id AS o_unit,
            o.quality_score AS o_q, o.latency_ms AS o_lat, o.user_feedback AS o_fb,
            w.model AS w_model, w.ts_us AS w_ts, w.unit_id AS w_unit,
            w.quality_score AS w_q, w.latency_ms AS w_lat, w.user_feedback AS w_fb
        FROM afs_units_uold o JOIN afs_units_unew w ON w.seq = o.seq
        WHERE (o.model, o.ts_us, o.unit_id) IS DISTINCT FROM (w.model, w.ts_us, w.unit_id)
    LOOP
        PERFORM afs_units_adjust(m.o_model, m.o_ts, m.o_unit, m.o_q, m.o_lat, m.o_fb, -1, true);
        PERFORM afs_units_adjust(m.w_model, m.w_ts, m.w_unit, m.w_q, m.w_lat, m.w_fb, 1, true);
    END LOOP;
    WITH d AS (
        SELECT l.experiment_id, o.unit_id, l.arm,
            sum((w.quality_score IS NOT NULL)::integer - (o.quality_score IS NOT NULL)::integer)
                AS n_q,
            sum(COALESCE(w.quality_score, 0.0) - COALESCE(o.quality_score, 0.0)) AS sum_q,
            sum((w.latency_ms IS NOT NULL)::integer - (o.latency_ms IS NOT NULL)::integer)
                AS n_lat,
            sum(COALESCE(w.latency_ms, 0.0) - COALESCE(o.latency_ms, 0.0)) AS sum_lat,
            sum(COALESCE(w.user_feedback IN (-1, 0, 1), false)::integer
                - COALESCE(o.user_feedback IN (-1, 0, 1), false)::integer) AS n_fb,
            sum((w.user_feedback IS NOT DISTINCT FROM 1)::integer
                - (o.user_feedback IS NOT DISTINCT FROM 1)::integer) AS n_pos,
            sum((w.user_feedback IS NOT DISTINCT FROM -1)::integer
                - (o.user_feedback IS NOT DISTINCT FROM -1)::integer) AS n_neg
        FROM afs_units_uold o JOIN afs_units_unew w ON w.seq = o.seq
            JOIN afs_experiment_live l ON l.model = o.model AND o.ts_us >= l.started_us
        WHERE o.unit_id IS NOT NULL AND w.model = o.model AND w.ts_us = o.ts_us
            AND w.unit_id = o.unit_id
            AND (w.quality_score IS DISTINCT FROM o.quality_score
                OR w.latency_ms IS DISTINCT FROM o.latency_ms
                OR w.user_feedback IS DISTINCT FROM o.user_feedback)
        GROUP BY l.experiment_id, o.unit_id, l.arm
    )
    UPDATE afs_experiment_unit t SET
        n_q = t.n_q + d.n_q, sum_q = t.sum_q + d.sum_q, n_lat = t.n_lat + d.n_lat,
        sum_lat = t.sum_lat + d.sum_lat, n_fb = t.n_fb + d.n_fb, n_pos = t.n_pos + d.n_pos,
        n_neg = t.n_neg + d.n_neg
    FROM d
    WHERE t.experiment_id = d.experiment_id AND t.unit_id = d.unit_id AND t.arm = d.arm;
    WITH d AS (
        SELECT x.experiment_id, x.period, x.arm,
            sum((x.w_q IS NOT NULL)::integer - (x.o_q IS NOT NULL)::integer) AS n_q,
            sum(COALESCE(x.w_q, 0.0) - COALESCE(x.o_q, 0.0)) AS sum_q,
            sum(COALESCE(x.w_q * x.w_q, 0.0) - COALESCE(x.o_q * x.o_q, 0.0)) AS sum_q2,
            sum((x.w_lat IS NOT NULL)::integer - (x.o_lat IS NOT NULL)::integer) AS n_lat,
            sum(COALESCE(x.w_lat, 0.0) - COALESCE(x.o_lat, 0.0)) AS sum_lat,
            sum(COALESCE(x.w_lat * x.w_lat, 0.0) - COALESCE(x.o_lat * x.o_lat, 0.0))
                AS sum_lat2,
            sum(COALESCE(x.w_fb IN (-1, 0, 1), false)::integer
                - COALESCE(x.o_fb IN (-1, 0, 1), false)::integer) AS n_fb,
            sum((x.w_fb IS NOT DISTINCT FROM 1)::integer
                - (x.o_fb IS NOT DISTINCT FROM 1)::integer) AS n_pos,
            sum((x.w_fb IS NOT DISTINCT FROM -1)::integer
                - (x.o_fb IS NOT DISTINCT FROM -1)::integer) AS n_neg
        FROM (
            SELECT l.experiment_id, l.arm,
                o.quality_score AS o_q, w.quality_score AS w_q,
                o.latency_ms AS o_lat, w.latency_ms AS w_lat,
                o.user_feedback AS o_fb, w.user_feedback AS w_fb,
                COALESCE((SELECT max(p.idx) FROM afs_experiment_period p
                          WHERE p.experiment_id = l.experiment_id
                              AND p.started_us <= o.ts_us), 0) AS period
            FROM afs_units_uold o JOIN afs_units_unew w ON w.seq = o.seq
                JOIN afs_experiment_live l ON l.model = o.model AND o.ts_us >= l.started_us
            WHERE o.unit_id IS NULL AND w.unit_id IS NULL AND w.model = o.model
                AND w.ts_us = o.ts_us
                AND (w.quality_score IS DISTINCT FROM o.quality_score
                    OR w.latency_ms IS DISTINCT FROM o.latency_ms
                    OR w.user_feedback IS DISTINCT FROM o.user_feedback)
        ) x
        GROUP BY x.experiment_id, x.period, x.arm
    )
    UPDATE afs_experiment_loose t SET
        n_q = t.n_q + d.n_q, sum_q = t.sum_q + d.sum_q, sum_q2 = t.sum_q2 + d.sum_q2,
        n_lat = t.n_lat + d.n_lat, sum_lat = t.sum_lat + d.sum_lat,
        sum_lat2 = t.sum_lat2 + d.sum_lat2, n_fb = t.n_fb + d.n_fb,
        n_pos = t.n_pos + d.n_pos, n_neg = t.n_neg + d.n_neg
    FROM d
    WHERE t.experiment_id = d.experiment_id AND t.period = d.period AND t.arm = d.arm;
    RETURN NULL;
END
$$;
CREATE TRIGGER afs_units_update AFTER UPDATE ON afs_usage
    REFERENCING OLD TABLE AS afs_units_uold NEW TABLE AS afs_units_unew
    FOR EACH STATEMENT EXECUTE FUNCTION afs_units_after_update();

-- Deleted records (one statement: a single delete, prune, dedupe, forget) leave the running
-- experiment's statistics, summed per unit (or period) and arm: one update per group, in key
-- order. A unit row whose first record went starts at its next record in that arm (one
-- index lookup per such group); a row left with no records goes. Then a unit with no record
-- left in the log (forgotten) leaves the statistics of every experiment, ended ones
-- included, and the covariates.
CREATE FUNCTION afs_units_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    grp record;
BEGIN
    IF EXISTS (SELECT 1 FROM afs_experiment_live) THEN
        FOR grp IN
            WITH d AS (
                SELECT l.experiment_id, r.unit_id, l.arm, l.model, l.started_us,
                    min(r.ts_us) AS min_ts, count(*) AS n,
                    count(r.quality_score) AS n_q, COALESCE(sum(r.quality_score), 0.0) AS sum_q,
                    count(r.latency_ms) AS n_lat, COALESCE(sum(r.latency_ms), 0.0) AS sum_lat,
                    count(*) FILTER (WHERE r.user_feedback IN (-1, 0, 1)) AS n_fb,
                    count(*) FILTER (WHERE r.user_feedback = 1) AS n_pos,
                    count(*) FILTER (WHERE r.user_feedback = -1) AS n_neg
                FROM afs_units_old r JOIN afs_experiment_live l
                    ON l.model = r.model AND r.ts_us >= l.started_us
                WHERE r.unit_id IS NOT NULL
                GROUP BY l.experiment_id, r.unit_id, l.arm, l.model, l.started_us
            )
            UPDATE afs_experiment_unit t SET
                n = t.n - d.n, n_q = t.n_q - d.n_q, sum_q = t.sum_q - d.sum_q,
                n_lat = t.n_lat - d.n_lat, sum_lat = t.sum_lat - d.sum_lat,
                n_fb = t.n_fb - d.n_fb, n_pos = t.n_pos - d.n_pos, n_neg = t.n_neg - d.n_neg
            FROM d
            WHERE t.experiment_id = d.experiment_id AND t.unit_id = d.unit_id
                AND t.arm = d.arm
            RETURNING t.experiment_id, t.unit_id, t.arm, t.n, t.first_us, d.min_ts, d.model,
                d.started_us
        LOOP
            IF grp.n <= 0 THEN
                DELETE FROM afs_experiment_unit
                    WHERE experiment_id = grp.experiment_id AND unit_id = grp.unit_id
                        AND arm = grp.arm;
            ELSIF grp.min_ts <= grp.first_us THEN
                UPDATE afs_experiment_unit SET first_us = COALESCE((
                    SELECT min(u.ts_us) FROM afs_usage u
                    WHERE u.unit_id = grp.unit_id AND u.model = grp.model
                        AND u.ts_us >= grp.started_us), first_us)
                WHERE experiment_id = grp.experiment_id AND unit_id = grp.unit_id AND arm = grp.arm;
            END IF;
        END LOOP;
        FOR grp IN
            WITH d AS (
                SELECT x.experiment_id, x.period, x.arm, count(*) AS n,
                    count(x.quality_score) AS n_q, COALESCE(sum(x.quality_score), 0.0) AS sum_q,
                    COALESCE(sum(x.quality_score * x.quality_score), 0.0) AS sum_q2,
                    count(x.latency_ms) AS n_lat, COALESCE(sum(x.latency_ms), 0.0) AS sum_lat,
                    COALESCE(sum(x.latency_ms * x.latency_ms), 0.0) AS sum_lat2,
                    count(*) FILTER (WHERE x.user_feedback IN (-1, 0, 1)) AS n_fb,
                    count(*) FILTER (WHERE x.user_feedback = 1) AS n_pos,
                    count(*) FILTER (WHERE x.user_feedback = -1) AS n_neg
                FROM (
                    SELECT l.experiment_id, l.arm, r.quality_score, r.latency_ms,
                        r.user_feedback,
                        COALESCE((SELECT max(p.idx) FROM afs_experiment_period p
                                  WHERE p.experiment_id = l.experiment_id
                                      AND p.started_us <= r.ts_us), 0) AS period
                    FROM afs_units_old r JOIN afs_experiment_live l
                        ON l.model = r.model AND r.ts_us >= l.started_us
                    WHERE r.unit_id IS NULL
                ) x
                GROUP BY x.experiment_id, x.period, x.arm
            )
            UPDATE afs_experiment_loose t SET
                n = t.n - d.n, n_q = t.n_q - d.n_q, sum_q = t.sum_q - d.sum_q,
                sum_q2 = t.sum_q2 - d.sum_q2, n_lat = t.n_lat - d.n_lat,
                sum_lat = t.sum_lat - d.sum_lat, sum_lat2 = t.sum_lat2 - d.sum_lat2,
                n_fb = t.n_fb - d.n_fb, n_pos = t.n_pos - d.n_pos, n_neg = t.n_neg - d.n_neg
            FROM d
            WHERE t.experiment_id = d.experiment_id AND t.period = d.period AND t.arm = d.arm
            RETURNING t.experiment_id, t.period, t.arm, t.n
        LOOP
            IF grp.n <= 0 THEN
                DELETE FROM afs_experiment_loose
                    WHERE experiment_id = grp.experiment_id AND period = grp.period
                        AND arm = grp.arm;
            END IF;
        END LOOP;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM afs_experiment_unit)
        AND NOT EXISTS (SELECT 1 FROM afs_experiment_unit_pre) THEN
        RETURN NULL;
    END IF;
    WITH gone AS (
        SELECT DISTINCT d.unit_id FROM afs_units_old d
        WHERE d.unit_id IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM afs_usage u WHERE u.unit_id = d.unit_id)
    ), units AS (
        DELETE FROM afs_experiment_unit t USING gone g WHERE t.unit_id = g.unit_id
    )
    DELETE FROM afs_experiment_unit_pre t USING gone g WHERE t.unit_id = g.unit_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER afs_units_delete AFTER DELETE ON afs_usage
    REFERENCING OLD TABLE AS afs_units_old
    FOR EACH STATEMENT EXECUTE FUNCTION afs_units_after_delete();

-- Retrain runs (src/runs.rs). `lock_key` keys the session-level advisory lock the owning
-- handle holds while the run is running (two-key form: a fixed class and this key).
CREATE TABLE afs_retrain_run (
    id text PRIMARY KEY,
    lock_key integer GENERATED ALWAYS AS IDENTITY (CYCLE),
    started_at_us bigint NOT NULL,
    finished_at_us bigint,
    status text NOT NULL
        CHECK (status IN ('running', 'completed', 'failed', 'timed_out', 'interrupted')),
    trigger_type text NOT NULL,
    trigger text NOT NULL,
    run_dir text NOT NULL,
    dataset_manifest text,
    dataset_path text,
    n_samples bigint,
    model_path text,
    metrics text,
    error text,
    owner_pid bigint NOT NULL,
    owner_host text NOT NULL,
    owner_backend_pid integer NOT NULL
);
CREATE INDEX afs_retrain_run_by_status ON afs_retrain_run (status, started_at_us);
CREATE INDEX afs_retrain_run_by_start ON afs_retrain_run (started_at_us, id);

-- Controller state: opaque values under caller-chosen keys.
CREATE TABLE afs_state (
    key text PRIMARY KEY,
    value text NOT NULL,
    updated_at_us bigint NOT NULL
);

-- longshore job statuses on PostgreSQL. `PostgresStatusStore::migrate` runs this (it is
-- idempotent); a DBA can run it by hand instead. Everything is named `longshore_*`.

-- One row per job: its current status (`data`, the JSON the HTTP API returns) and the
-- columns the store queries by.
CREATE TABLE IF NOT EXISTS longshore_jobs (
    id               text        PRIMARY KEY,
    queue            text        NOT NULL,
    state            text        NOT NULL,
    seq              bigint      NOT NULL,
    unique_key       text,
    cancel_requested boolean     NOT NULL DEFAULT false,
    data             jsonb       NOT NULL,
    expires_at       timestamptz NOT NULL
);

-- At most one unfinished job per unique key.
CREATE UNIQUE INDEX IF NOT EXISTS longshore_jobs_unique_key
    ON longshore_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running', 'retrying');

-- The periodic delete of expired statuses.
CREATE INDEX IF NOT EXISTS longshore_jobs_expires_at ON longshore_jobs (expires_at);

-- Open cancellation requests, read by workers when they start.
CREATE INDEX IF NOT EXISTS longshore_jobs_cancel_requested
    ON longshore_jobs (queue)
    WHERE cancel_requested AND state IN ('queued', 'running', 'retrying');

-- Every version of a job's status, by sequence number: the event stream clients resume.
CREATE TABLE IF NOT EXISTS longshore_job_events (
    id   text   NOT NULL REFERENCES longshore_jobs (id) ON DELETE CASCADE,
    seq  bigint NOT NULL,
    data jsonb  NOT NULL,
    PRIMARY KEY (id, seq)
);

-- Applies a batch of changes to distinct jobs (the store folds a job's changes into one
-- first), in one statement: merges each patch (`patches` is a JSON array, `expires` Unix
-- seconds) into the status, gives it the next sequence number, keeps the new version as an
-- event and moves the expiry. Then notifies, once for the batch, one line `<id> <seq> <c|->`
-- per change (c: cancellation asked for, unfinished) on `longshore_status`, and the lines
-- with c on `longshore_cancel` (what workers listen to).
CREATE OR REPLACE FUNCTION longshore_apply(ids text[], patches jsonb, expires double precision[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    lines text;
    cancels text;
BEGIN
    WITH input AS (
        SELECT i.id, i.patch, i.expires
          FROM ROWS FROM (unnest(ids), jsonb_array_elements(patches), unnest(expires))
               AS i(id, patch, expires)
    ), changed AS (
        UPDATE longshore_jobs j
           SET seq = j.seq + 1,
               data = j.data || i.patch || jsonb_build_object('seq', j.seq + 1),
               state = coalesce(i.patch ->> 'state', j.state),
               cancel_requested = coalesce((i.patch ->> 'cancel_requested')::boolean, j.cancel_requested),
               expires_at = to_timestamp(i.expires)
          FROM input i
         WHERE j.id = i.id AND j.expires_at > now()
        RETURNING j.id, j.seq, j.data,
                  j.cancel_requested AND j.state IN ('queued', 'running', 'retrying') AS cancel
    ), events AS (
        INSERT INTO longshore_job_events (id, seq, data) SELECT id, seq, data FROM changed
    ), notices AS (
        SELECT id || ' ' || seq || ' ' || CASE WHEN cancel THEN 'c' ELSE '-' END AS line, cancel
          FROM changed
    )
    SELECT string_agg(line, E'\n'), string_agg(line, E'\n') FILTER (WHERE cancel)
      INTO lines, cancels
      FROM notices;
    IF lines IS NOT NULL THEN
        PERFORM pg_notify('longshore_status', lines);
    END IF;
    IF cancels IS NOT NULL THEN
        PERFORM pg_notify('longshore_cancel', cancels);
    END IF;
END
$$;

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

-- Applies changes in order (`patches` is a JSON array, `expires` Unix seconds), each
-- atomically: merges the patch into the status, gives it the next sequence number, keeps the new version as an event, moves the expiry, and notifies
-- `longshore_status` with `<id> <seq> <c|->` (c: cancellation asked for, unfinished).
CREATE OR REPLACE FUNCTION longshore_apply(ids text[], patches jsonb, expires double precision[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    changed longshore_jobs%ROWTYPE;
BEGIN
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        UPDATE longshore_jobs
           SET seq = seq + 1,
               data = data || (patches -> (i - 1)) || jsonb_build_object('seq', seq + 1),
               state = coalesce((patches -> (i - 1)) ->> 'state', state),
               cancel_requested = coalesce(((patches -> (i - 1)) ->> 'cancel_requested')::boolean, cancel_requested),
               expires_at = to_timestamp(expires[i])
         WHERE id = ids[i] AND expires_at > now()
        RETURNING * INTO changed;
        IF FOUND THEN
            INSERT INTO longshore_job_events (id, seq, data) VALUES (changed.id, changed.seq, changed.data);
            PERFORM pg_notify('longshore_status', changed.id || ' ' || changed.seq || ' ' ||
                CASE WHEN changed.cancel_requested AND changed.state IN ('queued', 'running', 'retrying')
                     THEN 'c' ELSE '-' END);
        END IF;
    END LOOP;
END
$$;

-- Fencing for scheduled work: a run is recorded before its effect, and the primary key
-- makes a second run of the same job and time slot fail, even with two leaders.
CREATE TABLE job_runs (
    job         text NOT NULL,
    slot        timestamptz NOT NULL,
    leader      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text,
    PRIMARY KEY (job, slot)
);

-- Spans a recorder restart left silent in a call's recording (keep in step with
-- ../postgres/0003_restart_gaps.sql). One row per gap, in call order (`n`).
CREATE TABLE restart_gaps (
    call_uuid  TEXT NOT NULL REFERENCES calls (uuid) ON DELETE CASCADE,
    n          INTEGER NOT NULL,
    from_at    TEXT NOT NULL,
    to_at      TEXT NOT NULL,
    from_ns    INTEGER NOT NULL,
    to_ns      INTEGER NOT NULL,
    ms         INTEGER NOT NULL,
    PRIMARY KEY (call_uuid, n)
);

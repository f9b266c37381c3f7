-- Operator recording control during a call (keep in step with
-- ../postgres/0004_recording_events.sql): pause, resume, stop, start, in call order (`n`).
CREATE TABLE recording_events (
    call_uuid  TEXT NOT NULL REFERENCES calls (uuid) ON DELETE CASCADE,
    n          INTEGER NOT NULL,
    action     TEXT NOT NULL,
    at         TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    PRIMARY KEY (call_uuid, n)
);

-- Token expiry and the audit log (keep in step with ../postgres/0009_token_expiry_and_audit.sql).
-- expires_ns: a token is refused from then on; NULL never expires (tokens made before this
-- migration keep working as they did).
ALTER TABLE api_tokens ADD COLUMN expires_ns INTEGER;
-- Who listened to or steered a call: recording downloads and recording control (API and
-- console). token_id/actor: the API token (its id and name at the time), or actor 'console'
-- for the console password; the token row may be revoked later, the audit row stays.
-- action: 'download', 'start', 'stop', 'pause', 'resume'.
CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ns      INTEGER NOT NULL,
    token_id   INTEGER,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    call_uuid  TEXT NOT NULL,
    call_id    TEXT,
    peer       TEXT
);
-- Listed newest first, and from a time on (`since`).
CREATE INDEX audit_at ON audit (at_ns);

-- REST API bearer tokens (keep in step with ../postgres/0002_api_tokens.sql). Only the SHA-256 of
-- a token is stored: the token itself is printed once by `calltap token create` and a copy of
-- the database (backup, replica) gives no API access.
CREATE TABLE api_tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL,
    -- 'admin', 'operator' or 'viewer'.
    role          TEXT NOT NULL,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_ns    INTEGER NOT NULL,
    revoked_ns    INTEGER
);

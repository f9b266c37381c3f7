-- Recordings retention deleted (keep in step with ../sqlite/0007_recording_deletions.sql): the
-- row stays, so the API can say the recording existed and when and why it went (410 Gone)
-- instead of answering as if the call never had one. NULL while the file exists.
-- deleted_reason: 'retention'.
ALTER TABLE recordings ADD COLUMN deleted_ns BIGINT;
ALTER TABLE recordings ADD COLUMN deleted_reason TEXT;
-- Retention knows a deleted file by its path only (archive location or spool path).
CREATE INDEX recordings_path ON recordings (path);

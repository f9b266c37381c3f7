-- Recording rules managed through the API (keep in step with ../sqlite/0005_recording_rules.sql).
-- 0001 created the table with caller/callee/IP conditions; the API adds either-party number,
-- per-side addresses, domain and an update time. Existing columns keep their meaning:
-- match_from = caller pattern, match_to = callee pattern, match_ip = either party's address.
-- action: 'record', 'skip' or 'on_demand'.
ALTER TABLE recording_rules ADD COLUMN match_party TEXT;
ALTER TABLE recording_rules ADD COLUMN match_caller_ip TEXT;
ALTER TABLE recording_rules ADD COLUMN match_callee_ip TEXT;
ALTER TABLE recording_rules ADD COLUMN match_domain TEXT;
ALTER TABLE recording_rules ADD COLUMN updated_ns BIGINT NOT NULL DEFAULT 0;
-- What the rules decided for each call: 'record', 'skip' (no recording by design) or
-- 'on_demand', and the deciding rule (NULL: the default mode). NULL for calls stored before.
ALTER TABLE calls ADD COLUMN recording_mode TEXT;
ALTER TABLE calls ADD COLUMN rule_id BIGINT;

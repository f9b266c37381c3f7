-- Call search by end reason (GET /api/v1/calls?end_reason=...), newest first: without this
-- index a rare reason scans every call (about 4 s at 10 million calls on SQLite); with it the
-- search reads only the matching rows, already in start order. (Keep in step with
-- ../postgres/0006_end_reason_index.sql.)
CREATE INDEX calls_end_reason ON calls (end_reason, start_ns);

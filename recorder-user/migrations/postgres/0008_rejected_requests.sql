-- In-dialog requests CallTap did not act on (keep in step with
-- ../sqlite/0008_rejected_requests.sql): a BYE, CANCEL, re-INVITE, UPDATE, INFO or SDP sent
-- from or to an address off the dialog's signalling path, in call order (`n`).
-- reason: 'unknown_source' or 'unknown_destination'.
CREATE TABLE rejected_requests (
    call_uuid  TEXT NOT NULL REFERENCES calls (uuid) ON DELETE CASCADE,
    n          BIGINT NOT NULL,
    method     TEXT NOT NULL,
    src        TEXT NOT NULL,
    dst        TEXT NOT NULL,
    at_ms      BIGINT NOT NULL,
    reason     TEXT NOT NULL,
    PRIMARY KEY (call_uuid, n)
);
-- What the per-call bounds left out of the lists (DTMF digits, rejected requests): counted only.
ALTER TABLE calls ADD COLUMN dtmf_omitted BIGINT NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN rejected_requests_omitted BIGINT NOT NULL DEFAULT 0;

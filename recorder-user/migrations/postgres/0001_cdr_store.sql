-- CallTap CDR store, PostgreSQL dialect (keep in step with ../sqlite/0001_cdr_store.sql).
-- Times are stored twice: RFC 3339 text for people and BIGINT nanoseconds since the epoch for
-- indexed range searches that work the same way in both dialects.

CREATE TABLE calls (
    uuid                TEXT PRIMARY KEY NOT NULL,
    call_id             TEXT NOT NULL,
    interaction_id      TEXT NOT NULL,
    from_user           TEXT,
    from_display        TEXT,
    from_host           TEXT NOT NULL,
    from_uri            TEXT NOT NULL,
    to_user             TEXT,
    to_display          TEXT,
    to_host             TEXT NOT NULL,
    to_uri              TEXT NOT NULL,
    src_ip              TEXT NOT NULL,
    dst_ip              TEXT NOT NULL,
    start_at            TEXT NOT NULL,
    answer_at           TEXT,
    end_at              TEXT NOT NULL,
    start_ns            BIGINT NOT NULL,
    answer_ns           BIGINT,
    end_ns              BIGINT NOT NULL,
    duration_ms         BIGINT NOT NULL,
    talk_ms             BIGINT NOT NULL,
    end_reason          TEXT NOT NULL,
    -- Comma-separated lists: small, read whole, never searched by element.
    codecs              TEXT NOT NULL,
    unsupported_codecs  TEXT NOT NULL,
    missing_directions  TEXT NOT NULL,
    packets_caller      BIGINT NOT NULL,
    packets_callee      BIGINT NOT NULL,
    packets_rtcp        BIGINT NOT NULL,
    worker              BIGINT NOT NULL,
    recording_path      TEXT,
    recording_sha256    TEXT,
    recording_bytes     BIGINT,
    -- How the row arrived: 'direct' (live write), 'journal' (CSV journal imported on reconnect),
    -- 'import' (calltap import-csv).
    stored_via          TEXT NOT NULL,
    stored_at_ns        BIGINT NOT NULL
);
CREATE INDEX calls_start_ns ON calls (start_ns);
CREATE INDEX calls_end_ns ON calls (end_ns);
CREATE INDEX calls_from_user ON calls (from_user, start_ns);
CREATE INDEX calls_to_user ON calls (to_user, start_ns);
CREATE INDEX calls_call_id ON calls (call_id);
CREATE INDEX calls_interaction_id ON calls (interaction_id);

-- Legs grouped by the correlation header (or Call-ID); one row per interaction.
CREATE TABLE interactions (
    interaction_id  TEXT PRIMARY KEY NOT NULL,
    first_start_ns  BIGINT NOT NULL,
    last_end_ns     BIGINT NOT NULL,
    calls           BIGINT NOT NULL
);
CREATE INDEX interactions_first_start_ns ON interactions (first_start_ns);

-- Per-direction audio quality.
CREATE TABLE streams (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_uuid           TEXT NOT NULL REFERENCES calls (uuid) ON DELETE CASCADE,
    direction           TEXT NOT NULL,
    ssrc                TEXT,
    codec               TEXT,
    packets             BIGINT NOT NULL,
    bytes               BIGINT NOT NULL,
    lost                BIGINT NOT NULL,
    duplicates          BIGINT NOT NULL,
    late                BIGINT NOT NULL,
    jitter_ms           DOUBLE PRECISION NOT NULL,
    mos                 DOUBLE PRECISION,
    rtcp_packets        BIGINT NOT NULL,
    rtcp_fraction_lost  DOUBLE PRECISION,
    rtcp_jitter_ms      DOUBLE PRECISION
);
CREATE INDEX streams_call_uuid ON streams (call_uuid);

CREATE TABLE dtmf_events (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_uuid    TEXT NOT NULL REFERENCES calls (uuid) ON DELETE CASCADE,
    side         TEXT NOT NULL,
    digit        TEXT NOT NULL,
    at_ms        BIGINT NOT NULL,
    duration_ms  BIGINT,
    source       TEXT NOT NULL
);
CREATE INDEX dtmf_events_call_uuid ON dtmf_events (call_uuid);

-- Recording files; a call may later have several (raw RTP pcap, archive copies).
CREATE TABLE recordings (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_uuid     TEXT NOT NULL REFERENCES calls (uuid) ON DELETE CASCADE,
    path          TEXT NOT NULL,
    bytes         BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    sample_rate   BIGINT NOT NULL,
    channels      BIGINT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    raw_rtp_pcap  TEXT,
    -- 'spool' until the archive phase (issue #4, two-phase files) moves it.
    location      TEXT NOT NULL DEFAULT 'spool',
    UNIQUE (call_uuid, path)
);

-- Which calls to record (filled by the API later); evaluated by priority, first match wins.
CREATE TABLE recording_rules (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    enabled      BOOLEAN NOT NULL DEFAULT TRUE,
    priority     BIGINT NOT NULL DEFAULT 100,
    match_from   TEXT,
    match_to     TEXT,
    match_ip     TEXT,
    action       TEXT NOT NULL DEFAULT 'record',
    created_ns   BIGINT NOT NULL
);

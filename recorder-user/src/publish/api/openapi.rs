//! The OpenAPI 3 document served at `/api/v1/openapi.json`, written by hand.
//!
//! Hand-written rather than derived so the document is what integrators read (descriptions,
//! roles per operation) and no derive machinery sits in the daemon; the test in `mod.rs` checks
//! that every route the router serves is documented and every documented route is served.

use serde_json::{json, Value};

use super::{
    audit,
    calls::{DEFAULT_LIMIT, MAX_LIMIT},
};

/// (method, path under /api/v1, least role or "public") for every route the router serves.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/openapi.json", "public"),
    ("get", "/status", "viewer"),
    ("get", "/calls", "viewer"),
    ("get", "/calls/active", "viewer"),
    ("get", "/calls/{uuid}", "viewer"),
    ("get", "/calls/{uuid}/recording", "viewer"),
    ("post", "/calls/{uuid}/recording", "operator"),
    ("get", "/tokens", "admin"),
    ("post", "/tokens", "admin"),
    ("delete", "/tokens/{id}", "admin"),
    ("get", "/audit", "admin"),
    ("post", "/reload", "admin"),
    ("get", "/rules", "viewer"),
    ("post", "/rules", "admin"),
    ("get", "/rules/{id}", "viewer"),
    ("put", "/rules/{id}", "admin"),
    ("delete", "/rules/{id}", "admin"),
];

fn nullable(t: &str) -> Value {
    json!({"type": t, "nullable": true})
}

fn error_responses(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for code in codes {
        let what = match *code {
            "400" => "Invalid parameters",
            "401" => "Missing or invalid bearer token",
            "403" => "The token's role is not allowed to do this",
            "404" => "Not found",
            "410" => "The recording existed and was deleted (by retention): the message says when and why; the call's detail has recording.deleted and recording.deleted_reason",
            "413" => "Request body too large",
            "409" => "Not possible in the resource's current state (a call's recording, a rule name already taken)",
            "416" => "Range not satisfiable",
            _ => "The CDR database is not answering",
        };
        m.insert(
            code.to_string(),
            json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(m)
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

fn op(summary: &str, role: &str, ok: Value, errors: &[&str]) -> Value {
    json!({
        "summary": summary,
        "description": format!("Least role: {role}."),
        "responses": with(ok, error_responses(errors)),
    })
}

fn json_ok(status: &str, schema: &str) -> Value {
    json!({status: {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}})
}

pub fn document() -> Value {
    let uuid_param =
        json!({"name": "uuid", "in": "path", "required": true, "schema": {"type": "string"}});
    let q = |name: &str, schema: Value, d: &str| json!({"name": name, "in": "query", "required": false, "schema": schema, "description": d});
    let time = json!({"type": "string", "format": "date-time"});
    let search = with(
        op(
            "Search stored calls, newest first",
            "viewer",
            json_ok("200", "CallPage"),
            &["400", "401", "403", "503"],
        ),
        json!({"parameters": [
            q("from", time.clone(), "Calls that started at or after this time (RFC 3339)"),
            q("to", time, "Calls that started before this time (RFC 3339)"),
            q("party", json!({"type": "string"}), "SIP user part of the caller or callee"),
            q("call_id", json!({"type": "string"}), "SIP Call-ID"),
            q("end_reason", json!({"type": "string"}), "e.g. bye_caller, cancel, media_timeout"),
            q("min_duration_ms", json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}), "Shortest duration"),
            q("max_duration_ms", json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}), "Longest duration"),
            q("limit", json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}), "Page size"),
            q("cursor", json!({"type": "string"}), "next_cursor of the previous page"),
        ]}),
    );
    let detail = with(
        op(
            "One call's CDR with its streams, DTMF and recording",
            "viewer",
            json_ok("200", "CallDetail"),
            &["400", "401", "403", "404", "503"],
        ),
        json!({"parameters": [uuid_param.clone()]}),
    );
    let recording = with(
        op(
            "The call's recording (stereo WAV: caller left, callee right), whole or one byte range",
            "viewer",
            json!({
                "200": {"description": "The whole file", "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}},
                "206": {"description": "One byte range (Content-Range)", "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}},
            }),
            &["400", "401", "403", "404", "410", "416", "503"],
        ),
        json!({"parameters": [uuid_param.clone(), {"name": "Range", "in": "header", "required": false, "schema": {"type": "string"}, "description": "bytes=START-END, bytes=START- or bytes=-SUFFIX"}]}),
    );
    let control = with(
        op(
            "Recording control of a call in progress: pause and resume (the paused span is silence in the file), stop (the file ends there), start (CallTap records every call, so start resumes a stopped or paused recording). Each action is listed in the call's CDR (recording_events).",
            "operator",
            json_ok("200", "ActiveCall"),
            &["400", "401", "403", "404", "409", "413"],
        ),
        json!({"parameters": [uuid_param], "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RecordingControl"}}}}}),
    );
    let token_create = with(
        op(
            "Create a token; the answer is the only place the token appears",
            "admin",
            json_ok("201", "TokenCreated"),
            &["400", "401", "403", "413", "503"],
        ),
        json!({"requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}}}}}),
    );
    let token_revoke = with(
        op(
            "Revoke a token: it is refused (401) from its next request on. Revoking a revoked token again is a no-op (204; the first revocation time is kept)",
            "admin",
            json!({"204": {"description": "Revoked"}}),
            &["400", "401", "403", "404", "503"],
        ),
        json!({"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "format": "int64"}}]}),
    );
    let audit_list = with(
        op(
            "The audit log, newest first: recording downloads (one row per served answer, so one per range a player fetches) and recording control (API and console), with who (token id and name, or console for the console password), the call, the time and the client address. A download is served even if its row cannot be written (counted as audit_write_failures in /status, and logged)",
            "admin",
            json_ok("200", "AuditPage"),
            &["400", "401", "403", "503"],
        ),
        json!({"parameters": [
            q("limit", json!({"type": "integer", "minimum": 1, "maximum": audit::MAX_LIMIT, "default": audit::DEFAULT_LIMIT}), "Page size"),
            q("offset", json!({"type": "integer", "minimum": 0, "maximum": audit::MAX_OFFSET, "default": 0}), "Entries to skip (newest first); further back, narrow with since"),
            q("since", json!({"type": "string", "format": "date-time"}), "Only entries at or after this time (RFC 3339)"),
        ]}),
    );
    let rule_body = json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RuleRequest"}}}});
    let id_param = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "format": "int64"}});
    let rules_create = with(
        op(
            "Create a recording rule (applies to calls that start from now on)",
            "admin",
            json_ok("201", "Rule"),
            &["400", "401", "403", "409", "413", "503"],
        ),
        json!({"requestBody": rule_body.clone()}),
    );
    let rule_get = with(
        op(
            "One recording rule",
            "viewer",
            json_ok("200", "Rule"),
            &["400", "401", "403", "404", "503"],
        ),
        json!({"parameters": [id_param.clone()]}),
    );
    let rule_put = with(
        op(
            "Replace a recording rule whole (applies to calls that start from now on)",
            "admin",
            json_ok("200", "Rule"),
            &["400", "401", "403", "404", "409", "413", "503"],
        ),
        json!({"parameters": [id_param.clone()], "requestBody": rule_body}),
    );
    let rule_delete = with(
        op(
            "Delete a recording rule",
            "admin",
            json!({"204": {"description": "Deleted"}}),
            &["400", "401", "403", "404", "503"],
        ),
        json!({"parameters": [id_param]}),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "CallTap API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Passive SIP/RTP call recorder. Bearer tokens (`calltap token create --role ROLE`); roles viewer < operator < admin. Errors are {\"error\":{\"code\",\"message\"}}.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/status": {"get": op("Recorder status: version, uptime, capture, CDR store", "viewer", json_ok("200", "Status"), &["401", "403"])},
            "/calls": {"get": search},
            "/calls/{uuid}": {"get": detail},
            "/calls/active": {"get": op("Calls in progress, oldest first", "viewer", json_ok("200", "ActiveCallList"), &["401", "403"])},
            "/calls/{uuid}/recording": {"get": recording, "post": control},
            "/reload": {"post": op(
                "Reload the configuration file and environment: changed keys that apply live (call timeouts, path template, flush interval, added SIP ports) take effect for what comes next without dropping calls; the others are listed as needing a restart. An invalid file changes nothing (409).",
                "admin",
                json_ok("200", "ReloadReport"),
                &["401", "403", "409"],
            )},
            "/rules": {
                "get": op("Recording rules in evaluation order (priority, then id; the first enabled match decides a new call's recording) and the default mode for calls no rule matches", "viewer", json_ok("200", "RuleList"), &["401", "403", "503"]),
                "post": rules_create,
            },
            "/rules/{id}": {"get": rule_get, "put": rule_put, "delete": rule_delete},
            "/tokens": {
                "get": op("List API tokens (never the tokens themselves)", "admin", json_ok("200", "TokenList"), &["401", "403", "503"]),
                "post": token_create,
            },
            "/tokens/{id}": {"delete": token_revoke},
            "/audit": {"get": audit_list},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}

fn schemas() -> Value {
    let int = json!({"type": "integer"});
    let s = json!({"type": "string"});
    let num = json!({"type": "number"});
    let pattern = json!({"type": "string", "nullable": true, "minLength": 1, "maxLength": crate::rules::MAX_PATTERN});
    let action = json!({"type": "string", "enum": ["record", "skip", "on_demand"], "description": "record: from the first packet; skip: no file at all; on_demand: no audio until an operator starts it"});
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": s, "message": s}}}},
        "CallSummary": {"type": "object",
            "required": ["uuid", "call_id", "interaction_id", "from_uri", "to_uri", "src_ip", "dst_ip", "start", "end", "duration_ms", "talk_ms", "end_reason", "codecs"],
            "properties": {
                "uuid": s, "call_id": s, "interaction_id": s,
                "from_user": nullable("string"), "from_display": nullable("string"), "from_uri": s,
                "to_user": nullable("string"), "to_display": nullable("string"), "to_uri": s,
                "src_ip": s, "dst_ip": s,
                "start": {"type": "string", "format": "date-time"},
                "answer": {"type": "string", "format": "date-time", "nullable": true},
                "end": {"type": "string", "format": "date-time"},
                "duration_ms": int, "talk_ms": int, "end_reason": s,
                "codecs": {"type": "string", "description": "comma-separated"},
                "recording_bytes": nullable("integer"),
                "recording_mode": {"type": "string", "nullable": true, "enum": ["record", "skip", "on_demand", null], "description": "Recording decision at call start (recording rules)"},
                "rule_id": {"type": "integer", "nullable": true, "description": "The rule that decided; null: the default mode"},
            }},
        "CallPage": {"type": "object", "required": ["calls"], "properties": {
            "calls": {"type": "array", "items": {"$ref": "#/components/schemas/CallSummary"}},
            "next_cursor": nullable("string")}},
        "Stream": {"type": "object", "properties": {
            "direction": s, "ssrc": nullable("string"), "codec": nullable("string"),
            "packets": int, "bytes": int, "lost": int, "duplicates": int, "late": int,
            "jitter_ms": num, "mos": nullable("number"), "rtcp_packets": int,
            "rtcp_fraction_lost": nullable("number"), "rtcp_jitter_ms": nullable("number")}},
        "Dtmf": {"type": "object", "properties": {
            "side": s, "digit": s, "at_ms": int, "duration_ms": nullable("integer"), "source": s}},
        "RecordingEvent": {"type": "object", "required": ["action", "ts", "at_ms"], "properties": {
            "action": {"type": "string", "enum": ["start", "stop", "pause", "resume"]},
            "ts": {"type": "string", "format": "date-time"}, "at_ms": int}},
        "RejectedRequest": {"type": "object", "required": ["method", "src", "dst", "at_ms", "reason"], "properties": {
            "method": s, "src": {"type": "string", "description": "ip:port"}, "dst": {"type": "string", "description": "ip:port"},
            "at_ms": int,
            "reason": {"type": "string", "enum": ["unknown_source", "unknown_destination"]}}},
        "RestartGap": {"type": "object", "required": ["from", "to", "ms"], "properties": {
            "from": {"type": "string", "format": "date-time"},
            "to": {"type": "string", "format": "date-time"}, "ms": int}},
        "Recording": {"type": "object", "nullable": true,
            "required": ["bytes", "sha256", "sample_rate", "channels", "duration_ms", "location", "deleted", "deleted_reason"],
            "properties": {
            "bytes": int, "sha256": s, "sample_rate": int, "channels": int, "duration_ms": int,
            "location": s,
            "deleted": {"type": "string", "format": "date-time", "nullable": true, "description": "When the file was deleted (the download then answers 410 Gone); null while it exists"},
            "deleted_reason": {"type": "string", "nullable": true, "description": "Why it was deleted: retention (older than [retention] archive_days, or the oldest when the disk passed max_used_percent); null while it exists"}}},
        "CallDetail": {"allOf": [{"$ref": "#/components/schemas/CallSummary"}, {"type": "object",
            "required": ["streams", "dtmf", "dtmf_omitted", "recording_events", "restart_gaps", "rejected_requests", "rejected_requests_omitted", "has_raw_rtp_pcap"],
            "properties": {
                "unsupported_codecs": s, "missing_directions": s,
                "packets_caller": int, "packets_callee": int, "packets_rtcp": int,
                "streams": {"type": "array", "items": {"$ref": "#/components/schemas/Stream"}},
                "dtmf": {"type": "array", "items": {"$ref": "#/components/schemas/Dtmf"}},
                "dtmf_omitted": {"type": "integer", "description": "Digits past the per-call bound (256), counted only"},
                "recording_events": {"type": "array", "description": "Recording control during the call, in order", "items": {"$ref": "#/components/schemas/RecordingEvent"}},
                "restart_gaps": {"type": "array", "description": "Spans the recorder was down during the call (crash, kill, reboot): silence in the file", "items": {"$ref": "#/components/schemas/RestartGap"}},
                "rejected_requests": {"type": "array", "description": "In-dialog requests (BYE, CANCEL, re-INVITE, UPDATE, INFO, SDP) not acted on: sent from or to an address off the dialog's signalling path, e.g. a spoofed BYE only the mirror port saw. At most 32", "items": {"$ref": "#/components/schemas/RejectedRequest"}},
                "rejected_requests_omitted": {"type": "integer", "description": "Rejected requests past the per-call bound (32), counted only"},
                "recording": {"$ref": "#/components/schemas/Recording"},
                "has_raw_rtp_pcap": {"type": "boolean"}}}]},
        "Status": {"type": "object", "required": ["version", "uptime_s", "data_dir", "database"], "properties": {
            "version": s, "uptime_s": int, "data_dir": s, "recordings_dir": s,
            "capture": {"type": "object", "nullable": true, "properties": {
                "source": s, "interfaces": {"type": "array", "items": s}}},
            "database": {"type": "object", "properties": {
                "backend": s, "reachable": {"type": "boolean"}}},
            "cdr_store": {"type": "object", "nullable": true, "description": "CDR writer counters (mode: starting, database or csv)"},
            "audit_write_failures": {"type": "integer", "description": "Audit rows that could not be written (database error or no answer within 2 s) since start; each was logged instead"},
            "workers": {"type": "array", "description": "Media workers: records taken, calls owned, input ring fill (0-1), processing lag", "items": {"type": "object", "properties": {
                "worker": int, "records": int, "active_calls": int, "ring_fill": nullable("number"), "lag_ms": num}}},
            "signalling_ring_fill": nullable("number"),
            "active_calls": int,
            "archive": {"type": "object", "nullable": true, "description": "Archive queue and spool disk", "properties": {
                "queued": int, "unarchived": int, "up": {"type": "boolean"}, "disk_full_alarm": {"type": "boolean"},
                "failures_total": int, "spool_used_fraction": num}},
            "webhooks": {"type": "object", "nullable": true, "description": "Webhook delivery counters", "properties": {
                "queued": int, "delivered": int, "failures": int, "retries": int, "dropped": int, "pending": int}}}},
        "ActiveCall": {"type": "object",
            "required": ["uuid", "call_id", "from_uri", "to_uri", "start", "state", "worker", "recording"],
            "properties": {
                "uuid": s, "call_id": s,
                "from_user": nullable("string"), "from_uri": s,
                "to_user": nullable("string"), "to_uri": s,
                "start": {"type": "string", "format": "date-time"},
                "answered": {"type": "string", "format": "date-time", "nullable": true},
                "state": {"type": "string", "enum": ["setup", "ringing", "answered", "held", "ending"]},
                "worker": int,
                "recording": {"type": "string", "enum": ["recording", "paused", "stopped"]},
                "recording_mode": {"type": "string", "enum": ["record", "skip", "on_demand"], "description": "What the recording rules decided at call start"},
                "rule_id": {"type": "integer", "nullable": true, "description": "The deciding rule; null: the default mode"}}},
        "ReloadReport": {"type": "object", "required": ["applied", "needs_restart"], "properties": {
            "applied": {"type": "array", "items": s.clone(), "description": "section.key now in effect"},
            "needs_restart": {"type": "array", "items": s.clone(), "description": "section.key that take effect after a restart"},
        }},
        "ActiveCallList": {"type": "object", "required": ["calls"], "properties": {
            "calls": {"type": "array", "items": {"$ref": "#/components/schemas/ActiveCall"}}}},
        "RecordingControl": {"type": "object", "required": ["action"], "additionalProperties": false, "properties": {
            "action": {"type": "string", "enum": ["start", "stop", "pause", "resume"]}}},
        "Token": {"type": "object", "required": ["id", "name", "role", "created", "created_ns", "active"], "properties": {
            "id": int, "name": s, "role": s,
            "created": {"type": "string", "format": "date-time"}, "created_ns": int,
            "expires": {"type": "string", "format": "date-time", "nullable": true, "description": "Refused from then on; null: never expires"},
            "expires_ns": nullable("integer"),
            "revoked": {"type": "string", "format": "date-time", "nullable": true},
            "revoked_ns": nullable("integer"),
            "active": {"type": "boolean", "description": "Neither revoked nor expired"}}},
        "AuditEntry": {"type": "object", "required": ["id", "at", "actor", "action", "call_uuid"], "properties": {
            "id": int, "at": {"type": "string", "format": "date-time"},
            "token_id": {"type": "integer", "nullable": true, "description": "The API token; null for the console password"},
            "actor": {"type": "string", "description": "The token's name at the time, or console"},
            "action": {"type": "string", "enum": ["download", "start", "stop", "pause", "resume"]},
            "call_uuid": s, "call_id": nullable("string"),
            "peer": {"type": "string", "nullable": true, "description": "Client ip:port"}}},
        "AuditPage": {"type": "object", "required": ["entries"], "properties": {
            "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}}},
        "TokenList": {"type": "object", "required": ["tokens"], "properties": {
            "tokens": {"type": "array", "items": {"$ref": "#/components/schemas/Token"}}}},
        "TokenRequest": {"type": "object", "required": ["role"], "additionalProperties": false, "properties": {
            "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
            "name": {"type": "string", "maxLength": 200},
            "expires_in": {"type": "string", "pattern": "^[0-9]+[mhdw]$", "description": "Lifetime: a number and m (minutes), h, d or w (weeks), at most 3650 days, e.g. 30d. Absent: never expires"}}},
        "RuleMatch": {"type": "object", "additionalProperties": false,
            "description": "Conditions, all optional and ANDed. Number patterns and domain are globs over the whole value, case-insensitive: * any run, ? one character (a prefix is 1234*). caller/callee: SIP From/To user part; party: either. IPs: an address or CIDR (v4 or v6); ip: either party. domain: host of From or To.",
            "properties": {
                "caller": pattern.clone(), "callee": pattern.clone(), "party": pattern.clone(),
                "caller_ip": nullable("string"), "callee_ip": nullable("string"), "ip": nullable("string"),
                "domain": pattern}},
        "RuleRequest": {"type": "object", "required": ["name", "action"], "additionalProperties": false, "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": crate::rules::MAX_NAME, "description": "Unique"},
            "priority": {"type": "integer", "minimum": 0, "maximum": crate::rules::MAX_PRIORITY, "default": super::rules::DEFAULT_PRIORITY, "description": "Lower is evaluated first"},
            "enabled": {"type": "boolean", "default": true},
            "action": action.clone(),
            "match": {"$ref": "#/components/schemas/RuleMatch"}}},
        "Rule": {"type": "object", "required": ["id", "name", "priority", "enabled", "action", "match"], "properties": {
            "id": int, "name": s, "priority": int, "enabled": {"type": "boolean"},
            "action": action.clone(),
            "match": {"$ref": "#/components/schemas/RuleMatch"}}},
        "RuleList": {"type": "object", "required": ["rules", "default"], "properties": {
            "rules": {"type": "array", "items": {"$ref": "#/components/schemas/Rule"}},
            "default": action}},
        "TokenCreated": {"type": "object", "required": ["id", "role", "token", "expires"], "properties": {
            "id": int, "role": s, "name": s, "token": s,
            "expires": {"type": "string", "format": "date-time", "nullable": true}}},
    })
}

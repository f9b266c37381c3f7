//! Stored calls: search with cursor pagination, CDR detail, recording download.
//!
//! Searches run on the indexed nanosecond columns, newest first, ordered by (start_ns, uuid) so
//! a page boundary is exact even when calls start in the same nanosecond. The cursor is that
//! pair, hex-encoded: opaque to clients, cheap to check, and immune to rows arriving meanwhile
//! (a keyset, not an offset).

use std::path::{Path, PathBuf};

use axum::{
    body::Body,
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path as UrlPath, Query, State,
    },
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::{audit, auth::Caller, errors::ApiError, sql::Arg, ApiState};
use crate::store::{archive, cdr::rfc3339, db::Db};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Calls that started at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Calls that started before this time (RFC 3339).
    pub to: Option<String>,
    /// SIP user part of the caller or the callee.
    pub party: Option<String>,
    pub call_id: Option<String>,
    pub end_reason: Option<String>,
    pub min_duration_ms: Option<u64>,
    pub max_duration_ms: Option<u64>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// One call in a search result.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct CallSummary {
    pub uuid: String,
    pub call_id: String,
    pub interaction_id: String,
    pub from_user: Option<String>,
    pub from_display: Option<String>,
    pub from_uri: String,
    pub to_user: Option<String>,
    pub to_display: Option<String>,
    pub to_uri: String,
    pub src_ip: String,
    pub dst_ip: String,
    #[serde(rename = "start")]
    pub start_at: String,
    #[serde(rename = "answer")]
    pub answer_at: Option<String>,
    #[serde(rename = "end")]
    pub end_at: String,
    #[serde(skip)]
    pub start_ns: i64,
    pub duration_ms: i64,
    pub talk_ms: i64,
    pub end_reason: String,
    pub codecs: String,
    #[serde(skip)]
    pub recording_path: Option<String>,
    pub recording_bytes: Option<i64>,
    /// The recording decision at call start (record, skip, on_demand; null for calls stored
    /// before rules existed) and the rule that made it (null: the default mode).
    pub recording_mode: Option<String>,
    pub rule_id: Option<i64>,
}

#[derive(Serialize)]
pub struct CallPage {
    pub calls: Vec<CallSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct StreamRow {
    pub direction: String,
    pub ssrc: Option<String>,
    pub codec: Option<String>,
    pub packets: i64,
    pub bytes: i64,
    pub lost: i64,
    pub duplicates: i64,
    pub late: i64,
    pub jitter_ms: f64,
    pub mos: Option<f64>,
    pub rtcp_packets: i64,
    pub rtcp_fraction_lost: Option<f64>,
    pub rtcp_jitter_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct DtmfRow {
    pub side: String,
    pub digit: String,
    pub at_ms: i64,
    pub duration_ms: Option<i64>,
    pub source: String,
}

/// A recording control during the call (pause, resume, stop, start).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct RecordingEventRow {
    pub action: String,
    pub ts: String,
    pub at_ms: i64,
}

/// An in-dialog request CallTap did not act on (off the dialog's signalling path).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct RejectedRequestRow {
    pub method: String,
    pub src: String,
    pub dst: String,
    pub at_ms: i64,
    pub reason: String,
}

/// A span the recorder was down during the call (crash, kill, reboot); silence in the file.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct RestartGapRow {
    #[serde(rename = "from")]
    pub from_at: String,
    #[serde(rename = "to")]
    pub to_at: String,
    pub ms: i64,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct RecordingRow {
    pub bytes: i64,
    pub sha256: String,
    pub sample_rate: i64,
    pub channels: i64,
    pub duration_ms: i64,
    pub location: String,
    /// Whether a raw RTP pcap (unsupported codec) was kept beside the WAV.
    #[serde(skip)]
    pub raw_rtp_pcap: Option<String>,
    #[serde(skip)]
    pub deleted_ns: Option<i64>,
    /// When the file was deleted (RFC 3339) and why (`retention`); null while it exists.
    #[sqlx(skip)]
    pub deleted: Option<String>,
    pub deleted_reason: Option<String>,
}

/// RFC 3339 of a stored nanosecond time.
fn time_of(ns: i64) -> String {
    rfc3339(u64::try_from(ns).unwrap_or(0))
}

/// Whether a call's recording file was deleted on purpose (`recordings.deleted_ns`).
#[derive(sqlx::FromRow)]
struct Deletion {
    deleted_ns: Option<i64>,
    deleted_reason: Option<String>,
}

#[derive(Serialize)]
pub struct CallDetail {
    #[serde(flatten)]
    pub call: CallSummary,
    pub unsupported_codecs: String,
    pub missing_directions: String,
    pub packets_caller: i64,
    pub packets_callee: i64,
    pub packets_rtcp: i64,
    pub streams: Vec<StreamRow>,
    pub dtmf: Vec<DtmfRow>,
    pub dtmf_omitted: i64,
    pub recording_events: Vec<RecordingEventRow>,
    pub restart_gaps: Vec<RestartGapRow>,
    pub rejected_requests: Vec<RejectedRequestRow>,
    pub rejected_requests_omitted: i64,
    pub recording: Option<RecordingRow>,
    pub has_raw_rtp_pcap: bool,
}

#[derive(sqlx::FromRow)]
struct Extra {
    unsupported_codecs: String,
    missing_directions: String,
    packets_caller: i64,
    packets_callee: i64,
    packets_rtcp: i64,
    dtmf_omitted: i64,
    rejected_requests_omitted: i64,
}

const SUMMARY_COLUMNS: &str = "uuid, call_id, interaction_id, from_user, from_display, from_uri, \
    to_user, to_display, to_uri, src_ip, dst_ip, start_at, answer_at, end_at, start_ns, \
    duration_ms, talk_ms, end_reason, codecs, recording_path, recording_bytes, recording_mode, \
    rule_id";

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Nanoseconds since the epoch of an RFC 3339 time (`2026-11-22T23:30:00Z`,
/// `...T23:30:00.123+01:00`); None when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac_ns = 0i64;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let f: i64 = r[..digits].parse().ok()?;
        frac_ns = f * 10i64.pow(9 - digits as u32);
        rest = &r[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return None;
            }
            let two = |t: &str| -> Option<i64> {
                t.bytes()
                    .all(|c| c.is_ascii_digit())
                    .then(|| t.parse().ok())?
            };
            let (oh, om) = (two(rest.get(1..3)?)?, two(rest.get(4..6)?)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if rb[0] == b'-' {
                -o
            } else {
                o
            }
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

fn encode_cursor(start_ns: i64, uuid: &str) -> String {
    hex::encode(format!("{start_ns}|{uuid}"))
}

fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(hex::decode(c).ok()?).ok()?;
    let (ns, uuid) = text.split_once('|')?;
    Some((ns.parse().ok()?, uuid.to_string()))
}

/// `GET /api/v1/calls`
pub async fn search(
    State(state): State<ApiState>,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<CallPage>, ApiError> {
    let Query(p) = params?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let mut push = |cond: &str, a: Vec<Arg>| {
        let mut c = cond.to_string();
        for (k, arg) in a.into_iter().enumerate() {
            c = c.replace(&format!("?{k}"), &format!("${}", args.len() + 1));
            args.push(arg);
        }
        conds.push(c);
    };
    let time = |name: &str, v: &str| {
        parse_rfc3339(v).ok_or_else(|| {
            ApiError::BadRequest(format!("{name}: expected an RFC 3339 time, got {v:?}"))
        })
    };
    if let Some(v) = &p.from {
        push("start_ns >= ?0", vec![Arg::I(time("from", v)?)]);
    }
    if let Some(v) = &p.to {
        push("start_ns < ?0", vec![Arg::I(time("to", v)?)]);
    }
    if let Some(v) = &p.party {
        push(
            "(from_user = ?0 OR to_user = ?1)",
            vec![Arg::S(v.clone()), Arg::S(v.clone())],
        );
    }
    if let Some(v) = &p.call_id {
        push("call_id = ?0", vec![Arg::S(v.clone())]);
    }
    if let Some(v) = &p.end_reason {
        push("end_reason = ?0", vec![Arg::S(v.clone())]);
    }
    if let Some(v) = p.min_duration_ms {
        push("duration_ms >= ?0", vec![Arg::I(i(v))]);
    }
    if let Some(v) = p.max_duration_ms {
        push("duration_ms <= ?0", vec![Arg::I(i(v))]);
    }
    if let Some(c) = &p.cursor {
        let (ns, uuid) = decode_cursor(c)
            .ok_or_else(|| ApiError::BadRequest("cursor: not one this API issued".into()))?;
        push(
            "(start_ns < ?0 OR (start_ns = ?1 AND uuid < ?2))",
            vec![Arg::I(ns), Arg::I(ns), Arg::S(uuid)],
        );
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    // One row more than asked tells whether there is a next page.
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM calls{where_} ORDER BY start_ns DESC, uuid DESC LIMIT {}",
        limit + 1
    );
    let mut calls = fetch!(state.db().await?, CallSummary, &sql, &args, fetch_all)?;
    let next_cursor = if calls.len() > limit as usize {
        calls.truncate(limit as usize);
        calls.last().map(|c| encode_cursor(c.start_ns, &c.uuid))
    } else {
        None
    };
    Ok(Json(CallPage { calls, next_cursor }))
}

async fn find_call(db: &Db, uuid: &str) -> Result<CallSummary, ApiError> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM calls WHERE uuid = $1");
    let args = [Arg::S(uuid.to_string())];
    fetch!(db, CallSummary, &sql, &args, fetch_optional)?
        .ok_or_else(|| ApiError::NotFound(format!("no call {uuid:?}")))
}

/// `GET /api/v1/calls/{uuid}`
pub async fn detail(
    State(state): State<ApiState>,
    uuid: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<CallDetail>, ApiError> {
    let UrlPath(uuid) = uuid?;
    let db = state.db().await?;
    let call = find_call(db, &uuid).await?;
    let args = [Arg::S(uuid.clone())];
    let extra = fetch!(
        db,
        Extra,
        "SELECT unsupported_codecs, missing_directions, packets_caller, packets_callee, \
         packets_rtcp, dtmf_omitted, rejected_requests_omitted FROM calls WHERE uuid = $1",
        &args,
        fetch_one
    )?;
    let streams = fetch!(
        db,
        StreamRow,
        "SELECT direction, ssrc, codec, packets, bytes, lost, duplicates, late, jitter_ms, mos, \
         rtcp_packets, rtcp_fraction_lost, rtcp_jitter_ms FROM streams WHERE call_uuid = $1 \
         ORDER BY id",
        &args,
        fetch_all
    )?;
    let dtmf = fetch!(
        db,
        DtmfRow,
        "SELECT side, digit, at_ms, duration_ms, source FROM dtmf_events WHERE call_uuid = $1 \
         ORDER BY at_ms, id",
        &args,
        fetch_all
    )?;
    let recording_events = fetch!(
        db,
        RecordingEventRow,
        "SELECT action, at AS ts, at_ms FROM recording_events WHERE call_uuid = $1 ORDER BY n",
        &args,
        fetch_all
    )?;
    let restart_gaps = fetch!(
        db,
        RestartGapRow,
        "SELECT from_at, to_at, ms FROM restart_gaps WHERE call_uuid = $1 ORDER BY n",
        &args,
        fetch_all
    )?;
    let rejected_requests = fetch!(
        db,
        RejectedRequestRow,
        "SELECT method, src, dst, at_ms, reason FROM rejected_requests WHERE call_uuid = $1 \
         ORDER BY n",
        &args,
        fetch_all
    )?;
    let mut recording = fetch!(
        db,
        RecordingRow,
        "SELECT bytes, sha256, sample_rate, channels, duration_ms, location, raw_rtp_pcap, \
         deleted_ns, deleted_reason FROM recordings WHERE call_uuid = $1 ORDER BY id LIMIT 1",
        &args,
        fetch_optional
    )?;
    if let Some(r) = recording.as_mut() {
        r.deleted = r.deleted_ns.map(time_of);
    }
    Ok(Json(CallDetail {
        call,
        unsupported_codecs: extra.unsupported_codecs,
        missing_directions: extra.missing_directions,
        packets_caller: extra.packets_caller,
        packets_callee: extra.packets_callee,
        packets_rtcp: extra.packets_rtcp,
        streams,
        dtmf,
        dtmf_omitted: extra.dtmf_omitted,
        recording_events,
        restart_gaps,
        rejected_requests,
        rejected_requests_omitted: extra.rejected_requests_omitted,
        has_raw_rtp_pcap: recording.as_ref().is_some_and(|r| r.raw_rtp_pcap.is_some()),
        recording,
    }))
}

/// The file behind a stored recording path, if it is a regular file inside `root`.
///
/// The path comes from the database, which anyone with database access (or an imported CSV
/// journal) can fill, so it is never trusted: both sides are canonicalized (resolving `..` and
/// symlinks) and the file must lie under the recordings directory.
pub fn confine(root: &Path, stored: &str) -> Option<PathBuf> {
    if stored.is_empty() || stored.contains('\0') {
        return None;
    }
    let root = root.canonicalize().ok()?;
    let file = Path::new(stored).canonicalize().ok()?;
    (file.starts_with(&root) && file != root && file.is_file()).then_some(file)
}

/// A single byte range of a `len`-byte file, from a `Range` header.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// No (usable) Range header: the whole file, 200.
    Full,
    /// Inclusive byte positions, 206.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n`. A header that is not that syntax, or asks for
/// several ranges, is ignored (the whole file is a valid answer to it, RFC 9110 14.2).
pub fn parse_range(h: Option<&str>, len: u64) -> RangeReq {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |t: &str| -> Option<u64> {
        (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeReq::Full,
        (true, false) => match parse(b) {
            None => RangeReq::Full,
            Some(0) => RangeReq::Unsatisfiable,
            Some(_) if len == 0 => RangeReq::Unsatisfiable,
            Some(n) => RangeReq::Part(len.saturating_sub(n), len - 1),
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeReq::Full;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match parse(b) {
                    Some(e) if e >= start => e,
                    _ => return RangeReq::Full,
                }
            };
            if start >= len {
                RangeReq::Unsatisfiable
            } else {
                RangeReq::Part(start, end.min(len - 1))
            }
        }
    }
}

/// `GET /api/v1/calls/{uuid}/recording`: the WAV, whole or one byte range. Each answer that
/// serves audio (200 or 206: a player fetching ranges leaves one row per range) is written to
/// the audit log first ([`audit`]: bounded, and served even if the row cannot be written).
pub async fn recording(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<axum::extract::ConnectInfo<crate::publish::http::PeerAddr>>>,
    uuid: Result<UrlPath<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let UrlPath(uuid) = uuid?;
    let db = state.db().await?;
    let call = find_call(db, &uuid).await?;
    let audit_entry = audit::Entry {
        actor: audit::Actor::from(&caller),
        action: "download",
        call_uuid: call.uuid.clone(),
        call_id: Some(call.call_id.clone()),
        peer: super::peer_of(peer),
    };
    // Deleted on purpose: say so (and when), not 404 as if there never was a recording.
    let args = [Arg::S(uuid.clone())];
    let deletion = fetch!(
        db,
        Deletion,
        "SELECT deleted_ns, deleted_reason FROM recordings WHERE call_uuid = $1 \
         ORDER BY id LIMIT 1",
        &args,
        fetch_optional
    )?;
    if let Some(Deletion {
        deleted_ns: Some(ns),
        deleted_reason,
    }) = deletion
    {
        let by = deleted_reason.map_or(String::new(), |r| format!(" by {r}"));
        return Err(ApiError::Gone(format!(
            "the recording of call {uuid:?} was deleted{by} at {}",
            time_of(ns)
        )));
    }
    let no_file = || ApiError::NotFound(format!("call {uuid:?} has no recording file"));
    let stored = call.recording_path.as_deref().ok_or_else(no_file)?;
    // In the spool, else in the archive (the row may still name the spool copy: it is updated
    // after the move, best effort).
    let located = match confine(&state.inner.recordings_dir, stored) {
        Some(path) => Some(path),
        None => match archive::locate(
            &state.inner.cfg.archive,
            &state.inner.cfg.storage.recordings_dir(),
            stored,
        ) {
            Some(archive::Located::File { root, path }) => confine(&root, &path.to_string_lossy()),
            Some(archive::Located::Object { store, key }) => {
                let served = serve_object(store.as_ref(), &key, &headers).await?;
                audit::record(&state, audit_entry).await;
                return Ok(served);
            }
            None => None,
        },
    };
    let Some(path) = located else {
        log::warn!(
            "API: call {uuid}: recording path {stored:?} is missing or outside {} and the archive",
            state.inner.recordings_dir.display()
        );
        return Err(no_file());
    };
    let content_type = content_type_of(&path.to_string_lossy());
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("opening {}: {e}", path.display())))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?
        .len();
    let (status, start, count) = requested_range(&headers, len)?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
    audit::record(&state, audit_entry).await;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)));
    Ok(ranged_response(
        status,
        body,
        content_type,
        start,
        count,
        len,
    ))
}

/// Status, first byte and length to send of a `len`-byte recording, from the `Range` header.
fn requested_range(headers: &HeaderMap, len: u64) -> Result<(StatusCode, u64, u64), ApiError> {
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    Ok(match range {
        RangeReq::Full => (StatusCode::OK, 0, len),
        RangeReq::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeReq::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { len }),
    })
}

fn content_type_of(name: &str) -> &'static str {
    match Path::new(name).extension().and_then(|e| e.to_str()) {
        Some("wav") => "audio/wav",
        Some("pcap") => "application/vnd.tcpdump.pcap",
        _ => "application/octet-stream",
    }
}

/// A recording archived in an S3-compatible store, streamed (whole or one range) without
/// holding it in memory.
async fn serve_object(
    store: &dyn object_store::ObjectStore,
    key: &object_store::path::Path,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let unavailable = |e: object_store::Error| match e {
        object_store::Error::NotFound { .. } => {
            ApiError::NotFound(format!("recording {key} is not in the archive"))
        }
        e => ApiError::Internal(format!("archive: {key}: {e}")),
    };
    let len = store.head(key).await.map_err(unavailable)?.size;
    let (status, start, count) = requested_range(headers, len)?;
    let opts = object_store::GetOptions {
        range: (count > 0).then_some(object_store::GetRange::Bounded(start..start + count)),
        ..Default::default()
    };
    let got = store.get_opts(key, opts).await.map_err(unavailable)?;
    let body = Body::from_stream(got.into_stream());
    Ok(ranged_response(
        status,
        body,
        content_type_of(key.as_ref()),
        start,
        count,
        len,
    ))
}

fn ranged_response(
    status: StatusCode,
    body: Body,
    content_type: &'static str,
    start: u64,
    count: u64,
    len: u64,
) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.5+01:00"),
            Some(1_700_000_000_500_000_000)
        );
        for bad in [
            "",
            "2023-11-14",
            "2023-13-14T00:00:00Z",
            "2023-11-14T00:00:00",
            "2023-11-14T00:00:00.Z",
            "2023-11-14T00:00:00+0100",
            "２０２３-11-14T00:00:00Z",
            "2023-11-14T00:00:00.1234567890Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges() {
        let r = |h: &str| parse_range(Some(h), 100);
        assert_eq!(parse_range(None, 100), RangeReq::Full);
        assert_eq!(r("bytes=0-9"), RangeReq::Part(0, 9));
        assert_eq!(r("bytes=90-"), RangeReq::Part(90, 99));
        assert_eq!(r("bytes=90-1000"), RangeReq::Part(90, 99));
        assert_eq!(r("bytes=-10"), RangeReq::Part(90, 99));
        assert_eq!(r("bytes=-1000"), RangeReq::Part(0, 99));
        assert_eq!(r("bytes=100-"), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=-0"), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=5-1"), RangeReq::Full);
        assert_eq!(r("bytes=0-1,5-6"), RangeReq::Full);
        assert_eq!(r("items=0-1"), RangeReq::Full);
        assert_eq!(r("bytes=x-1"), RangeReq::Full);
        assert_eq!(r("bytes=99999999999999999999999-"), RangeReq::Full);
        assert_eq!(parse_range(Some("bytes=0-"), 0), RangeReq::Unsatisfiable);
    }

    #[test]
    fn cursor_round_trips_and_rejects_junk() {
        let c = encode_cursor(-5, "abc");
        assert_eq!(decode_cursor(&c), Some((-5, "abc".to_string())));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor(&hex::encode("nobar")), None);
    }
}

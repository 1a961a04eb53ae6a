//! One record as a line of text or JSON, and writing lines to stdout.

use std::fmt::Write as _;
use std::io::{self, Write};

use pinstream_core::event::{EventHeader, Origin};
use pinstream_host::storage::StoredRecord;
use pinstream_host::storage::record::{self, RecordBody, RecordError};
use serde::Serialize;

use crate::Failure;

/// A write to stdout that stops quietly when the reader went away (`| head`).
pub(crate) enum Out {
    /// Written: go on.
    Go,
    /// The reader went away: stop quietly.
    Closed,
}

pub(crate) fn emit(out: &mut impl Write, line: &str) -> Result<Out, Failure> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(Out::Go),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Out::Closed),
        Err(e) => Err(Failure::runtime(format!("cannot write to stdout: {e}"))),
    }
}

pub(crate) fn flush(out: &mut impl Write) -> Result<Out, Failure> {
    match out.flush() {
        Ok(()) => Ok(Out::Go),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Out::Closed),
        Err(e) => Err(Failure::runtime(format!("cannot write to stdout: {e}"))),
    }
}

pub(super) fn kind_name(kind: u8) -> &'static str {
    match kind {
        record::KIND_EVENT | record::KIND_PRODUCER_EVENT => "event",
        record::KIND_DEAD_LETTER | record::KIND_PRODUCER_DEAD_LETTER => "dead-letter",
        record::KIND_AGGREGATE => "aggregate",
        _ => "unknown",
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of payload shown in a text line.
const PREVIEW_CHARS: usize = 32;
const PREVIEW_HEX_BYTES: usize = 16;

/// A short preview: quoted text when the payload is printable UTF-8, else hex.
pub(super) fn preview(payload: &[u8]) -> String {
    if payload.is_empty() {
        return "-".to_owned();
    }
    match std::str::from_utf8(payload) {
        Ok(s) if !s.chars().any(char::is_control) => {
            let shown: String = s.chars().take(PREVIEW_CHARS).collect();
            let more = if shown.len() < s.len() { "..." } else { "" };
            format!("{shown:?}{more}")
        }
        _ => {
            let n = payload.len().min(PREVIEW_HEX_BYTES);
            let more = if n < payload.len() { "..." } else { "" };
            format!("0x{}{more}", hex(&payload[..n]))
        }
    }
}

fn value_text(h: &EventHeader) -> String {
    h.value()
        .map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// One record as a line of text or JSON; the error when its body does not decode.
pub(super) fn format_record(
    log: &str,
    rec: &StoredRecord,
    json: bool,
) -> (String, Option<RecordError>) {
    let decoded = record::decode(rec.kind, &rec.body);
    let line = if json {
        json_record(log, rec, &decoded)
    } else {
        text_record(log, rec, &decoded)
    };
    (line, decoded.err())
}

fn text_record(
    log: &str,
    rec: &StoredRecord,
    decoded: &Result<RecordBody<'_>, RecordError>,
) -> String {
    let head = format!("{log} {} {}", rec.offset, kind_name(rec.kind));
    match decoded {
        Ok(RecordBody::Event(e)) => {
            let h = &e.header;
            format!(
                "{head} id={} topic={} priority={} lane={} source={} seq={}{} received={} \
                 timestamp={} value={} payload={}B {}",
                h.id,
                h.topic,
                h.priority.name(),
                e.lane.name(),
                e.origin.source,
                e.origin.seq,
                producer_text(&e.origin),
                e.received,
                h.timestamp,
                value_text(h),
                e.payload.len(),
                preview(e.payload)
            )
        }
        Ok(RecordBody::Aggregate(a)) => format!(
            "{head} topic={} window=[{},{}) count={} bytes={} values={} min={} max={} sum={}",
            a.topic, a.start, a.end, a.count, a.bytes, a.values, a.min, a.max, a.sum
        ),
        Ok(RecordBody::DeadLetter(d)) => format!(
            "{head} reason={}({}) id={} topic={} priority={} source={} seq={}{} tick={} \
             events={} timestamp={} value={}",
            d.reason.name(),
            d.reason.code(),
            d.header.id,
            d.header.topic,
            d.header.priority.name(),
            d.origin.source,
            d.origin.seq,
            producer_text(&d.origin),
            d.tick,
            d.events,
            d.header.timestamp,
            value_text(&d.header)
        ),
        Err(e) => format!(
            "{head} kind={} body={}B UNDECODABLE: {e}",
            rec.kind,
            rec.body.len()
        ),
    }
}

/// ` index=I producer=P epoch=E resolved=R` for a producer session's record, nothing
/// otherwise.
fn producer_text(o: &Origin) -> String {
    if o.producer == 0 {
        return String::new();
    }
    format!(
        " index={} producer={} epoch={} resolved={}",
        o.index,
        o.producer,
        o.epoch,
        o.resolved()
    )
}

/// The fields of an event header in a JSON line.
#[derive(Serialize)]
struct HeaderJson<'a> {
    id: u64,
    topic: u16,
    /// The topic's name, when the command was given the engine's config (`consume
    /// --config`); absent otherwise, so `log inspect`'s lines keep their fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    topic_name: Option<&'a str>,
    priority: &'static str,
    timestamp: u64,
    value: Option<i64>,
}

impl<'a> HeaderJson<'a> {
    fn new(h: &EventHeader, topics: Option<&'a [String]>) -> Self {
        Self {
            id: h.id,
            topic: h.topic,
            topic_name: topics.and_then(|t| t.get(usize::from(h.topic)).map(String::as_str)),
            priority: h.priority.name(),
            timestamp: h.timestamp,
            value: h.value(),
        }
    }
}

/// Where an event came from, in a JSON line.
#[derive(Serialize)]
struct OriginJson {
    source: u32,
    seq: u64,
    index: u32,
    producer: u64,
    epoch: u32,
    resolved: u64,
}

impl OriginJson {
    fn new(o: &Origin) -> Self {
        Self {
            source: o.source,
            seq: o.seq,
            index: o.index,
            producer: o.producer,
            epoch: o.epoch,
            resolved: o.resolved(),
        }
    }
}

/// A record as one JSON object: where it is, then its decoded fields. serde_json writes the
/// fields in the order declared here, which `tests/logtool.rs` pins line by line.
#[derive(Serialize)]
struct RecordJson<'a> {
    log: &'a str,
    offset: u64,
    kind: &'static str,
    #[serde(flatten)]
    body: BodyJson<'a>,
}

/// The decoded part of [`RecordJson`], by record kind.
#[derive(Serialize)]
#[serde(untagged)]
enum BodyJson<'a> {
    Event {
        #[serde(flatten)]
        header: HeaderJson<'a>,
        lane: &'static str,
        #[serde(flatten)]
        origin: OriginJson,
        received: u64,
        payload_len: usize,
        #[serde(flatten)]
        payload: PayloadJson<'a>,
    },
    Aggregate {
        topic: u16,
        window_start: u64,
        window_end: u64,
        count: u64,
        bytes: u64,
        values: u64,
        min: i64,
        max: i64,
        sum: i128,
    },
    DeadLetter {
        reason: &'static str,
        reason_code: u16,
        #[serde(flatten)]
        header: HeaderJson<'a>,
        #[serde(flatten)]
        origin: OriginJson,
        tick: u64,
        events: u32,
    },
    Undecodable {
        kind_code: u8,
        body_len: usize,
        error: String,
    },
}

/// How a JSON line shows an event's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadStyle {
    /// `payload_hex` always, `payload_utf8` (null when not UTF-8): the log tools, which
    /// show the bytes exactly.
    Hex,
    /// `payload` as a string when it is UTF-8, else `payload_base64`: `consume`, whose
    /// lines feed `publish` and other programs.
    Text,
}

/// An event's payload in a JSON line, by [`PayloadStyle`].
#[derive(Serialize)]
#[serde(untagged)]
enum PayloadJson<'a> {
    Hex {
        payload_hex: String,
        payload_utf8: Option<&'a str>,
    },
    Text {
        payload: &'a str,
    },
    Base64 {
        payload_base64: String,
    },
}

impl<'a> PayloadJson<'a> {
    fn new(payload: &'a [u8], style: PayloadStyle) -> Self {
        let utf8 = std::str::from_utf8(payload).ok();
        match (style, utf8) {
            (PayloadStyle::Hex, _) => PayloadJson::Hex {
                payload_hex: hex(payload),
                payload_utf8: utf8,
            },
            (PayloadStyle::Text, Some(text)) => PayloadJson::Text { payload: text },
            (PayloadStyle::Text, None) => PayloadJson::Base64 {
                payload_base64: base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    payload,
                ),
            },
        }
    }
}

fn json_record(
    log: &str,
    rec: &StoredRecord,
    decoded: &Result<RecordBody<'_>, RecordError>,
) -> String {
    let at = (rec.offset, rec.kind, rec.body.len());
    json_line(log, at, decoded, PayloadStyle::Hex, None)
}

/// A stored record (offset, kind and body, however it was read: from the files or from a
/// consumer subscription) as one JSON line: the one JSON rendering of stored records.
/// `topics` (the engine's `pipeline.topics`) adds `topic_name`.
pub(crate) fn json_record_line(
    log: &str,
    offset: u64,
    kind: u8,
    body: &[u8],
    style: PayloadStyle,
    topics: Option<&[String]>,
) -> String {
    let decoded = record::decode(kind, body);
    json_line(log, (offset, kind, body.len()), &decoded, style, topics)
}

/// `at`: the record's offset, kind and body length.
fn json_line(
    log: &str,
    (offset, kind, body_len): (u64, u8, usize),
    decoded: &Result<RecordBody<'_>, RecordError>,
    style: PayloadStyle,
    topics: Option<&[String]>,
) -> String {
    let body = match decoded {
        Ok(RecordBody::Event(e)) => BodyJson::Event {
            header: HeaderJson::new(&e.header, topics),
            lane: e.lane.name(),
            origin: OriginJson::new(&e.origin),
            received: e.received,
            payload_len: e.payload.len(),
            payload: PayloadJson::new(e.payload, style),
        },
        Ok(RecordBody::Aggregate(a)) => BodyJson::Aggregate {
            topic: a.topic,
            window_start: a.start,
            window_end: a.end,
            count: a.count,
            bytes: a.bytes,
            values: a.values,
            min: a.min,
            max: a.max,
            sum: a.sum,
        },
        Ok(RecordBody::DeadLetter(d)) => BodyJson::DeadLetter {
            reason: d.reason.name(),
            reason_code: d.reason.code(),
            header: HeaderJson::new(&d.header, topics),
            origin: OriginJson::new(&d.origin),
            tick: d.tick,
            events: d.events,
        },
        Err(e) => BodyJson::Undecodable {
            kind_code: kind,
            body_len,
            error: e.to_string(),
        },
    };
    let line = RecordJson {
        log,
        offset,
        kind: kind_name(kind),
        body,
    };
    to_json_line(&line)
}

/// `value` as one line of JSON.
pub(crate) fn to_json_line(value: &impl Serialize) -> String {
    // Only a map with non-string keys or a failing `Serialize` impl can fail; the report
    // structs here have neither.
    serde_json::to_string(value).expect("a report serialises to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        #[derive(Serialize)]
        struct Line<'a> {
            k: &'a str,
            n: i32,
            z: Option<u8>,
        }
        let line = to_json_line(&Line {
            k: "a\"b\\c\nd\u{1}é",
            n: -3,
            z: None,
        });
        assert_eq!(line, r#"{"k":"a\"b\\c\nd\u0001é","n":-3,"z":null}"#);
    }

    #[test]
    fn previews_text_or_hex() {
        assert_eq!(preview(b""), "-");
        assert_eq!(preview(b"hot"), "\"hot\"");
        assert_eq!(preview(&[0, 1, 0xff]), "0x0001ff");
        assert_eq!(preview(&[7u8; 20]), format!("0x{}...", "07".repeat(16)));
        let long = "x".repeat(40);
        assert_eq!(
            preview(long.as_bytes()),
            format!("\"{}\"...", "x".repeat(32))
        );
    }
}

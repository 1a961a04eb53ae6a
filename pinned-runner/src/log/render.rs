//! One record as a line of text or JSON, and writing lines to stdout.

use std::fmt::{self, Write as _};
use std::io::{self, Write};

use pinstream_core::event::{EventHeader, Origin, Priority};
use pinstream_host::admin::json_string;
use pinstream_host::storage::StoredRecord;
use pinstream_host::storage::record::{self, RecordBody, RecordError};

use crate::Failure;

/// A write to stdout that stops quietly when the reader went away (`| head`).
pub(super) enum Out {
    /// Written: go on.
    Go,
    /// The reader went away: stop quietly.
    Closed,
}

pub(super) fn emit(out: &mut impl Write, line: &str) -> Result<Out, Failure> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(Out::Go),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Out::Closed),
        Err(e) => Err(Failure::runtime(format!("cannot write to stdout: {e}"))),
    }
}

pub(super) fn flush(out: &mut impl Write) -> Result<Out, Failure> {
    match out.flush() {
        Ok(()) => Ok(Out::Go),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Out::Closed),
        Err(e) => Err(Failure::runtime(format!("cannot write to stdout: {e}"))),
    }
}

fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Medium => "medium",
        Priority::Low => "low",
        Priority::Batch => "batch",
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

/// A JSON object written by hand: keys are literals, strings are escaped.
pub(super) struct Json(String);

impl Json {
    pub(super) fn new() -> Self {
        Json(String::from("{"))
    }

    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        json_string(&mut self.0, k);
        self.0.push(':');
    }

    pub(super) fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        json_string(&mut self.0, v);
        self
    }

    pub(super) fn num(&mut self, k: &str, v: impl fmt::Display) -> &mut Self {
        self.key(k);
        let _ = write!(self.0, "{v}");
        self
    }

    /// `v` as it is: already JSON.
    pub(super) fn raw(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        self.0.push_str(v);
        self
    }

    pub(super) fn null(&mut self, k: &str) -> &mut Self {
        self.key(k);
        self.0.push_str("null");
        self
    }

    pub(super) fn finish(&mut self) -> String {
        self.0.push('}');
        std::mem::take(&mut self.0)
    }
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
                priority_name(h.priority),
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
            priority_name(d.header.priority),
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

fn json_record(
    log: &str,
    rec: &StoredRecord,
    decoded: &Result<RecordBody<'_>, RecordError>,
) -> String {
    let mut j = Json::new();
    j.str("log", log)
        .num("offset", rec.offset)
        .str("kind", kind_name(rec.kind));
    let header = |j: &mut Json, h: &EventHeader| {
        j.num("id", h.id)
            .num("topic", h.topic)
            .str("priority", priority_name(h.priority))
            .num("timestamp", h.timestamp);
        match h.value() {
            Some(v) => j.num("value", v),
            None => j.null("value"),
        };
    };
    match decoded {
        Ok(RecordBody::Event(e)) => {
            header(&mut j, &e.header);
            j.str("lane", e.lane.name())
                .num("source", e.origin.source)
                .num("seq", e.origin.seq)
                .num("index", e.origin.index)
                .num("producer", e.origin.producer)
                .num("epoch", e.origin.epoch)
                .num("resolved", e.origin.resolved())
                .num("received", e.received)
                .num("payload_len", e.payload.len())
                .str("payload_hex", &hex(e.payload));
            match std::str::from_utf8(e.payload) {
                Ok(s) => j.str("payload_utf8", s),
                Err(_) => j.null("payload_utf8"),
            };
        }
        Ok(RecordBody::Aggregate(a)) => {
            j.num("topic", a.topic)
                .num("window_start", a.start)
                .num("window_end", a.end)
                .num("count", a.count)
                .num("bytes", a.bytes)
                .num("values", a.values)
                .num("min", a.min)
                .num("max", a.max)
                .num("sum", a.sum);
        }
        Ok(RecordBody::DeadLetter(d)) => {
            j.str("reason", d.reason.name())
                .num("reason_code", d.reason.code());
            header(&mut j, &d.header);
            j.num("source", d.origin.source)
                .num("seq", d.origin.seq)
                .num("index", d.origin.index)
                .num("producer", d.origin.producer)
                .num("epoch", d.origin.epoch)
                .num("resolved", d.origin.resolved())
                .num("tick", d.tick)
                .num("events", d.events);
        }
        Err(e) => {
            j.num("kind_code", rec.kind)
                .num("body_len", rec.body.len())
                .str("error", &e.to_string());
        }
    }
    j.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é\"");
        let line = Json::new().str("k", "v").num("n", -3).null("z").finish();
        assert_eq!(line, r#"{"k":"v","n":-3,"z":null}"#);
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

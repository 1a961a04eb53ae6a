//! `docs/PROTOCOL.md` against the implementation: parses every test vector on the page,
//! decodes it with `pinstream_core::wire`, checks the fields or the error it states, and
//! re-encodes the valid ones from the stated fields to the identical bytes. Also checks the
//! page's reason-code table against the registry and its reference CRC against `crc32c`.

use std::collections::HashSet;
use std::path::Path;

use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::reason::Reason;
use pinstream_core::record::{self, RECORD_HEADER_LEN};
use pinstream_core::wire::{
    self, Ack, BatchEncoder, DEFAULT_MAX_FRAME_LEN, DataPrefix, Frame, FrameKind, Hello, Reject,
    StreamDecoder, Subscribe, Subscribed,
};

/// One ```` ```vector ```` block.
#[derive(Debug, Default)]
struct Vector {
    name: String,
    /// `None` for `expect: ok`, the `DecodeError` variant's name otherwise.
    error: Option<String>,
    reason: Option<u16>,
    kind: Option<String>,
    seq: Option<u64>,
    events: Vec<(EventHeader, Vec<u8>)>,
    ack: Option<Ack>,
    /// The ACK is of version 2 (the vector states `duplicates`).
    ack_v2: bool,
    reject: Option<Reject>,
    hello: Option<Hello>,
    /// The HELLO's authentication token (`token`, hex), if it carries one.
    token: Option<Vec<u8>>,
    /// log, start, start_value, credit, name.
    subscribe: Option<(u8, u8, u64, u64, Vec<u8>)>,
    subscribed: Option<Subscribed>,
    data: Option<DataPrefix>,
    /// The stored records of a DATA frame: offset, kind, body.
    records: Vec<(u64, u8, Vec<u8>)>,
    credit: Option<u64>,
    commit: Option<u64>,
    committed: Option<u64>,
    bytes: Vec<u8>,
}

fn page() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {s:?}");
    digits
        .chunks(2)
        .map(|pair| {
            u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16)
                .unwrap_or_else(|e| panic!("bad hex {pair:?}: {e}"))
        })
        .collect()
}

/// `key=value` pairs of a line like `ack: through_seq=3 stored=3`.
fn fields(s: &str) -> Vec<(&str, &str)> {
    s.split_whitespace()
        .map(|kv| {
            kv.split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {kv}"))
        })
        .collect()
}

/// The field `key`, or 0 when the vector does not state it (fields of version 2).
fn opt_num<T: std::str::FromStr + Default>(fields: &[(&str, &str)], key: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    if fields.iter().any(|(k, _)| *k == key) {
        num(fields, key)
    } else {
        T::default()
    }
}

fn num<T: std::str::FromStr>(fields: &[(&str, &str)], key: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    let v = fields
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("missing {key}"))
        .1;
    v.parse().unwrap_or_else(|e| panic!("{key}={v}: {e:?}"))
}

fn parse_event(s: &str) -> (EventHeader, Vec<u8>) {
    let f = fields(s);
    let priority = Priority::from_u8(num(&f, "priority")).expect("priority 0..=4");
    let mut h = EventHeader::new(
        num(&f, "id"),
        num(&f, "topic"),
        priority,
        num(&f, "timestamp"),
    );
    let value: String = num(&f, "value");
    if value != "none" {
        h = h.with_value(value.parse().unwrap());
    }
    let payload: String = num(&f, "payload");
    let payload = if payload == "-" {
        Vec::new()
    } else {
        unhex(&payload)
    };
    (h, payload)
}

fn parse_vectors(page: &str) -> Vec<Vector> {
    let mut out = Vec::new();
    let mut current: Option<Vector> = None;
    for line in page.lines() {
        let trimmed = line.trim();
        match (&mut current, trimmed) {
            (None, "```vector") => current = Some(Vector::default()),
            (None, _) => {}
            (Some(_), "```") => out.push(current.take().unwrap()),
            (Some(v), _) => {
                let content = trimmed.split('#').next().unwrap().trim();
                if content.is_empty() {
                    continue;
                }
                let (key, value) = content
                    .split_once(':')
                    .unwrap_or_else(|| panic!("not `key: value`: {line}"));
                let value = value.trim();
                match key {
                    "name" => v.name = value.to_string(),
                    "expect" => {
                        v.error = match value {
                            "ok" => None,
                            e => Some(
                                e.strip_prefix("error ")
                                    .unwrap_or_else(|| panic!("expect: {e}"))
                                    .to_string(),
                            ),
                        }
                    }
                    "reason" => v.reason = Some(value.parse().unwrap()),
                    "kind" => v.kind = Some(value.to_string()),
                    "seq" => v.seq = Some(value.parse().unwrap()),
                    "event" => v.events.push(parse_event(value)),
                    "ack" => {
                        let f = fields(value);
                        // A vector that states `duplicates` is a version-2 ACK.
                        v.ack_v2 = f.iter().any(|(k, _)| *k == "duplicates");
                        v.ack = Some(Ack {
                            through_seq: num(&f, "through_seq"),
                            stored: num(&f, "stored"),
                            dead_lettered: num(&f, "dead_lettered"),
                            rejected: num(&f, "rejected"),
                            duplicates: opt_num(&f, "duplicates"),
                        });
                    }
                    "reject" => {
                        let f = fields(value);
                        v.reject = Some(Reject {
                            frame_seq: num(&f, "frame_seq"),
                            reason: num(&f, "reason"),
                            index: num(&f, "index"),
                            event_id: num(&f, "event_id"),
                        });
                    }
                    "hello" => {
                        let f = fields(value);
                        v.hello = Some(Hello {
                            min_version: num(&f, "min_version"),
                            max_version: num(&f, "max_version"),
                            max_frame_len: num(&f, "max_frame_len"),
                            source: num(&f, "source"),
                            producer_id: opt_num(&f, "producer_id"),
                            last_seq: opt_num(&f, "last_seq"),
                            max_payload: opt_num(&f, "max_payload"),
                            dedup_window_ms: opt_num(&f, "dedup_window_ms"),
                        });
                        v.token = f.iter().find(|(k, _)| *k == "token").map(|(_, t)| unhex(t));
                    }
                    "subscribe" => {
                        let f = fields(value);
                        let name = match f.iter().find(|(k, _)| *k == "name") {
                            Some((_, "-")) | None => Vec::new(),
                            Some((_, n)) => n.as_bytes().to_vec(),
                        };
                        v.subscribe = Some((
                            num(&f, "log"),
                            num(&f, "start"),
                            num(&f, "start_value"),
                            num(&f, "credit"),
                            name,
                        ));
                    }
                    "subscribed" => {
                        let f = fields(value);
                        v.subscribed = Some(Subscribed {
                            start_offset: num(&f, "start_offset"),
                            first_offset: num(&f, "first_offset"),
                            high_watermark: num(&f, "high_watermark"),
                            committed: num(&f, "committed"),
                        });
                    }
                    "data" => {
                        let f = fields(value);
                        v.data = Some(DataPrefix {
                            first_offset: num(&f, "first_offset"),
                            end_offset: num(&f, "end_offset"),
                            high_watermark: num(&f, "high_watermark"),
                            // Filled in from the records once they are all read.
                            records_len: 0,
                            log: num(&f, "log"),
                        });
                    }
                    "record" => {
                        let f = fields(value);
                        let body = f.iter().find(|(k, _)| *k == "body").expect("body").1;
                        v.records
                            .push((num(&f, "offset"), num(&f, "kind"), unhex(body)));
                    }
                    "credit" => v.credit = Some(value.parse().unwrap()),
                    "commit" => v.commit = Some(value.parse().unwrap()),
                    "committed" => v.committed = Some(value.parse().unwrap()),
                    "hex" => v.bytes.extend(unhex(value)),
                    other => panic!("unknown key {other:?} in vector {:?}", v.name),
                }
            }
        }
    }
    assert!(current.is_none(), "unterminated vector block");
    for v in &mut out {
        let len: usize = v
            .records
            .iter()
            .map(|r| RECORD_HEADER_LEN + r.2.len())
            .sum();
        if let Some(d) = &mut v.data {
            d.records_len = u32::try_from(len).unwrap();
        }
    }
    out
}

/// The stored records of a vector, sealed, back to back.
fn stored_records(v: &Vector) -> Vec<u8> {
    let mut out = Vec::new();
    for (offset, kind, body) in &v.records {
        let at = out.len();
        out.resize(at + RECORD_HEADER_LEN, 0);
        out.extend_from_slice(body);
        record::seal(&mut out[at..], *offset, *kind);
    }
    out
}

/// The frame the vector's stated fields encode to.
fn encode(v: &Vector) -> Vec<u8> {
    let mut buf = vec![0u8; DEFAULT_MAX_FRAME_LEN];
    let seq = v.seq.expect("seq");
    let n = match v.kind.as_deref().expect("kind") {
        "EVENT" => {
            assert_eq!(v.events.len(), 1);
            let (h, p) = &v.events[0];
            wire::encode_event(&mut buf, seq, h, p).unwrap()
        }
        "BATCH" => {
            let mut b = BatchEncoder::new(&mut buf, seq).unwrap();
            for (h, p) in &v.events {
                b.push(h, p).unwrap();
            }
            b.finish().unwrap()
        }
        "ACK" if v.ack_v2 => wire::encode_ack_v2(&mut buf, seq, &v.ack.unwrap()).unwrap(),
        "ACK" => wire::encode_ack(&mut buf, seq, &v.ack.unwrap()).unwrap(),
        "REJECT" => wire::encode_reject(&mut buf, seq, &v.reject.unwrap()).unwrap(),
        "HELLO" => match &v.token {
            Some(t) => wire::encode_hello_token(&mut buf, seq, &v.hello.unwrap(), t).unwrap(),
            None => wire::encode_hello(&mut buf, seq, &v.hello.unwrap()).unwrap(),
        },
        "SUBSCRIBE" => {
            let (log, start, start_value, credit, name) = v.subscribe.clone().unwrap();
            let sub = Subscribe {
                log,
                start,
                start_value,
                credit,
                name: &name,
            };
            wire::encode_subscribe(&mut buf, seq, &sub).unwrap()
        }
        "SUBSCRIBED" => wire::encode_subscribed(&mut buf, seq, &v.subscribed.unwrap()).unwrap(),
        "DATA" => wire::encode_data(&mut buf, seq, &v.data.unwrap(), &stored_records(v)).unwrap(),
        "CREDIT" => wire::encode_credit(&mut buf, seq, v.credit.unwrap()).unwrap(),
        "COMMIT" => wire::encode_commit(&mut buf, seq, v.commit.unwrap()).unwrap(),
        "COMMITTED" => wire::encode_committed(&mut buf, seq, v.committed.unwrap()).unwrap(),
        k => panic!("unknown kind {k}"),
    };
    buf.truncate(n);
    buf
}

fn check_valid(v: &Vector) {
    let frame = Frame::new_checked(&v.bytes, DEFAULT_MAX_FRAME_LEN)
        .unwrap_or_else(|e| panic!("{}: {e:?}", v.name));
    assert_eq!(Some(frame.kind().name()), v.kind.as_deref(), "{}", v.name);
    assert_eq!(Some(frame.seq()), v.seq, "{}", v.name);
    let events: Vec<_> = frame
        .events()
        .map(|e| (e.header(), e.payload().to_vec()))
        .collect();
    assert_eq!(events, v.events, "{}", v.name);
    assert_eq!(frame.event_count() as usize, v.events.len(), "{}", v.name);
    assert_eq!(frame.ack(), v.ack, "{}", v.name);
    assert_eq!(frame.reject(), v.reject, "{}", v.name);
    assert_eq!(frame.hello(), v.hello, "{}", v.name);
    assert_eq!(
        frame.hello_token().map(<[u8]>::to_vec),
        v.token,
        "{}",
        v.name
    );
    let sub = frame
        .subscribe()
        .map(|s| (s.log, s.start, s.start_value, s.credit, s.name.to_vec()));
    assert_eq!(sub, v.subscribe, "{}", v.name);
    assert_eq!(frame.subscribed(), v.subscribed, "{}", v.name);
    assert_eq!(frame.data(), v.data, "{}", v.name);
    let records: Vec<_> = frame
        .records()
        .map(|r| (r.offset(), r.kind(), r.body().to_vec()))
        .collect();
    assert_eq!(records, v.records, "{}", v.name);
    assert_eq!(frame.credit(), v.credit, "{}", v.name);
    assert_eq!(frame.commit(), v.commit, "{}", v.name);
    assert_eq!(frame.committed(), v.committed, "{}", v.name);
    assert_eq!(encode(v), v.bytes, "{}: re-encoding differs", v.name);

    // The same through the datagram iterator and a stream fed byte by byte.
    let all: Vec<_> = wire::frames(&v.bytes, DEFAULT_MAX_FRAME_LEN).collect();
    assert_eq!(all, [Ok(frame)], "{}", v.name);
    let mut decoder: Box<StreamDecoder<DEFAULT_MAX_FRAME_LEN>> = Box::default();
    let mut seen = Vec::new();
    for b in v.bytes.chunks(1) {
        decoder.feed(b, |r| seen.push(r.map(|f| f.as_bytes().to_vec())));
    }
    assert_eq!(seen, [Ok(v.bytes.clone())], "{}", v.name);
}

fn check_invalid(v: &Vector, expected: &str) {
    let err = Frame::new_checked(&v.bytes, DEFAULT_MAX_FRAME_LEN)
        .err()
        .unwrap_or_else(|| panic!("{}: decoded, expected {expected}", v.name));
    assert_eq!(format!("{err:?}"), expected, "{}", v.name);
    assert_eq!(Some(err.reason().code()), v.reason, "{}", v.name);
    let first = wire::frames(&v.bytes, DEFAULT_MAX_FRAME_LEN).next();
    assert_eq!(first, Some(Err(err)), "{}", v.name);
    // A stream reports it too, except a truncated frame: the stream waits for the rest.
    let mut decoder: Box<StreamDecoder<DEFAULT_MAX_FRAME_LEN>> = Box::default();
    let mut seen = Vec::new();
    decoder.feed(&v.bytes, |r| seen.push(r.map(|f| f.seq())));
    if expected == "TooShort" {
        assert!(seen.is_empty(), "{}", v.name);
        assert_eq!(decoder.buffered(), v.bytes.len());
    } else {
        assert_eq!(seen, [Err(err)], "{}", v.name);
    }
}

#[test]
fn every_vector_in_protocol_md_holds() {
    let vectors = parse_vectors(&page());
    let mut names = HashSet::new();
    let mut kinds = HashSet::new();
    let mut invalid = 0;
    for v in &vectors {
        assert!(names.insert(v.name.clone()), "duplicate name {}", v.name);
        assert!(!v.bytes.is_empty(), "{}: no hex", v.name);
        match &v.error {
            None => {
                check_valid(v);
                kinds.insert(v.kind.clone().unwrap());
            }
            Some(e) => {
                check_invalid(v, e);
                invalid += 1;
            }
        }
    }
    for k in FrameKind::ALL {
        assert!(kinds.contains(k.name()), "no valid {} vector", k.name());
    }
    assert!(invalid >= 4, "only {invalid} invalid vectors");
    let with_value = vectors.iter().flat_map(|v| &v.events);
    assert!(with_value.clone().any(|(h, _)| h.value().is_some()));
    assert!(with_value.clone().any(|(h, _)| h.value().is_none()));
    assert!(
        vectors
            .iter()
            .any(|v| v.kind.as_deref() == Some("BATCH") && v.events.len() == 2)
    );
}

/// The page's bitwise reference CRC (section 1), in Rust.
fn reference_crc32c(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    crc ^ 0xFFFF_FFFF
}

#[test]
fn reference_crc_on_the_page_matches_the_implementation() {
    let page = page();
    assert!(page.contains("`0xE3069283`"));
    assert_eq!(reference_crc32c(b"123456789"), 0xE306_9283);
    for v in parse_vectors(&page) {
        assert_eq!(
            reference_crc32c(&v.bytes),
            wire::crc32c(&v.bytes),
            "{}",
            v.name
        );
    }
    let data: Vec<u8> = (0..2000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    for len in [0, 1, 7, 8, 9, 100, 767, 768, 769, 2000] {
        assert_eq!(
            reference_crc32c(&data[..len]),
            wire::crc32c(&data[..len]),
            "len {len}"
        );
    }
}

#[test]
fn reason_table_on_the_page_matches_the_registry() {
    let page = page();
    let mut listed = HashSet::new();
    for line in page.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | code | `name` | kind | meaning | what the receiver does |
        if cells.len() < 5 {
            continue;
        }
        let (Ok(code), Some(name)) = (
            cells[1].parse::<u16>(),
            cells[2].strip_prefix('`').and_then(|n| n.strip_suffix('`')),
        ) else {
            continue;
        };
        let kind = cells[3];
        if !kind.starts_with("rejection")
            && !kind.starts_with("dead letter")
            && !kind.starts_with("duplicate")
        {
            continue;
        }
        let reason = Reason::from_code(code).unwrap_or_else(|| panic!("code {code} unknown"));
        assert_eq!(reason.name(), name, "code {code}");
        assert_eq!(reason.is_rejection(), kind == "rejection", "code {code}");
        assert_eq!(
            reason.is_duplicate(),
            kind.starts_with("duplicate"),
            "code {code}"
        );
        assert!(listed.insert(code), "code {code} listed twice");
    }
    for r in Reason::ALL {
        assert!(
            listed.contains(&r.code()),
            "{} ({}) missing from the page",
            r.name(),
            r.code()
        );
    }
}

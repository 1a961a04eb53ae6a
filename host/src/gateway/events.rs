//! The request body as events: one JSON object, a JSON array of them, or NDJSON (one object
//! per line). Fields as `pinstream publish` takes them: `id`, `topic` (a name of
//! `pipeline.topics` or a number), `priority` (`critical`, `high`, `medium`, `low`, `batch`),
//! `value`, `timestamp` (nanoseconds since the Unix epoch), `payload` (a string) or
//! `payload_base64`. An unknown field is an error, so a misspelt one is not silently
//! dropped. Each field is parsed on its own so that an error names it, with the line (NDJSON)
//! or the index (array) of its event.
//!
//! Nesting is bounded by serde_json's recursion limit (128): a deeply nested body is a `400`,
//! not a stack overflow. The body's size is bounded before it is read (`http.max_body_bytes`).

use std::borrow::Cow;

use pinstream_core::event::{EventHeader, Priority};
use serde::Deserialize;
use serde_json::value::RawValue;

/// One event, ready to encode (`id` 0: the gateway gives it one).
#[derive(Debug)]
pub(crate) struct HttpEvent<'b> {
    pub(crate) header: EventHeader,
    pub(crate) payload: Cow<'b, [u8]>,
    /// The id was given by the client.
    pub(crate) id_given: bool,
}

/// Why a body is not events: where, and what.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadEvent {
    /// `"line 3"`, `"index 2"` or `"body"`.
    pub(crate) at: String,
    /// The field at fault, when one is.
    pub(crate) field: Option<&'static str>,
    pub(crate) message: String,
}

/// The shape of a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// `application/x-ndjson` (or `application/jsonlines`).
    Ndjson,
    /// Anything else: one JSON object or an array of them.
    Json,
}

/// One event's fields, each kept raw until it is parsed on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow)]
    priority: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    payload_base64: Option<&'a RawValue>,
}

/// One event's fields, typed: the fast path. A body that does not fit it is parsed again
/// field by field ([`RawEvent`]) to say which field is wrong.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedEvent<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    topic: Option<TopicRef<'a>>,
    #[serde(borrow)]
    priority: Option<Cow<'a, str>>,
    value: Option<i64>,
    timestamp: Option<u64>,
    #[serde(borrow)]
    payload: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payload_base64: Option<Cow<'a, str>>,
}

/// A topic written as a name or an id.
#[derive(Deserialize)]
#[serde(untagged)]
enum TopicRef<'a> {
    Id(u64),
    Name(Cow<'a, str>),
}

/// What every event is parsed against.
pub(crate) struct EventRules<'t> {
    /// `pipeline.topics`, by id.
    pub(crate) topics: &'t [String],
    /// The timestamp of events that give none.
    pub(crate) now_wall: u64,
    /// Events at most.
    pub(crate) max_events: usize,
}

/// Parses a body into events.
///
/// # Errors
/// The first bad event (where and which field), or too many events (`Err` with `at` =
/// `"body"` and `field` = `None`, `message` starting with `"more than"`).
pub(crate) fn parse<'b>(
    body: &'b [u8],
    kind: BodyKind,
    rules: &EventRules<'_>,
) -> Result<Vec<HttpEvent<'b>>, BadEvent> {
    let text = std::str::from_utf8(body).map_err(|e| BadEvent {
        at: "body".into(),
        field: None,
        message: format!("not UTF-8: {e}"),
    })?;
    let mut out = Vec::new();
    let too_many = |n: usize| BadEvent {
        at: "body".into(),
        field: None,
        message: format!("more than {n} events (http.max_events_per_request)"),
    };
    match kind {
        BodyKind::Ndjson => {
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if out.len() == rules.max_events {
                    return Err(too_many(rules.max_events));
                }
                out.push(one(line, rules, || format!("line {}", i + 1))?);
            }
        }
        BodyKind::Json => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('[') {
                let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| BadEvent {
                    at: "body".into(),
                    field: None,
                    message: format!("not a JSON array of events: {e}"),
                })?;
                if items.len() > rules.max_events {
                    return Err(too_many(rules.max_events));
                }
                out.reserve(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(one(item.get(), rules, || format!("index {i}"))?);
                }
            } else {
                out.push(one(text, rules, || "body".to_owned())?);
            }
        }
    }
    if out.is_empty() {
        return Err(BadEvent {
            at: "body".into(),
            field: None,
            message: "no event".into(),
        });
    }
    Ok(out)
}

/// One event from its JSON text.
fn one<'b>(
    text: &'b str,
    rules: &EventRules<'_>,
    at: impl Fn() -> String,
) -> Result<HttpEvent<'b>, BadEvent> {
    let bad = |field: Option<&'static str>, message: String| BadEvent {
        at: at(),
        field,
        message,
    };
    if let Ok(t) = serde_json::from_str::<TypedEvent<'b>>(text) {
        return build(t, rules, &bad);
    }
    let raw: RawEvent<'b> = serde_json::from_str(text).map_err(|e| {
        // serde names an unknown field in its message; say which one.
        let msg = e.to_string();
        bad(None, format!("not a JSON event object: {msg}"))
    })?;
    fn field<'de, T: Deserialize<'de>>(
        raw: Option<&'de RawValue>,
        name: &'static str,
        bad: &dyn Fn(Option<&'static str>, String) -> BadEvent,
        what: &str,
    ) -> Result<Option<T>, BadEvent> {
        match raw {
            None => Ok(None),
            Some(r) if r.get() == "null" => Ok(None),
            Some(r) => serde_json::from_str(r.get()).map(Some).map_err(|_| {
                bad(
                    Some(name),
                    format!("{name}: expected {what}, got {}", r.get()),
                )
            }),
        }
    }
    let typed = TypedEvent {
        id: field(raw.id, "id", &bad, "an unsigned 64-bit integer")?,
        topic: field(raw.topic, "topic", &bad, "a topic name or id")?,
        priority: field(raw.priority, "priority", &bad, "a string")?,
        value: field(raw.value, "value", &bad, "a signed 64-bit integer")?,
        timestamp: field(
            raw.timestamp,
            "timestamp",
            &bad,
            "nanoseconds since the epoch",
        )?,
        payload: field(raw.payload, "payload", &bad, "a string")?,
        payload_base64: field(
            raw.payload_base64,
            "payload_base64",
            &bad,
            "a base64 string",
        )?,
    };
    build(typed, rules, &bad)
}

/// An event from its typed fields: ids, topics, priorities and payloads checked.
fn build<'b>(
    t: TypedEvent<'b>,
    rules: &EventRules<'_>,
    bad: &dyn Fn(Option<&'static str>, String) -> BadEvent,
) -> Result<HttpEvent<'b>, BadEvent> {
    let id = t.id;
    if id == Some(0) {
        return Err(bad(
            Some("id"),
            "id: 0 is kept for generated ids; leave id out instead".into(),
        ));
    }
    let topic = match t.topic {
        None => 0,
        Some(TopicRef::Id(n)) => match u16::try_from(n) {
            Ok(t) if usize::from(t) < rules.topics.len() => t,
            _ => return Err(bad(Some("topic"), format!("topic: no topic has id {n}"))),
        },
        Some(TopicRef::Name(name)) => rules
            .topics
            .iter()
            .position(|t| *t == name)
            .and_then(|i| u16::try_from(i).ok())
            .ok_or_else(|| {
                bad(
                    Some("topic"),
                    format!(
                        "topic: unknown topic {name:?} (pipeline.topics: {})",
                        rules.topics.join(", ")
                    ),
                )
            })?,
    };
    let priority = match t.priority {
        None => Priority::Medium,
        Some(p) => Priority::from_name(&p).ok_or_else(|| {
            bad(
                Some("priority"),
                format!("priority: unknown {p:?}: critical, high, medium, low or batch"),
            )
        })?,
    };
    let payload: Cow<'b, [u8]> = match (t.payload, t.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(bad(
                Some("payload_base64"),
                "both payload and payload_base64: give one".into(),
            ));
        }
        (Some(Cow::Borrowed(s)), None) => Cow::Borrowed(s.as_bytes()),
        (Some(Cow::Owned(s)), None) => Cow::Owned(s.into_bytes()),
        (None, Some(b)) => Cow::Owned(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.as_bytes())
                .map_err(|e| bad(Some("payload_base64"), format!("payload_base64: {e}")))?,
        ),
        (None, None) => Cow::Borrowed(&[]),
    };
    if payload.len() > pinstream_core::wire::MAX_PAYLOAD_LEN {
        return Err(bad(
            Some("payload"),
            format!(
                "payload: {} bytes, at most {}",
                payload.len(),
                pinstream_core::wire::MAX_PAYLOAD_LEN
            ),
        ));
    }
    let mut header = EventHeader::new(
        id.unwrap_or(0),
        topic,
        priority,
        t.timestamp.unwrap_or(rules.now_wall),
    );
    if let Some(v) = t.value {
        header = header.with_value(v);
    }
    Ok(HttpEvent {
        header,
        payload,
        id_given: id.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(topics: &[String]) -> EventRules<'_> {
        EventRules {
            topics,
            now_wall: 42,
            max_events: 3,
        }
    }

    #[test]
    fn the_three_shapes_parse_and_errors_name_field_and_place() {
        let topics = vec!["default".to_owned(), "m".to_owned()];
        let r = rules(&topics);
        let one = parse(
            br#"{"topic":"m","id":5,"payload":"hi"}"#,
            BodyKind::Json,
            &r,
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].header.topic, 1);
        assert_eq!(&*one[0].payload, b"hi");
        let arr = parse(
            br#"[{"payload_base64":"AAE="},{"priority":"high","value":-3}]"#,
            BodyKind::Json,
            &r,
        )
        .unwrap();
        assert_eq!(&*arr[0].payload, &[0, 1]);
        assert_eq!(arr[1].header.value(), Some(-3));
        assert_eq!(arr[0].header.timestamp, 42);
        let nd = parse(b"{\"id\":1}\n\n{\"id\":2}\n", BodyKind::Ndjson, &r).unwrap();
        assert_eq!(nd.len(), 2);

        let e = parse(
            b"{\"id\":1}\n{\"priority\":\"urgent\"}",
            BodyKind::Ndjson,
            &r,
        )
        .unwrap_err();
        assert_eq!((e.at.as_str(), e.field), ("line 2", Some("priority")));
        let e = parse(br#"[{"id":1},{"value":"x"}]"#, BodyKind::Json, &r).unwrap_err();
        assert_eq!((e.at.as_str(), e.field), ("index 1", Some("value")));
        let e = parse(br#"{"topik":"m"}"#, BodyKind::Json, &r).unwrap_err();
        assert!(e.message.contains("topik"), "{}", e.message);
        let e = parse(br#"{"topic":"nope"}"#, BodyKind::Json, &r).unwrap_err();
        assert_eq!(e.field, Some("topic"));
        let e = parse(b"[{},{},{},{}]", BodyKind::Json, &r).unwrap_err();
        assert!(e.message.starts_with("more than 3"));
        // Deep nesting: refused by serde_json's recursion limit, not a crash.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes(), BodyKind::Json, &r).is_err());
    }
}

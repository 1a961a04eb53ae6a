//! Stored record → JetStream message: subject from the template, `Nats-Msg-Id` from the
//! record's offset, the event's payload as the payload and its other fields as headers.
//!
//! **The message id is `{source}-{log}-{offset}`.** A record's offset in its log never changes:
//! not across bridge restarts, not across engine restarts (recovery keeps every acknowledged
//! record at its offset), so a record sent again after a crash carries the id it had the
//! first time and JetStream's duplicate window drops it. The event's own id or its producer
//! and sequence would not do: two producers may use the same event id, and an engine outside
//! its dedup window stores a resent event again under a new offset — two stored records,
//! which the stream should hold twice, as the engine does. `source` tells the engines that feed
//! one stream apart.

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use bytes::Bytes;
use pinstream_core::event::EventHeader;
use pinstream_core::lanes::DeadLetter;
use pinstream_core::process::Aggregate;
use pinstream_core::record::{RecordBody, RecordError, RecordView};
use pinstream_core::wire::StreamLog;

/// Header names, defined once (the tests and the resume scan read them back).
pub mod header {
    /// The engine the record comes from (the bridge's `source`).
    pub const SOURCE: &str = "Pinstream-Source";
    /// The log's name.
    pub const LOG: &str = "Pinstream-Log";
    /// The record's offset in its log.
    pub const OFFSET: &str = "Pinstream-Offset";
    /// The record kind (`docs/PROTOCOL.md` §12): 1 event, 2 dead letter, 3 aggregate, 4/5
    /// with a producer.
    pub const KIND: &str = "Pinstream-Kind";
    /// The event's id.
    pub const ID: &str = "Pinstream-Id";
    /// The topic id.
    pub const TOPIC: &str = "Pinstream-Topic";
    /// The priority code.
    pub const PRIORITY: &str = "Pinstream-Priority";
    /// The producer's timestamp.
    pub const TIMESTAMP: &str = "Pinstream-Timestamp";
    /// The event's value, when it has one.
    pub const VALUE: &str = "Pinstream-Value";
    /// The engine's reception time, ns since the Unix epoch.
    pub const RECEIVED: &str = "Pinstream-Received";
    /// A dead letter's reason name.
    pub const REASON: &str = "Pinstream-Reason";
    /// An aggregate's fields: `count bytes values min max sum start end`, space separated.
    pub const AGGREGATE: &str = "Pinstream-Aggregate";
}

/// The header names as [`HeaderName`]s made once: `HeaderMap::insert` with a `&str` checks
/// and copies the name for every message.
mod name {
    use async_nats::HeaderName;

    use super::header;

    pub const SOURCE: HeaderName = HeaderName::from_static(header::SOURCE);
    pub const LOG: HeaderName = HeaderName::from_static(header::LOG);
    pub const OFFSET: HeaderName = HeaderName::from_static(header::OFFSET);
    pub const KIND: HeaderName = HeaderName::from_static(header::KIND);
    pub const ID: HeaderName = HeaderName::from_static(header::ID);
    pub const TOPIC: HeaderName = HeaderName::from_static(header::TOPIC);
    pub const PRIORITY: HeaderName = HeaderName::from_static(header::PRIORITY);
    pub const TIMESTAMP: HeaderName = HeaderName::from_static(header::TIMESTAMP);
    pub const VALUE: HeaderName = HeaderName::from_static(header::VALUE);
    pub const RECEIVED: HeaderName = HeaderName::from_static(header::RECEIVED);
    pub const REASON: HeaderName = HeaderName::from_static(header::REASON);
    pub const AGGREGATE: HeaderName = HeaderName::from_static(header::AGGREGATE);
}

/// A record ready to publish, kept until its PubAck: its decoded fields and its payload.
/// The subject and headers are made at each send ([`MessageMaker::subject`],
/// [`MessageMaker::headers`]) on the publisher's thread: the consumer thread only copies the
/// payload out of its receive buffer.
#[derive(Clone, Debug)]
pub struct OutMessage {
    /// The record's offset in its log.
    pub offset: u64,
    /// The record kind (`docs/PROTOCOL.md` §12).
    pub kind: u8,
    /// Its fields.
    pub body: OutBody,
    /// The event's payload (empty for dead letters and aggregates).
    pub payload: Bytes,
}

impl OutMessage {
    /// The topic id (of the event, the dead letter's event, the aggregate).
    pub fn topic(&self) -> u16 {
        match &self.body {
            OutBody::Event { header, .. } => header.topic,
            OutBody::DeadLetter(dl) => dl.header.topic,
            OutBody::Aggregate(a) => a.topic,
        }
    }
}

/// The fields of an [`OutMessage`], by record kind.
#[derive(Clone, Copy, Debug)]
pub enum OutBody {
    /// An event: its header and reception time.
    Event {
        /// The header.
        header: EventHeader,
        /// Reception, ns since the Unix epoch.
        received: u64,
    },
    /// A dead letter.
    DeadLetter(DeadLetter),
    /// An aggregate.
    Aggregate(Aggregate),
}

/// Makes [`OutMessage`]s for one bridge.
#[derive(Clone, Debug)]
pub struct MessageMaker {
    log: StreamLog,
    source: String,
    /// `{source}-{log}-`: every message id of this bridge starts so.
    id_prefix: String,
    template: String,
    topic_names: Vec<String>,
    fields: bool,
}

impl MessageMaker {
    /// For records of `log`, ids under `source`, subjects from `template` (placeholders
    /// `{log}`, `{topic}`, `{topic_name}`, `{source}`), topic names by id; the record's
    /// fields as headers when `fields`, else `Nats-Msg-Id` alone.
    pub fn new(
        log: StreamLog,
        source: &str,
        template: &str,
        topic_names: Vec<String>,
        fields: bool,
    ) -> Self {
        Self {
            log,
            source: source.to_owned(),
            id_prefix: format!("{source}-{}-", log.name()),
            template: template.to_owned(),
            topic_names,
            fields,
        }
    }

    /// The `Nats-Msg-Id` of the record at `offset`.
    pub fn msg_id(&self, offset: u64) -> String {
        format!("{}{offset}", self.id_prefix)
    }

    /// The offset a `Nats-Msg-Id` of this bridge names; `None` for another source's or
    /// log's id. (Unambiguous: a log name is not a number, so `a-realtime-5` is never
    /// source `a-realtime`'s.)
    pub fn offset_in_id(&self, id: &str) -> Option<u64> {
        let digits = id.strip_prefix(&self.id_prefix)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The subject of a record of topic `topic`.
    pub fn subject_of(&self, topic: u16) -> String {
        let id = topic.to_string();
        let name = self
            .topic_names
            .get(usize::from(topic))
            .map_or(id.as_str(), String::as_str);
        self.template
            .replace("{log}", self.log.name())
            .replace("{topic}", &id)
            .replace("{topic_name}", name)
            .replace("{source}", &self.source)
    }

    /// The subject of `m`.
    pub fn subject(&self, m: &OutMessage) -> String {
        self.subject_of(m.topic())
    }

    /// The message for `rec`.
    ///
    /// # Errors
    /// A body that does not decode (the bridge stops rather than drop or mangle a record).
    pub fn make(&self, rec: &RecordView<'_>) -> Result<OutMessage, RecordError> {
        let (body, payload) = match rec.decode()? {
            RecordBody::Event(ev) => (
                OutBody::Event {
                    header: ev.header,
                    received: ev.received,
                },
                Bytes::copy_from_slice(ev.payload),
            ),
            RecordBody::DeadLetter(dl) => (OutBody::DeadLetter(dl), Bytes::new()),
            RecordBody::Aggregate(a) => (OutBody::Aggregate(a), Bytes::new()),
        };
        Ok(OutMessage {
            offset: rec.offset(),
            kind: rec.kind(),
            body,
            payload,
        })
    }

    /// The headers of `m`: `Nats-Msg-Id` and, with `fields`, the record's fields.
    pub fn headers(&self, m: &OutMessage) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(NATS_MESSAGE_ID, self.msg_id(m.offset));
        if !self.fields {
            return h;
        }
        h.insert(name::SOURCE, self.source.as_str());
        h.insert(name::LOG, self.log.name());
        h.insert(name::OFFSET, m.offset.to_string());
        h.insert(name::KIND, m.kind.to_string());
        let event = |h: &mut HeaderMap, e: &EventHeader| {
            h.insert(name::ID, e.id.to_string());
            h.insert(name::TOPIC, e.topic.to_string());
            h.insert(name::PRIORITY, e.priority.as_u8().to_string());
            h.insert(name::TIMESTAMP, e.timestamp.to_string());
            if let Some(v) = e.value() {
                h.insert(name::VALUE, v.to_string());
            }
        };
        match &m.body {
            OutBody::Event {
                header: e,
                received,
            } => {
                event(&mut h, e);
                h.insert(name::RECEIVED, received.to_string());
            }
            OutBody::DeadLetter(dl) => {
                event(&mut h, &dl.header);
                h.insert(name::REASON, dl.reason.name());
            }
            OutBody::Aggregate(a) => {
                h.insert(name::TOPIC, a.topic.to_string());
                h.insert(
                    name::AGGREGATE,
                    format!(
                        "{} {} {} {} {} {} {} {}",
                        a.count, a.bytes, a.values, a.min, a.max, a.sum, a.start, a.end
                    ),
                );
            }
        }
        h
    }
}

/// The offset a message of this bridge carries (its `Nats-Msg-Id`): `Some` only when its
/// source and log are this maker's (another engine's messages in the same stream are not
/// ours).
pub fn offset_of(maker: &MessageMaker, headers: Option<&HeaderMap>) -> Option<u64> {
    maker.offset_in_id(headers?.get(NATS_MESSAGE_ID)?.as_str())
}

#[cfg(test)]
mod tests {
    use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
    use pinstream_core::process::StoredEvent;
    use pinstream_core::record::{encode_event, seal};

    use super::*;

    #[test]
    fn an_event_becomes_a_message_with_a_stable_id_and_its_fields_as_headers() {
        let header = EventHeader {
            id: 42,
            topic: 1,
            priority: Priority::High,
            flags: pinstream_core::event::FLAG_HAS_VALUE,
            timestamp: 1000,
            raw_value: -7,
        };
        let ev = StoredEvent {
            lane: Lane::Realtime,
            header: &header,
            origin: Origin::default(),
            received: 5,
            payload: b"hello",
        };
        let mut rec = [0u8; 256];
        let body = encode_event(&mut rec[20..], &ev).unwrap();
        seal(&mut rec[..20 + body], 77, 1);
        let (view, _) = RecordView::new_checked(&rec[..20 + body], u32::MAX).unwrap();
        let maker = MessageMaker::new(
            StreamLog::Realtime,
            "edge1",
            "ps.{source}.{log}.{topic_name}.{topic}",
            vec!["default".into(), "orders".into()],
            true,
        );
        let m = maker.make(&view).unwrap();
        assert_eq!(m.offset, 77);
        assert_eq!(maker.subject(&m), "ps.edge1.realtime.orders.1");
        assert_eq!(&m.payload[..], b"hello");
        let h = &maker.headers(&m);
        assert_eq!(
            h.get(NATS_MESSAGE_ID).unwrap().as_str(),
            "edge1-realtime-77"
        );
        assert_eq!(h.get(header::ID).unwrap().as_str(), "42");
        assert_eq!(h.get(header::VALUE).unwrap().as_str(), "-7");
        assert_eq!(offset_of(&maker, Some(h)), Some(77));
        let other = MessageMaker::new(StreamLog::Realtime, "edge2", "x", vec![], true);
        assert_eq!(offset_of(&other, Some(h)), None);
        // A source whose name ends like a log's: its ids are not ours.
        let edge = MessageMaker::new(StreamLog::Realtime, "edge", "x", vec![], true);
        let longer = MessageMaker::new(StreamLog::Realtime, "edge-realtime", "x", vec![], true);
        assert_eq!(edge.offset_in_id(&longer.msg_id(5)), None);
        assert_eq!(longer.offset_in_id(&longer.msg_id(5)), Some(5));
        assert_eq!(edge.offset_in_id("edge-realtime-+5"), None);
        // `id`: the message id and nothing else.
        let bare = MessageMaker::new(StreamLog::Realtime, "edge1", "x", vec![], false);
        let h = bare.headers(&m);
        assert_eq!(h.len(), 1);
        assert_eq!(offset_of(&bare, Some(&h)), Some(77));
        // An unnamed topic uses its id.
        assert_eq!(maker.subject_of(9), "ps.edge1.realtime.9.9");
    }
}

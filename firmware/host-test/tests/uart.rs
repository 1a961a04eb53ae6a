//! The firmware under QEMU, driven over its UART from the host: every answer and the
//! device's counts are checked exactly, the accounting invariant among them
//! (`ingested == stored + duplicates + dead_lettered + rejected`).
//!
//! Each test boots its own QEMU (killed when the test ends, failed or not).

use std::io::Write as _;
use std::thread;

use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::reason::Reason;
use pinstream_core::wire::{Ack, WHOLE_FRAME, event_frame_len};
use pinstream_firmware_host_test::{
    Answer, Device, MAX_FRAME, Stats, batch_frame, firmware_elf, noise, stat, summary,
};

/// Bytes of a version-1 HELLO.
const HELLO_LEN: usize = 36;

fn ack(through_seq: u64, stored: u64, dead_lettered: u64, rejected: u64) -> Ack {
    Ack {
        through_seq,
        stored,
        dead_lettered,
        rejected,
        duplicates: 0,
    }
}

/// The books balance, nothing is in flight, the reasons add up to the classes, every
/// counter is there, and the stack stayed clear of the statics.
fn check_books(s: &Stats) {
    assert_eq!(
        s.0.len(),
        stat::COUNT + s.reasons().len(),
        "one entry per counter"
    );
    let (used, size) = (s.get(stat::STACK_USED), s.get(stat::STACK_SIZE));
    assert!(
        used > 0 && used < size,
        "stack: {used} of {size} bytes used"
    );
    let resolved = s.get(stat::STORED)
        + s.get(stat::DUPLICATES)
        + s.get(stat::DEAD_LETTERED)
        + s.get(stat::REJECTED);
    assert_eq!(s.get(stat::INGESTED), resolved, "the invariant: {s:?}");
    assert_eq!(s.get(stat::IN_FLIGHT), 0);
    let (mut rejected, mut dead, mut duplicates) = (0, 0, 0);
    for (code, n) in s.reasons() {
        let reason = Reason::from_code(code).expect("a known reason");
        if reason.is_rejection() {
            rejected += n;
        } else if reason.is_duplicate() {
            duplicates += n;
        } else {
            dead += n;
        }
    }
    assert_eq!(
        (rejected, dead, duplicates),
        (
            s.get(stat::REJECTED),
            s.get(stat::DEAD_LETTERED),
            s.get(stat::DUPLICATES)
        ),
        "per reason"
    );
}

#[test]
fn every_frame_is_answered_and_the_books_balance() {
    let mut dev = Device::boot(&firmware_elf());

    // A HELLO starts a session; one the device cannot speak is refused and changes nothing.
    match dev.hello(1, 2) {
        Answer::Hello(h) => {
            assert_eq!((h.min_version, h.max_version), (1, 1));
            assert_eq!((h.max_frame_len, h.source), (MAX_FRAME as u32, 1));
        }
        other => panic!("expected the HELLO reply, got {other:?}"),
    }
    match dev.hello(2, 3) {
        Answer::Reject(r) => {
            assert_eq!(r.reason(), Some(Reason::UnsupportedVersion));
            assert_eq!((r.frame_seq, r.index), (0, WHOLE_FRAME));
        }
        other => panic!("expected a REJECT, got {other:?}"),
    }

    // Every priority and topic; two of the 8 go to the batch lane (aggregated).
    let warm: Vec<_> = (0..8u64)
        .map(|k| {
            let h = EventHeader::new(1 + k, (k % 4) as u16, Priority::ALL[(k % 5) as usize], k)
                .with_value(k as i64);
            (h, 8)
        })
        .collect();
    let (frame, seq) = dev.batch(&warm);
    dev.send_bytes(&frame);
    assert_eq!(dev.ack(), ack(seq, 8, 0, 1));

    // Transactional events with payloads longer than a slot (the arena), then the same ids:
    // duplicates (a version-1 ACK counts them in `stored`).
    let medium: Vec<_> = (0..4u64)
        .map(|i| (EventHeader::new(100 + i, 1, Priority::Medium, i), 40))
        .collect();
    let (frame, seq) = dev.batch(&medium);
    dev.send_bytes(&frame);
    assert_eq!(dev.ack(), ack(seq, 12, 0, 1));
    let (frame, seq) = dev.batch(&medium);
    dev.send_bytes(&frame);
    assert_eq!(dev.ack(), ack(seq, 16, 0, 1));

    // Three events of an unregistered topic (dead letters) and a payload too large for a
    // slot and the arena (rejected, with its own REJECT before the ACK).
    let mut bad: Vec<_> = (0..3u64)
        .map(|i| (EventHeader::new(300 + i, 9, Priority::High, i), 4))
        .collect();
    bad.push((EventHeader::new(303, 1, Priority::High, 3), 600));
    let (frame, seq) = dev.batch(&bad);
    assert_eq!(frame.len(), MAX_FRAME, "the largest frame the device takes");
    dev.send_bytes(&frame);
    let r = dev.reject();
    assert_eq!(r.reason(), Some(Reason::PayloadTooLarge));
    assert_eq!((r.frame_seq, r.index, r.event_id), (seq, 3, 303));
    assert_eq!(dev.ack(), ack(seq, 16, 3, 2));

    // An alert (topic 0 above 1000), then the same seq again: refused whole.
    let hot = [(
        EventHeader::new(500, 0, Priority::Critical, 0).with_value(5000),
        0,
    )];
    let (frame, seq) = dev.batch(&hot);
    dev.send_bytes(&frame);
    assert_eq!(dev.ack(), ack(seq, 17, 3, 2));
    dev.send_bytes(&frame);
    let r = dev.reject();
    assert_eq!(r.reason(), Some(Reason::SeqNotIncreasing));
    assert_eq!((r.frame_seq, r.index), (seq, WHOLE_FRAME));

    let s = dev.stats();
    eprintln!("books: {}", summary(&s));
    check_books(&s);
    assert_eq!(s.get(stat::INGESTED), 8 + 4 + 4 + 4 + 1 + 2);
    assert_eq!(s.get(stat::STORED), 8 + 4 + 1);
    assert_eq!(s.get(stat::DUPLICATES), 4);
    assert_eq!(s.get(stat::DEAD_LETTERED), 3);
    assert_eq!(s.get(stat::REJECTED), 3);
    for (reason, n) in [
        (Reason::Duplicate, 4),
        (Reason::UnknownTopic, 3),
        (Reason::UnsupportedVersion, 1),
        (Reason::PayloadTooLarge, 1),
        (Reason::SeqNotIncreasing, 1),
    ] {
        assert_eq!(s.reason(reason.code()), n, "{reason:?}");
    }
    assert_eq!(s.reasons().len(), 5, "no other reason");
    // 2 HELLOs, 6 data frames and this request; 5 ACKs and 3 REJECTs went out before it.
    assert_eq!(
        (s.get(stat::FRAMES_OK), s.get(stat::FRAMES_INVALID)),
        (9, 0)
    );
    assert_eq!((s.get(stat::ACKS), s.get(stat::REJECTS)), (5, 3));
    // Records: 4 realtime + 2 transactional events + 2 aggregates (topics 3 and 0), 4 new
    // transactional events, 1 realtime event. Dead letters: the 3 of the unknown topic.
    assert_eq!((s.get(stat::WRITTEN), s.get(stat::KEPT)), (13, 13));
    assert_eq!(s.get(stat::OVERWRITTEN), 0);
    assert_eq!(s.get(stat::DEAD_LETTER_RECORDS), 3);
    assert_eq!(s.get(stat::ALERTS), 1);
    assert_eq!(s.get(stat::SESSIONS), 1);
    assert_eq!(
        (
            s.get(stat::DISCARDED),
            s.get(stat::RESYNCS),
            s.get(stat::LINE_ERRORS)
        ),
        (0, 0, 0)
    );
    assert_eq!(s.get(stat::FLOW_WAITS), 0, "no frame had to wait");
}

#[test]
fn noise_and_a_corrupted_frame_are_rejected_and_the_line_recovers() {
    let mut dev = Device::boot(&firmware_elf());
    // No HELLO: the line is in a session from boot (protocol version 1).
    let four = |base: u64| -> Vec<(EventHeader, usize)> {
        (0..4)
            .map(|i| (EventHeader::new(base + i, 2, Priority::High, i), 12))
            .collect()
    };
    let (frame, seq) = dev.batch(&four(1));
    dev.send_bytes(&frame);
    assert_eq!(dev.ack(), ack(seq, 4, 0, 0));

    // Noise between two frames: one REJECT (seq 0, the bad length), then the line hunts
    // and finds the next frame; every noise byte is counted.
    let garbage = noise(37);
    let (frame, seq) = dev.batch(&four(11));
    let mut bytes = garbage.clone();
    bytes.extend_from_slice(&frame);
    dev.send_bytes(&bytes);
    let r = dev.reject();
    assert_eq!(r.reason(), Some(Reason::TooLong));
    assert_eq!((r.frame_seq, r.index, r.event_id), (0, WHOLE_FRAME, 0));
    assert_eq!(dev.ack(), ack(seq, 8, 0, 1));

    // A frame with one bit flipped in a payload: REJECT bad_crc naming its seq, no ACK; the
    // next frame is taken as usual.
    let (mut frame, seq) = dev.batch(&four(21));
    let at = frame.len() - 10;
    frame[at] ^= 0x10;
    dev.send_bytes(&frame);
    let r = dev.reject();
    assert_eq!(r.reason(), Some(Reason::BadCrc));
    assert_eq!((r.frame_seq, r.index), (seq, WHOLE_FRAME));
    let (frame, seq) = dev.batch(&four(31));
    dev.send_bytes(&frame);
    assert_eq!(dev.ack(), ack(seq, 12, 0, 2));

    // Noise in front of a STATS request, a short burst this time.
    dev.send_bytes(&noise(5));
    let r = dev.reject();
    assert_eq!((r.reason(), r.frame_seq), (Some(Reason::TooLong), 0));
    let s = dev.stats();
    eprintln!("books: {}", summary(&s));
    check_books(&s);
    assert_eq!(s.get(stat::INGESTED), 12 + 3);
    assert_eq!(s.get(stat::STORED), 12);
    assert_eq!(s.get(stat::REJECTED), 3);
    assert_eq!(s.reason(Reason::TooLong.code()), 2);
    assert_eq!(s.reason(Reason::BadCrc.code()), 1);
    assert_eq!(
        s.get(stat::DISCARDED),
        37 + 5,
        "every noise byte, no frame byte"
    );
    assert_eq!(s.get(stat::RESYNCS), 2);
    assert_eq!(
        (s.get(stat::FRAMES_OK), s.get(stat::FRAMES_INVALID)),
        (4, 1)
    );
    let sent = 3 * frame.len() + garbage.len() + frame.len() + 5;
    let request = event_frame_len(0);
    assert_eq!(
        s.get(stat::RX_BYTES),
        (sent + request) as u64,
        "every byte arrived"
    );
    assert_eq!(s.get(stat::LINE_ERRORS), 0);
}

#[test]
fn an_overload_burst_is_slowed_down_not_lost() {
    let mut dev = Device::boot(&firmware_elf());
    assert!(matches!(dev.hello(1, 1), Answer::Hello(_)));
    // 50 frames of 20 realtime events into a realtime lane of 16, sent back to back from
    // another thread while this one reads the answers: each frame must wait for the
    // processors once (20 > 16), and the line is slowed (the receive ring, then the UART's
    // FIFO, then QEMU's socket) instead of anything being dropped.
    const FRAMES: u64 = 50;
    const PER_FRAME: u64 = 20;
    let frames: Vec<Vec<u8>> = (0..FRAMES)
        .map(|f| {
            let seq = dev.next_seq();
            let events: Vec<_> = (0..PER_FRAME)
                .map(|i| {
                    let id = 1000 + f * PER_FRAME + i;
                    (EventHeader::new(id, (i % 2) as u16, Priority::High, id), 4)
                })
                .collect();
            batch_frame(seq, &events)
        })
        .collect();
    let total: usize = frames.iter().map(Vec::len).sum();
    let mut writer = dev.writer();
    let sender = thread::spawn(move || {
        for frame in &frames {
            writer.write_all(frame).expect("write the burst");
        }
    });
    for f in 1..=FRAMES {
        assert_eq!(dev.ack(), ack(f, f * PER_FRAME, 0, 0), "frame {f}");
    }
    sender.join().expect("the writer thread");

    let s = dev.stats();
    eprintln!("books: {}", summary(&s));
    check_books(&s);
    assert_eq!(s.get(stat::INGESTED), FRAMES * PER_FRAME);
    assert_eq!(s.get(stat::STORED), FRAMES * PER_FRAME);
    assert_eq!(s.reasons(), [], "nothing dead-lettered or rejected");
    assert_eq!(
        s.get(stat::FLOW_WAITS),
        FRAMES,
        "each frame waited once for lane room"
    );
    assert_eq!(
        s.get(stat::RX_BYTES),
        (HELLO_LEN + total + event_frame_len(0)) as u64,
        "every byte of the burst arrived"
    );
    assert_eq!((s.get(stat::DISCARDED), s.get(stat::LINE_ERRORS)), (0, 0));
    // The RAM ring keeps the newest 128 records and says how many it overwrote.
    assert_eq!(s.get(stat::WRITTEN), FRAMES * PER_FRAME);
    assert_eq!(s.get(stat::KEPT), 128);
    assert_eq!(s.get(stat::OVERWRITTEN), FRAMES * PER_FRAME - 128);
    // How often the receive ring filled depends on how QEMU schedules: shown, not checked.
    eprintln!(
        "receive ring full {} times during the burst of {total} bytes",
        s.get(stat::RX_PAUSES)
    );
}

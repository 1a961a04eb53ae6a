//! The unikernel under QEMU (x86_64, PVH boot), driven over COM1 from the host: every
//! answer and the exact books, then the kernel's own verdict through `isa-debug-exit`.

use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::reason::Reason;
use pinstream_core::wire::{Ack, WHOLE_FRAME};
use pinstream_firmware_host_test::{Answer, Device, MAX_FRAME, Machine, noise, stat};
use pinstream_unikernel_host_test::unikernel_elf;

/// The kernel's EXIT request topic (`pinstream_unikernel::EXIT_TOPIC`).
const EXIT_TOPIC: u16 = u16::MAX - 1;
/// QEMU's exit status for the kernel's PASS verdict (`(0x10 << 1) | 1`).
const PASS: i32 = 33;

fn ack(through_seq: u64, stored: u64, dead_lettered: u64, rejected: u64) -> Ack {
    Ack {
        through_seq,
        stored,
        dead_lettered,
        rejected,
        duplicates: 0,
    }
}

#[test]
fn the_kernel_answers_every_frame_balances_its_books_and_exits_with_its_verdict() {
    let mut dev = Device::boot_on(Machine::X86Pvh, &unikernel_elf());
    match dev.hello(1, 1) {
        Answer::Hello(h) => assert_eq!((h.max_version, h.max_frame_len), (1, MAX_FRAME as u32)),
        other => panic!("expected the HELLO reply, got {other:?}"),
    }

    // Every priority; transactional repeats; an unknown topic and a payload too large.
    let warm: Vec<_> = (0..10u64)
        .map(|k| {
            let p = Priority::ALL[(k % 5) as usize];
            (
                EventHeader::new(1 + k, (k % 4) as u16, p, k).with_value(k as i64),
                8,
            )
        })
        .collect();
    let (frame, seq) = dev.batch(&warm);
    dev.send_bytes(&frame);
    assert_eq!(dev.ack(), ack(seq, 10, 0, 0));
    let medium: Vec<_> = (0..3u64)
        .map(|i| (EventHeader::new(100 + i, 1, Priority::Medium, i), 40))
        .collect();
    for stored in [13, 16] {
        let (frame, seq) = dev.batch(&medium);
        dev.send_bytes(&frame);
        assert_eq!(dev.ack(), ack(seq, stored, 0, 0));
    }
    let bad = [
        (EventHeader::new(300, 9, Priority::High, 0), 4),
        (EventHeader::new(301, 1, Priority::High, 1), 600),
    ];
    let (frame, seq) = dev.batch(&bad);
    dev.send_bytes(&frame);
    let r = dev.reject();
    assert_eq!(
        (r.reason(), r.frame_seq, r.index),
        (Some(Reason::PayloadTooLarge), seq, 1)
    );
    assert_eq!(dev.ack(), ack(seq, 16, 1, 1));

    // Noise between frames, and a frame with a bit flipped.
    let (frame, seq) = dev.batch(&warm[..2]);
    let mut bytes = noise(23);
    bytes.extend_from_slice(&frame);
    dev.send_bytes(&bytes);
    let r = dev.reject();
    assert_eq!(
        (r.reason(), r.frame_seq, r.index),
        (Some(Reason::TooLong), 0, WHOLE_FRAME)
    );
    assert_eq!(dev.ack(), ack(seq, 18, 1, 2));
    let (mut frame, seq) = dev.batch(&warm[..2]);
    let at = frame.len() - 6;
    frame[at] ^= 0x40;
    dev.send_bytes(&frame);
    let r = dev.reject();
    assert_eq!((r.reason(), r.frame_seq), (Some(Reason::BadCrc), seq));

    // An overload: 20 realtime events into a lane of 16, four frames back to back.
    for _ in 0..4 {
        let events: Vec<_> = (0..20u64)
            .map(|i| (EventHeader::new(1000 + i, 0, Priority::Critical, i), 4))
            .collect();
        let (frame, _) = dev.batch(&events);
        dev.send_bytes(&frame);
    }
    for (i, stored) in [38, 58, 78, 98].into_iter().enumerate() {
        let a = dev.ack();
        assert_eq!(
            (a.stored, a.dead_lettered, a.rejected),
            (stored, 1, 3),
            "burst frame {i}"
        );
    }

    let s = dev.stats();
    // 10 + 3 + 3 + 2 + 2 + 80 events, one bad-CRC frame, one loss of framing.
    assert_eq!(s.get(stat::INGESTED), 100 + 2);
    assert_eq!(s.get(stat::STORED), 10 + 3 + 2 + 80);
    assert_eq!(s.get(stat::DUPLICATES), 3);
    assert_eq!(s.get(stat::DEAD_LETTERED), 1);
    assert_eq!(s.get(stat::REJECTED), 3);
    assert_eq!(s.get(stat::IN_FLIGHT), 0);
    assert_eq!(s.get(stat::DISCARDED), 23);
    assert_eq!(s.get(stat::RESYNCS), 1);
    assert_eq!(s.get(stat::FLOW_WAITS), 4, "each burst frame waited once");
    assert_eq!(s.get(stat::LINE_ERRORS), 0);
    for (reason, n) in [
        (Reason::Duplicate, 3),
        (Reason::UnknownTopic, 1),
        (Reason::PayloadTooLarge, 1),
        (Reason::TooLong, 1),
        (Reason::BadCrc, 1),
    ] {
        assert_eq!(s.reason(reason.code()), n, "{reason:?}");
    }
    assert_eq!(s.reasons().len(), 5);

    // The kernel checks its own books and ends QEMU with its verdict.
    dev.request(EXIT_TOPIC);
    assert_eq!(dev.wait_exit(), PASS);
}

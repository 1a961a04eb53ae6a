//! The unikernel under QEMU with a virtio-net device: the same protocol over TCP (smoltcp in
//! the kernel, QEMU's user network forwarding a loopback port of the host), driven from the
//! host: every answer, the exact books, an overload burst slowed by TCP's window, and the
//! kernel's exit verdict.

use std::io::Write as _;
use std::thread;

use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::reason::Reason;
use pinstream_core::wire::Ack;
use pinstream_firmware_host_test::{Device, Machine, batch_frame, stat};
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
fn the_kernel_serves_the_protocol_over_tcp_and_exits_with_its_verdict() {
    // Connected and past the HELLO exchange (the client speaks first over TCP).
    let mut dev = Device::boot_on(Machine::X86PvhNet, &unikernel_elf());

    let medium: Vec<_> = (0..5u64)
        .map(|i| (EventHeader::new(10 + i, 1, Priority::Medium, i), 16))
        .collect();
    let (frame, seq) = dev.batch(&medium);
    dev.send_bytes(&frame);
    assert_eq!(dev.ack(), ack(seq, 5, 0, 0));
    let (frame, seq) = dev.batch(&medium);
    dev.send_bytes(&frame);
    assert_eq!(
        dev.ack(),
        ack(seq, 10, 0, 0),
        "duplicates count as stored in version 1"
    );
    let bad = [
        (EventHeader::new(50, 7, Priority::Low, 0), 4),
        (EventHeader::new(51, 2, Priority::High, 0), 600),
    ];
    let (frame, seq) = dev.batch(&bad);
    dev.send_bytes(&frame);
    let r = dev.reject();
    assert_eq!(
        (r.reason(), r.frame_seq, r.index, r.event_id),
        (Some(Reason::PayloadTooLarge), seq, 1, 51)
    );
    assert_eq!(dev.ack(), ack(seq, 10, 1, 1));

    // 40 frames of 20 realtime events back to back from a second thread: each waits once
    // for the lane (16), the kernel reads no more until it has answered, TCP slows the rest.
    const FRAMES: u64 = 40;
    let frames: Vec<Vec<u8>> = (0..FRAMES)
        .map(|f| {
            let seq = dev.next_seq();
            let events: Vec<_> = (0..20u64)
                .map(|i| (EventHeader::new(1000 + f * 20 + i, 0, Priority::High, i), 4))
                .collect();
            batch_frame(seq, &events)
        })
        .collect();
    let mut writer = dev.writer();
    let sender = thread::spawn(move || {
        for frame in &frames {
            writer.write_all(frame).expect("write the burst");
        }
    });
    for f in 1..=FRAMES {
        let a = dev.ack();
        assert_eq!(
            (a.stored, a.dead_lettered, a.rejected),
            (10 + 20 * f, 1, 1),
            "frame {f}"
        );
    }
    sender.join().expect("the writer thread");

    let s = dev.stats();
    assert_eq!(s.get(stat::INGESTED), 5 + 5 + 2 + 20 * FRAMES);
    assert_eq!(s.get(stat::STORED), 5 + 20 * FRAMES);
    assert_eq!(s.get(stat::DUPLICATES), 5);
    assert_eq!(s.get(stat::DEAD_LETTERED), 1);
    assert_eq!(s.get(stat::REJECTED), 1);
    assert_eq!(s.get(stat::IN_FLIGHT), 0);
    assert_eq!(s.get(stat::FLOW_WAITS), FRAMES);
    assert_eq!((s.get(stat::DISCARDED), s.get(stat::RESYNCS)), (0, 0));
    assert_eq!(s.reason(Reason::UnknownTopic.code()), 1);
    assert_eq!(s.reason(Reason::Duplicate.code()), 5);
    assert_eq!(s.reason(Reason::PayloadTooLarge.code()), 1);

    dev.request(EXIT_TOPIC);
    assert_eq!(dev.wait_exit(), PASS);
}

//! A panic resets the chip, it does not halt it: the firmware built with `panic-probe`
//! (`cargo test --release --features panic-probe` in `firmware/`) panics when asked over the
//! line; QEMU carries out the reset it requests, and the device boots again: a new boot
//! HELLO, fresh books, and it serves the line as before.

use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::wire::Ack;
use pinstream_firmware_host_test::{Answer, Device, panic_probe_elf, stat};

/// The probe's topic (`app::PANIC_TOPIC`).
const PANIC_TOPIC: u16 = u16::MAX - 2;

fn one_event(dev: &mut Device, id: u64) -> Ack {
    let (frame, _) = dev.batch(&[(EventHeader::new(id, 0, Priority::High, 0), 8)]);
    dev.send_bytes(&frame);
    dev.ack()
}

#[test]
fn a_panic_resets_the_device_which_boots_and_serves_again() {
    let mut dev = Device::boot_allowing_reset(&panic_probe_elf());
    let ack = one_event(&mut dev, 1);
    assert_eq!((ack.through_seq, ack.stored), (1, 1));
    assert_eq!(dev.stats().get(stat::INGESTED), 1);

    dev.request(PANIC_TOPIC);
    match dev.answer() {
        Answer::Hello(h) => assert_eq!((h.min_version, h.max_version), (1, 1)),
        other => panic!("expected the boot HELLO of a reset device, got {other:?}"),
    }
    // A new boot: the books start again, and the line works.
    let s = dev.stats();
    assert_eq!((s.get(stat::INGESTED), s.get(stat::RX_BYTES)), (0, 52));
    let ack = one_event(&mut dev, 2);
    assert_eq!((ack.stored, ack.dead_lettered, ack.rejected), (1, 0, 0));
}

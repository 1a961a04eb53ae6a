//! A virtio-net driver (legacy PCI interface, as QEMU's `virtio-net-pci,disable-modern=on`
//! offers it) for smoltcp: two virtqueues in static, page-aligned memory (identity-mapped,
//! so addresses are physical), polled. Every port access and every volatile access of the
//! rings is in this module.

use core::arch::asm;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Entries per virtqueue this driver sets up (QEMU's default queue size is 256; the driver
/// uses the device's size for the layout and `BUFFERS` of its entries).
const QUEUE_MAX: usize = 256;
/// Receive and transmit buffers.
const BUFFERS: usize = 16;
/// Bytes per buffer: the 10-byte virtio-net header and an Ethernet frame of up to 1514.
const BUF: usize = 1536;
/// The legacy virtio-net header (no mergeable buffers): 10 bytes, all 0 on transmit.
const NET_HDR: usize = 10;

/// Legacy virtio registers, as offsets from BAR0 (I/O space).
mod reg {
    pub const DEVICE_FEATURES: u16 = 0x00;
    pub const GUEST_FEATURES: u16 = 0x04;
    pub const QUEUE_PFN: u16 = 0x08;
    pub const QUEUE_SIZE: u16 = 0x0C;
    pub const QUEUE_SELECT: u16 = 0x0E;
    pub const QUEUE_NOTIFY: u16 = 0x10;
    pub const STATUS: u16 = 0x12;
    pub const MAC: u16 = 0x14;
}
const FEATURE_MAC: u32 = 1 << 5;
const STATUS_ACK: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const DESC_WRITE: u16 = 2;

fn outb(port: u16, v: u8) {
    // SAFETY: a port of the virtio device found on the PCI bus (or the PCI configuration
    // ports); the kernel owns them and nothing else in it touches them.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}
fn outw(port: u16, v: u16) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    };
}
fn outl(port: u16, v: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    };
}
fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}
fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}
fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Reads a 32-bit word of PCI configuration space (mechanism 1).
fn pci_read(bus: u8, dev: u8, func: u8, offset: u8) -> u32 {
    let addr = 0x8000_0000
        | (u32::from(bus) << 16)
        | (u32::from(dev) << 11)
        | (u32::from(func) << 8)
        | u32::from(offset & 0xFC);
    outl(0xCF8, addr);
    inl(0xCFC)
}

fn pci_write(bus: u8, dev: u8, func: u8, offset: u8, value: u32) {
    let addr = 0x8000_0000
        | (u32::from(bus) << 16)
        | (u32::from(dev) << 11)
        | (u32::from(func) << 8)
        | u32::from(offset & 0xFC);
    outl(0xCF8, addr);
    outl(0xCFC, value);
}

/// Finds the virtio-net device (vendor 0x1AF4, legacy device 0x1000) on bus 0, turns on its
/// I/O space and bus mastering, and returns its BAR0 I/O base.
fn find_device() -> Option<u16> {
    for dev in 0..32u8 {
        let id = pci_read(0, dev, 0, 0);
        if id == 0x1000_1AF4 {
            let command = pci_read(0, dev, 0, 0x04);
            pci_write(0, dev, 0, 0x04, command | 0b101);
            let bar0 = pci_read(0, dev, 0, 0x10);
            return Some((bar0 & !0x3) as u16);
        }
    }
    None
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// One virtqueue's memory in the legacy layout for up to [`QUEUE_MAX`] entries: descriptors,
/// the available ring, then (at the next page) the used ring.
#[repr(C, align(4096))]
struct QueueMem([u8; 3 * 4096 + 4096]);

#[repr(C, align(16))]
struct Buffers([[u8; BUF]; BUFFERS]);

static mut RX_QUEUE: QueueMem = QueueMem([0; 4 * 4096]);
static mut TX_QUEUE: QueueMem = QueueMem([0; 4 * 4096]);
static mut RX_BUFS: Buffers = Buffers([[0; BUF]; BUFFERS]);
static mut TX_BUFS: Buffers = Buffers([[0; BUF]; BUFFERS]);

/// A virtqueue: where its parts are and how far the driver got.
struct Queue {
    index: u16,
    size: u16,
    desc: *mut Desc,
    avail: *mut u16,
    used: *mut u8,
    bufs: *mut [u8; BUF],
    /// The next used-ring entry to look at.
    last_used: u16,
    /// The next available-ring position to fill.
    next_avail: u16,
}

impl Queue {
    /// Lays the queue out in `mem` for the device's queue size and gives its page to the
    /// device. `None` if the device's queue is larger than this driver's memory.
    ///
    /// # Safety
    /// `mem` and `bufs` are this queue's alone from now on (statics taken once, by
    /// [`VirtioNet::init`]).
    unsafe fn new(io: u16, index: u16, mem: *mut QueueMem, bufs: *mut Buffers) -> Option<Self> {
        outw(io + reg::QUEUE_SELECT, index);
        let size = inw(io + reg::QUEUE_SIZE);
        if size == 0 || usize::from(size) > QUEUE_MAX || usize::from(size) < BUFFERS {
            return None;
        }
        let base = mem.cast::<u8>();
        let n = usize::from(size);
        let avail_off = 16 * n;
        let used_off = (avail_off + 6 + 2 * n).next_multiple_of(4096);
        // SAFETY: offsets inside `QueueMem` (4 pages hold the layout for 256 entries).
        let (desc, avail, used) = unsafe {
            (
                base.cast::<Desc>(),
                base.add(avail_off).cast::<u16>(),
                base.add(used_off),
            )
        };
        outl(io + reg::QUEUE_PFN, (base as usize >> 12) as u32);
        Some(Self {
            index,
            size,
            desc,
            avail,
            used,
            bufs: bufs.cast::<[u8; BUF]>(),
            last_used: 0,
            next_avail: 0,
        })
    }

    /// Offers buffer `i` (its descriptor `i`) to the device, `len` bytes, device-writable or
    /// not.
    fn offer(&mut self, i: usize, len: usize, writable: bool) {
        // SAFETY: `i < BUFFERS <= size`: descriptor `i` and buffer `i` exist; the device
        // does not use descriptor `i` now (it was never offered, or came back used).
        unsafe {
            let d = Desc {
                addr: self.bufs.add(i) as u64,
                len: len as u32,
                flags: if writable { DESC_WRITE } else { 0 },
                next: 0,
            };
            write_volatile(self.desc.add(i), d);
            let slot = 2 + usize::from(self.next_avail % self.size);
            write_volatile(self.avail.add(slot), i as u16);
            fence(Ordering::SeqCst);
            self.next_avail = self.next_avail.wrapping_add(1);
            write_volatile(self.avail.add(1), self.next_avail);
            fence(Ordering::SeqCst);
        }
    }

    /// The next buffer the device has finished with: `(index, bytes written)`.
    fn take_used(&mut self) -> Option<(usize, usize)> {
        fence(Ordering::SeqCst);
        // SAFETY: the used ring's `idx` (offset 2) and entries (8 bytes each from offset 4)
        // lie in the queue's memory; the device writes them, so volatile reads.
        unsafe {
            let idx = read_volatile(self.used.add(2).cast::<u16>());
            if idx == self.last_used {
                return None;
            }
            let entry = self
                .used
                .add(4 + 8 * usize::from(self.last_used % self.size));
            let id = read_volatile(entry.cast::<u32>()) as usize;
            let len = read_volatile(entry.add(4).cast::<u32>()) as usize;
            self.last_used = self.last_used.wrapping_add(1);
            Some((id, len))
        }
    }

    fn buf(&mut self, i: usize) -> &mut [u8; BUF] {
        // SAFETY: `i < BUFFERS`; the device does not use buffer `i` now (the caller took it
        // from the used ring, or has not offered it yet).
        unsafe { &mut *self.bufs.add(i) }
    }
}

/// The network device.
pub struct VirtioNet {
    io: u16,
    rx: Queue,
    tx: Queue,
    /// Transmit buffers not offered to the device: `free[..nfree]`.
    free: [usize; BUFFERS],
    nfree: usize,
    mac: [u8; 6],
}

impl VirtioNet {
    /// Finds and sets up the device. `None` without one (or one this driver cannot drive).
    ///
    /// # Panics
    /// On a second call (the queues' statics are taken once).
    pub fn init() -> Option<Self> {
        static TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
        assert!(
            !TAKEN.swap(true, Ordering::AcqRel),
            "virtio-net set up twice"
        );
        let io = find_device()?;
        outb(io + reg::STATUS, 0);
        outb(io + reg::STATUS, STATUS_ACK | STATUS_DRIVER);
        let features = inl(io + reg::DEVICE_FEATURES);
        outl(io + reg::GUEST_FEATURES, features & FEATURE_MAC);
        // SAFETY: the statics are this device's alone (`TAKEN` above).
        let (mut rx, tx) = unsafe {
            (
                Queue::new(io, 0, addr_of_mut!(RX_QUEUE), addr_of_mut!(RX_BUFS))?,
                Queue::new(io, 1, addr_of_mut!(TX_QUEUE), addr_of_mut!(TX_BUFS))?,
            )
        };
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = inb(io + reg::MAC + i as u16);
        }
        outb(
            io + reg::STATUS,
            STATUS_ACK | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        for i in 0..BUFFERS {
            rx.offer(i, BUF, true);
        }
        outw(io + reg::QUEUE_NOTIFY, rx.index);
        let mut free = [0; BUFFERS];
        for (i, f) in free.iter_mut().enumerate() {
            *f = i;
        }
        Some(Self {
            io,
            rx,
            tx,
            free,
            nfree: BUFFERS,
            mac,
        })
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn reclaim_tx(&mut self) {
        while let Some((i, _)) = self.tx.take_used() {
            self.free[self.nfree] = i;
            self.nfree += 1;
        }
    }
}

/// A received frame, held until smoltcp has read it; its buffer then goes back to the device.
pub struct RxToken<'a> {
    rx: &'a mut Queue,
    io: u16,
    index: usize,
    len: usize,
}

/// Room for one frame to send.
pub struct TxToken<'a> {
    dev: TxSide<'a>,
}

struct TxSide<'a> {
    tx: &'a mut Queue,
    io: u16,
    free: &'a mut [usize; BUFFERS],
    nfree: &'a mut usize,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let end = self.len.clamp(NET_HDR, BUF);
        let result = f(&self.rx.buf(self.index)[NET_HDR..end]);
        self.rx.offer(self.index, BUF, true);
        outw(self.io + reg::QUEUE_NOTIFY, self.rx.index);
        result
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let side = self.dev;
        *side.nfree -= 1;
        let i = side.free[*side.nfree];
        let len = len.min(BUF - NET_HDR);
        let buf = side.tx.buf(i);
        buf[..NET_HDR].fill(0);
        let result = f(&mut buf[NET_HDR..NET_HDR + len]);
        side.tx.offer(i, NET_HDR + len, false);
        outw(side.io + reg::QUEUE_NOTIFY, side.tx.index);
        result
    }
}

impl phy::Device for VirtioNet {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        self.reclaim_tx();
        if self.nfree == 0 {
            return None;
        }
        let (index, len) = self.rx.take_used()?;
        let io = self.io;
        Some((
            RxToken {
                rx: &mut self.rx,
                io,
                index,
                len,
            },
            TxToken {
                dev: TxSide {
                    tx: &mut self.tx,
                    io,
                    free: &mut self.free,
                    nfree: &mut self.nfree,
                },
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.reclaim_tx();
        if self.nfree == 0 {
            return None;
        }
        Some(TxToken {
            dev: TxSide {
                tx: &mut self.tx,
                io: self.io,
                free: &mut self.free,
                nfree: &mut self.nfree,
            },
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(1);
        caps
    }
}

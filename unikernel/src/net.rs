//! The network path: the same protocol over TCP port [`PORT`] at 10.0.2.15 (QEMU's user
//! network), through smoltcp on the virtio-net driver. One connection at a time; each new
//! connection is a new stream for the line (a client starts it with a HELLO, as on the
//! engine's TCP listener). Answers are written before more input is read, so a slow
//! reader slows the sender through TCP's window.

use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use static_cell::ConstStaticCell;

use crate::line::Line;
use crate::virtio::VirtioNet;
use crate::{Kernel, MAX_FRAME};

/// The TCP port the kernel listens on.
pub const PORT: u16 = 7070;

static SOCKETS: ConstStaticCell<[SocketStorage<'static>; 1]> =
    ConstStaticCell::new([SocketStorage::EMPTY]);
static TCP_RX: ConstStaticCell<[u8; 4096]> = ConstStaticCell::new([0; 4096]);
static TCP_TX: ConstStaticCell<[u8; 8192]> = ConstStaticCell::new([0; 8192]);

/// Milliseconds since boot, from the time-stamp counter (QEMU's runs at about 1 GHz and up;
/// smoltcp uses it for its TCP timers only).
fn now() -> Instant {
    // SAFETY: `rdtsc` reads a counter; no memory, no side effect.
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    Instant::from_millis((tsc / 1_000_000) as i64)
}

/// Serves the line protocol over TCP forever.
pub fn serve(kernel: &mut Kernel, line: &mut Line<MAX_FRAME>, mut dev: VirtioNet) -> ! {
    let mac = EthernetAddress(dev.mac());
    let mut iface = Interface::new(Config::new(mac.into()), &mut dev, now());
    iface.update_ip_addrs(|addrs| {
        // A fresh interface has room for its first address.
        let _ = addrs.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24));
    });
    let socket = tcp::Socket::new(
        tcp::SocketBuffer::new(&mut TCP_RX.take()[..]),
        tcp::SocketBuffer::new(&mut TCP_TX.take()[..]),
    );
    let mut sockets = SocketSet::new(&mut SOCKETS.take()[..]);
    let handle = sockets.add(socket);
    let mut connected = false;
    let mut chunk = [0u8; 64];
    loop {
        iface.poll(now(), &mut dev, &mut sockets);
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        if !socket.is_open() {
            // Listening is always possible on a closed socket with a non-zero port.
            let _ = socket.listen(PORT);
            connected = false;
            continue;
        }
        if socket.is_active() && !connected {
            connected = true;
            line.reset();
        }
        if !socket.may_recv() && socket.state() == tcp::State::CloseWait {
            socket.close();
            continue;
        }
        let n = socket.recv_slice(&mut chunk).unwrap_or(0);
        if n == 0 {
            continue;
        }
        kernel.take_bytes(line, &chunk[..n]);
        let mut pending = kernel.out.take();
        while !pending.is_empty() {
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            if !socket.may_send() {
                // The peer went away: its answers have nowhere to go.
                break;
            }
            let sent = socket.send_slice(pending).unwrap_or(0);
            pending = &pending[sent..];
            if !pending.is_empty() {
                iface.poll(now(), &mut dev, &mut sockets);
            }
        }
    }
}

//! Boots the pinstream firmware in QEMU (`lm3s6965evb`) with its UART0 on a unix socket in a
//! temporary directory, and talks the protocol to it over that socket: the core's encoders
//! out, the core's stream decoder in.
//!
//! [`Device`] owns the QEMU process and kills it when dropped, so a failing test (a panic)
//! never leaves one behind; the socket lives in a directory of its own, removed with it (no
//! port to pick, none to collide on).

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use pinstream_core::event::EventHeader;
use pinstream_core::wire::{
    Ack, BatchEncoder, DEFAULT_MAX_FRAME_LEN, FrameKind, Hello, Reject, StreamDecoder,
    encode_event, encode_hello,
};

/// The STATS request's topic (the firmware's `app::STATS_TOPIC`).
pub const STATS_TOPIC: u16 = u16::MAX;
/// In a STATS report, a reason's count has id `REASON_STAT + code` (`app::REASON_STAT`).
pub const REASON_STAT: u64 = 0x100;
/// The largest frame the firmware takes (`app::MAX_FRAME`).
pub const MAX_FRAME: usize = 768;

/// The STATS report's counter ids (`app::Stat`).
pub mod stat {
    pub const INGESTED: u64 = 0;
    pub const STORED: u64 = 1;
    pub const DUPLICATES: u64 = 2;
    pub const DEAD_LETTERED: u64 = 3;
    pub const REJECTED: u64 = 4;
    pub const IN_FLIGHT: u64 = 5;
    pub const RX_BYTES: u64 = 6;
    pub const RX_PAUSES: u64 = 7;
    pub const LINE_ERRORS: u64 = 8;
    pub const DISCARDED: u64 = 9;
    pub const RESYNCS: u64 = 10;
    pub const FRAMES_OK: u64 = 11;
    pub const FRAMES_INVALID: u64 = 12;
    pub const FLOW_WAITS: u64 = 13;
    pub const ACKS: u64 = 14;
    pub const REJECTS: u64 = 15;
    pub const KEPT: u64 = 16;
    pub const WRITTEN: u64 = 17;
    pub const OVERWRITTEN: u64 = 18;
    pub const DEAD_LETTER_RECORDS: u64 = 19;
    pub const ALERTS: u64 = 20;
    pub const SESSIONS: u64 = 21;
    pub const STACK_USED: u64 = 22;
    pub const STACK_SIZE: u64 = 23;
    /// Counters in a report.
    pub const COUNT: usize = 24;
}

/// How long to wait for an answer before calling the firmware stuck: a hang guard, far
/// above any answer's time, not a measurement.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The machine QEMU emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `qemu-system-arm -machine lm3s6965evb`: the firmware, UART0.
    Lm3s6965,
    /// `qemu-system-x86_64`, booted through the PVH entry: the unikernel, COM1, with the
    /// `isa-debug-exit` device.
    X86Pvh,
    /// The same with a virtio-net device on QEMU's user network: the unikernel serves TCP
    /// port [`NET_PORT`], forwarded from a free loopback port of the host.
    X86PvhNet,
}

/// The unikernel's TCP port (`net::PORT`).
pub const NET_PORT: u16 = 7070;

/// The line to the device: a unix socket (a serial port) or a TCP connection.
pub enum Stream {
    /// QEMU's serial port on a unix socket.
    Unix(UnixStream),
    /// A TCP connection forwarded by QEMU's user network.
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tcp(s) => s.set_read_timeout(timeout),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// A loopback port free now (bound, read, released; QEMU binds it right after).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("its address").port()
}

/// Connects to the kernel through QEMU's forwarded port and opens the session with a
/// HELLO. QEMU accepts on the host side before the kernel listens, and closes the
/// connection when the kernel refuses it: so this retries until a HELLO reply comes back.
fn connect_tcp(port: u16) -> (Stream, Hello) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut hello = [0u8; 64];
    let n =
        encode_hello(&mut hello, 0, &Hello::client(1, 1, MAX_FRAME as u32)).expect("encode HELLO");
    loop {
        assert!(
            Instant::now() < deadline,
            "the kernel never answered on port {port}"
        );
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(&hello[..n]).is_err() {
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        let mut decoder: StreamDecoder<256> = StreamDecoder::new();
        let mut buf = [0u8; 256];
        let mut reply = None;
        while let Ok(got) = stream.read(&mut buf) {
            if got == 0 {
                break;
            }
            decoder.feed(&buf[..got], |f| {
                if let Ok(f) = f {
                    reply = f.hello();
                }
            });
            if reply.is_some() {
                break;
            }
        }
        match reply {
            Some(h) => return (Stream::Tcp(stream), h),
            None => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A frame the firmware sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Its HELLO reply.
    Hello(Hello),
    /// An ACK.
    Ack(Ack),
    /// A REJECT.
    Reject(Reject),
    /// A STATS report.
    Stats(Stats),
}

/// A STATS report: `(id, value)` for each counter, in the order sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats(pub Vec<(u64, u64)>);

impl Stats {
    /// The counter `id` (see [`stat`]); panics if the report lacks it.
    pub fn get(&self, id: u64) -> u64 {
        match self.0.iter().find(|(i, _)| *i == id) {
            Some(&(_, v)) => v,
            None => panic!("counter {id} not in the report {self:?}"),
        }
    }

    /// The count of reason `code` (0 when the report lists none: it sends non-zero ones).
    pub fn reason(&self, code: u16) -> u64 {
        let id = REASON_STAT + u64::from(code);
        self.0.iter().find(|(i, _)| *i == id).map_or(0, |&(_, v)| v)
    }

    /// The reasons with a count, as `(code, count)`.
    pub fn reasons(&self) -> Vec<(u16, u64)> {
        self.0
            .iter()
            .filter(|(id, _)| *id >= REASON_STAT)
            .map(|&(id, v)| ((id - REASON_STAT) as u16, v))
            .collect()
    }
}

/// The firmware ELF to boot: `$FIRMWARE_ELF` (the firmware's cargo runner sets it), or the
/// application built with `cargo build --release` in `../` (once per test process).
pub fn firmware_elf() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| match std::env::var_os("FIRMWARE_ELF") {
        Some(path) => PathBuf::from(path),
        None => build_firmware(&[], "target"),
    })
    .clone()
}

/// The application built with the `panic-probe` feature (for the `reset` test):
/// `$FIRMWARE_PANIC_PROBE_ELF`, or built in `../target/panic-probe` (apart from the
/// default build, which other tests may be running meanwhile).
pub fn panic_probe_elf() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| match std::env::var_os("FIRMWARE_PANIC_PROBE_ELF") {
        Some(path) => PathBuf::from(path),
        None => build_firmware(&["--features", "panic-probe"], "target/panic-probe"),
    })
    .clone()
}

fn build_firmware(features: &[&str], target_dir: &str) -> PathBuf {
    let firmware = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--bin", "pinstream-firmware"])
        .args(features)
        .args(["--target-dir", target_dir])
        .current_dir(&firmware)
        // This process's cargo set these for a host build; the firmware's are its own.
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo build in firmware/");
    assert!(status.success(), "building the firmware failed");
    firmware
        .join(target_dir)
        .join("thumbv7m-none-eabi/release/pinstream-firmware")
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pinstream-fw-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The firmware running in QEMU, and the line to its UART0.
pub struct Device {
    qemu: Child,
    line: Stream,
    decoder: StreamDecoder<DEFAULT_MAX_FRAME_LEN>,
    /// Answers decoded but not taken yet.
    pending: std::collections::VecDeque<Answer>,
    /// The next seq this side sends.
    seq: u64,
    // Dropped after `qemu` is killed (fields drop in order, and `Drop` runs first).
    _dir: TempDir,
}

impl Device {
    /// Boots `elf` on QEMU's LM3S6965, connects to its UART0 and waits for the device's
    /// boot HELLO.
    ///
    /// # Panics
    /// When QEMU cannot start or its socket does not appear.
    pub fn boot(elf: &Path) -> Self {
        Self::boot_on(Machine::Lm3s6965, elf)
    }

    /// Boots `elf` on `machine`, connects to its serial line and waits for the boot HELLO.
    ///
    /// # Panics
    /// When QEMU cannot start or its socket does not appear.
    pub fn boot_on(machine: Machine, elf: &Path) -> Self {
        Self::start(machine, elf, false)
    }

    /// [`boot`](Self::boot), with QEMU left to reset the machine when the firmware asks
    /// (`SCB::sys_reset`) instead of exiting: a test of what a panic does.
    ///
    /// # Panics
    /// As [`boot`](Self::boot).
    pub fn boot_allowing_reset(elf: &Path) -> Self {
        Self::start(Machine::Lm3s6965, elf, true)
    }

    fn start(machine: Machine, elf: &Path, allow_reset: bool) -> Self {
        let dir = TempDir::new();
        let socket = dir.0.join("uart0.sock");
        let mut qemu = match machine {
            Machine::Lm3s6965 => {
                let mut c = Command::new("qemu-system-arm");
                c.args(["-cpu", "cortex-m3", "-machine", "lm3s6965evb"])
                    // Only used by firmware built with `semihosting` or `defmt`.
                    .args(["-semihosting-config", "enable=on,target=native"]);
                c
            }
            Machine::X86Pvh | Machine::X86PvhNet => {
                let mut c = Command::new("qemu-system-x86_64");
                c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
                c
            }
        };
        let mut net_port = None;
        if machine == Machine::X86PvhNet {
            let port = free_port();
            qemu.arg("-netdev")
                .arg(format!(
                    "user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{NET_PORT}"
                ))
                .args(["-device", "virtio-net-pci,netdev=n0,disable-modern=on"]);
            net_port = Some(port);
        }
        if !allow_reset {
            // A reset request (a panic, without `semihosting`) ends QEMU: the test fails at
            // once instead of talking to a rebooted device.
            qemu.arg("-no-reboot");
        }
        qemu.args(["-display", "none", "-monitor", "none"]);
        if net_port.is_some() {
            qemu.args(["-serial", "null"]);
        } else {
            // `wait=on`: QEMU starts the guest only once this side is connected, so the
            // device's boot HELLO cannot go out to nobody.
            qemu.arg("-chardev")
                .arg(format!(
                    "socket,id=uart0,path={},server=on,wait=on",
                    socket.display()
                ))
                .args(["-serial", "chardev:uart0"]);
        }
        let qemu = qemu
            .arg("-kernel")
            .arg(elf)
            .stdin(Stdio::null())
            .spawn()
            .expect("start QEMU");
        let (line, answered) = match net_port {
            Some(port) => {
                let (stream, hello) = connect_tcp(port);
                (stream, Some(hello))
            }
            None => (Stream::Unix(connect(&socket)), None),
        };
        let mut device = Self {
            qemu,
            line,
            decoder: StreamDecoder::new(),
            pending: Default::default(),
            seq: 0,
            _dir: dir,
        };
        device
            .line
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("socket timeout");
        match answered {
            // Over TCP the client speaks first: `connect_tcp` sent a HELLO and got the reply.
            Some(hello) => assert_eq!((hello.min_version, hello.max_version), (1, 1)),
            // On a serial line the device says when it is listening (bytes sent while it
            // sets up its UART would be lost, as on a board that powers up mid-frame).
            None => match device.answer() {
                Answer::Hello(h) => assert_eq!((h.min_version, h.max_version), (1, 1)),
                other => panic!("expected the boot HELLO, got {other:?}"),
            },
        }
        device
    }

    /// The seq the next data frame gets (strictly increasing from 1).
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Writes raw bytes to the line.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.line
            .write_all(bytes)
            .expect("write to the UART socket");
    }

    /// A second handle on the line, to write from another thread while this one reads.
    pub fn writer(&self) -> Stream {
        self.line.try_clone().expect("clone the socket")
    }

    /// Sends a HELLO (versions `min..=max`) with seq 0 and returns the firmware's answer;
    /// the next data frame's seq is 1 again (a new session).
    pub fn hello(&mut self, min: u8, max: u8) -> Answer {
        let mut buf = [0u8; 64];
        let n = encode_hello(&mut buf, 0, &Hello::client(min, max, MAX_FRAME as u32))
            .expect("encode HELLO");
        self.send_bytes(&buf[..n]);
        let answer = self.answer();
        if matches!(answer, Answer::Hello(_)) {
            self.seq = 0;
        }
        answer
    }

    /// Encodes a BATCH of `events` (header, payload length; payload bytes 0xA5) with the
    /// next seq; returns the frame and its seq.
    pub fn batch(&mut self, events: &[(EventHeader, usize)]) -> (Vec<u8>, u64) {
        let seq = self.next_seq();
        (batch_frame(seq, events), seq)
    }

    /// Sends an EVENT frame of one event of `topic` (a request: STATS, or the unikernel's
    /// EXIT) with the next seq.
    pub fn request(&mut self, topic: u16) {
        let seq = self.next_seq();
        let mut buf = [0u8; 64];
        let request = EventHeader::new(0, topic, pinstream_core::event::Priority::Low, 0);
        let n = encode_event(&mut buf, seq, &request, &[]).expect("encode a request");
        self.send_bytes(&buf[..n]);
    }

    /// Waits for QEMU to exit on its own and returns its exit code.
    ///
    /// # Panics
    /// When it does not exit within [`ANSWER_TIMEOUT`], or is killed by a signal.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            if let Some(status) = self.qemu.try_wait().expect("wait for QEMU") {
                return status.code().expect("QEMU exited, not killed");
            }
            assert!(Instant::now() < deadline, "QEMU did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a STATS request and returns the report.
    ///
    /// # Panics
    /// When the answer is not a report.
    pub fn stats(&mut self) -> Stats {
        self.request(STATS_TOPIC);
        match self.answer() {
            Answer::Stats(stats) => stats,
            other => panic!("expected a STATS report, got {other:?}"),
        }
    }

    /// The next frame from the firmware.
    ///
    /// # Panics
    /// When the firmware sends something that does not decode, sends nothing for
    /// [`ANSWER_TIMEOUT`], or QEMU exits (a firmware panic, under `semihosting`).
    pub fn answer(&mut self) -> Answer {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            if let Some(answer) = self.pending.pop_front() {
                return answer;
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                panic!("QEMU exited ({status}) while an answer was awaited");
            }
            assert!(
                Instant::now() < deadline,
                "no answer from the firmware within {ANSWER_TIMEOUT:?}"
            );
            let mut buf = [0u8; 4096];
            let n = match self.line.read(&mut buf) {
                Ok(0) => match self.qemu.wait() {
                    Ok(status) => panic!("QEMU exited ({status}); its messages are above"),
                    Err(e) => panic!("the UART socket closed, QEMU unaccounted for: {e}"),
                },
                Ok(n) => n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    continue;
                }
                Err(e) => panic!("read from the UART socket: {e}"),
            };
            let pending = &mut self.pending;
            self.decoder.feed(&buf[..n], |frame| {
                let frame = frame.expect("the firmware sends valid frames");
                let answer = match frame.kind() {
                    FrameKind::Hello => Answer::Hello(frame.hello().expect("hello body")),
                    FrameKind::Ack => Answer::Ack(frame.ack().expect("ack body")),
                    FrameKind::Reject => Answer::Reject(frame.reject().expect("reject body")),
                    FrameKind::Batch => Answer::Stats(Stats(
                        frame
                            .events()
                            .map(|e| {
                                assert_eq!(e.topic(), STATS_TOPIC, "a report's events");
                                (e.id(), e.value().expect("a counter has a value") as u64)
                            })
                            .collect(),
                    )),
                    other => panic!("unexpected frame kind from the firmware: {other}"),
                };
                pending.push_back(answer);
            });
        }
    }

    /// The next answer, which must be an ACK.
    pub fn ack(&mut self) -> Ack {
        match self.answer() {
            Answer::Ack(ack) => ack,
            other => panic!("expected an ACK, got {other:?}"),
        }
    }

    /// The next answer, which must be a REJECT.
    pub fn reject(&mut self) -> Reject {
        match self.answer() {
            Answer::Reject(reject) => reject,
            other => panic!("expected a REJECT, got {other:?}"),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// Connects to QEMU's listening socket, waiting for it to appear.
fn connect(socket: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return stream,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect to {}: {e}", socket.display()),
        }
    }
}

/// A BATCH frame of `events` (header, payload length; payload bytes 0xA5) with `seq`.
pub fn batch_frame(seq: u64, events: &[(EventHeader, usize)]) -> Vec<u8> {
    let mut buf = vec![0u8; 28 + events.iter().map(|(_, n)| 32 + n).sum::<usize>()];
    let payload = vec![0xA5u8; events.iter().map(|&(_, n)| n).max().unwrap_or(0)];
    let mut batch = BatchEncoder::new(&mut buf, seq).expect("buffer");
    for (header, len) in events {
        batch.push(header, &payload[..*len]).expect("event fits");
    }
    let n = batch.finish().expect("at least one event");
    buf.truncate(n);
    buf
}

/// Line noise for the tests: never a plausible frame header at any offset (no zero byte,
/// and none below 0x11, so no length field up to 768 can form), starting with a length field
/// far too long.
pub fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9u32;
    let mut out = vec![0xFF; len.min(4)];
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        out.push((state as u8) | 0x11);
    }
    out
}

/// A one-line summary of a report, for the test's output.
pub fn summary(stats: &Stats) -> String {
    let mut s = String::new();
    let names = [
        "ingested",
        "stored",
        "duplicates",
        "dead",
        "rejected",
        "in_flight",
        "rx_bytes",
        "rx_pauses",
        "line_errors",
        "discarded",
        "resyncs",
        "frames_ok",
        "frames_invalid",
        "flow_waits",
        "acks",
        "rejects",
        "kept",
        "written",
        "overwritten",
        "dead_records",
        "alerts",
        "sessions",
        "stack_used",
        "stack_size",
    ];
    for (id, value) in &stats.0 {
        match names.get(*id as usize) {
            Some(name) if *id < REASON_STAT => write!(s, "{name} {value}, "),
            _ => write!(s, "reason {} x{value}, ", id - REASON_STAT),
        }
        .expect("write to a String");
    }
    s.trim_end_matches(", ").to_owned()
}

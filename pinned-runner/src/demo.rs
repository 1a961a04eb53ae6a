//! `pinstream demo`: the core primitives across two pinned threads, checking every item and
//! printing what they move per second (a sanity check of a machine, not a benchmark).

use std::thread;
use std::time::{Duration, Instant};

use pinstream_core::dedup::{DedupTable, Verdict};
use pinstream_core::pool::EventPool;
use pinstream_core::ring::{Mpsc, PushError, Spsc};
use pinstream_host::config::Config;
use pinstream_host::pin;
use pinstream_host::placement::{self, PlacementMode, PlacementRequest};
use pinstream_host::topology::{Topology, format_cpu_list};

use crate::Failure;

/// `pinstream demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Items moved through each primitive.
    #[arg(long, default_value_t = 20_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    items: u64,
    /// Do not pin the threads (containers, shared machines).
    #[arg(long)]
    no_pin: bool,
}

struct Options {
    items: u64,
    pin: bool,
}

/// Runs the demo.
///
/// # Errors
/// A primitive that lost or reordered an item.
pub fn main(args: &DemoArgs) -> Result<(), Failure> {
    let opts = Options {
        items: args.items,
        pin: !args.no_pin,
    };
    demo(&opts).map_err(|msg| Failure::runtime(format!("demo failed: {msg}")))
}

/// The two CPUs to pin to, or `None` when pinning is off or impossible (said on stderr):
/// the CPUs `pinstream run` gives its two threads with the embedded default config
/// ([`placement::resolve`]), pinned whatever the machine's size (`--no-pin` turns it off).
fn choose_cpus(opts: &Options) -> Option<(usize, usize)> {
    if !opts.pin {
        println!("pinning: off (--no-pin)");
        return None;
    }
    let allowed = match pin::current_affinity() {
        Ok(cpus) => cpus,
        Err(e) => {
            eprintln!("pinstream: warning: cannot read the CPU mask ({e}), running unpinned");
            return None;
        }
    };
    let topology = match Topology::live() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pinstream: warning: cannot read the CPU topology ({e}), running unpinned");
            return None;
        }
    };
    let engine = Config::embedded_default().engine;
    let request = PlacementRequest {
        mode: PlacementMode::Pinned,
        overprovisioned: false,
        cpus: [engine.ingest_cpu, engine.process_cpu],
        default_config: true,
    };
    match placement::resolve(&request, Some(&allowed), &topology) {
        Ok(resolved) => {
            let [a, b] = resolved.cpus;
            println!("pinning: producer on CPU {a}, consumer on CPU {b}");
            Some((a, b))
        }
        Err(refused) => {
            eprintln!(
                "pinstream: warning: CPUs {} allowed: {}; running unpinned",
                format_cpu_list(&allowed),
                refused.error
            );
            None
        }
    }
}

fn pin_to(cpu: Option<usize>) {
    // Not a let chain: rust-version 1.85 has none.
    if let Some(Err(e)) = cpu.map(pin::pin_current_thread) {
        eprintln!("pinstream: warning: {e}; this thread runs unpinned");
    }
}

fn report(name: &str, items: u64, elapsed: Duration) {
    let rate = items as f64 / elapsed.as_secs_f64();
    println!(
        "  {name:<44} {items:>11} items {:>9.1} ms {:>8.1} M/s {:>7.2} ns/item",
        elapsed.as_secs_f64() * 1e3,
        rate / 1e6,
        1e9 / rate
    );
}

fn demo(opts: &Options) -> Result<(), String> {
    let cpus = choose_cpus(opts);
    let cpus = (cpus.map(|c| c.0), cpus.map(|c| c.1));
    let n = opts.items;
    println!("moving {n} items through each primitive, checking every one:");
    for batch in [1usize, 64] {
        spsc(n, batch, cpus)?;
    }
    mpsc(n, cpus)?;
    pool(n, cpus)?;
    dedup(n)?;
    println!("all items accounted for.");
    Ok(())
}

/// SPSC, one item at a time (`batch` 1) or in `batch`-item slices.
fn spsc(
    n: u64,
    batch: usize,
    (tx_cpu, rx_cpu): (Option<usize>, Option<usize>),
) -> Result<(), String> {
    let mut ring: Box<Spsc<u64, 4096>> = Box::new(Spsc::new());
    let (mut tx, mut rx) = ring.split();
    let start = Instant::now();
    let received = thread::scope(|s| {
        let consumer = s.spawn(move || {
            pin_to(rx_cpu);
            let mut next = 0u64;
            let mut buf = [0u64; 64];
            while next < n {
                let got = if batch == 1 {
                    rx.pop().map(|v| {
                        buf[0] = v;
                        1
                    })
                } else {
                    Some(rx.pop_slice(&mut buf)).filter(|&k| k > 0)
                };
                match got {
                    Some(k) => {
                        for v in &buf[..k] {
                            if *v != next {
                                return Err(format!("spsc: got {v}, expected {next}"));
                            }
                            next += 1;
                        }
                    }
                    None => std::hint::spin_loop(),
                }
            }
            Ok(next)
        });
        pin_to(tx_cpu);
        let mut sent = 0u64;
        let mut chunk = [0u64; 64];
        while sent < n {
            if batch == 1 {
                if tx.push(sent).is_ok() {
                    sent += 1;
                } else {
                    std::hint::spin_loop();
                }
            } else {
                let len = (n - sent).min(64) as usize;
                for (k, c) in chunk[..len].iter_mut().enumerate() {
                    *c = sent + k as u64;
                }
                sent += tx.push_slice(&chunk[..len]) as u64;
            }
        }
        consumer
            .join()
            .map_err(|_| "spsc consumer panicked".to_string())?
    })?;
    let label = if batch == 1 {
        "spsc<u64, 4096> push/pop".to_string()
    } else {
        format!("spsc<u64, 4096> push_slice/pop_slice x{batch}")
    };
    report(&label, received, start.elapsed());
    Ok(())
}

/// MPSC with one producer thread feeding the consumer.
fn mpsc(n: u64, (tx_cpu, rx_cpu): (Option<usize>, Option<usize>)) -> Result<(), String> {
    let ring: Box<Mpsc<u64, 4096>> = Box::new(Mpsc::new());
    let mut rx = ring.consumer().ok_or("mpsc consumer taken")?;
    let start = Instant::now();
    thread::scope(|s| {
        let ring = &ring;
        s.spawn(move || {
            pin_to(tx_cpu);
            for i in 0..n {
                let mut v = i;
                while let Err(PushError::Full(back)) = ring.push(v) {
                    v = back;
                    std::hint::spin_loop();
                }
            }
        });
        pin_to(rx_cpu);
        let mut next = 0u64;
        while next < n {
            match rx.pop() {
                Some(v) if v == next => next += 1,
                Some(v) => return Err(format!("mpsc: got {v}, expected {next}")),
                None => std::hint::spin_loop(),
            }
        }
        Ok(())
    })?;
    report("mpsc<u64, 4096> push/pop", n, start.elapsed());
    Ok(())
}

/// Event pool: 256-byte events acquired and filled on one CPU, released on the other.
fn pool(n: u64, (tx_cpu, rx_cpu): (Option<usize>, Option<usize>)) -> Result<(), String> {
    static POOL: EventPool<[u8; 256], 1024> = EventPool::new([0; 256]);
    let mut lane: Box<Spsc<usize, 1024>> = Box::new(Spsc::new());
    let (mut tx, mut rx) = lane.split();
    let start = Instant::now();
    thread::scope(|s| {
        s.spawn(move || {
            pin_to(tx_cpu);
            let mut sent = 0u64;
            while sent < n {
                let Some(mut event) = POOL.acquire() else {
                    std::hint::spin_loop();
                    continue;
                };
                event[..8].copy_from_slice(&sent.to_le_bytes());
                let mut index = event.into_index();
                while let Err(PushError::Full(back)) = tx.push(index) {
                    index = back;
                    std::hint::spin_loop();
                }
                sent += 1;
            }
        });
        pin_to(rx_cpu);
        let mut next = 0u64;
        while next < n {
            let Some(index) = rx.pop() else {
                std::hint::spin_loop();
                continue;
            };
            // SAFETY: every index on the lane came from `into_index` on POOL, once.
            let event = unsafe { POOL.from_index(index) };
            let seq = u64::from_le_bytes(event[..8].try_into().expect("8 bytes"));
            if seq != next {
                return Err(format!("pool: event {seq}, expected {next}"));
            }
            next += 1;
        }
        Ok(())
    })?;
    report(
        "event pool 256 B, acquire here/release there",
        n,
        start.elapsed(),
    );
    Ok(())
}

/// Dedup: every key arrives twice; the second sighting must be a duplicate.
fn dedup(n: u64) -> Result<(), String> {
    static TABLE: DedupTable<65536> = DedupTable::new(10_000);
    let start = Instant::now();
    let (mut new, mut dup) = (0u64, 0u64);
    for i in 0..n / 2 {
        let now = i;
        for _ in 0..2 {
            match TABLE.check_and_insert(i, now) {
                Verdict::New => new += 1,
                Verdict::Duplicate => dup += 1,
                Verdict::NewEvicting { .. } => {
                    return Err(format!("dedup: table full (evicted) at key {i}"));
                }
            }
        }
    }
    if new != n / 2 || dup != n / 2 {
        return Err(format!(
            "dedup: {new} new, {dup} duplicates of {} keys",
            n / 2
        ));
    }
    report(
        "dedup<65536> check_and_insert (half dup)",
        new + dup,
        start.elapsed(),
    );
    Ok(())
}

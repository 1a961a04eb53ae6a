//! CRC32C (Castagnoli), the checksum in every frame's trailer.
//!
//! The iSCSI CRC: reflected polynomial `0x82F63B78`, initial value `0xFFFFFFFF`, final xor
//! `0xFFFFFFFF`; the check value of `"123456789"` is `0xE3069283`.
//!
//! [`crc32c`] checksums one slice; [`crc32c_update`] and [`Crc32c`] continue a checksum over
//! data that arrives in pieces (`crc32c_update(crc32c(a), b) == crc32c(a ++ b)`, as zlib's
//! `crc32()`; `crc32c_update(0, b) == crc32c(b)`).
//!
//! ## Implementations
//! One is picked per call, from what the build and the CPU offer:
//!
//! | target | instruction | chosen |
//! | --- | --- | --- |
//! | x86_64 built with `sse4.2` (e.g. `-C target-cpu=native`) | `crc32` (`_mm_crc32_u64`) | at compile time |
//! | x86_64 with SSE enabled (every hosted target) | `crc32` | at run time: `cpuid` once, cached in an atomic |
//! | aarch64 built with the `crc` feature | `crc32cx` (`__crc32cd`) | at compile time |
//! | everything else (Cortex-M, RISC-V, `x86_64-unknown-none`, Miri) | none: the [`crc`] crate's slice-by-16 tables | — |
//!
//! The hardware path reads 8 bytes per instruction. Inputs of at least 768 bytes run as three
//! independent streams of 256-byte blocks (the instruction has a latency of 3 cycles and a
//! throughput of 1 per cycle, so one stream would leave two thirds of it idle); the three
//! partial CRCs are joined with two table look-ups of "multiply by x^2048 mod P".
//! `x86_64-unknown-none` has SSE switched off (kernels do not save vector registers), so it
//! takes the hardware path only when built with `sse4.2` explicitly.
//!
//! The software path keeps a 16 KiB table in read-only memory; the hardware paths add a
//! 4 KiB table for joining streams.
//!
//! Measured on this machine (2-vCPU AMD EPYC Zen 3), release build, while other builds
//! ran (ranges over repeated runs;
//! `cargo test -p pinstream-core --release --lib -- wire::tests::throughput --ignored --nocapture`):
//!
//! | path | 6 KiB input | 1 MiB input | 100 bytes |
//! | --- | --- | --- | --- |
//! | SSE4.2, three streams of 256-byte blocks | 16–20 GB/s | 15–18 GB/s | 6.6–11 GB/s |
//! | SSE4.2, one stream (blocks of 4 KiB, for comparison) | 7.6–8 GB/s | — | — |
//! | software (slice-by-16 tables) | 1.4–1.6 GB/s | 1.5 GB/s | 1.3 GB/s |
//!
//! ```
//! use pinstream_core::wire::{Crc32c, crc32c, crc32c_update};
//!
//! assert_eq!(crc32c(b"123456789"), 0xE306_9283);
//! assert_eq!(crc32c_update(crc32c(b"1234"), b"56789"), 0xE306_9283);
//! let mut c = Crc32c::new();
//! c.update(b"12345");
//! c.update(b"6789");
//! assert_eq!(c.finish(), 0xE306_9283);
//! ```

/// The software implementation (the `crc` crate: no_std, no alloc, no unsafe). Not built
/// where a CRC instruction is guaranteed at compile time (except for the tests).
#[cfg(any(
    test,
    not(all(
        not(miri),
        any(
            all(target_arch = "x86_64", target_feature = "sse4.2"),
            all(target_arch = "aarch64", target_feature = "crc")
        )
    ))
))]
mod sw {
    /// CRC-32/ISCSI with 16 tables of 256 entries (16 KiB), 16 bytes per step.
    static CASTAGNOLI: crc::Crc<u32, crc::Table<16>> =
        crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

    /// Continues the raw (un-inverted) CRC register `reg` over `data`.
    #[inline]
    pub(super) fn update(reg: u32, data: &[u8]) -> u32 {
        // The crate's digest holds the reflected register and takes its initial value in
        // unreflected form; its `finalize` applies the final xor, which we undo.
        let mut digest = CASTAGNOLI.digest_with_initial(reg.reverse_bits());
        digest.update(data);
        !digest.finalize()
    }
}

/// Joining three streams: GF(2) arithmetic modulo the CRC32C polynomial, in the reflected
/// bit order of the CRC register (bit 31 is x^0), evaluated at compile time.
#[cfg(any(
    test,
    all(
        not(miri),
        target_arch = "x86_64",
        any(
            target_feature = "sse4.2",
            all(target_feature = "sse2", not(target_env = "sgx"))
        )
    ),
    all(not(miri), target_arch = "aarch64", target_feature = "crc")
))]
mod shift {
    /// The reflected CRC32C polynomial.
    const POLY: u32 = 0x82F6_3B78;

    /// `a * b mod P`.
    pub(super) const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
        let mut m: u32 = 1 << 31;
        let mut p = 0;
        while m != 0 {
            if a & m != 0 {
                p ^= b;
            }
            m >>= 1;
            b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        }
        p
    }

    /// `x^(8 * bytes) mod P`: the factor that appends `bytes` zero bytes to a register.
    pub(super) const fn x_pow_8n(bytes: u64) -> u32 {
        // x^(2^k) for k = 3 (x^8) upwards, squared each step.
        let mut sq: u32 = mul_mod_p(1 << 30, 1 << 30); // x^2
        sq = mul_mod_p(sq, sq); // x^4
        sq = mul_mod_p(sq, sq); // x^8
        let mut p: u32 = 1 << 31; // x^0
        let mut n = bytes;
        while n != 0 {
            if n & 1 != 0 {
                p = mul_mod_p(sq, p);
            }
            sq = mul_mod_p(sq, sq);
            n >>= 1;
        }
        p
    }

    /// Tables that multiply a register by `x^(8 * bytes)`: one per register byte.
    pub(super) const fn tables(bytes: u64) -> [[u32; 256]; 4] {
        let k = x_pow_8n(bytes);
        let mut t = [[0u32; 256]; 4];
        let mut byte = 0;
        while byte < 4 {
            let mut v = 0;
            while v < 256 {
                t[byte][v] = mul_mod_p(k, (v as u32) << (8 * byte));
                v += 1;
            }
            byte += 1;
        }
        t
    }

    /// `reg * x^(8 * bytes)` through `tables(bytes)`: the register after `bytes` zero bytes.
    #[inline(always)]
    pub(super) fn apply(t: &[[u32; 256]; 4], reg: u32) -> u32 {
        t[0][(reg & 0xFF) as usize]
            ^ t[1][((reg >> 8) & 0xFF) as usize]
            ^ t[2][((reg >> 16) & 0xFF) as usize]
            ^ t[3][(reg >> 24) as usize]
    }
}

/// The hardware paths share one body, written once as a macro and expanded inside each
/// `#[target_feature]` function, whose `#[inline(always)]` step helpers (and with them the
/// intrinsics) are inlined into it: a single instruction per step, not a call.
///
/// `$reg` is the raw register, `$data` the input; `$step64(u32, u64) -> u32` and
/// `$step8(u32, u8) -> u32` are the CRC instructions. Evaluates to the new register.
#[cfg(any(
    all(
        not(miri),
        target_arch = "x86_64",
        any(
            target_feature = "sse4.2",
            all(target_feature = "sse2", not(target_env = "sgx"))
        )
    ),
    all(not(miri), target_arch = "aarch64", target_feature = "crc")
))]
macro_rules! hw_update_body {
    ($reg:expr, $data:expr, $step64:expr, $step8:expr) => {{
        /// Bytes per stream and round in the three-stream loop.
        const BLOCK: usize = 256;
        /// Multiplies by `x^(8 * BLOCK)`: appends one block of zeros.
        static SHIFT_BLOCK: [[u32; 256]; 4] = shift::tables(BLOCK as u64);

        let mut reg: u32 = $reg;
        let mut data: &[u8] = $data;
        while let Some((round, rest)) = data.split_at_checked(3 * BLOCK) {
            let (a, bc) = round.split_at(BLOCK);
            let (b, c) = bc.split_at(BLOCK);
            let (mut ra, mut rb, mut rc) = (reg, 0u32, 0u32);
            for ((wa, wb), wc) in a
                .chunks_exact(8)
                .zip(b.chunks_exact(8))
                .zip(c.chunks_exact(8))
            {
                ra = $step64(ra, le64(wa));
                rb = $step64(rb, le64(wb));
                rc = $step64(rc, le64(wc));
            }
            // crc(reg; a b c) = ra·x^(2·8·BLOCK) + rb·x^(8·BLOCK) + rc  (mod P)
            reg = shift::apply(&SHIFT_BLOCK, shift::apply(&SHIFT_BLOCK, ra) ^ rb) ^ rc;
            data = rest;
        }
        let words = data.chunks_exact(8);
        let tail = words.remainder();
        for w in words {
            reg = $step64(reg, le64(w));
        }
        for &byte in tail {
            reg = $step8(reg, byte);
        }
        reg
    }};
}

/// An 8-byte chunk as a little-endian word (`chunks_exact(8)` makes the fallback dead code).
#[cfg(any(
    all(
        not(miri),
        target_arch = "x86_64",
        any(
            target_feature = "sse4.2",
            all(target_feature = "sse2", not(target_env = "sgx"))
        )
    ),
    all(not(miri), target_arch = "aarch64", target_feature = "crc")
))]
#[inline(always)]
fn le64(chunk: &[u8]) -> u64 {
    match chunk.first_chunk::<8>() {
        Some(w) => u64::from_le_bytes(*w),
        None => 0,
    }
}

#[cfg(all(
    not(miri),
    target_arch = "x86_64",
    any(
        target_feature = "sse4.2",
        all(target_feature = "sse2", not(target_env = "sgx"))
    )
))]
mod x86 {
    use core::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};

    use super::{le64, shift};

    /// Continues the raw register `reg` over `data` with the SSE4.2 `crc32` instruction.
    ///
    /// # Safety
    /// The CPU must support SSE4.2 (compiled in, or detected by [`detected`]).
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn update(reg: u32, data: &[u8]) -> u32 {
        #[inline(always)]
        fn step64(reg: u32, word: u64) -> u32 {
            // `_mm_crc32_u64` zero-extends a 32-bit CRC to 64 bits; the result fits in 32.
            #[allow(unused_unsafe)] // a safe fn since Rust 1.87; the MSRV (1.85) needs the block
            // SAFETY: only reached from `update`, which requires SSE4.2 of its caller;
            // `inline(always)` places it inside that `target_feature` function.
            let r = unsafe { _mm_crc32_u64(u64::from(reg), word) };
            r as u32
        }
        #[inline(always)]
        fn step8(reg: u32, byte: u8) -> u32 {
            #[allow(unused_unsafe)] // a safe fn since Rust 1.87; the MSRV (1.85) needs the block
            // SAFETY: as in `step64`.
            unsafe {
                _mm_crc32_u8(reg, byte)
            }
        }
        hw_update_body!(reg, data, step64, step8)
    }

    /// Whether this CPU has SSE4.2: `cpuid` once, then a cached answer.
    #[cfg(not(target_feature = "sse4.2"))]
    #[inline]
    pub(super) fn detected() -> bool {
        use core::sync::atomic::{AtomicU8, Ordering};

        /// 0: not asked yet, 1: no, 2: yes. Racing first callers store the same answer.
        static SSE42: AtomicU8 = AtomicU8::new(0);
        match SSE42.load(Ordering::Relaxed) {
            2 => true,
            1 => false,
            _ => {
                #[allow(unused_unsafe)]
                // a safe fn since Rust 1.87; the MSRV (1.85) needs the block
                // SAFETY: `cpuid` exists on every x86_64 CPU; leaf 1 is always defined.
                let leaf1 = unsafe { core::arch::x86_64::__cpuid(1) };
                let yes = leaf1.ecx & (1 << 20) != 0;
                SSE42.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }
}

#[cfg(all(not(miri), target_arch = "aarch64", target_feature = "crc"))]
mod arm {
    use core::arch::aarch64::{__crc32cb, __crc32cd};

    use super::{le64, shift};

    /// Continues the raw register `reg` over `data` with the ARMv8 CRC32C instructions.
    ///
    /// # Safety
    /// The CPU must implement the CRC extension (guaranteed: the crate is compiled with it).
    #[target_feature(enable = "crc")]
    pub(super) unsafe fn update(reg: u32, data: &[u8]) -> u32 {
        #[inline(always)]
        fn step64(reg: u32, word: u64) -> u32 {
            #[allow(unused_unsafe)] // a safe fn in newer Rust; the MSRV (1.85) needs the block
            // SAFETY: the crate is compiled with `target_feature = "crc"`.
            unsafe {
                __crc32cd(reg, word)
            }
        }
        #[inline(always)]
        fn step8(reg: u32, byte: u8) -> u32 {
            #[allow(unused_unsafe)] // a safe fn in newer Rust; the MSRV (1.85) needs the block
            // SAFETY: the crate is compiled with `target_feature = "crc"`.
            unsafe {
                __crc32cb(reg, byte)
            }
        }
        hw_update_body!(reg, data, step64, step8)
    }
}

/// Continues the raw CRC register (before the final inversion) over `data`, with the fastest
/// implementation available.
#[inline]
fn update_reg(reg: u32, data: &[u8]) -> u32 {
    #[cfg(all(not(miri), target_arch = "x86_64", target_feature = "sse4.2"))]
    {
        // SAFETY: the crate is compiled with SSE4.2 enabled.
        unsafe { x86::update(reg, data) }
    }
    #[cfg(all(
        not(miri),
        target_arch = "x86_64",
        not(target_feature = "sse4.2"),
        target_feature = "sse2",
        not(target_env = "sgx")
    ))]
    {
        if x86::detected() {
            // SAFETY: `detected` saw the SSE4.2 bit in `cpuid`.
            unsafe { x86::update(reg, data) }
        } else {
            sw::update(reg, data)
        }
    }
    #[cfg(all(not(miri), target_arch = "aarch64", target_feature = "crc"))]
    {
        // SAFETY: the crate is compiled with the CRC extension enabled.
        unsafe { arm::update(reg, data) }
    }
    #[cfg(not(all(
        not(miri),
        any(
            all(
                target_arch = "x86_64",
                any(
                    target_feature = "sse4.2",
                    all(target_feature = "sse2", not(target_env = "sgx"))
                )
            ),
            all(target_arch = "aarch64", target_feature = "crc")
        )
    )))]
    {
        sw::update(reg, data)
    }
}

/// The CRC32C of `data`.
///
/// ```
/// assert_eq!(pinstream_core::wire::crc32c(b"123456789"), 0xE306_9283);
/// assert_eq!(pinstream_core::wire::crc32c(b""), 0);
/// ```
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    !update_reg(!0, data)
}

/// Continues `crc`, the CRC32C of some bytes `a`, over `data`: returns the CRC32C of
/// `a ++ data`. Start from `0` (the CRC of no bytes).
///
/// ```
/// use pinstream_core::wire::{crc32c, crc32c_update};
/// let whole = crc32c(b"hello world");
/// assert_eq!(crc32c_update(crc32c_update(0, b"hello "), b"world"), whole);
/// ```
#[inline]
pub fn crc32c_update(crc: u32, data: &[u8]) -> u32 {
    !update_reg(!crc, data)
}

/// An incremental CRC32C: [`update`](Self::update) with each piece, then
/// [`finish`](Self::finish).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Crc32c {
    /// The raw register (inverted CRC of the bytes so far).
    reg: u32,
}

impl Crc32c {
    /// A checksum of no bytes yet.
    #[inline]
    pub const fn new() -> Self {
        Self { reg: !0 }
    }

    /// Continues from `crc`, the finished CRC32C of earlier bytes.
    #[inline]
    pub const fn resume(crc: u32) -> Self {
        Self { reg: !crc }
    }

    /// Adds `data` to the checksum.
    #[inline]
    pub fn update(&mut self, data: &[u8]) {
        self.reg = update_reg(self.reg, data);
    }

    /// The CRC32C of every byte given so far (the checksum can go on being updated).
    #[inline]
    pub const fn finish(&self) -> u32 {
        !self.reg
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

/// Test access to the individual implementations.
#[cfg(all(test, not(loom)))]
pub(crate) mod imp {
    /// The software path on the raw register.
    pub(crate) fn software(reg: u32, data: &[u8]) -> u32 {
        super::sw::update(reg, data)
    }

    /// The hardware path on the raw register, when this build and CPU have one.
    #[allow(unreachable_code)]
    pub(crate) fn hardware(reg: u32, data: &[u8]) -> Option<u32> {
        let _ = (reg, data);
        #[cfg(all(not(miri), target_arch = "x86_64", target_feature = "sse4.2"))]
        // SAFETY: the crate is compiled with SSE4.2 enabled.
        return Some(unsafe { super::x86::update(reg, data) });
        #[cfg(all(
            not(miri),
            target_arch = "x86_64",
            not(target_feature = "sse4.2"),
            target_feature = "sse2",
            not(target_env = "sgx")
        ))]
        return if super::x86::detected() {
            // SAFETY: `detected` saw the SSE4.2 bit in `cpuid`.
            Some(unsafe { super::x86::update(reg, data) })
        } else {
            None
        };
        #[cfg(all(not(miri), target_arch = "aarch64", target_feature = "crc"))]
        // SAFETY: the crate is compiled with the CRC extension enabled.
        return Some(unsafe { super::arm::update(reg, data) });
        None
    }

    /// `reg * x^(8 * bytes) mod P`: the register after `bytes` zero bytes.
    pub(crate) fn append_zeros(reg: u32, bytes: u64) -> u32 {
        super::shift::mul_mod_p(super::shift::x_pow_8n(bytes), reg)
    }

    /// The same through the look-up tables.
    pub(crate) fn append_zeros_by_table(reg: u32, bytes: u64) -> u32 {
        super::shift::apply(&super::shift::tables(bytes), reg)
    }
}

//! Memory placement syscalls: anonymous mappings, `mbind`, `get_mempolicy`, `madvise`,
//! `mlock` / `mlockall`.
//!
//! glibc has no wrapper for `mbind` / `get_mempolicy` (they live in libnuma), so they go
//! through `libc::syscall`. None of these calls changes the bytes of memory it touches:
//! binding and migrating pages keeps their contents, and `MADV_POPULATE_WRITE` faults pages
//! in without writing data, which is why the wrappers that take plain addresses are safe.

use std::io;
use std::ptr::NonNull;

/// `MPOL_MF_MOVE` (linux/mempolicy.h): migrate pages already faulted in that do not follow
/// the new policy. libc does not export it.
pub(crate) const MPOL_MF_MOVE: u32 = 1 << 1;
/// `MPOL_F_NODE` for `get_mempolicy`: return a node id instead of a policy.
const MPOL_F_NODE: libc::c_ulong = 1 << 0;
/// `MPOL_F_ADDR` for `get_mempolicy`: look at the page holding `addr`.
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
/// `MADV_POPULATE_WRITE` (Linux 5.14). Spelled out so an older `libc` still builds.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Bits in the node masks passed to `mbind` (nodes `0..MAX_NODES`).
pub(crate) const MAX_NODES: usize = 1024;
const MASK_WORDS: usize = MAX_NODES / (8 * std::mem::size_of::<libc::c_ulong>());

/// The page size (`sysconf(_SC_PAGESIZE)`), 4096 if the call fails.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// `mbind(addr, len, mode, {node}, ...)` on whole pages; `addr` must be page-aligned.
///
/// Only changes the NUMA policy of the range (and, with [`MPOL_MF_MOVE`], migrates its pages
/// with their contents intact); the kernel checks that the range is mapped (`EFAULT`).
pub(crate) fn mbind(
    addr: *const u8,
    len: usize,
    mode: libc::c_int,
    node: usize,
    flags: u32,
) -> io::Result<()> {
    if node >= MAX_NODES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("node {node} is beyond the {MAX_NODES} nodes a mask can name"),
        ));
    }
    let bits = 8 * std::mem::size_of::<libc::c_ulong>();
    let mut mask: [libc::c_ulong; MASK_WORDS] = [0; MASK_WORDS];
    mask[node / bits] |= 1 << (node % bits);
    // SAFETY: `mask` is a live array of MASK_WORDS words, i.e. MAX_NODES bits; the kernel
    // reads `maxnode - 1` bits of it (its historical off-by-one, which libnuma also
    // compensates with `+ 1`). The call only reads `mask` and changes page policy.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len as libc::c_ulong,
            mode as libc::c_ulong,
            mask.as_ptr(),
            (MAX_NODES + 1) as libc::c_ulong,
            flags as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The node of the page holding `addr` (`get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)`); the
/// kernel faults the page in if it is not yet.
pub(crate) fn node_of_address(addr: *const u8) -> io::Result<usize> {
    let mut node: libc::c_int = -1;
    // SAFETY: `node` is a live, writable int for the result; the nodemask pointer is null with
    // maxnode 0 (none requested); `addr` is only looked up by the kernel, which returns
    // EFAULT for an unmapped address.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            addr,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(node).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("get_mempolicy returned node {node}"),
        )
    })
}

/// `mlockall(MCL_CURRENT | MCL_FUTURE)`.
pub(crate) fn lock_all() -> io::Result<()> {
    // SAFETY: mlockall takes flags only and has no memory-safety preconditions.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How [`Mapping::prefault`] faulted the pages in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefault {
    /// One `madvise(MADV_POPULATE_WRITE)` call.
    PopulateWrite,
    /// The kernel lacks it (before 5.14): one byte written per page.
    Touched,
}

/// A private anonymous read-write mapping, owned: unmapped on drop. Like a `Box<[u8]>` whose
/// pages the caller can place; its bytes start zeroed.
#[derive(Debug)]
pub(crate) struct Mapping {
    /// Start of the mapping, page-aligned, valid for `len` bytes until drop.
    ptr: NonNull<u8>,
    /// A non-zero multiple of the page size.
    len: usize,
}

// SAFETY: the mapping is owned memory, like `Box<[u8]>`: access goes through `&self` (shared
// reads) and `&mut self` (exclusive writes), so moving it or sharing it across threads is
// as sound as for a box.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out `&[u8]`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes (a non-zero multiple of the page size).
    pub(crate) fn new(len: usize) -> io::Result<Mapping> {
        if len == 0 || len % page_size() != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mapping length {len} is not a non-zero multiple of the page size"),
            ));
        }
        // SAFETY: a fresh private anonymous mapping at an address of the kernel's choice
        // cannot alias anything; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { ptr, len })
    }

    /// Start address.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for reads of `len` bytes for as long as `self` lives (it is
        // unmapped only in drop); anonymous memory is always initialised (zero-filled).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Faults every page in, writable, so the first use pays no page fault and the policy set
    /// by `mbind` decides where each page lands now.
    pub(crate) fn prefault(&mut self) -> io::Result<Prefault> {
        // SAFETY: the range is exactly this mapping; MADV_POPULATE_WRITE does not change
        // contents.
        let rc = unsafe {
            libc::madvise(
                self.ptr.as_ptr().cast::<libc::c_void>(),
                self.len,
                MADV_POPULATE_WRITE,
            )
        };
        if rc == 0 {
            return Ok(Prefault::PopulateWrite);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            // ENOMEM (e.g. MPOL_BIND on a full node) or EFAULT: a real failure.
            return Err(err);
        }
        let page = page_size();
        for offset in (0..self.len).step_by(page) {
            // SAFETY: `offset < len`, inside the mapping, which `&mut self` owns exclusively.
            // The byte is written back with the value just read, so contents are unchanged;
            // volatile so the compiler cannot drop the write that faults the page in.
            unsafe {
                let byte = self.ptr.as_ptr().add(offset);
                std::ptr::write_volatile(byte, std::ptr::read_volatile(byte));
            }
        }
        Ok(Prefault::Touched)
    }

    /// `mlock` on the whole mapping.
    pub(crate) fn lock(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this live mapping; mlock does not change contents.
        let rc = unsafe { libc::mlock(self.ptr.as_ptr().cast::<libc::c_void>(), self.len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and no reference into the
        // mapping outlives `self` (slices borrow it). munmap also drops any mlock.
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast::<libc::c_void>(), self.len) };
        debug_assert_eq!(rc, 0, "munmap of an owned mapping failed");
    }
}

//! File-system figures: `statvfs(3)`.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Space on the file system that holds `path`, in bytes: `(available, total)`, where
/// `available` is what an unprivileged process may still write (`f_bavail`, not `f_bfree`:
/// the blocks reserved for root do not count).
///
/// # Errors
/// `path` has a NUL byte, or `statvfs` failed (e.g. `ENOENT`, `EACCES`); retried on `EINTR`.
pub(crate) fn space(path: &Path) -> io::Result<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    loop {
        // SAFETY: `c` is a NUL-terminated string alive for the call, and `st` points to
        // writable memory the size of a `statvfs`, which the call fills on success.
        let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    // The fields are `c_ulong` or `fsblkcnt_t`, u32 or u64 depending on the target.
    #[allow(clippy::useless_conversion)]
    let unit = u64::from(st.f_frsize);
    #[allow(clippy::useless_conversion)]
    Ok((
        u64::from(st.f_bavail).saturating_mul(unit),
        u64::from(st.f_blocks).saturating_mul(unit),
    ))
}

/// Sets the process's file-mode creation mask; returns the previous one.
pub(crate) fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask(2) cannot fail and touches no memory of ours.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    old as u32
}

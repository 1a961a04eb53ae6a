//! Memory placement syscalls (in progress).

//! Socket syscalls (in progress).

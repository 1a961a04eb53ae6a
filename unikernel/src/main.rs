//! The kernel (the library: boot code, serial port, pipeline) linked as an executable; the
//! runner (`qemu-run.sh`) boots it in QEMU and `host-test/` drives it over COM1.
#![no_std]
#![no_main]

extern crate pinstream_unikernel;

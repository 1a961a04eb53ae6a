//! Puts the board's `memory.x` (from `../linker/`) and a `device.x` where cortex-m-rt's
//! `link.x` finds them, and
//! links with `link.x` (plus `defmt.x` when the `defmt` feature is on).

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let memory = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("../linker/memory.x");
    fs::copy(&memory, out.join("memory.x")).expect("copy linker/memory.x");
    // cortex-m-rt's `device` feature makes `link.x` include `device.x`, where a PAC would
    // PROVIDE each interrupt's default handler; `board::__INTERRUPTS` names its handlers
    // itself, so there is nothing to provide.
    fs::write(
        out.join("device.x"),
        "/* The interrupt vectors: board::__INTERRUPTS. */\n",
    )
    .expect("write device.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={}", memory.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg=-Tlink.x");
    if env::var_os("CARGO_FEATURE_DEFMT").is_some() {
        println!("cargo:rustc-link-arg=-Tdefmt.x");
    }
}

//! Where the unikernel's ELF comes from; the rest (QEMU, the line, the frames) is the
//! firmware's host-side harness, `pinstream_firmware_host_test`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The kernel ELF to boot: `$UNIKERNEL_ELF` (the kernel's cargo runner sets it), or the
/// kernel built with `cargo build --release` in `../` (once per test process).
pub fn unikernel_elf() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| match std::env::var_os("UNIKERNEL_ELF") {
        Some(path) => PathBuf::from(path),
        None => build_unikernel(),
    })
    .clone()
}

fn build_unikernel() -> PathBuf {
    let kernel = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--bin", "pinstream-unikernel"])
        .current_dir(&kernel)
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo build in unikernel/");
    assert!(status.success(), "building the unikernel failed");
    kernel.join("target/x86_64-unknown-none/release/pinstream-unikernel")
}

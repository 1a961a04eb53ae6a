//! Emits `cfg(pinstream_cas)` when the target can do compare-and-swap, natively or through
//! portable-atomic's `critical-section` / `unsafe-assume-single-core` fallbacks. Structures
//! that need CAS are built only then; `Spsc` needs load/store only and is always built.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pinstream_cas)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");

    // `target_has_atomic` lists the widths with native CAS; load/store-only targets
    // (thumbv6m) list none.
    let native_cas = env::var("CARGO_CFG_TARGET_HAS_ATOMIC")
        .map(|widths| widths.split(',').any(|w| w == "ptr"))
        .unwrap_or(false);
    let feature = env::var_os("CARGO_FEATURE_CRITICAL_SECTION").is_some()
        || env::var_os("CARGO_FEATURE_UNSAFE_ASSUME_SINGLE_CORE").is_some();
    // portable-atomic also honours `--cfg portable_atomic_unsafe_assume_single_core`.
    let rustflag = env::var("CARGO_ENCODED_RUSTFLAGS")
        .map(|f| f.contains("portable_atomic_unsafe_assume_single_core"))
        .unwrap_or(false);
    if native_cas || feature || rustflag {
        println!("cargo::rustc-cfg=pinstream_cas");
    }
}

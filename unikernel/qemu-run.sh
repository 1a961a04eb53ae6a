#!/usr/bin/env bash
# The unikernel's cargo runner (.cargo/config.toml): `cargo run` / `cargo test` hand it the
# kernel ELF; host-test/ boots it in QEMU (x86_64, PVH entry) with COM1 on a unix socket,
# drives it and checks every answer and the kernel's exit verdict. Its `cargo test` builds
# for the host (host-test/.cargo/config.toml).
set -euo pipefail
elf=$(realpath "$1") # cargo run passes it relative to the current directory
shift
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/host-test"
# Its own target directory and target: an outer CARGO_TARGET_DIR would be the one the
# outer cargo holds locked while its tests run.
UNIKERNEL_ELF=$elf exec env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET \
    cargo test --release -- "$@"

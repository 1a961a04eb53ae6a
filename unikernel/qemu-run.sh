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
UNIKERNEL_ELF=$elf exec cargo test --release -- "$@"

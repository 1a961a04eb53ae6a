#!/usr/bin/env bash
# The firmware's cargo runner (.cargo/config.toml): `cargo run` / `cargo test` hand it the
# ELF they built for the LM3S6965.
#   - the self-check (the `pipeline` test, `--features semihosting`): booted in QEMU with
#     semihosting, whose exit status is the verdict;
#   - the application (`pinstream-firmware`, the `uart` test): handed to host-test/, whose
#     tests boot it in QEMU with UART0 on a unix socket, drive it over the line and check
#     every answer (tests/uart.rs), and check the line's framing alone (tests/line.rs); its
#     `cargo test` builds for the host (host-test/.cargo/config.toml).
set -euo pipefail
elf=$(realpath "$1") # cargo run passes it relative to the current directory
shift
here=$(cd "$(dirname "$0")" && pwd)
case "$(basename "$elf")" in
    pipeline-*)
        exec qemu-system-arm -cpu cortex-m3 -machine lm3s6965evb -nographic \
            -semihosting-config enable=on,target=native -kernel "$elf" "$@"
        ;;
    reset-*)
        # The application with `panic-probe`: the test that a panic resets the chip.
        cd "$here/host-test"
        FIRMWARE_PANIC_PROBE_ELF=$elf exec env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET \
            cargo test --release --test reset -- "$@"
        ;;
    *)
        cd "$here/host-test"
        # Its own target directory and target: an outer CARGO_TARGET_DIR would be the one the
        # outer cargo holds locked while its tests run.
        FIRMWARE_ELF=$elf exec env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET \
            cargo test --release --test uart --test line -- "$@"
        ;;
esac

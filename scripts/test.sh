#!/usr/bin/env bash
# Everything that proves pinstream works, in one command (the README's test command; CI runs
# it through .ci/run). Installs the rustup targets and components it needs first: a no-op
# when they are there. Stops at the first failure.
#
#   ./scripts/test.sh            all steps
#   ./scripts/test.sh --quick    fmt, clippy and the tests with a 10 s soak (no nightly, no
#                                bare-metal targets, no QEMU, no promtool needed)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
case "${1:-}" in
    "") ;;
    --quick) quick=true ;;
    -h | --help)
        sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown argument '$1' (usage: ./scripts/test.sh [--quick])" >&2
        exit 2
        ;;
esac

# Every program a step needs, checked before the first step runs: a missing one used to
# surface 25 minutes in. `.ci/run` installs them on a fresh machine.
preflight() {
    local missing=() tool
    # openssl: the TLS tests (HTTP gateway, JetStream bridge) make their throwaway CAs with it;
    # python3: the bridge tests install nats-server into a venv, and the MSRV step reads
    # `cargo metadata` with it.
    local needed=(cargo rustup openssl python3)
    $quick || needed+=(qemu-system-arm qemu-system-x86_64 arm-none-eabi-size promtool curl)
    for tool in "${needed[@]}"; do
        command -v "$tool" > /dev/null || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "missing: ${missing[*]}" >&2
        echo "install them with .ci/run's packages (Debian):" >&2
        echo "  sudo apt-get install qemu-system-arm qemu-system-x86 binutils-arm-none-eabi prometheus curl openssl" >&2
        echo "or run ./scripts/test.sh --quick (fmt, clippy and the tests only)" >&2
        exit 1
    fi
}
preflight

BARE_METAL_TARGETS=(thumbv7em-none-eabihf thumbv7m-none-eabi thumbv6m-none-eabi riscv32imac-unknown-none-elf x86_64-unknown-none)
passed=0
step() {
    local name=$1
    shift
    printf '\n==> %s\n' "$name"
    local t0=$SECONDS
    "$@"
    passed=$((passed + 1))
    printf -- '--- %s: ok (%ss)\n' "$name" $((SECONDS - t0))
}

setup() {
    rustup component add clippy rustfmt
    # --quick needs only the stable toolchain's clippy and rustfmt.
    $quick && return 0
    rustup target add "${BARE_METAL_TARGETS[@]}"
    if ! rustup toolchain list | grep -q '^nightly'; then
        rustup toolchain install nightly --profile minimal
    fi
    rustup +nightly component add rust-src miri
}

bare_metal() {
    # -D warnings: a warning on a target we do not run is still a defect.
    for t in "${BARE_METAL_TARGETS[@]}"; do
        echo "pinstream-core for $t"
        RUSTFLAGS="-D warnings" cargo build -p pinstream-core --target "$t" --target-dir target/bare-metal
    done
    # thumbv6m has no CAS: the plain build above has only the Spsc; the final binary picks one
    # of these to get the CAS-based structures.
    for f in critical-section unsafe-assume-single-core; do
        echo "pinstream-core for thumbv6m-none-eabi with feature $f"
        RUSTFLAGS="-D warnings" cargo build -p pinstream-core --target thumbv6m-none-eabi \
            --features "$f" --target-dir target/bare-metal
    done
    # Without the per-stage latency histograms (15.6 KB of a firmware's RAM): what small
    # parts build, the firmware among them.
    for t in thumbv7m-none-eabi thumbv6m-none-eabi; do
        echo "pinstream-core for $t without default features (no latency-histograms)"
        RUSTFLAGS="-D warnings" cargo build -p pinstream-core --target "$t" --no-default-features \
            --target-dir target/bare-metal
    done
    # The core's own tests without the histograms (the ones about them are cfg'd out).
    cargo test -p pinstream-core --lib --no-default-features --target-dir target/bare-metal
    # Only `core` exists in this build: any `alloc` in the dependency tree fails to compile.
    echo "pinstream-core with -Zbuild-std=core (no alloc anywhere)"
    cargo +nightly build -Zbuild-std=core --target thumbv7em-none-eabihf -p pinstream-core \
        --target-dir target/build-std
}

miri() {
    # Small iteration counts under cfg(miri); both aliasing models. Focused on the modules
    # with unsafe or lock-free code (the rings, the pool, the payload arena, the dedup table, the rate limiter,
    # and the pipeline's lanes / dispatcher / processors, which `process::` tests drive);
    # the plain-data modules (codec, metrics, control) are covered by the normal tests.
    local focus=(ring:: pool:: dedup:: ratelimit:: process:: arena::)
    cargo +nightly miri test -p pinstream-core --lib -- "${focus[@]}"
    MIRIFLAGS="-Zmiri-tree-borrows" cargo +nightly miri test -p pinstream-core --lib -- "${focus[@]}"
}

loom() {
    RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 \
        cargo test -p pinstream-core --lib --release --target-dir target/loom
}

docs() {
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
}

firmware() {
    # The core in no-heap firmware under QEMU (firmware/README.md). Needs qemu-system-arm and
    # binutils-arm-none-eabi (Debian packages; .ci/run installs them).
    for tool in qemu-system-arm arm-none-eabi-size; do
        if ! command -v "$tool" > /dev/null; then
            echo "missing $tool: apt-get install qemu-system-arm binutils-arm-none-eabi"
            return 1
        fi
    done
    (
        cd firmware
        cargo fmt --check
        cargo clippy --release -- -D warnings
        cargo clippy --release --features semihosting --all-targets -- -D warnings
        (cd host-test && cargo fmt --check && cargo clippy --release --all-targets -- -D warnings)
        # The application booted in QEMU and driven over UART0 from the host (host-test/, by
        # the runner qemu-run.sh): as the README's firmware command runs it, then as the
        # `uart` test (the board build: a panic resets).
        cargo run --release
        cargo test --release
        # The built-in self-check (`pipeline`), and the application again with semihosting
        # (a firmware panic fails the test at once instead of resetting).
        cargo test --release --features semihosting
        # With the core's latency histograms (15.6 KB more RAM): still fits, still passes.
        cargo test --release --features latency-histograms
        # A panic asked for over the line resets the chip, which boots and serves again.
        cargo test --release --features panic-probe
        # Cortex-M0 (no CAS): the final binary picks critical-section (single core).
        cargo build --release --target thumbv6m-none-eabi --features no-cas
        # The core's defmt feature with a real logger.
        cargo build --release --features defmt
        # Must fail: a firmware that pulls in `alloc` has no allocator to link.
        local out
        if out=$(cargo build --release --features alloc-probe 2>&1); then
            echo "the alloc-probe firmware linked: it must not"
            return 1
        fi
        if ! grep -q "no global memory allocator found" <<< "$out"; then
            echo "the alloc-probe firmware failed for another reason:"
            echo "$out"
            return 1
        fi
        echo "alloc-probe: refused as expected (no global memory allocator)"
        # The footprint of the default build (the README's table), not of the last one built.
        cargo build --release
        arm-none-eabi-size target/thumbv7m-none-eabi/release/pinstream-firmware
    )
}

unikernel() {
    # The core in an x86_64 kernel under QEMU, driven over COM1 (unikernel/README.md). Needs
    # qemu-system-x86 (.ci/run installs it).
    if ! command -v qemu-system-x86_64 > /dev/null; then
        echo "missing qemu-system-x86_64: apt-get install qemu-system-x86"
        return 1
    fi
    (
        cd unikernel
        cargo fmt --check
        cargo clippy --release --all-targets -- -D warnings
        (cd host-test && cargo fmt --check && cargo clippy --release --all-targets -- -D warnings)
        # Boots the kernel and drives it from the host (host-test/, by the runner
        # qemu-run.sh): every answer, the books, and the kernel's exit verdict.
        cargo test --release
        size target/x86_64-unknown-none/release/pinstream-unikernel
    )
}

main_job() {
    # The README's first command: the engine on its embedded default config (loopback
    # ports 7070, 7071, 9090; data in ./pinstream-data, here a temp dir), driven by the load
    # generator for a moment, its /metrics checked with promtool, then stopped with SIGTERM.
    cargo build --release -p pinstream
    local bin dir pid ok=true
    bin="${CARGO_TARGET_DIR:-$PWD/target}/release/pinstream"
    dir=$(mktemp -d)
    (cd "$dir" && exec "$bin" run) > "$dir/run.log" 2>&1 &
    pid=$!
    # However this step ends, the engine does not outlive it.
    trap 'kill -9 "$pid" 2>/dev/null || true; rm -rf "$dir"; trap - RETURN' RETURN
    for _ in $(seq 150); do
        grep -q '^listening' "$dir/run.log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if ! grep -q '^listening' "$dir/run.log"; then
        cat "$dir/run.log"
        return 1
    fi
    "$bin" loadgen --events 200000 --priority high:2,medium:1,batch:1 || ok=false
    if ! command -v promtool > /dev/null || ! command -v curl > /dev/null; then
        echo "missing promtool or curl: apt-get install prometheus curl (.ci/run does)"
        ok=false
    elif ! curl -sf http://127.0.0.1:9090/metrics | promtool check metrics; then
        ok=false
    fi
    kill -TERM "$pid" || ok=false
    wait "$pid" || ok=false
    tail -n 4 "$dir/run.log"
    $ok
}

msrv() {
    # The core and the command with the oldest toolchain each declares (rust-version): a
    # newer feature (a let chain, a new std API) fails here, not on a user's machine.
    local pkg rv
    for pkg in pinstream-core pinstream; do
        rv=$(cargo metadata --no-deps --format-version 1 |
            python3 -c "import json,sys; print(next(p['rust_version'] for p in json.load(sys.stdin)['packages'] if p['name'] == '$pkg'))")
        echo "$pkg: rust-version $rv"
        rustup toolchain install "$rv" --profile minimal
        cargo "+$rv" build -p "$pkg" --target-dir target/msrv
    done
}

packaging() {
    # The five published crates as crates.io would take them: each packaged, then built from
    # its packaged files alone against the others' packages (dependency order). Then the
    # README's install command, into a temporary root, reusing the main job's release build.
    # Cargo unpacks the dry run's local registry under $CARGO_HOME/registry/src/-<hash>/ and
    # never unpacks the same name and version again: a second run on one machine would verify
    # against the first run's sources. Remove them (and the packages) first.
    rm -rf target/package
    find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -path '*/-*/pinstream-*' \
        -exec rm -rf {} + 2> /dev/null || true
    # Cargo also takes a registry crate's build as final (a published version never
    # changes): the verification would link the previous run's compiled pinstream-client
    # 0.1.0 against today's sources. Drop every pinstream build in the dev profile (the
    # tests are done; only these crates are rebuilt).
    local dev="${CARGO_TARGET_DIR:-target}/debug"
    rm -rf "$dev"/.fingerprint/pinstream-* "$dev"/deps/libpinstream_* "$dev"/deps/pinstream_*
    cargo publish --dry-run --allow-dirty -p pinstream-core -p pinstream-client \
        -p pinstream-host -p pinstream-bridge -p pinstream
    local root
    root=$(mktemp -d)
    cargo install --locked --path pinned-runner --root "$root" --target-dir "${CARGO_TARGET_DIR:-target}"
    "$root/bin/pinstream" --version
    rm -rf "$root"
}

step "toolchain set-up" setup
step "cargo fmt --check" cargo fmt --all --check
step "clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
# The runner's memory soak runs 180 s at a fixed rate (in parallel with the other tests);
# 10 s under --quick.
soak_secs=180
$quick && soak_secs=10
step "cargo test (debug: unit, doc, zero-allocation, end to end)" env PINSTREAM_SOAK_SECS=$soak_secs cargo test --workspace
if ! $quick; then
    step "rustdoc -D warnings" docs
    step "bare-metal builds" bare_metal
    step "MSRV: core and command with their rust-version toolchains" msrv
    step "benches compile (never run in CI)" cargo bench --workspace --no-run
    step "main job (README's run command) with the load generator" main_job
    step "packaging (cargo publish --dry-run, cargo install)" packaging
    step "firmware under QEMU (UART driven from the host, self-check, thumbv6m, defmt, no-alloc check)" firmware
    step "unikernel under QEMU (x86_64, driven over COM1 and virtio-net from the host)" unikernel
    step "miri (stacked + tree borrows)" miri
    step "loom models" loom
fi
printf '\nsteps: %d passed, 0 failed\n' "$passed"

#!/usr/bin/env bash
# Builds the workspace for aarch64 and runs the runtime's unit, kernel and reference tests
# there under qemu-user: the NEON kernels (plain and `sdot`) against the exact integer
# definition, and the forward pass against the numpy reference with every kernel set.
#
# Uses Debian's packages (run as root on Debian bookworm; CI does): `rustc-web` for the
# host with `libstd-rust-web-dev:arm64` (an aarch64 std matching that compiler, which
# rustup cannot fetch here), the aarch64 cross linker and C library, and qemu-user.
# Binaries are linked statically: dynamically linked aarch64 programs hang in
# `pthread_create` under qemu-user on these machines, static ones do not.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-aarch64 > /dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-gcc > /dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
[ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ] || need+=(rustc-web libstd-rust-web-dev:arm64)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  dpkg --print-foreign-architectures | grep -qx arm64 || $sudo dpkg --add-architecture arm64
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null
fi

export RUSTC=/usr/bin/rustc
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/aarch64-cross
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
"$RUSTC" --version

# Everything compiles for aarch64 (converter, runtime, format crate, their tests).
cargo check --target aarch64-unknown-linux-gnu --workspace --all-targets
# qemu's default CPU has the dot-product extension, so both NEON kernel sets are tested.
cargo test --target aarch64-unknown-linux-gnu -p tern --lib --test kernels --test reference

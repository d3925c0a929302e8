#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, the whole test suite (GPU tests on whatever
# Vulkan adapter is present: lavapipe on machines without a GPU; a missing adapter fails),
# `cargo check` of the Metal (macOS) and DX12 (Windows) builds, and of the library for wasm32
# (the browser build).
set -euo pipefail
cd "$(dirname "$0")/.."
# Skip wgpu's GL probe (it prints an EGL error on headless machines).
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
chmod 700 "$XDG_RUNTIME_DIR"

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test
for target in aarch64-apple-darwin x86_64-pc-windows-msvc; do
  echo "cargo check --target $target" >&2
  cargo check --lib --bins --target "$target"
done
echo "cargo check --target wasm32-unknown-unknown" >&2
cargo check --lib --target wasm32-unknown-unknown

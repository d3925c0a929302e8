#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, the whole test suite (GPU tests on whatever
# Vulkan adapter is present: lavapipe on machines without a GPU; a missing adapter fails),
# `cargo check` of the Metal (macOS) and DX12 (Windows) builds, clippy of the browser build, and
# the browser tests in headless Chromium (the demo page and the npm package).
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
echo "cargo clippy --target wasm32-unknown-unknown" >&2
cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings

# The browser: the kernel tests in Chromium (the same bodies as tests/kernels natively), the
# WASM build, the demo page end to end in headless Chromium against the
# native greedy run, and the npm package installed into a scratch Vite project.
scripts/test-wasm-kernels.sh
scripts/build-wasm.sh
cargo build --quiet --bin sinkstar
(cd tests/browser && npm install --no-audit --no-fund --prefer-offline --loglevel=error)
node tests/browser/e2e.mjs
SINKSTAR_NO_WASM_BUILD=1 tests/npm/run.sh

#!/usr/bin/env bash
# Runs the GPU-kernel-vs-CPU-reference tests (tests/kernels) in headless Chromium: the same test
# bodies as `cargo test --test kernels`, built for wasm32 and run by wasm-bindgen-test-runner
# through chromedriver on the browser's WebGPU (SwiftShader). Only that test binary: the others
# are native-only. A browser without a WebGPU adapter fails every GPU test, and so the run.
# Extra arguments go to the runner, e.g. a name filter: scripts/test-wasm-kernels.sh matmul
set -euo pipefail
cd "$(dirname "$0")/.."

want=0.2.130 # the crate's pinned wasm-bindgen (Cargo.toml); the runner must be the same release
if ! command -v wasm-bindgen-test-runner >/dev/null; then
  echo "wasm-bindgen-test-runner not found: cargo install wasm-bindgen-cli --version $want" >&2
  exit 1
fi
have=$(wasm-bindgen-test-runner --version | awk '{print $2}')
if [ "$have" != "$want" ]; then
  echo "wasm-bindgen-test-runner is $have, the crate pins wasm-bindgen $want" >&2
  exit 1
fi

export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
# The runner reads the browser's capabilities (binary, --enable-unsafe-webgpu, …) from here.
export WASM_BINDGEN_TEST_WEBDRIVER_JSON="$PWD/tests/browser/webdriver.json"
# The runner's limit covers the whole page (every test), and defaults to 20 s: SwiftShader
# needs minutes.
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-900}"

start=$(date +%s)
status=0
cargo test --target wasm32-unknown-unknown --test kernels -- "$@" || status=$?
echo "test-wasm-kernels: $(($(date +%s) - start)) s (build and browser run), exit status $status" >&2
exit "$status"

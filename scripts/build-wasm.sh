#!/usr/bin/env bash
# Builds the browser runtime: the library for wasm32-unknown-unknown, then wasm-bindgen's
# `web` target output into pkg/wasm/ (generated, not committed), which the npm package (pkg/)
# and the demo page (www/) load. Installs the wasm32 target and wasm-bindgen-cli at the
# crate's exact version when they are missing (the CLI build takes ~6.5 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^wasm-bindgen = "=\(.*\)"$/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "build-wasm: no pinned wasm-bindgen version in Cargo.toml" >&2; exit 1; }
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
  echo "build-wasm: installing wasm-bindgen-cli $version" >&2
  # Not --locked: the CLI's lock file wants a crate version the registry no longer has.
  cargo install wasm-bindgen-cli --version "$version"
fi

# The one build profile (dev, optimised: see Cargo.toml) serves the browser too.
cargo build --quiet --lib --target wasm32-unknown-unknown
# Generated beside, then swapped in: a reader of pkg/wasm never sees it half-written.
rm -rf pkg/wasm.new
wasm-bindgen --target web --out-dir pkg/wasm.new --out-name sinkstar \
  target/wasm32-unknown-unknown/debug/sinkstar.wasm
rm -rf pkg/wasm
mv pkg/wasm.new pkg/wasm
echo "build-wasm: pkg/wasm/ ($(du -h pkg/wasm/sinkstar_bg.wasm | cut -f1) of wasm)" >&2

#!/usr/bin/env bash
# Installs what sinkstar needs on a fresh Debian 12 machine that has the Rust toolchain:
# a Vulkan driver (Mesa's lavapipe from bookworm-backports when no GPU driver is present),
# Chromium for the browser tests, the Rust targets used by the cross-checks, the default model
# and the browser build (pkg/wasm, which `sinkstar serve` hands to the demo page). Each step is
# skipped when its result is already there, so running it again is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 || ! command -v vulkaninfo >/dev/null; then
  echo "setup: installing a Vulkan driver (Mesa 25 lavapipe from bookworm-backports)" >&2
  if [ ! -f /etc/apt/sources.list.d/backports.sources ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $sudo tee /etc/apt/sources.list.d/backports.sources >/dev/null
  fi
  $sudo apt-get update -q
  $sudo apt-get install -y -q -t bookworm-backports mesa-vulkan-drivers
  $sudo apt-get install -y -q vulkan-tools
fi
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || { $sudo apt-get update -q && $sudo apt-get install -y -q fonts-dejavu-core; }  # the font of sinkstar's plots

# The browser tests: Debian's Chromium (WebGPU on SwiftShader) and its driver for
# wasm-bindgen-test-runner; Node.js and npm drive the page tests (playwright-core, Vite).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "setup: installing chromium and chromium-driver" >&2
  $sudo apt-get update -q
  $sudo apt-get install -y -q chromium chromium-driver
fi
command -v npm >/dev/null || { $sudo apt-get update -q && $sudo apt-get install -y -q nodejs npm; }

# Targets for `cargo check` of the Metal, DX12 and browser builds (test.sh).
installed=$(rustup target list --installed)
for target in aarch64-apple-darwin x86_64-pc-windows-msvc wasm32-unknown-unknown; do
  grep -qx "$target" <<<"$installed" || rustup target add "$target"
done

scripts/fetch-model.sh
# The browser build (installs wasm-bindgen-cli at the crate's version the first time).
scripts/build-wasm.sh

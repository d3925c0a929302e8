#!/usr/bin/env bash
# Packs the npm package: builds pkg/wasm/ (scripts/build-wasm.sh, quick when up to date), checks
# that pkg/package.json's version is the crate's, and writes target/npm/sinkstar-<version>.tgz,
# whose path it prints. SINKSTAR_NO_WASM_BUILD=1 packs the pkg/wasm/ already there (for
# callers that have just built it, or that must not run cargo).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SINKSTAR_NO_WASM_BUILD:-}" = 1 ]; then
  [ -f pkg/wasm/sinkstar_bg.wasm ] || { echo "pack-npm: no pkg/wasm/ (run scripts/build-wasm.sh)" >&2; exit 1; }
else
  scripts/build-wasm.sh
fi

crate=$(sed -n '/^\[package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
npm_version=$(node -p 'require("./pkg/package.json").version')
if [ "$crate" != "$npm_version" ]; then
  echo "pack-npm: pkg/package.json has version $npm_version but Cargo.toml has $crate" >&2
  exit 1
fi

mkdir -p target/npm
tarball="target/npm/sinkstar-$npm_version.tgz"
rm -f "$tarball"
(cd pkg && npm pack --silent --pack-destination ../target/npm >/dev/null)
# "files" takes whatever exists: make sure the runtime really went in.
contents=$(tar -tzf "$tarball")
for f in package/wasm/sinkstar.js package/wasm/sinkstar_bg.wasm package/src/index.js package/src/worker.js package/index.d.ts package/README.md; do
  grep -qx "$f" <<<"$contents" || { echo "pack-npm: $tarball lacks $f" >&2; exit 1; }
done
echo "$PWD/$tarball"

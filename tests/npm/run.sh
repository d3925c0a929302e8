#!/usr/bin/env bash
# The npm package end to end, as a web developer gets it: packs pkg/ (scripts/pack-npm.sh),
# installs the tarball into a scratch Vite 7 project in target/npm-test/ (from the template in
# tests/npm/app/), type-checks tests/npm/usage.ts against its declarations, builds the app,
# serves it with the model on 127.0.0.1, and has headless Chromium (WebGPU) run the page:
# load, a greedy reply naming Paris, an aborted reply, errors, dispose, then the same in a
# worker. Fails on any error or after $SINKSTAR_NPM_TIMEOUT seconds (default 600); a missing
# WebGPU adapter fails too. Leaves target/npm-test/screenshot.png.
# SINKSTAR_NO_WASM_BUILD=1 packs the pkg/wasm/ already built (see scripts/pack-npm.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
app=target/npm-test
model="${SINKSTAR_MODEL:-${SINKSTAR_HOME:-$HOME/.cache/sinkstar}/SmolLM2-135M-Instruct.Q4_1.gguf}"
chromium="${CHROMIUM:-/usr/bin/chromium}"
[ -f "$model" ] || { echo "npm test: no model at $model (run scripts/fetch-model.sh)" >&2; exit 1; }
[ -x "$chromium" ] || { echo "npm test: no Chromium at $chromium" >&2; exit 1; }

echo "npm test: packing" >&2
tarball=$(scripts/pack-npm.sh)

# The template, with the dependency pointing at the tarball just packed. node_modules stays
# between runs: `npm install` runs only when package.json or the tarball changed.
mkdir -p "$app"
cp -r tests/npm/app/. "$app/"
cp tests/npm/usage.ts "$app/"
cd "$app"
npm pkg set "dependencies.sinkstar=file:$tarball"
stamp=$(cat package.json "$tarball" | sha256sum | cut -d' ' -f1)
if [ "$(cat node_modules/.sinkstar-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "npm test: npm install" >&2
  # npm keeps an installed file: dependency of the same version even when the tarball has
  # changed: take it out first (the other versions are pinned, so no lock file is needed).
  rm -rf package-lock.json node_modules/sinkstar
  npm install --no-audit --no-fund --prefer-offline --loglevel=error
  echo "$stamp" >node_modules/.sinkstar-stamp
fi

echo "npm test: tsc --noEmit usage.ts" >&2
node_modules/.bin/tsc --noEmit -p tsconfig.json

echo "npm test: vite build" >&2
node_modules/.bin/vite build --logLevel warn
ln -sf "$model" dist/model.gguf

port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
# Started as node itself, so that its pid is the server to stop.
node node_modules/vite/bin/vite.js preview --host 127.0.0.1 --port "$port" --strictPort >preview.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat preview.log >&2; echo "npm test: vite preview died" >&2; exit 1; }
  sleep 0.2
done

echo "npm test: Chromium on http://127.0.0.1:$port/" >&2
CHROMIUM="$chromium" node drive.mjs "http://127.0.0.1:$port/" "$root/$app/screenshot.png" "${SINKSTAR_NPM_TIMEOUT:-600}"

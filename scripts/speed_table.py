#!/usr/bin/env python3
"""sinkstar vs llama.cpp speed on the same GGUF and the same machine, as a README table.

Runs `sinkstar bench` (prefill at 128, 512 and 2048 tokens, decode of 128 tokens, the device's
streaming bandwidth by the stream kernel and decode's weight bandwidth against it, dispatches
and submissions per token, GPU memory; on whatever adapter wgpu picks: lavapipe on machines
without a GPU) and scripts/bench_llamacpp.py (llama-cpp-python, all cores) one after
the other in the same run, writes both JSON results and a combined one (speed.json) to
--out-dir and prints the markdown the README carries. Single runs swing a lot on small shared
machines: compare figures only within one run.

Needs: the model (scripts/fetch-model.sh), a built sinkstar (cargo build), and
`pip install -r scripts/requirements-golden.txt` for llama-cpp-python.

Rerun:
    python3 scripts/speed_table.py [--model PATH] [--out-dir DIR] [--prompts 128,512,2048]
        [--llama-gpu-layers N]
On a machine with a GPU, sinkstar runs on it (wgpu picks it) and --llama-gpu-layers -1 puts
llama.cpp's layers on it too (llama-cpp-python built with GGML_VULKAN or GGML_CUDA: see
scripts/bench_llamacpp.py).
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
    parser.add_argument("--prompts", default="128,512,2048")
    parser.add_argument("--bin", help="sinkstar binary [default: cargo build's]")
    parser.add_argument("--llama-gpu-layers", type=int, default=0,
                        help="llama.cpp layers on a GPU (default 0: CPU; -1: all)")
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = [int(n) for n in args.prompts.split(",")]

    sinkstar_json = out / "sinkstar.json"
    env = dict(os.environ, WGPU_BACKEND=os.environ.get("WGPU_BACKEND", "vulkan"))
    if args.bin:
        exe = [args.bin]
    else:
        subprocess.run(["cargo", "build", "--quiet", "--bin", "sinkstar"], cwd=ROOT, check=True)
        exe = [str(ROOT / "target" / "debug" / "sinkstar")]
    subprocess.run(
        exe + ["--model", args.model, "bench", "--prompt-tokens", args.prompts,
               "--decode-tokens", "128", "--repeat", str(args.repeat),
               "--json", str(sinkstar_json)],
        cwd=ROOT, env=env, check=True, stdout=sys.stderr)
    llama_json = out / "llama_cpp.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_llamacpp.py"), "--model", args.model,
         "--reps", str(args.repeat), "--prompts", args.prompts,
         "--gpu-layers", str(args.llama_gpu_layers), "--out", str(llama_json)],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL)

    ours = json.loads(sinkstar_json.read_text())
    theirs = json.loads(llama_json.read_text())
    prefill = {p["tokens"]: p["tok_per_s"] for p in ours["prefill"]}
    results = theirs["results"]
    rows = [(f"prompt, {n} tokens", prefill[n], results[f"prompt_{n}"]["llama_perf_tok_s"]["median"])
            for n in prompts]
    rows.append(("generation, 128 tokens", ours["decode_tok_per_s"],
                 results["gen_128"]["llama_perf_tok_s"]["median"]))
    gpu_layers = theirs["params"].get("n_gpu_layers", 0)
    where = f"{gpu_layers} layers on the GPU" if gpu_layers > 0 else (
        "all layers on the GPU" if gpu_layers < 0 else "CPU")
    machine = (f"{os.cpu_count()} cores, {cpu_model()}; sinkstar on {ours['device']} "
               f"({ours['backend']}), llama.cpp {theirs['versions']['llama-cpp-python']} {where} with "
               f"{theirs['params']['n_threads']} threads")
    (out / "speed.json").write_text(json.dumps(
        {"machine": machine, "sinkstar": ours, "llama_cpp": theirs,
         "ratios": {name: a / b for name, a, b in rows}}, indent=1) + "\n")
    print(f"Machine: {machine}.\n")
    print(f"| tok/s | sinkstar (wgpu) | llama.cpp ({'CPU' if gpu_layers == 0 else 'GPU'}) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name, a, b in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    n_layers = ours.get("layers")
    # Besides the layers: the embedding, the LM head (with the final norm) and the sampler.
    per_layer = f" ({(ours['decode_dispatches'] - 3) / n_layers:g} per layer)" if n_layers else ""
    print(f"\nsinkstar decode: {ours['decode_dispatches']} dispatches{per_layer} and "
          f"{ours['decode_submissions_per_token']:g} submission(s) per token; "
          f"{ours['weight_bytes_per_token'] / 1e6:.1f} MB of weights read per token, "
          f"{ours['decode_weight_bytes_per_s'] / 1e9:.2f} GB/s = "
          f"{100 * ours['decode_weight_bytes_per_s'] / ours['stream_bytes_per_s']:.0f}% of the "
          f"{ours['stream_bytes_per_s'] / 1e9:.2f} GB/s the device streams; "
          f"{ours['gpu_memory_bytes'] / 2**20:.0f} MiB of GPU buffers.")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Decode time per token against tokens seen, dense vs sink, by `sinkstar bench --history`.

For each policy one session is brought to each history length in turn by prefill (the text of
--history-text, default Jane Austen's "Emma" from scripts/fetch-text.sh, else the bench
sentence) and 32 greedy decode steps are timed there; the GPU memory held is read at each.
Dense keeps every token at its true position and stops at its context (the model's 8192 by
default): longer histories are "n/a (context full)". Sink keeps S + W slots whatever the
history. Writes the bench JSON and a CSV per policy (tokens_seen,ms_per_token,decode_tok_per_s,
gpu_bytes) under --out-dir/decode_vs_history/, the plot decode_vs_history.png in --out-dir, and
prints a markdown table.

On this 2-core machine (lavapipe, idle) dense took 10 minutes to reach 8,000 tokens; sink
(4 + 2044) prefills at about 30 tokens/s once its ring is full, so 100,000 tokens take about an
hour. Single runs swing on small shared machines: compare figures within one run only, and run
each policy alone (--only) on an idle machine; --resume then keeps it. The README's runs are
committed in docs/results/decode_vs_history/. Smoke test:
    python3 scripts/decode_vs_history.py --history 200,1000,2000 --window 252 --context 1024 \
        --out-dir /tmp/d
The README's figure:
    python3 scripts/decode_vs_history.py --only dense --out-dir docs/results --resume
    python3 scripts/decode_vs_history.py --only sink --out-dir docs/results --resume
    python3 scripts/decode_vs_history.py --out-dir docs/results --resume
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def sinkstar_bin(args):
    if args.bin:
        return args.bin
    subprocess.run(["cargo", "build", "--quiet", "--bin", "sinkstar"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "debug" / "sinkstar")


def bench(args, exe, name, policy_args, out_dir):
    """Runs `sinkstar bench --history-only` for one policy; returns its JSON `history`."""
    json_path = out_dir / f"{name}.json"
    if args.resume and json_path.exists():
        print(f"decode_vs_history: {name}: kept from an earlier run", file=sys.stderr)
        return history_of(json_path, out_dir, name)
    cmd = [exe]
    if args.model:
        cmd += ["--model", args.model]
    cmd += ["bench", "--history-only", "--history", args.history,
            "--history-decode", str(args.decode), "--json", str(json_path), *policy_args]
    if args.history_text:
        cmd += ["--history-text", args.history_text]
    print("decode_vs_history: " + " ".join(cmd), file=sys.stderr)
    env = dict(os.environ, WGPU_BACKEND=os.environ.get("WGPU_BACKEND", "vulkan"))
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=sys.stderr)
    return history_of(json_path, out_dir, name)


def history_of(json_path, out_dir, name):
    """The `history` of a bench JSON, with its device; also written as NAME.csv."""
    result = json.loads(json_path.read_text())
    history = result["history"]
    history["device"] = result["device"]
    csv_path = out_dir / f"{name}.csv"
    with open(csv_path, "w") as f:
        f.write("tokens_seen,ms_per_token,decode_tok_per_s,gpu_bytes\n")
        for p in history["points"]:
            if p["status"] == "ok":
                f.write(f"{p['tokens_seen']},{p['ms_per_token']:.4f},"
                        f"{p['decode_tok_per_s']:.4f},{p['gpu_memory_bytes']}\n")
    return history, csv_path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--history", default="1000,2000,4000,8000,16000,100000",
                   help="history lengths, comma-separated")
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--window", type=int, default=2044)
    p.add_argument("--context", type=int, help="dense slots [default: the model's context]")
    p.add_argument("--decode", type=int, default=32, help="decode steps timed at each length")
    p.add_argument("--history-text", help="text fed as history [default: sinkstar's]")
    p.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "target" / "figures")
    p.add_argument("--model", help="GGUF model [default: sinkstar's]")
    p.add_argument("--bin", help="sinkstar binary [default: cargo build's]")
    p.add_argument("--resume", action="store_true",
                   help="keep a policy's run already in --out-dir (each needs an idle machine: "
                        "the two can be measured at different times)")
    p.add_argument("--only", choices=["dense", "sink"],
                   help="measure one policy only (no table or plot)")
    args = p.parse_args()
    run_dir = args.out_dir / "decode_vs_history"
    run_dir.mkdir(parents=True, exist_ok=True)
    exe = sinkstar_bin(args)

    dense_args = ["--attention", "dense"]
    if args.context:
        dense_args += ["--context", str(args.context)]
    sink_name = f"sink-{args.sinks}+{args.window}"
    sink_args = ["--attention", "sink", "--sinks", str(args.sinks), "--window", str(args.window)]
    if args.only:
        name, flags = ("dense", dense_args) if args.only == "dense" else (sink_name, sink_args)
        bench(args, exe, name, flags, run_dir)
        return
    dense, dense_csv = bench(args, exe, "dense", dense_args, run_dir)
    sink, sink_csv = bench(args, exe, sink_name, sink_args, run_dir)

    plot = args.out_dir / "decode_vs_history.png"
    subprocess.run([exe, "plot", "--out", str(plot), "--x", "tokens_seen", "--y", "ms_per_token",
                    "--log-x", "--linear-y", "--markers",
                    "--title", "Decode time per token vs tokens seen",
                    "--x-label", "tokens seen (log scale)", "--y-label", "ms per decoded token",
                    str(dense_csv), str(sink_csv)], cwd=ROOT, check=True)

    mib = 1 / 2**20
    print(f"Device: {dense['device']}. {args.decode} greedy decode steps timed at each length. "
          f"dense: {dense['cache_slots']} slots, {dense['session_bytes'] * mib:.1f} MiB of "
          f"session buffers; sink ({args.sinks} + {args.window}): {sink['cache_slots']} slots, "
          f"{sink['session_bytes'] * mib:.1f} MiB. GPU memory = all buffers held (model "
          f"included). Plot: {plot}\n")
    print("| tokens of history | dense ms/token | dense tok/s | dense GPU MiB "
          "| sink ms/token | sink tok/s | sink GPU MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for d, s in zip(dense["points"], sink["points"]):
        cells = [f"{d['history']:,}"]
        for point in (d, s):
            if point["status"] == "ok":
                cells += [f"{point['ms_per_token']:.1f}", f"{point['decode_tok_per_s']:.1f}",
                          f"{point['gpu_memory_bytes'] * mib:.1f}"]
            else:
                cells += [point["status"], "", ""]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

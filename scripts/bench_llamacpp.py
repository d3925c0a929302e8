#!/usr/bin/env python3
"""llama.cpp speed on SmolLM2-135M-Instruct.Q4_1.gguf, for comparison with sinkstar.

Measures, through llama-cpp-python (on the CPU unless --gpu-layers offloads layers to a GPU,
which needs llama-cpp-python built with its Vulkan or CUDA backend, e.g.
CMAKE_ARGS="-DGGML_VULKAN=on" pip install llama-cpp-python==0.3.36; n_threads =
n_threads_batch = number of cores unless --threads is given, n_batch = n_ubatch = 512, f16 KV
cache, flash attention off):

  prompt_N    prompt evaluation of an N-token prompt for each N of --prompts (default 128,
              512, 2048; batches of 512 tokens), tok/s
  gen_128     generation of 128 tokens one at a time after the 128-token prompt, tok/s
              (greedy: argmax of llama_get_logits_ith(ctx, -1), read with numpy; no sampler)

Prompts are token prefixes of the long English prose in scripts/golden.py, repeated as
needed. Each measurement starts from an empty KV cache and is repeated --reps times (after
one untimed warm-up run); the median is reported, along with min and max.

Timing source: llama.cpp's own counters (llama_perf_context: t_p_eval_ms / n_p_eval for
prompt batches, t_eval_ms / n_eval for single-token decodes, reset with
llama_perf_context_reset before every measurement; llama.cpp books a decode's time when the
context is synchronized, so the script calls llama_synchronize after each timed eval). A wall clock (time.perf_counter) around
the same calls is reported too ("wall_tok_s"); for generation it includes the Python
overhead of reading the logits and taking the argmax each step.

Output: JSON to stdout (and to --out FILE), with the machine (nproc, CPU model from
/proc/cpuinfo), library versions and parameters. Timings vary with machine load; the
token sequences are deterministic.

Rerun:
    python3 scripts/bench_llamacpp.py [--model PATH] [--reps 5] [--threads N] [--gpu-layers N]
        [--out FILE]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden import LONG_PROSE, default_model_path, pkg_version  # noqa: E402

N_BATCH = 512


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summarize(xs):
    return {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2), "max": round(max(xs), 2),
            "runs": [round(x, 2) for x in xs]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model_path(), help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per measurement (median reported)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads (default: nproc)")
    ap.add_argument("--gen", type=int, default=128, help="tokens to generate")
    ap.add_argument("--prompts", default="128,512,2048", help="prompt lengths to time")
    ap.add_argument("--gpu-layers", type=int, default=0,
                    help="layers offloaded to a GPU (default 0: CPU only; -1: all), needs a GPU build")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    prompts = [int(n) for n in args.prompts.split(",")]
    n_ctx = max(1024, max(prompts) + 1, 128 + args.gen + 1)
    llm = Llama(
        model_path=args.model,
        n_ctx=n_ctx,
        n_batch=N_BATCH,
        n_ubatch=N_BATCH,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=args.gpu_layers,
        logits_all=False,
        flash_attn=False,
        seed=0,
        verbose=False,
    )
    ctx = llm.ctx
    n_vocab = llm.n_vocab()

    base = llm.tokenize(LONG_PROSE.encode("utf-8"), add_bos=False, special=False)
    longest = max(prompts + [128])
    toks = (base * (1 + longest // len(base)))[:longest]

    def perf():
        return llama_cpp.llama_perf_context(ctx)

    def prompt_run(n):
        llm.reset()
        llama_cpp.llama_perf_context_reset(ctx)
        t0 = time.perf_counter()
        llm.eval(toks[:n])
        llama_cpp.llama_synchronize(ctx)  # llama.cpp books the batch's time at synchronize
        wall = time.perf_counter() - t0
        p = perf()
        assert p.n_p_eval == n, (p.n_p_eval, n)
        return n / (p.t_p_eval_ms / 1000.0), n / wall

    def gen_run(n_prompt, n_gen):
        llm.reset()
        llm.eval(toks[:n_prompt])
        llama_cpp.llama_synchronize(ctx)
        llama_cpp.llama_perf_context_reset(ctx)
        out = []
        t0 = time.perf_counter()
        for _ in range(n_gen):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            tok = int(np.argmax(logits))
            out.append(tok)
            llm.eval([tok])
        llama_cpp.llama_synchronize(ctx)
        wall = time.perf_counter() - t0
        p = perf()
        assert p.n_eval == n_gen, (p.n_eval, n_gen)
        return n_gen / (p.t_eval_ms / 1000.0), n_gen / wall, out

    results = {}
    for n in prompts:
        prompt_run(n)  # warm-up
        runs = [prompt_run(n) for _ in range(args.reps)]
        results[f"prompt_{n}"] = {"tokens": n, "llama_perf_tok_s": summarize([r[0] for r in runs]),
                                  "wall_tok_s": summarize([r[1] for r in runs])}
        print(f"prompt {n}: {results[f'prompt_{n}']['llama_perf_tok_s']['median']} tok/s", file=sys.stderr)
    gen_run(128, args.gen)  # warm-up
    runs = [gen_run(128, args.gen) for _ in range(args.reps)]
    assert all(r[2] == runs[0][2] for r in runs), "greedy generation not deterministic"
    results[f"gen_{args.gen}"] = {"tokens": args.gen, "after_prompt_tokens": 128,
                                  "llama_perf_tok_s": summarize([r[0] for r in runs]),
                                  "wall_tok_s": summarize([r[1] for r in runs])}
    print(f"gen {args.gen}: {results[f'gen_{args.gen}']['llama_perf_tok_s']['median']} tok/s", file=sys.stderr)

    report = {
        "source": "scripts/bench_llamacpp.py",
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform()},
        "versions": {"llama-cpp-python": pkg_version("llama-cpp-python"), "numpy": np.__version__,
                     "python": platform.python_version()},
        "params": {"n_threads": args.threads, "n_gpu_layers": args.gpu_layers, "n_batch": N_BATCH, "n_ubatch": N_BATCH, "n_ctx": n_ctx,
                   "kv_cache": "f16", "flash_attn": False, "reps": args.reps, "warmup_runs": 1},
        "timing": "llama_perf_context counters (t_p_eval_ms/n_p_eval, t_eval_ms/n_eval); wall_tok_s = perf_counter "
                  "around the llama-cpp-python calls",
        "results": results,
    }
    js = json.dumps(report, indent=1)
    print(js)
    if args.out:
        with open(args.out, "w") as f:
            f.write(js + "\n")


if __name__ == "__main__":
    main()
